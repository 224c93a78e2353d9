"""What every task gets: the composed config, its run folder, the data, and helpers to build models
and trainers the same way everywhere."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdnas.config import DataConfig, ModelConfig, TrainerConfig
from kdnas.data import DataModule, build_data
from kdnas.engine.objective import Objective
from kdnas.engine.trainer import Trainer
from kdnas.loggers import MetricLogger
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.utils import derive_seed, stable_hash

log = logging.getLogger("kdnas")

# Keys that do not change a run's result: excluded from the config hash that guards resume.
VOLATILE_KEYS = ("resume", "traceback", "progress", "logger", "paths", "run_dir", "name", "overrides_")


def config_hash(cfg: DictConfig) -> str:
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    return stable_hash({k: v for k, v in container.items() if k not in VOLATILE_KEYS})


def to_object(node: Any, schema: type) -> Any:
    """A typed dataclass instance from a config node (already validated by the structured schema)."""
    return schema(**OmegaConf.to_container(node, resolve=True)) if not isinstance(node, schema) else node


def build_model(model_cfg: ModelConfig | DictConfig, num_classes: int, seed: int) -> nn.Module:
    """Create a network with init weights drawn from its own seed stream (independent of data order)."""
    mc = to_object(model_cfg, ModelConfig)
    torch.manual_seed(derive_seed(seed, "init", mc.name))
    kwargs = dict(mc.kwargs)
    if mc.name.startswith("timm:"):
        kwargs.update(pretrained=mc.pretrained, small_input_stem=mc.small_input_stem)
    return create_model(mc.name, num_classes=num_classes, **kwargs)


@dataclass
class RunContext:
    cfg: DictConfig
    run: RunDir
    logger: MetricLogger = field(init=False)

    def __post_init__(self) -> None:
        self.logger = MetricLogger(self.cfg.logger, self.run, OmegaConf.to_container(self.cfg, resolve=True),
                                   name=self.cfg.name)

    @cached_property
    def config_hash(self) -> str:
        return config_hash(self.cfg)

    @property
    def cache_dir(self) -> Path:
        return Path(self.cfg.paths.cache_dir).expanduser()

    @cached_property
    def data(self) -> DataModule:
        return build_data(to_object(self.cfg.data, DataConfig), Path(self.cfg.paths.data_dir).expanduser(),
                          self.cache_dir)

    @property
    def resume(self) -> bool:
        return str(self.cfg.resume).lower() != "false"

    def trainer(self, model: nn.Module, *, trainer_cfg: TrainerConfig | DictConfig | None = None,
                run: RunDir | None = None, objective: Objective | None = None, seed: int | None = None,
                config_hash: str | None = None, **kwargs: Any) -> Trainer:
        run = run or self.run
        return Trainer(to_object(trainer_cfg if trainer_cfg is not None else self.cfg.trainer, TrainerConfig),
                       model, self.data, run, seed=self.cfg.seed if seed is None else seed,
                       config_hash=config_hash or self.config_hash, objective=objective,
                       progress=self.cfg.progress, log_fn=self.logger.for_run(run), **kwargs)

