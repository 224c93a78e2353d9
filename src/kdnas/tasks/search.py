"""task=search: find a student architecture with ``strategy=`` in ``space=`` under ``constraint=``, scored by
``evaluator=proxy`` (training-free) or ``evaluator=train`` (a short training per candidate); see :mod:`kdnas.search`.

The one place that reads the search's config: it builds the typed :class:`~kdnas.search.SearchJob` (and the
evaluator settings task=correlate shares) and the function a worker process rebuilds the training evaluator with.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from kdnas.config import EVALUATOR_SCHEMAS, SearchSettings, TeacherConfig, TrainerConfig, dataclass_from_node, to_object
from kdnas.context import RunContext
from kdnas.distill.terms import distill_config
from kdnas.engine.trainer import apply_runtime
from kdnas.errors import ConfigError
from kdnas.evaluators import ProxySettings, TrainEvaluator, TrainSettings, WorkerSpec
from kdnas.runs import RunDir
from kdnas.search import SearchJob, run_strategy
from kdnas.spaces import space_from_config
from kdnas.spaces.constraints import constraint_from_config
from kdnas.teachers import teacher_config


def teacher_settings(ctx: RunContext) -> TeacherConfig:
    return teacher_config(ctx.cfg.teacher)


def _evaluator_node(ctx: RunContext, kind: str | None = None) -> dict[str, Any]:
    """The ``evaluator`` group's node (checked to be of ``kind`` when given) as a plain dict."""
    node = OmegaConf.to_container(ctx.cfg.evaluator, resolve=True) if ctx.cfg.get("evaluator") is not None else {}
    assert isinstance(node, dict)
    if node.get("kind") not in EVALUATOR_SCHEMAS:
        raise ConfigError(f"evaluator.kind={node.get('kind')!r} is not one of {', '.join(EVALUATOR_SCHEMAS)}: select "
                          "the evaluator with evaluator=proxy or evaluator=train.")
    if kind is not None and node["kind"] != kind:
        raise ConfigError(f"task={ctx.cfg.task} reads the evaluator={kind} settings, but evaluator={node['kind']} is "
                          f"selected: add evaluator={kind} to the command.")
    dataclass_from_node(EVALUATOR_SCHEMAS[node["kind"]], node, "evaluator")  # a +evaluator.KEY= the option lacks
    if node["kind"] == "train":
        dataclass_from_node(TrainerConfig, node["trainer"], "evaluator.trainer")
    return node


def proxy_settings(ctx: RunContext) -> ProxySettings:
    """``evaluator=proxy``, typed (its ``proxy`` is the settings' ``name``)."""
    return _proxy_settings(_evaluator_node(ctx, "proxy"))


def _proxy_settings(node: dict[str, Any]) -> ProxySettings:
    """ProxySettings of a checked ``evaluator=proxy`` node (:func:`_evaluator_node`)."""
    settings = {k: v for k, v in node.items() if k not in ("kind", "proxy")}
    return ProxySettings(name=node["proxy"], **settings)


def train_settings(ctx: RunContext, objective: str, trainer: TrainerConfig | None = None) -> TrainSettings:
    """Candidate training: ``objective`` kd (the ``distill`` losses) or ce, with the recipe ``trainer`` (default: the
    run's ``trainer``)."""
    cfg = ctx.cfg
    return TrainSettings(objective=objective, trainer=trainer or to_object(cfg.trainer, TrainerConfig),
                         distill=distill_config(cfg.distill) if objective == "kd" else None,
                         aug_seed=cfg.data.aug_seed)


def evaluator_settings(ctx: RunContext) -> ProxySettings | TrainSettings:
    """The selected ``evaluator`` group option, typed."""
    node = _evaluator_node(ctx)
    if node["kind"] == "proxy":
        return _proxy_settings(node)
    return train_settings(ctx, node["objective"], TrainerConfig(**node["trainer"]))


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
    return SearchJob(settings=settings, space=space_from_config(cfg.space), strategy=strategy,
                     constraint=constraint_from_config(cfg.constraint), evaluator=evaluator_settings(ctx),
                     teacher=teacher_settings(ctx), worker=worker_recipe(ctx))


def run(ctx: RunContext) -> dict[str, Any]:
    """The strategy's search (:func:`~kdnas.search.run_strategy`): the shared ask/tell loop, or for the
    weight-sharing ``strategy=cream`` (its evaluator is the supernet itself) its own loop, with the same output files
    (history.jsonl, best_arch.json)."""
    summary = run_strategy(ctx.workspace, ctx.run, search_job(ctx))
    print(f"best arch {summary['best_arch']} ({summary['best_arch_id']}), reward {summary['best_reward']:.6g}"
          + (f" after {summary['evaluated']} evaluations ({summary['cache_hits']} cached)" if "evaluated" in summary
             else "") + f"\narch file: {summary['best_arch_path']}")
    return summary
