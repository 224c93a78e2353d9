"""Evaluators: what a search (or task=correlate) learns about candidate archs, ``evaluate(archs) -> results``.

* :class:`ProxyEvaluator`: training-free scores (:mod:`kdnas.proxies`) on a fixed batch, the same batch(es)
  for every candidate of a search; the teacher's statistics are computed once, on first need.
* :class:`TrainEvaluator`: a short training run (KD from the teacher, or CE) on mini-train; reward =
  mini-val top-1 (the AKD protocol), test top-1 recorded beside it.

Every result is a JSON dict with a float ``reward``, cached on disk under
``<cache_dir>/evals/<fingerprint>/<arch_id>.json`` (atomic writes), where the fingerprint hashes everything
the result depends on besides the arch (kind, settings, data, batch or recipe, teacher, seed). ``evaluate_one`` is a
pure function of (arch, evaluator config) with a candidate seed derived from (seed, arch_id), so a :class:`Pool`
(``search.executor``: worker processes, or submitit jobs locally or on SLURM) can map it over the cache misses: a
worker rebuilds the evaluator from a picklable :class:`WorkerSpec`, the parent writes every cache entry, so the
results (and a search's history) are those of in-process evaluation.
"""

from __future__ import annotations

import copy
import json
import logging
import multiprocessing
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import OmegaConf
from torch import nn

from kdnas.config import ModelConfig, TrainerConfig, dataclass_from_node
from kdnas.context import RunContext, build_model, to_object
from kdnas.data import Batch, DataModule
from kdnas.distill import student
from kdnas.distill.cache import TeacherLogitCache, hold, prebuild, tensor_sha256
from kdnas.distill.teachers import build_teacher
from kdnas.distill.terms import DistillConfig, active_weights, distill_config, reads_teacher_features
from kdnas.engine.trainer import apply_runtime
from kdnas.errors import ConfigError
from kdnas.models import create_model
from kdnas.models.features import FeatureNet
from kdnas.proxies import apply_init, compute_proxies, get_proxy, teacher_stats
from kdnas.proxies.base import INITS
from kdnas.proxies.diswot import COMBINES, SEMANTIC_CHOICES, TERMS, TeacherStats, semantic_form
from kdnas.runs import RunDir
from kdnas.spaces.base import Arch, SearchSpace, build_candidate
from kdnas.spaces.costs import CostModel
from kdnas.teachers import recipe_of
from kdnas.utils import atomic_write_json, derive_seed, read_json, resolve_device, stable_hash

log = logging.getLogger("kdnas")
EVAL_FORMAT = 1
# Bump an evaluator kind's version with any change to how its results are computed (training recipe code, a
# proxy's formula, the semantic-form rule, ...): it is part of the cache fingerprint, so cached results of the
# old code are not returned. tests/test_proxies.py checks the proxy scores of 3 archs against
# tests/data/proxy_golden.json, recorded under this version.
RESULTS_VERSION = {"proxy": 2, "train": 2}
COSTS = ("params", "flops")
EXECUTORS = ("local", "processes", "submitit_local", "submitit_slurm")


class Evaluator(Protocol):
    fingerprint: str

    def evaluate(self, archs: Sequence[Arch]) -> list[dict[str, Any]]: ...


def sample_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """Up to ``n`` distinct uniformly sampled archs (fewer only when 50 n draws find no more), seeded."""
    rng, archs = random.Random(seed), {}
    for _ in range(50 * n):
        arch = space.sample(rng)
        archs.setdefault(arch.arch_id, arch)
        if len(archs) == n:
            break
    return list(archs.values())


def memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format


