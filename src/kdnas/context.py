"""What every task gets: the composed config, its run folder, the data, and helpers to build models
and trainers the same way everywhere."""

from __future__ import annotations

import copy
import functools
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from kdnas.config import compose_defaults, to_object
from kdnas.data import DataModule
from kdnas.engine.trainer import Trainer
from kdnas.engine.workspace import Workspace
from kdnas.loggers import MetricLogger
from kdnas.models import build_model
from kdnas.runs import RunDir
from kdnas.strategies import STRATEGIES
from kdnas.utils import stable_hash

# build_model, to_object: their old home
__all__ = ["RunContext", "Workspace", "build_model", "config_hash", "to_object"]

log = logging.getLogger("kdnas")

# Top-level keys that never change a run's result (where it writes, how it reports, how it resumes).
VOLATILE_KEYS = ("resume", "traceback", "progress", "logger", "paths", "run_dir", "name", "overrides_", "choices_",
                 "hydra", "experiment", "debug", "compare")
# Keys inside groups that change speed, placement or bookkeeping but not the numbers (resume is exact whatever the
# checkpoint cadence; candidates give the same results in any executor).
NEUTRAL_KEYS = ("trainer.log_every", "trainer.checkpoint_every", "teacher.trainer.log_every",
                "teacher.trainer.checkpoint_every", "evaluator.trainer.log_every", "evaluator.trainer.checkpoint_every",
                "teacher.train_if_missing", "teacher.retrain",
                "search.executor", "search.workers", "search.slurm", "report.after_sweep")
# The top-level keys a task's result depends on; a task not listed depends on every key but the volatile ones.
TASK_READS: dict[str, tuple[str, ...]] = {
    "train": ("task", "seed", "data", "model", "student", "trainer"),
    "train_teacher": ("task", "seed", "data", "teacher"),
    "distill": ("task", "seed", "data", "model", "student", "trainer", "teacher", "distill", "space"),
}


