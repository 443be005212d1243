"""The built-in `paper_gpu` config (`jaxcerv/configs/paper_gpu.py`, also `--config=paper_gpu`),
kept here so that `--config=configs/paper_gpu.py` keeps working from the repository root."""

from jaxcerv.configs.paper_gpu import get_config

__all__ = ["get_config"]
