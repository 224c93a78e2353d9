"""What library code gets of a run instead of the CLI's context: built objects and plain settings.

A :class:`Workspace` holds the run folder, the data module (built on first use), the cache folder, the run's seed,
training recipe, config hash and resume flag, and builds :class:`Trainer` objects the same way everywhere. The
tasks build one from the composed config (``RunContext.workspace``); a library function takes a ``Workspace`` plus
the typed settings it reads (``TeacherConfig``, ``DistillConfig``, ...), never the composed config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from kdnas.config import DataConfig, TrainerConfig, to_object
from kdnas.data import DataModule, build_data
from kdnas.engine.objective import Objective
from kdnas.engine.trainer import Trainer
from kdnas.runs import RunDir

LogFn = Callable[[dict[str, Any]], None]


@dataclass
class Workspace:
    run: RunDir  # where this run writes
    build_data: Callable[[], DataModule]  # called once, on first use of ``data``
    cache_dir: Path  # teacher store, logit caches, evaluation caches
    seed: int
    trainer_config: TrainerConfig  # the run's training recipe (``trainer=``)
    config_hash: str  # the identity of what the run computes (checkpoints refuse another)
    resume: bool = True
    progress: bool = True
    log_for: Callable[[RunDir], LogFn] | None = None  # metrics writer of a (sub)folder; None: the folder's own log
    provenance: dict[str, Any] = field(default_factory=dict)  # the resolved config, recorded in cards, never read

    @classmethod
    def from_config(cls, cfg: DictConfig, run: RunDir, *, config_hash: str, **kwargs: Any) -> Workspace:
        """The workspace of a composed config's ``data``, ``paths``, ``seed`` and ``trainer``, writing to ``run``;
        the one place that reads those keys (the tasks' RunContext and the scripts build theirs here)."""
        cache_dir = Path(cfg.paths.cache_dir).expanduser()
        data_cfg, data_dir = to_object(cfg.data, DataConfig), Path(cfg.paths.data_dir).expanduser()
        return cls(run=run, build_data=lambda: build_data(data_cfg, data_dir, cache_dir), cache_dir=cache_dir,
                   seed=int(cfg.seed), trainer_config=to_object(cfg.trainer, TrainerConfig), config_hash=config_hash,
                   **kwargs)

    @cached_property
    def data(self) -> DataModule:
        return self.build_data()

    @property
    def built_data(self) -> DataModule | None:
        """The data module when something used it, else None (never builds it)."""
        return self.__dict__.get("data")  # where functools.cached_property keeps a computed value

    def log_fn(self, run: RunDir) -> LogFn:
        """The metrics writer of ``run`` (a subfolder of this run, or the run itself)."""
        return self.log_for(run) if self.log_for is not None else run.log

    def trainer(self, model: nn.Module, *, trainer_cfg: Any = None, run: RunDir | None = None,
                objective: Objective | None = None, seed: int | None = None, config_hash: str | None = None,
                **kwargs: Any) -> Trainer:
        """A Trainer of ``model`` on this workspace's data; each argument left out is the run's own."""
        run = run or self.run
        tcfg = to_object(trainer_cfg, TrainerConfig) if trainer_cfg is not None else self.trainer_config
        return Trainer(tcfg, model, self.data, run, seed=self.seed if seed is None else seed,
                       config_hash=config_hash or self.config_hash, objective=objective, progress=self.progress,
                       log_fn=self.log_fn(run), **kwargs)