class CachedEvaluator:
    """Disk cache in front of :meth:`evaluate_one`; counts hits and misses. With a ``pool``, the misses of one
    :meth:`evaluate` call are computed in workers (rebuilt from :meth:`worker_spec`) instead of in-process."""

    def __init__(self, cache_dir: str | Path, identity: dict[str, Any], pool: Pool | None = None) -> None:
        self.identity, self.pool = identity, pool
        self.fingerprint = stable_hash({**identity, "format": EVAL_FORMAT,
                                        "results_version": RESULTS_VERSION[identity["kind"]]})
        self.root = Path(cache_dir).expanduser() / "evals" / self.fingerprint
        self.held = hold(self.root)  # task=cache never prunes the results of a running search
        self.hits = self.misses = 0
        self.positions: dict[str, str] = {}  # arch_id -> "k/N" in the search, for log lines (set by the loop)

    def lookup(self, arch: Arch) -> dict[str, Any] | None:
        try:
            entry = read_json(self.root / f"{arch.arch_id}.json")
        except (OSError, json.JSONDecodeError):
            return None
        return entry.get("result") if entry.get("arch_id") == arch.arch_id else None

    def evaluate(self, archs: Sequence[Arch]) -> list[dict[str, Any]]:
        """Results in the order of ``archs``; each miss is computed once (a repeat in ``archs`` is a hit) and
        cached in that order as results arrive, so a rerun after a kill recomputes only what was not written.
        Every position gets its own deep copy: no result aliases another or the cached one."""
        results = {a.arch_id: self.lookup(a) for a in archs}
        misses = [a for a in {a.arch_id: a for a in archs}.values() if results[a.arch_id] is None]
        for arch, result in zip(misses, self.compute(misses)):
            atomic_write_json(self.root / f"{arch.arch_id}.json", {
                "schema_version": 1, "arch_id": arch.arch_id, "arch": arch.to_json(), "identity": self.identity,
                "result": result})
            results[arch.arch_id] = result
        self.misses += len(misses)
        self.hits += len(archs) - len(misses)
        return [copy.deepcopy(results[a.arch_id]) for a in archs]

    def compute(self, archs: list[Arch]) -> Iterator[dict[str, Any]]:
        """``evaluate_one`` of each arch, in order: in-process (lazily, one at a time) or over the pool."""
        if self.pool is None or not archs:
            return map(self.evaluate_one, archs)
        return self.pool.map(self.worker_spec(), archs)

    def evaluate_one(self, arch: Arch) -> dict[str, Any]:
        raise NotImplementedError

    def worker_spec(self) -> WorkerSpec:
        raise NotImplementedError


# -- evaluation in worker processes or submitit jobs --------------------------------------------------


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
    """What a worker needs to rebuild an evaluator: the live one holds a RunContext and a teacher and cannot be
    pickled. ``build(ctx, **kwargs)`` is a module-level factory; ``key`` names the rebuilt evaluator, which a
    long-lived worker process keeps for the next candidate."""

    key: str
    config: dict[str, Any]  # the run's resolved config
    run_dir: str
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
        cfg = OmegaConf.create({**spec.config, "logger": {"kind": "none"}})  # the parent mirrors to wandb, not workers
        apply_runtime(to_object(cfg.trainer, TrainerConfig))  # torch threads = trainer.num_threads, determinism
        evaluator = _WORKER_EVALUATORS[spec.key] = spec.build(RunContext(cfg, RunDir(spec.run_dir)), **spec.kwargs)
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


# -- training-free ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxySettings:
    """The ``proxy:`` config group: which score rewards the search, and how every proxy is computed."""

    name: str = "diswot"  # the reward (a registered proxy)
    semantic: str = "auto"  # auto (official iff every arch has the teacher's width, else class) | official | class
    combine: str = "sum"  # diswot = semantic | relational | sum | rank
    init: str = "default"  # default (the network's init) | normal (DisWOT's N(0, 1) re-init)
    teacher_state: str = "random"  # random (DisWOT: a freshly initialised teacher) | trained
    batch_size: int = 64
    num_batches: int = 1  # scores are averaged over this many fixed batches
    split: str = "train"  # where the fixed batches come from (mini-train)
    rank_reference: int = 32  # combine=rank: archs sampled once per search as the rank reference

    def __post_init__(self) -> None:
        get_proxy(self.name)
        allowed = {"semantic": SEMANTIC_CHOICES, "combine": COMBINES, "init": INITS,
                   "teacher_state": ("random", "trained")}
        for key, options in allowed.items():
            if getattr(self, key) not in options:
                raise ConfigError(f"proxy.{key}={getattr(self, key)!r} is not one of {', '.join(options)}.")
        if self.combine == "rank" and self.rank_reference < 2:
            raise ConfigError("proxy.combine=rank needs proxy.rank_reference >= 2 reference archs.")

    @classmethod
    def from_config(cls, node: Any) -> ProxySettings:
        return dataclass_from_node(cls, node, "proxy")


