"""Helpers shared by several test modules (tests import helpers from here, never from each other)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

SMOKE = ["debug=smoke", "logger=none", "trainer.num_threads=1"]


def kdnas_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The ``kdnas`` command in a subprocess (exit codes, stderr), wandb off."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "kdnas.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def without(cfg: DictConfig, *dotted: str) -> DictConfig:
    """``cfg`` as an older kdnas composed it, before the keys ``dotted`` existed."""
    container = OmegaConf.to_container(cfg)
    assert isinstance(container, dict)
    for key in dotted:
        *parents, leaf = key.split(".")
        node = container
        for part in parents:
            node = node[part]
        del node[leaf]
    return OmegaConf.create(container)
