"""The built-in `iarc_atlas` config (`jaxcerv/configs/iarc_atlas.py`, also `--config=iarc_atlas`),
kept here so that `--config=configs/iarc_atlas.py` keeps working from the repository root."""

from jaxcerv.configs.iarc_atlas import get_config

__all__ = ["get_config"]