def proxy_batches(data: DataModule, settings: ProxySettings, seed: int, device: torch.device,
                  channels_last: bool = False) -> list[Batch]:
    """The fixed batches every candidate of a search is scored on: the first ``num_batches`` of a shuffled
    epoch of ``split`` drawn from the run seed (the training loader, as DisWOT's code)."""
    source = data.loader(settings.split, settings.batch_size, train=True, seed=derive_seed(seed, "proxy-batch"),
                         device=device, channels_last=channels_last, max_batches=settings.num_batches)
    batches = list(source.epoch(0))
    if len(batches) < settings.num_batches or len(batches[-1].y) < settings.batch_size:
        raise ConfigError(f"proxy.batch_size={settings.batch_size} x proxy.num_batches={settings.num_batches} needs "
                          f"more images than split {settings.split!r} has ({source.num_samples} used).")
    return batches


class ProxyEvaluator(CachedEvaluator):
    """Scores candidates with ``names`` (the reward ``settings.name`` among them) on fixed ``batches``.

    ``teacher`` builds the network DisWOT compares against (random or trained, mode already set); it is
    called, and its statistics computed, once, when the first uncached candidate needs them. Candidates take
    the batches' device and memory format (channels_last: ~1.6x faster on CPU).

    DisWOT's semantic form is decided once, here, from the space's final widths and ``teacher_width`` (the
    teacher's embedding size; None: read from the teacher, which is then built now), and is part of the cache
    identity and of every result (``semantic_form``)."""

    def __init__(self, space: SearchSpace, batches: list[Batch], settings: ProxySettings, *, names: Sequence[str],
                 teacher: Callable[[], nn.Module] | None, teacher_identity: Any, num_classes: int, seed: int,
                 cache_dir: str | Path, teacher_width: int | None = None) -> None:
        self.names = tuple(dict.fromkeys([settings.name, *names]))
        self.needs_teacher = any("teacher" in get_proxy(n).needs for n in self.names)
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"Proxies {self.names} compare against a teacher; configure teacher=... .")
        self.space, self.batches, self.settings, self.teacher = space, batches, settings, teacher
        self.num_classes, self.seed = num_classes, seed
        self.input_size = batches[0].x.shape[-1]
        self.memory_format = memory_format(batches[0].x)
        self.stats: list[TeacherStats] | None = None
        self.semantic_form: str | None = None
        if {"diswot", "diswot_semantic"} & set(self.names):
            if teacher_width is None:
                built = self.teacher()
                self.teacher, teacher_width = (lambda: built), embedding_width(built)
            self.semantic_form = semantic_form(settings.semantic, space.final_widths(), teacher_width)
        super().__init__(cache_dir, {
            "kind": "proxy", "names": list(self.names), "settings": asdict(settings),
            "semantic_form": self.semantic_form,
            "memory_format": str(self.memory_format),
            "teacher": teacher_identity if self.needs_teacher else None, "num_classes": num_classes, "seed": seed,
            "batches": [[tensor_sha256(b.x), tensor_sha256(b.y)] for b in batches]})

    def build(self, arch: Arch) -> FeatureNet:
        model = build_candidate(self.space, arch, self.num_classes, self.input_size, self.seed)
        return apply_init(model, self.settings.init).to(self.batches[0].x.device, memory_format=self.memory_format)

    def per_batch(self, model: FeatureNet, names: Sequence[str]) -> list[dict[str, float]]:
        stats = self.teacher_stats() if self.needs_teacher else [None] * len(self.batches)
        return [compute_proxies(model, b, names, s) for b, s in zip(self.batches, stats)]

    def teacher_stats(self) -> list[TeacherStats]:
        """Once per evaluator (so once per search): the teacher pass on each batch, and for ``combine=rank``
        the DisWOT terms of ``rank_reference`` sampled archs on each batch."""
        if self.stats is None:
            s = self.settings
            teacher = self.teacher()
            form = self.semantic_form or "class"  # unused when no DisWOT semantic score is asked for
            self.stats = [teacher_stats(teacher, b, semantic=form, combine=s.combine) for b in self.batches]
            log.info("DisWOT teacher statistics computed on %d batch(es), once for this search", len(self.batches))
            if s.combine == "rank":
                reference = sample_archs(self.space, s.rank_reference, derive_seed(self.seed, "rank-reference"))
                refs = [self.per_batch(self.build(a), TERMS) for a in reference]
                for i, st in enumerate(self.stats):
                    st.reference = {t: torch.tensor([r[i][t] for r in refs]) for t in TERMS}
        return self.stats

    def evaluate_one(self, arch: Arch) -> dict[str, Any]:
        """Scores averaged over the batches; the costs come from the same pass (the ``params`` and ``flops``
        proxies, as :mod:`kdnas.spaces.costs` defines them, cheaper than a second, meta-device count)."""
        start = time.perf_counter()
        runs = self.per_batch(self.build(arch), (*self.names, *COSTS))
        scores = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        return {"reward": scores[self.settings.name], "costs": {k: int(scores[k]) for k in COSTS},
                "scores": {k: v for k, v in scores.items() if k not in COSTS or k in self.names},
                "seconds": time.perf_counter() - start,
                **({"semantic_form": self.semantic_form} if self.semantic_form else {})}


