"""The Workspace of an evidence or benchmark script: what a task would get of a run, from a composed config,
without the CLI's RunContext (no logger, no provenance card)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kdnas.config import DataConfig, TrainerConfig, to_object
from kdnas.data import build_data
from kdnas.engine.workspace import Workspace
from kdnas.runs import RunDir
from kdnas.utils import stable_hash


def script_workspace(cfg: DictConfig, folder: str | Path) -> Workspace:
    """``cfg``'s data (built on first use), cache, seed and recipe, writing to ``folder``; the config hash, which
    checkpoints in ``folder`` must match to resume, is the hash of the whole resolved config."""
    cache = Path(cfg.paths.cache_dir).expanduser()
    data_cfg, data_dir = to_object(cfg.data, DataConfig), Path(cfg.paths.data_dir).expanduser()
    return Workspace(run=RunDir(folder), build_data=lambda: build_data(data_cfg, data_dir, cache), cache_dir=cache,
                     seed=int(cfg.seed), trainer_config=to_object(cfg.trainer, TrainerConfig),
                     config_hash=stable_hash(OmegaConf.to_container(cfg, resolve=True)),
                     progress=bool(cfg.get("progress", False)))