def _relevant(container: dict[str, Any], task: str) -> dict[str, Any]:
    """The part of a resolved config that ``task``'s result depends on: its groups, without neutral keys."""
    reads = TASK_READS.get(task)
    out = {k: copy.deepcopy(v) for k, v in container.items()
           if k not in VOLATILE_KEYS and (reads is None or k in reads)}
    for dotted in NEUTRAL_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def _changed(value: Any, default: Any) -> Any:
    """The parts of ``value`` that differ from ``default`` (keys only ``default`` has are ignored: a key added to
    kdnas later is absent from an older run's config); ``_SAME`` when nothing differs."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {k: c for k, v in value.items() if (c := _changed(v, default.get(k, _ABSENT))) is not _SAME}
        return out if out else _SAME
    return _SAME if value == default else value


_SAME, _ABSENT = object(), object()


def _group_package(choice_key: str) -> str:
    """The top-level key a defaults-list choice fills: ``trainer@teacher.trainer`` -> ``teacher``."""
    return (choice_key.split("@", 1)[1] if "@" in choice_key else choice_key).split(".")[0].split("/")[0]


@functools.lru_cache(maxsize=16)
def _packaged_defaults(task: str, choices: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The resolved config that the group options ``choices`` ship with, before any value override, experiment
    or debug overlay: the "defaults" a run's values are compared against."""
    try:
        return compose_defaults([f"task={task}", *(f"{k}={v}" for k, v in choices)])
    except Exception as e:  # an option only a command-line hydra.searchpath finds: hash every value instead
        log.warning("config hash: the options %s do not compose alone (%s: %s); hashing every value",
                    dict(choices), type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return {}


def config_hash(cfg: DictConfig) -> str:
    """The identity of what a run computes: the group options it selected and every value of the keys its task
    reads that differs from what those options ship with.

    Values equal to the shipped defaults are left out, so a key that a later kdnas adds with a default (absent from
    an older run's config, equal to the default in a newer one) does not change the hash: run folders survive
    upgrades. Any changed value of a key the task reads does. Result-neutral keys (VOLATILE_KEYS, NEUTRAL_KEYS) and
    groups the task does not read (TASK_READS) are never part of it. (``teacher.cache`` is not neutral: fp16 cached
    logits and an online fp32 teacher give different students.) The flip side: changing a shipped default that
    changes results does not change the hash either, so such a release must also invalidate old runs (e.g. a salt).
    """
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    task = str(container.get("task"))
    reads = TASK_READS.get(task)
    choices = tuple(sorted((k, str(v)) for k, v in (container.get("choices_") or {}).items()
                           if v is not None and not k.startswith("hydra") and _group_package(k) not in VOLATILE_KEYS
                           and (reads is None or _group_package(k) in reads)))
    values = _changed(_relevant(container, task), _relevant(_packaged_defaults(task, choices), task))
    legacy_choices, values = _before_the_evaluator_group(dict(choices), values, container)
    return stable_hash({"task": task, "choices": legacy_choices, "values": {} if values is _SAME else values})


def _before_the_evaluator_group(choices: dict[str, str], values: Any, container: dict[str, Any]
                                ) -> tuple[dict[str, str], Any]:
    """``(choices, values)`` in the layout before issue 17's ``evaluator`` group (``proxy=X``, ``proxy.KEY``,
    ``search.evaluator``, ``search.objective``, ``+search.trainer.KEY``), so that run folders and sweeps of an
    older kdnas keep their identity after the upgrade (tests/test_upgrade.py pins hashes recorded then). Every
    value is kept: only its place in the hashed document moves."""
    kind = choices.pop("evaluator", None)
    if kind is None:
        return choices, values
    evaluator = container.get("evaluator") or {}
    choices["proxy"] = str(evaluator.get("proxy", "diswot")) if kind == "proxy" else "diswot"  # then always chosen
    values = {} if values is _SAME else copy.deepcopy(values)
    changed, search = values.pop("evaluator", {}), {}
    if kind == "proxy":
        proxy = {k: v for k, v in changed.items() if k not in ("proxy", "kind")}  # the score is the choice
        if proxy:
            values["proxy"] = proxy
    else:
        if "objective" in changed:
            search["objective"] = changed["objective"]
        # the candidates' recipe was the run's plus search.trainer: every key where it differs from the run's (also
        # at a shipped value, which `changed` leaves out), result-neutral keys aside
        run_trainer, recipe = container.get("trainer") or {}, evaluator.get("trainer") or {}
        neutral = {key.rsplit(".", 1)[1] for key in NEUTRAL_KEYS if key.startswith("evaluator.trainer.")}
        own = {k: v for k, v in recipe.items() if k not in neutral and v != run_trainer.get(k)}
        if own:
            search["trainer"] = own
    strategy = str((container.get("strategy") or {}).get("name"))
    if kind != (STRATEGIES.get(strategy).default_evaluator if strategy in STRATEGIES else "proxy"):
        search["evaluator"] = kind  # the strategy's default evaluator was spelled search.evaluator=null
    if search:
        values["search"] = {**values.get("search", {}), **search}
    return choices, values or _SAME


@dataclass
class RunContext:
    """A task's view of its run: the composed config plus the :class:`Workspace` library code gets (built objects
    and plain settings, never ``cfg``)."""

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

    @property
    def resume(self) -> bool:
        return str(self.cfg.resume).lower() != "false"

    @cached_property
    def workspace(self) -> Workspace:
        """What library code gets of this run: data (built on first use), folders, seed, recipe, hash."""
        return Workspace.from_config(self.cfg, self.run, config_hash=self.config_hash, resume=self.resume,
                                     progress=bool(self.cfg.progress), log_for=self.logger.for_run,
                                     provenance=OmegaConf.to_container(self.cfg, resolve=True))  # type: ignore[arg-type]

    @property
    def data(self) -> DataModule:
        return self.workspace.data

    @property
    def built_data(self) -> DataModule | None:
        """The data module when the task built it, else None (provenance records its fingerprint only when the
        run read data)."""
        return self.workspace.built_data if "workspace" in self.__dict__ else None

    def trainer(self, model: nn.Module, **kwargs: Any) -> Trainer:
        """``Workspace.trainer`` (the run's recipe, seed, data and metrics writer unless given)."""
        return self.workspace.trainer(model, **kwargs)