def embedding_width(net: nn.Module) -> int:
    """The classifier's input width of a network (a :class:`~kdnas.distill.teachers.Teacher`: its first member)."""
    members = getattr(net, "members", None)
    return (members[0] if members is not None else net).classifier.in_features


def proxy_evaluator(ctx: RunContext, space: SearchSpace, names: Sequence[str] = ()) -> ProxyEvaluator:
    """The :class:`ProxyEvaluator` of ``ctx.cfg.proxy`` (teacher per ``proxy.teacher_state``)."""
    cfg = ctx.cfg
    settings = ProxySettings.from_config(cfg.proxy)
    channels_last = bool(cfg.trainer.channels_last)
    device, fmt = resolve_device(cfg.trainer.device), torch.channels_last if channels_last else torch.preserve_format
    num_classes = ctx.data.num_classes
    if settings.teacher_state == "random":
        def teacher() -> nn.Module:
            net = build_model(ModelConfig(name=cfg.teacher.model), num_classes, derive_seed(cfg.seed, "proxy-teacher"))
            return apply_init(net, settings.init).to(device, memory_format=fmt).train()  # train-mode BN, as candidates

        identity: Any = {"state": "random", "model": cfg.teacher.model}
        with torch.device("meta"):  # its width only: no memory, no init
            width = embedding_width(create_model(cfg.teacher.model, num_classes=num_classes))
    else:
        trained = build_teacher(ctx).to(device, memory_format=fmt)  # frozen, eval mode
        teacher, identity, width = (lambda: trained), {"state": "trained", "weights": trained.hashes}, None
    return ProxyEvaluator(space, proxy_batches(ctx.data, settings, cfg.seed, device, channels_last), settings,
                          names=names, teacher=teacher, teacher_identity=identity, num_classes=num_classes,
                          seed=cfg.seed, cache_dir=ctx.cache_dir, teacher_width=width)


# -- short training ---------------------------------------------------------------------------------


def per_epoch(records: list[dict[str, Any]], key: str, split: str = "train") -> list[float]:
    """``key`` of each epoch's ``split`` record of a metrics.jsonl (empty when the run never logged it)."""
    return [r[key] for r in records if r.get("split") == split and key in r]


