"""The built-in `default` config (`jaxcerv/configs/default.py`, also `--config=default`),
kept here so that `--config=configs/default.py` keeps working from the repository root."""

from jaxcerv.configs.default import get_config

__all__ = ["get_config"]
