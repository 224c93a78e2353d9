"""Where candidates are evaluated: in-process, in spawned worker processes, or as submitit jobs (locally or on
SLURM), ``search.executor`` / ``search.workers``. What is evaluated is :mod:`kdnas.evaluators`' business: a worker
rebuilds the evaluator from a picklable :class:`WorkerSpec` (whose ``build`` belongs to the task layer, which alone
reads the run's config) and calls its ``evaluate_one``; the parent writes every cache entry, so results (and a
search's history) are those of in-process evaluation."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from kdnas.config import dataclass_from_node
from kdnas.errors import ConfigError
from kdnas.spaces.base import Arch

if TYPE_CHECKING:
    from kdnas.evaluators.base import CachedEvaluator

EXECUTORS = ("local", "processes", "submitit_local", "submitit_slurm")


@dataclass(frozen=True)
class SlurmSettings:
    """``search.slurm``: the SLURM job of one candidate (``search.executor=submitit_slurm``); ``timeout_min``
    also bounds a ``submitit_local`` job."""

    partition: str | None = None
    account: str | None = None
    timeout_min: int = 240
    gpus_per_node: int = 1
    cpus_per_task: int = 4
    mem_gb: float = 16


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild an evaluator: the live one holds a workspace and a teacher and cannot be
    pickled. ``build(**kwargs)`` is a module-level factory (the task layer's: it rebuilds the run's workspace from
    the picklable ``kwargs`` and applies the run's runtime settings); ``key`` names the rebuilt evaluator, which a
    long-lived worker process keeps for the next candidate."""

    key: str
    build: Callable[..., CachedEvaluator]
    kwargs: dict[str, Any] = field(default_factory=dict)


_WORKER_EVALUATORS: dict[str, CachedEvaluator] = {}


def _pin_gpu(gpu: str | None) -> None:
    """One GPU per worker: must run before the worker's first CUDA call."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _pin_gpu_from(queue: Any) -> None:
    _pin_gpu(queue.get() if queue is not None else None)


def evaluate_in_worker(spec: WorkerSpec, arch: Arch, gpu: str | None = None) -> dict[str, Any]:
    """The job a worker process or submitit job runs: rebuild (once per process) the evaluator, evaluate ``arch``."""
    _pin_gpu(gpu)
    evaluator = _WORKER_EVALUATORS.get(spec.key)
    if evaluator is None:
        evaluator = _WORKER_EVALUATORS[spec.key] = spec.build(**spec.kwargs)
    return evaluator.evaluate_one(arch)


def visible_gpus() -> list[str]:
    """The GPUs workers are spread over (round-robin): the parent's ``CUDA_VISIBLE_DEVICES``, else all."""
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    return listed.split(",") if listed else [str(i) for i in range(torch.cuda.device_count())]


class Pool:
    """Maps :func:`evaluate_in_worker` over candidates with at most ``workers`` at a time, results in order."""

    def __init__(self, executor: str, workers: int, folder: Path, slurm: SlurmSettings) -> None:
        self.executor, self.workers, self.folder, self.slurm = executor, workers, folder, slurm
        self.gpus = visible_gpus() if executor != "submitit_slurm" else []  # SLURM allots each job its GPUs
        self.processes: ProcessPoolExecutor | None = None
        self.submitit = _submitit() if executor.startswith("submitit") else None

    def map(self, spec: WorkerSpec, archs: list[Arch]) -> Iterator[dict[str, Any]]:
        if self.executor == "processes":
            return self.process_pool().map(evaluate_in_worker, repeat(spec), archs)
        if self.executor == "submitit_slurm":
            jobs = self.submitit_executor("slurm").map_array(evaluate_in_worker, [spec] * len(archs), archs)
            return (job.result() for job in jobs)
        return self.local_jobs(spec, archs)

    def process_pool(self) -> ProcessPoolExecutor:
        """Spawned (not forked: the parent may hold CUDA or OpenMP state), kept for every later batch."""
        if self.processes is None:
            mp = multiprocessing.get_context("spawn")
            queue = mp.Queue() if self.gpus else None
            for i in range(self.workers) if queue is not None else ():
                queue.put(self.gpu(i))
            self.processes = ProcessPoolExecutor(self.workers, mp_context=mp, initializer=_pin_gpu_from,
                                                 initargs=(queue,))
        return self.processes

    def gpu(self, worker: int) -> str | None:
        """The GPU of the ``worker``-th process or job of a wave (round-robin), None without CUDA."""
        return self.gpus[worker % len(self.gpus)] if self.gpus else None

    def submitit_executor(self, cluster: str) -> Any:
        s = self.slurm
        executor = self.submitit.AutoExecutor(folder=self.folder, cluster=cluster)
        executor.update_parameters(timeout_min=s.timeout_min, name="kdnas-candidate")
        if cluster == "slurm":
            executor.update_parameters(
                gpus_per_node=s.gpus_per_node, cpus_per_task=s.cpus_per_task, mem_gb=s.mem_gb, nodes=1,
                tasks_per_node=1, slurm_array_parallelism=self.workers,
                **{f"slurm_{k}": v for k, v in (("partition", s.partition), ("account", s.account)) if v})
        return executor

    def local_jobs(self, spec: WorkerSpec, archs: list[Arch]) -> Iterator[dict[str, Any]]:
        """submitit's local executor runs every submitted job at once: submit ``workers`` at a time."""
        executor = self.submitit_executor("local")
        for start in range(0, len(archs), self.workers):
            wave = archs[start:start + self.workers]
            jobs = [executor.submit(evaluate_in_worker, spec, arch, self.gpu(k)) for k, arch in enumerate(wave)]
            yield from (job.result() for job in jobs)

    def close(self) -> None:
        if self.processes is not None:
            self.processes.shutdown(cancel_futures=True)
            self.processes = None


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError("search.executor=submitit_* needs submitit: pip install 'kdnas[cluster]' (or pip install "
                          "submitit), or use search.executor=processes on one machine.") from None
    return submitit


@contextmanager
def evaluation_pool(executor: str, workers: int, folder: Path, slurm: Any = None) -> Iterator[Pool | None]:
    """The pool of ``search.executor`` (None = in-process), its worker processes ended on exit; submitit keeps
    its job files under ``folder``."""
    if executor not in EXECUTORS:
        raise ConfigError(f"search.executor={executor!r} is not one of {', '.join(EXECUTORS)}.")
    if workers < 1:
        raise ConfigError(f"search.workers={workers} must be >= 1 (parallel candidate evaluations).")
    settings = dataclass_from_node(SlurmSettings, slurm, "search.slurm")
    pool = None if executor == "local" else Pool(executor, workers, folder, settings)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()