class TrainEvaluator(CachedEvaluator):
    """Trains each candidate with ``distill`` (KD from the teacher, or CE alone) and ``trainer`` on mini-train;
    reward = last-epoch mini-val top-1. Candidate runs live in ``runs/<arch_id>`` (resumable; their
    checkpoints are deleted once the result is cached). With ``distill=oracle`` the result also carries
    ``oracle_disagreement``: per epoch, the fraction of training samples where the oracle target differs from
    plain KD (KDAS)."""

    def __init__(self, ctx: RunContext, space: SearchSpace, *, distill: DistillConfig, trainer: TrainerConfig,
                 seed: int, runs: RunDir, costs: CostModel | None = None, pool: Pool | None = None) -> None:
        if ctx.data.num_samples("val") == 0:
            raise ConfigError("Candidate training is scored on mini-val: set data.val_fraction > 0 (e.g. 0.1).")
        self.ctx, self.space, self.distill, self.trainer = ctx, space, distill, trainer
        self.seed, self.runs = seed, runs
        data = ctx.cfg.data
        # One augmentation seed per search (the loader's rule: data.aug_seed, else the run seed): every candidate
        # trains on the same views in the same order, so the teacher's logits of an epoch are computed once.
        self.aug_seed = data.aug_seed if data.aug_seed is not None else seed
        self.teacher = build_teacher(ctx) if set(active_weights(distill)) - {"ce"} else None
        self.costs = costs or CostModel(space, ctx.data.num_classes, ctx.data.input_size)
        self.prebuilt = False
        super().__init__(ctx.cache_dir, {
            "kind": "train", "distill": asdict(distill), "trainer": recipe_of(trainer),
            "teacher_logits": teacher_logits_source(self.teacher, distill),
            "teacher": self.teacher.hashes if self.teacher is not None else None, "data": ctx.data.identity,
            "train_split": trainer.train_split, "seed": seed,
            "aug_seed": self.aug_seed}, pool)

    def compute(self, archs: list[Arch]) -> Iterator[dict[str, Any]]:
        if archs:
            self.prebuild()
        return super().compute(archs)

    def prebuild(self) -> None:
        """``teacher.cache=auto``: the teacher's logits for every epoch of the recipe, built in this process before
        the first candidate trains (once per evaluator), so candidates, worker processes and jobs all start warm."""
        if self.prebuilt or self.teacher is None or self.teacher.cache != "auto":
            return
        self.prebuilt = True
        if reads_teacher_features(self.distill):
            return  # feature terms run the teacher online (DistillObjective)
        cache = TeacherLogitCache(self.ctx.cache_dir, self.ctx.data, self.trainer.train_split, self.seed, "auto")
        self.teacher.to(resolve_device(self.trainer.device), memory_format=torch.channels_last)
        prebuild(cache, list(self.teacher.members), self.teacher.hashes, self.trainer.epochs,
                 progress=bool(self.ctx.cfg.progress))
        self.logit_cache = cache  # holds the search's epochs until the search ends

    def evaluate_one(self, arch: Arch) -> dict[str, Any]:
        # Init from (seed, arch_id), as task=distill student.arch builds it; data order and views from the search seed.
        model = build_candidate(self.space, arch, self.ctx.data.num_classes, self.ctx.data.input_size, self.seed)
        run = self.runs.sub(arch.arch_id)
        start = time.perf_counter()
        summary = student.distill_student(self.ctx, model, self.teacher, self.distill, run, self.seed,
                                  student_name=f"arch:{arch.arch_id}", trainer_cfg=self.trainer,
                                  label=f"candidate {arch.arch_id[:8]} {self.positions.get(arch.arch_id, '')}".strip(),
                                  evaluate_teacher=False)
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        disagreement = per_epoch(run.read_metrics(), "loss_oracle_disagreement")
        return {"reward": summary["val_top1_last"], "val_top1": summary["val_top1_last"],
                "test_top1": summary["test_top1_last"], "costs": self.costs(arch, COSTS),
                "seconds": time.perf_counter() - start,
                **({"oracle_disagreement": disagreement} if disagreement else {})}

    def worker_spec(self) -> WorkerSpec:
        """The same evaluator in a worker: the parent's config and run folder, this recipe, seed and runs folder."""
        return WorkerSpec(key=f"{self.fingerprint}:{self.runs.path}",
                          config=OmegaConf.to_container(self.ctx.cfg, resolve=True),  # type: ignore[arg-type]
                          run_dir=str(self.ctx.run.path), build=TrainEvaluator,
                          kwargs={"space": self.space, "distill": self.distill, "trainer": self.trainer,
                                  "seed": self.seed, "runs": self.runs})


def teacher_logits_source(teacher: Any, distill: DistillConfig) -> str | None:
    """Where the candidates' teacher logits come from: the fp16 logit cache (``teacher.cache`` auto/required,
    logit terms only) or the fp32 teacher run online; the two give different students."""
    if teacher is None:
        return None
    return "online_fp32" if teacher.cache == "off" or reads_teacher_features(distill) else "cached_fp16"


CE_ONLY = {"weights": {"ce": 1.0}}


def train_evaluator(ctx: RunContext, space: SearchSpace, *, objective: str, trainer: Any, seed: int, runs: RunDir,
                    costs: CostModel | None = None, pool: Pool | None = None) -> TrainEvaluator:
    """``objective``: ``kd`` (the ``distill:`` config, KD by default) or ``ce``; ``trainer`` overrides merged
    over the run's ``trainer:`` (the candidate recipe); ``pool``: where the candidates train (None: in-process)."""
    if objective not in ("kd", "ce"):
        raise ConfigError(f"Candidate training objective {objective!r} is not one of kd, ce.")
    recipe = to_object(OmegaConf.merge(ctx.cfg.trainer, trainer or {}), TrainerConfig)
    distill = distill_config(CE_ONLY if objective == "ce" else ctx.cfg.distill)
    return TrainEvaluator(ctx, space, distill=distill, trainer=recipe, seed=seed, runs=runs, costs=costs,
                          pool=pool)
