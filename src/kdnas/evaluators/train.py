"""The training evaluator: a short training run per candidate (KD from the teacher, or CE) on mini-train; reward =
mini-val top-1 (the AKD protocol), test top-1 recorded beside it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch
from omegaconf import OmegaConf

from kdnas.config import TrainerConfig, to_object
from kdnas.context import RunContext
from kdnas.distill import student
from kdnas.distill.cache import TeacherLogitCache, prebuild
from kdnas.distill.terms import DistillConfig, active_weights, distill_config, reads_teacher_features
from kdnas.errors import ConfigError
from kdnas.evaluators.base import COSTS, CachedEvaluator
from kdnas.execution import Pool, WorkerSpec
from kdnas.runs import RunDir
from kdnas.spaces.base import Arch, SearchSpace, build_candidate
from kdnas.spaces.costs import CostModel
from kdnas.teachers import build_teacher, recipe_of
from kdnas.utils import resolve_device


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
        if self.pool is not None:  # workers rebuild their own teacher: free the parent's device memory
            self.teacher.to("cpu")
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
