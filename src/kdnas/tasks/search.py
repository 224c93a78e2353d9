"""task=search: find a student architecture with ``strategy=`` in ``space=`` under ``constraint=``, scored by
a training-free ``proxy=`` (default) or short training (``search.evaluator=train``); see :mod:`kdnas.search`.

``strategy=cream`` is weight-sharing (its evaluator is the supernet itself) and runs its own loop
(``Strategy.search``), with the same output files (history.jsonl, best_arch.json).

The one place that reads the search's config: it builds the typed :class:`~kdnas.search.SearchJob` (and the
evaluator settings task=correlate shares) that library code gets with the run's workspace, and the function a
worker process rebuilds the training evaluator with.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

from kdnas.config import SearchSettings, TeacherConfig, TrainerConfig, to_object
from kdnas.context import RunContext
from kdnas.distill.terms import distill_config
from kdnas.engine.trainer import apply_runtime
from kdnas.evaluators import ProxySettings, TrainEvaluator, TrainSettings, WorkerSpec
from kdnas.runs import RunDir
from kdnas.search import SearchJob, run_strategy
from kdnas.spaces import space_from_config
from kdnas.spaces.constraints import constraint_from_config
from kdnas.strategies.base import strategy_class
from kdnas.teachers import teacher_config

log = logging.getLogger("kdnas")


def teacher_settings(ctx: RunContext) -> TeacherConfig:
    return teacher_config(ctx.cfg.teacher)


def proxy_settings(ctx: RunContext) -> ProxySettings:
    """The ``proxy`` group, typed."""
    return ProxySettings.from_config(ctx.cfg.proxy)


def train_settings(ctx: RunContext, objective: str, trainer: Any = None) -> TrainSettings:
    """Candidate training: ``objective`` kd (the ``distill`` losses) or ce, with the run's ``trainer`` recipe and the
    ``trainer`` overrides on top."""
    cfg = ctx.cfg
    recipe = to_object(OmegaConf.merge(cfg.trainer, trainer or {}), TrainerConfig)
    return TrainSettings(objective=objective, trainer=recipe,
                         distill=distill_config(cfg.distill) if objective == "kd" else None,
                         aug_seed=cfg.data.aug_seed)


def worker_recipe(ctx: RunContext) -> WorkerSpec:
    """How a worker process rebuilds a training evaluator of this run (:func:`train_evaluator_in_worker` from the
    run's resolved config and folder); the evaluator adds its own settings and key."""
    return WorkerSpec(key="", build=train_evaluator_in_worker,
                      kwargs={"config": OmegaConf.to_container(ctx.cfg, resolve=True), "run_dir": str(ctx.run.path)})


def train_evaluator_in_worker(config: dict[str, Any], run_dir: str, **settings: Any) -> TrainEvaluator:
    """In a worker process: the run's workspace from its config (no metrics mirror: the parent logs), the run's
    runtime settings (torch threads = trainer.num_threads, determinism), then the evaluator of ``settings``."""
    cfg = OmegaConf.create({**config, "logger": {"kind": "none"}})
    apply_runtime(to_object(cfg.trainer, TrainerConfig))
    return TrainEvaluator(RunContext(cfg, RunDir(run_dir)).workspace, **settings)


def search_job(ctx: RunContext) -> SearchJob:
    """Everything the search reads, typed, from the config."""
    cfg = ctx.cfg
    settings = SearchSettings.from_config(cfg.search)
    strategy = OmegaConf.to_container(cfg.strategy, resolve=True) if cfg.strategy is not None else {}
    assert isinstance(strategy, dict)
    kind = settings.evaluator or strategy_class(strategy.get("name")).default_evaluator
    if settings.evaluator is None:
        log.info("search.evaluator not set: strategy %s's default is %s", strategy.get("name"),
                 "train (candidates trained briefly, the paper's reward)" if kind == "train" else
                 f"proxy (candidates scored by proxy={cfg.proxy.name})")
    evaluator = train_settings(ctx, settings.objective, settings.trainer) if kind == "train" else proxy_settings(ctx)
    return SearchJob(settings=settings, space=space_from_config(cfg.space), strategy=strategy,
                     constraint=constraint_from_config(cfg.constraint), evaluator=evaluator,
                     teacher=teacher_settings(ctx), worker=worker_recipe(ctx))


def run(ctx: RunContext) -> dict[str, Any]:
    summary = run_strategy(ctx.workspace, ctx.run, search_job(ctx))
    print(f"best arch {summary['best_arch']} ({summary['best_arch_id']}), reward {summary['best_reward']:.6g}"
          + (f" after {summary['evaluated']} evaluations ({summary['cache_hits']} cached)" if "evaluated" in summary
             else "") + f"\narch file: {summary['best_arch_path']}")
    return summary
