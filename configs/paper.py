"""The built-in `paper` config (`jaxcerv/configs/paper.py`, also `--config=paper`),
kept here so that `--config=configs/paper.py` keeps working from the repository root."""

from jaxcerv.configs.paper import get_config

__all__ = ["get_config"]
