"""Shared test helpers. Tests run on CPU; multi-device tests start their own subprocesses."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `configs` is imported as a package by config files that build on the default.
sys.path.insert(0, str(REPO))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
