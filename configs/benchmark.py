"""The built-in `benchmark` config (`jaxcerv/configs/benchmark.py`, also `--config=benchmark`),
kept here so that `--config=configs/benchmark.py` keeps working from the repository root."""

from jaxcerv.configs.benchmark import get_config

__all__ = ["get_config"]
