"""Shared fixtures: an isolated cache per test session, wandb off, small thread count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import SMOKE

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session", autouse=True)
def kdnas_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per session: the bundled data is decoded and tiny teachers trained once."""
    cache = tmp_path_factory.mktemp("kdnas-cache")
    os.environ["KDNAS_CACHE_DIR"] = str(cache)
    return cache




@pytest.fixture
def smoke_overrides() -> list[str]:
    """Overrides that make any task run in seconds on the bundled data."""
    return list(SMOKE)
