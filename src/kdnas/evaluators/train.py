"""The training evaluator: a short training run per candidate (KD from the teacher, or CE) on mini-train; reward =
mini-val top-1 (the AKD protocol), test top-1 recorded beside it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch

from kdnas import teachers
from kdnas.config import TeacherConfig, TrainerConfig
from kdnas.distill import student
from kdnas.distill.cache import TeacherLogitCache, prebuild
from kdnas.distill.terms import (
    DistillConfig,
    active_weights,
    distill_config,
    distill_identity,
    reads_teacher_features,
)
from kdnas.engine.workspace import Workspace
from kdnas.errors import ConfigError
from kdnas.evaluators.base import COSTS, CachedEvaluator
from kdnas.execution import Pool, WorkerSpec
from kdnas.runs import RunDir
from kdnas.spaces.base import Arch, SearchSpace, build_candidate
from kdnas.spaces.costs import CostModel
from kdnas.teachers import recipe_of
from kdnas.utils import resolve_device


def per_epoch(records: list[dict[str, Any]], key: str, split: str = "train") -> list[float]:
    """``key`` of each epoch's ``split`` record of a metrics.jsonl (empty when the run never logged it)."""
    return [r[key] for r in records if r.get("split") == split and key in r]


class TrainEvaluator(CachedEvaluator):
    """Trains each candidate with ``distill`` (KD from the teacher, or CE alone) and ``trainer`` on mini-train;
    reward = last-epoch mini-val top-1. Candidate runs live in ``runs/<arch_id>`` (resumable; their
    checkpoints are deleted once the result is cached). With ``distill=oracle`` the result also carries
    ``oracle_disagreement``: per epoch, the fraction of training samples where the oracle target differs from
    plain KD (KDAS).

    ``teacher`` (the run's teacher settings) is loaded only when ``distill`` reads a teacher. ``aug_seed`` is
    ``data.aug_seed`` (None: ``seed``). ``worker``: the task layer's recipe to rebuild this evaluator in a worker
    (its ``build`` and the run's picklable settings), completed here with this evaluator's own arguments; needed
    with a ``pool`` only."""

    def __init__(self, ws: Workspace, space: SearchSpace, *, distill: DistillConfig, trainer: TrainerConfig,
                 teacher: TeacherConfig | None, seed: int, runs: RunDir, aug_seed: int | None = None,
                 costs: CostModel | None = None, pool: Pool | None = None, worker: WorkerSpec | None = None) -> None:
        if ws.data.num_samples("val") == 0:
            raise ConfigError("Candidate training is scored on mini-val: set data.val_fraction > 0 (e.g. 0.1).")
        self.ws, self.space, self.distill, self.trainer = ws, space, distill, trainer
        self.seed, self.runs, self.worker = seed, runs, worker
        # One augmentation seed per search (the loader's rule: data.aug_seed, else the run seed): every candidate
        # trains on the same views in the same order, so the teacher's logits of an epoch are computed once.
        self.aug_seed = aug_seed if aug_seed is not None else seed
        self.settings = {"space": space, "distill": distill, "trainer": trainer, "teacher": teacher, "seed": seed,
                         "runs": runs, "aug_seed": aug_seed}  # what a worker rebuilds this evaluator from
        reads_teacher = bool(set(active_weights(distill)) - {"ce"})
        if reads_teacher and teacher is None:
            raise ConfigError("Candidate training with KD needs the run's teacher settings (teacher=...).")
        self.teacher = teachers.load(ws, teacher) if reads_teacher and teacher is not None else None
        self.costs = costs or CostModel(space, ws.data.num_classes, ws.data.input_size)
        self.prebuilt = False
        super().__init__(ws.cache_dir, {
            "kind": "train", "distill": distill_identity(distill), "trainer": recipe_of(trainer),
            "teacher_logits": teacher_logits_source(self.teacher, distill),
            "teacher": self.teacher.hashes if self.teacher is not None else None, "data": ws.data.identity,
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
        cache = TeacherLogitCache(self.ws.cache_dir, self.ws.data, self.trainer.train_split, self.seed, "auto")
        self.teacher.to(resolve_device(self.trainer.device), memory_format=torch.channels_last)
        prebuild(cache, list(self.teacher.members), self.teacher.hashes, self.trainer.epochs,
                 progress=self.ws.progress)
        if self.pool is not None:  # workers rebuild their own teacher: free the parent's device memory
            self.teacher.to("cpu")
        self.logit_cache = cache  # holds the search's epochs until the search ends

    def evaluate_one(self, arch: Arch) -> dict[str, Any]:
        # Init from (seed, arch_id), as task=distill student.arch builds it; data order and views from the search seed.
        model = build_candidate(self.space, arch, self.ws.data.num_classes, self.ws.data.input_size, self.seed)
        run = self.runs.sub(arch.arch_id)
        start = time.perf_counter()
        summary = student.distill_student(self.ws, model, self.teacher, self.distill, run, self.seed,
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
        """The same evaluator in a worker: the task layer's ``worker`` (the run's workspace) plus this recipe, seed,
        teacher and runs folder."""
        if self.worker is None:
            raise ConfigError("This training evaluator was built without a worker recipe (worker=WorkerSpec from the "
                              "task layer), so it cannot train candidates in a pool; use search.executor=local.")
        return replace(self.worker, key=f"{self.fingerprint}:{self.runs.path}",
                       kwargs={**self.worker.kwargs, **self.settings})


def teacher_logits_source(teacher: Any, distill: DistillConfig) -> str | None:
    """Where the candidates' teacher logits come from: the fp16 logit cache (``teacher.cache`` auto/required,
    logit terms only) or the fp32 teacher run online; the two give different students."""
    if teacher is None:
        return None
    return "online_fp32" if teacher.cache == "off" or reads_teacher_features(distill) else "cached_fp16"


CE_ONLY = {"weights": {"ce": 1.0}}
OBJECTIVES = ("kd", "ce")


@dataclass(frozen=True)
class TrainSettings:
    """Candidate training, typed (the task layer builds it from the config): ``objective`` kd (the run's ``distill``
    losses, KD by default) or ce; ``trainer`` the candidates' full recipe."""

    objective: str
    trainer: TrainerConfig
    distill: DistillConfig | None = None  # objective=kd: the losses (objective=ce: CE alone, not read)
    aug_seed: int | None = None  # data.aug_seed (None: the search seed)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"Candidate training objective {self.objective!r} is not one of kd, ce.")
        if self.objective == "kd" and self.distill is None:
            raise ConfigError("Candidate training with objective kd needs the distill settings (distill=...).")


def train_evaluator(ws: Workspace, space: SearchSpace, settings: TrainSettings, teacher: TeacherConfig, *, seed: int,
                    runs: RunDir, costs: CostModel | None = None, pool: Pool | None = None,
                    worker: WorkerSpec | None = None) -> TrainEvaluator:
    """The :class:`TrainEvaluator` of ``settings`` (``pool``: where the candidates train, None: in-process)."""
    distill = settings.distill if settings.objective == "kd" and settings.distill is not None else distill_config(
        CE_ONLY)
    return TrainEvaluator(ws, space, distill=distill, trainer=settings.trainer, teacher=teacher, seed=seed,
                          runs=runs, aug_seed=settings.aug_seed, costs=costs, pool=pool, worker=worker)
