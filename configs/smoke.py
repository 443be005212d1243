"""The built-in `smoke` config (`jaxcerv/configs/smoke.py`, also `--config=smoke`),
kept here so that `--config=configs/smoke.py` keeps working from the repository root."""

from jaxcerv.configs.smoke import get_config

__all__ = ["get_config"]
