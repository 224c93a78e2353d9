"""Distil one student: the building block of task=distill, of the multi-stage schemes (:mod:`.schemes`) and of
the search's training evaluator. Library code: the tasks call it, it never calls them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf
from torch import nn

from kdnas.config import TrainerConfig, to_object
from kdnas.distill.objective import DistillObjective
from kdnas.distill.terms import DistillConfig, active_weights, distill_config
from kdnas.engine.trainer import write_model_card
from kdnas.models import build_model
from kdnas.runs import RunDir
from kdnas.spaces import build_candidate, load_arch, space_for
from kdnas.teachers import Teacher
from kdnas.utils import atomic_write_json

if TYPE_CHECKING:
    from kdnas.context import RunContext
    from kdnas.spaces.base import Arch


def student_factory(ctx: RunContext) -> tuple[Callable[[], nn.Module], str, Arch | None]:
    """(build a fresh student with its seeded init, its name, the searched arch it came from or None)."""
    cfg, num_classes = ctx.cfg, ctx.data.num_classes
    arch_path = OmegaConf.select(cfg, "student.arch", default=None)
    if arch_path is None:
        return (lambda: build_model(cfg.model, num_classes, cfg.seed)), str(cfg.model.name), None
    path = Path(arch_path).expanduser()
    arch = load_arch(path)
    space = space_for(arch)

    def make() -> nn.Module:  # the init a search evaluator gives this arch: seeded by (seed, arch_id)
        return build_candidate(space, arch, num_classes, ctx.data.input_size, cfg.seed)

    return make, f"arch:{arch.arch_id}", arch


def write_card(ctx: RunContext, run: RunDir, name: str, arch: Arch | None = None, **extra: Any) -> None:
    """``model.json`` in ``run``: the network, its classes and the data it was trained on, and for a searched
    student ``arch.json`` plus the arch in the card, so that ``task=export export.run_dir=RUN`` rebuilds it."""
    if arch is not None:
        atomic_write_json(run.path / "arch.json", arch.to_json())
        extra["arch"] = arch.to_json()
    write_model_card(run.path / "model.json", model=name, num_classes=ctx.data.num_classes, data=ctx.cfg.data.name,
                     data_fingerprint=ctx.data.fingerprint, **extra)


def distill_student(ctx: RunContext, student_model: nn.Module, teacher: Teacher | None,
                    distill_cfg: DistillConfig | Any, run: RunDir, seed: int, *, student_name: str | None = None,
                    trainer_cfg: TrainerConfig | Any | None = None, label: str | None = None,
                    arch: Arch | None = None, evaluate_teacher: bool = True) -> dict[str, Any]:
    """Distil ``student_model`` from ``teacher`` into ``run`` (resuming there); return the trainer summary
    with the student, teacher, active loss weights and the teacher's test top-1 (``evaluate_teacher=False``: not
    measured; a search evaluator's candidates would otherwise pay a teacher pass over the test set each).

    The building block of task=distill and of the schemes: ``teacher`` may be None for a CE-only loss;
    ``trainer_cfg`` defaults to ``ctx.cfg.trainer``; ``student_name`` (default ``model.name``) picks the
    per-pair DKD beta; ``label`` names the run in its log lines (default "KD student <name>", or "CE baseline
    <name>" without a teacher). Writes ``model.safetensors`` and ``model.json`` in ``run``, and for a searched
    student (``arch``) ``arch.json`` too, so that ``task=export export.run_dir=RUN`` rebuilds it.
    """
    cfg = distill_config(distill_cfg)
    tcfg = to_object(trainer_cfg if trainer_cfg is not None else ctx.cfg.trainer, TrainerConfig)
    name = student_name or str(ctx.cfg.model.name)
    if teacher is not None:
        teacher.to(memory_format=torch.channels_last)  # the trainer moves it to its device with the objective
    objective = DistillObjective(cfg, student_model, teacher, data=ctx.data, split=tcfg.train_split, seed=seed,
                                 student_name=name, cache_dir=ctx.cache_dir)
    role = "+".join(k for k in active_weights(cfg) if k != "ce").upper() + " student" if teacher else "CE baseline"
    trainer = ctx.trainer(student_model, trainer_cfg=tcfg, run=run, objective=objective, seed=seed,
                          label=label or f"{role} {name}")
    summary = trainer.fit(resume=ctx.resume)
    teacher_names = teacher.names if teacher is not None else []
    write_card(ctx, run, name, arch, teacher=teacher_names, distill=active_weights(cfg))
    out = {"student": name, "teacher": teacher_names, "losses": active_weights(cfg), **summary}
    if teacher is not None and evaluate_teacher:
        out["teacher_test_top1"] = trainer.evaluate("test", teacher)["top1"]
    return out
