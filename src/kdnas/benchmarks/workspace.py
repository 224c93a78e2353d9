"""The Workspace of an evidence or benchmark script: what a task would get of a run, from a composed config,
without the CLI's RunContext (no logger, no provenance card)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdnas.engine.workspace import Workspace
from kdnas.runs import RunDir
from kdnas.utils import stable_hash


def script_workspace(cfg: DictConfig, folder: str | Path) -> Workspace:
    """``cfg``'s data (built on first use), cache, seed and recipe, writing to ``folder``; the config hash, which
    checkpoints in ``folder`` must match to resume, is the hash of the whole resolved config."""
    return Workspace.from_config(cfg, RunDir(folder), progress=bool(cfg.get("progress", False)),
                                 config_hash=stable_hash(OmegaConf.to_container(cfg, resolve=True)))
