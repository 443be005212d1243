"""`python -m jaxcerv.main --config=configs/default.py --workdir=DIR`: the same command as
`jaxcerv train` (its flags and exit statuses are in ``jaxcerv/cli/train.py``)."""

import sys

from jaxcerv.cli import app

if __name__ == "__main__":
    app.main([sys.argv[0], "train", *sys.argv[1:]])
