"""The search loop every sample-based strategy shares (random, zero-cost, DisWOT evolution, AKD, KDAS): ask a
batch, evaluate it (cached by arch_id and evaluator fingerprint), tell the strategy, append it to ``history.jsonl``.

Invariants: ``search.budget`` counts evaluations, cache hits included; a killed search rerun in the same folder
ends with the uninterrupted run's result; the history is the same whether candidates are evaluated in-process or
in workers (:class:`kdnas.execution.Pool`). The README's Search section shows how to run one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdnas.config import SearchSettings, TeacherConfig, TrainerConfig
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from kdnas.engine.trainer import apply_runtime
from kdnas.engine.workspace import Workspace
from kdnas.errors import CheckpointError, ConfigError
from kdnas.evaluators import Evaluator, ProxySettings, TrainSettings, proxy_evaluator, train_evaluator
from kdnas.execution import WorkerSpec, evaluation_pool
from kdnas.progress import Progress, duration
from kdnas.runs import RunDir
from kdnas.spaces.base import SearchSpace
from kdnas.spaces.constraints import Constraint
from kdnas.spaces.costs import CostModel
from kdnas.strategies import Strategy, create_strategy, reward_key
from kdnas.strategies.base import strategy_class
from kdnas.utils import atomic_write_bytes, atomic_write_json

log = logging.getLogger("kdnas")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class SearchJob:
    """Everything a search reads besides its workspace, typed: the task layer builds it from the config (a
    :class:`~kdnas.strategies.base.SearchInputs`, what a strategy's own search reads)."""

    settings: SearchSettings
    space: SearchSpace
    strategy: Mapping[str, Any]  # the ``strategy`` settings: its name and that strategy's keys
    constraint: Constraint
    evaluator: ProxySettings | TrainSettings  # what measures a candidate: a proxy score or a short training
    teacher: TeacherConfig  # the run's teacher: KD candidates, DisWOT's trained reference, Cream's mentor
    worker: WorkerSpec | None = None  # how a worker process rebuilds the training evaluator (pooled executors)

    @property
    def recipe(self) -> TrainerConfig | None:
        """The candidates' training recipe (``evaluator=train``; Cream's supernet recipe), else None."""
        return self.evaluator.trainer if isinstance(self.evaluator, TrainSettings) else None


def _truncate_lines(path: Path, keep: int) -> None:
    """Keep the first ``keep`` lines (those the restored checkpoint covers); atomic."""
    lines = path.read_text().splitlines(keepends=True)[:keep] if path.exists() else []
    atomic_write_bytes(path, "".join(lines).encode())


def ranked(strategy: Strategy, k: int | None = None) -> list[dict[str, Any]]:
    """The told archs, best reward first (ties: the earlier one), as JSON records."""
    order = sorted(range(len(strategy.history)), key=lambda i: (-reward_key(strategy.history[i][1]), i))
    return [{"rank": r + 1, "arch": strategy.history[i][0].to_json(), **strategy.history[i][1]}
            for r, i in enumerate(order[:k])]


def run_search(strategy: Strategy, evaluator: Evaluator, run: RunDir, *, budget: int, batch: int, config_hash: str,
               resume: bool = True, top_k: int = 5, time_budget_s: float | None = None,
               reward_kind: str | None = None, checkpoint_every_s: float = 30.0) -> dict[str, Any]:
    """Run (or resume) the loop in ``run``; return the summary (best arch and reward, evaluations, steps, seconds,
    why it stopped). ``reward_kind`` (what the evaluator measures: ``kd`` / ``ce`` training, ``proxy:<name>``) is
    checked by the strategy and stamped on every result. The history holds the results as the strategy recorded
    them (e.g. shaped by a constraint), which ``tell`` returns.

    ``batch`` archs are asked per step. ``time_budget_s`` (optional) also stops the loop: no new batch is asked once
    the loop's own seconds, summed over resumes, reach it. ``stopped_by`` says which limit ended it: ``budget``,
    ``time`` or ``space`` (no unseen valid arch left). The strategy state (with its RNG), counts and seconds are
    checkpointed atomically every ``checkpoint_every_s`` and at the end; a resume restores the last checkpoint,
    truncates ``history.jsonl`` to it and replays the steps after it (their evaluations are cache hits). Writes
    ``history.jsonl`` (one line per evaluated arch: step, arch, arch_id, reward, scores, costs), ``best_arch.json``
    (an arch file task=distill ``student.arch=`` reads), ``topk.json`` and ``search_checkpoints/``."""
    strategy.check_search(budget=budget, reward_kind=reward_kind)
    ckpt_dir, history = run.path / "search_checkpoints", run.path / "history.jsonl"
    evaluated = step = 0
    seconds = 0.0  # the loop's wall-clock in earlier sessions (checkpointed)
    latest = latest_checkpoint(ckpt_dir) if resume else None
    if latest is not None:
        _, state, meta = load_checkpoint(latest)
        if meta.get("config_hash") != config_hash:
            raise CheckpointError(f"The search in {str(run.path)!r} was run with a different configuration (config "
                                  f"hash {meta.get('config_hash')} vs {config_hash}). Resume with the same overrides, "
                                  "use a new run folder, or pass resume=false to start it over.")
        strategy.load_state_dict(state["strategy"])
        evaluated, step, seconds = state["evaluated"], state["step"], state.get("seconds", 0.0)
        log.info("search resumed at step %d (%d of %d evaluations done)", step, evaluated, budget)
    _truncate_lines(history, evaluated)
    start = time.perf_counter()
    stopped_by = "budget"

    def elapsed() -> float:
        return seconds + time.perf_counter() - start

    def checkpoint() -> None:
        """The strategy (with its RNG), counts and seconds; a rerun replays the steps after it from the cache."""
        nonlocal saved_at, saved_step
        save_checkpoint(ckpt_dir, f"step_{step:05d}", model_state={},
                        state={"strategy": strategy.state_dict(), "evaluated": evaluated, "step": step,
                               "seconds": elapsed()},
                        meta={"config_hash": config_hash, "evaluated": evaluated})
        saved_at, saved_step = time.perf_counter(), step

    saved_at, saved_step = start, step

    # a bar on a terminal; its ETA in the step lines
    progress = Progress(f"search {strategy.name}", budget, unit="candidate", done=evaluated, lines=False, leave=True)
    while evaluated < budget:
        if time_budget_s is not None and elapsed() >= time_budget_s:
            stopped_by = "time"
            log.info("search: time budget of %gs reached after %d evaluations", time_budget_s, evaluated)
            break
        archs = strategy.ask(min(batch, budget - evaluated))
        if not archs:
            stopped_by = "space"
            log.info("search: the space has no unseen valid arch left after %d evaluations", evaluated)
            break
        if isinstance(getattr(evaluator, "positions", None), dict):
            evaluator.positions = {a.arch_id: f"{evaluated + i + 1}/{budget}" for i, a in enumerate(archs)}
        results = evaluator.evaluate(archs)
        if reward_kind is not None:
            results = [{**r, "reward_kind": reward_kind} for r in results]
        results = strategy.tell(archs, results) or results  # a plugin's tell may return nothing
        step += 1
        with open(history, "a") as f:
            for arch, result in zip(archs, results):
                f.write(json.dumps({"schema_version": SCHEMA_VERSION, "step": step, "arch_id": arch.arch_id,
                                    "arch": arch.decisions, **result}) + "\n")
        evaluated += len(archs)
        if time.perf_counter() - saved_at >= checkpoint_every_s:
            checkpoint()
        best = strategy.best()
        progress.update(len(archs), extra=f"best {best[1]['reward']:.4g}")
        log.info("search %s step %d: %d/%d evaluated, best reward %.6g (%s), %s elapsed, ETA %s", strategy.name, step,
                 evaluated, budget, best[1]["reward"], best[0].arch_id, duration(progress.elapsed()),
                 duration(progress.eta()))
    progress.close()
    if step > saved_step:
        checkpoint()  # the end state: a rerun of a finished search asks nothing
    top = ranked(strategy, top_k)
    if not top:
        raise ConfigError("The search evaluated no architecture: raise search.budget or search.time_budget_s, or check "
                          "the space/constraint.")
    best = {k: v for k, v in top[0].items() if k not in ("arch", "rank")}
    atomic_write_json(run.path / "best_arch.json", {**top[0]["arch"], "result": best})
    atomic_write_json(run.path / "topk.json", {"schema_version": SCHEMA_VERSION, "top": top})
    log.info("search %s done: best arch %s, reward %.6g (%s), %d evaluated in %s -> %s", strategy.name,
             top[0]["arch"]["arch_id"], best["reward"],
             ", ".join(f"{k}={v}" for k, v in top[0]["arch"]["decisions"].items()), evaluated, duration(elapsed()),
             run.path / "best_arch.json")
    return {"best_arch_id": top[0]["arch"]["arch_id"], "best_arch": top[0]["arch"]["decisions"],
            "best_reward": best["reward"], "evaluated": evaluated, "steps": step, "strategy": strategy.name,
            "seconds": elapsed(), "stopped_by": stopped_by, "time_budget_s": time_budget_s,
            "search_seconds_this_session": time.perf_counter() - start,
            "best_arch_path": str(run.path / "best_arch.json")}


def search(ws: Workspace, run: RunDir, job: SearchJob) -> dict[str, Any]:
    """Build the strategy and the evaluator of ``job`` and run the loop in ``run``. Candidates are evaluated
    in-process, or ``search.workers`` at a time in worker processes or submitit jobs (``search.executor``; the
    training evaluator only: a proxy score takes milliseconds)."""
    apply_runtime(ws.trainer_config)  # threads and determinism: no Trainer may be built
    settings, space = job.settings, job.space
    costs = CostModel(space, ws.data.num_classes, ws.data.input_size)
    strategy = create_strategy(job.strategy, space, constraint=job.constraint, costs=costs, seed=ws.seed)
    with evaluation_pool(settings.executor, settings.workers, run.path / "submitit", settings.slurm) as pool:
        if isinstance(job.evaluator, TrainSettings):
            kind, reward_kind = "train", job.evaluator.objective
        else:
            kind, reward_kind = "proxy", f"proxy:{job.evaluator.name}"
        strategy.check_reward_kind(reward_kind)  # before a teacher is built or trained (run_search checks it all)
        if isinstance(job.evaluator, TrainSettings):
            evaluator: Any = train_evaluator(ws, space, job.evaluator, job.teacher, seed=ws.seed,
                                             runs=run.sub("candidates"), costs=costs, pool=pool, worker=job.worker)
        else:
            evaluator = proxy_evaluator(ws, space, job.evaluator, job.teacher)
        summary = run_search(strategy, evaluator, run, budget=settings.budget, batch=settings.batch,
                             config_hash=ws.config_hash, resume=ws.resume, top_k=settings.top_k,
                             time_budget_s=settings.time_budget_s,
                             checkpoint_every_s=settings.checkpoint_every_s, reward_kind=reward_kind)
    return {**summary, "space": space.name, "evaluator": kind, "reward_kind": reward_kind, "evaluator_fingerprint":
            evaluator.fingerprint, "cache_hits": evaluator.hits, "cache_misses": evaluator.misses,
            "aug_seed": getattr(evaluator, "aug_seed", None),  # train evaluator: one per search
            **({"semantic_form": evaluator.semantic_form} if getattr(evaluator, "semantic_form", None) else {})}


def run_strategy(ws: Workspace, run: RunDir, job: SearchJob) -> dict[str, Any]:
    """The search of ``job.strategy`` in ``run``, for task=search and task=pipeline alike: the strategy's own
    :meth:`~kdnas.strategies.Strategy.search`, which by default is :func:`search` (the shared ask/tell loop) and
    for cream its supernet loop."""
    return strategy_class(job.strategy.get("name")).search(ws, run, job, search)
