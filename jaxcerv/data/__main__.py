"""``python -m jaxcerv.data build ...``: the same command as ``jaxcerv data`` (``cli/data.py``)."""

import sys

from jaxcerv.cli import data

if __name__ == "__main__":
    sys.exit(data.main(["python -m jaxcerv.data", *sys.argv[1:]]))
