"""Distil one student: the building block of task=distill, of the multi-stage schemes (:mod:`.schemes`) and of
the search's training evaluator. Takes a :class:`~kdnas.engine.workspace.Workspace` and typed settings, never the
composed config; every trained student's folder gets ``model.json`` (and ``arch.json`` for a searched one), so
``task=export export.run_dir=RUN`` rebuilds it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdnas.config import ModelConfig, StudentConfig, TrainerConfig, to_object
from kdnas.distill.objective import DistillObjective
from kdnas.distill.terms import DistillConfig, active_weights, distill_config, teacher_terms
from kdnas.engine.trainer import write_model_card
from kdnas.engine.workspace import Workspace
from kdnas.models import build_model
from kdnas.runs import RunDir
from kdnas.spaces import build_candidate, load_arch, space_for
from kdnas.teachers import Teacher
from kdnas.utils import atomic_write_json

if TYPE_CHECKING:
    from kdnas.spaces.base import Arch


def student_factory(ws: Workspace, model: ModelConfig, student: StudentConfig | None = None
                    ) -> tuple[Callable[[], nn.Module], str, Arch | None]:
    """(build a fresh student with its seeded init, its name, the searched arch it came from or None): the
    ``student.arch`` JSON when set, else the ``model`` network."""
    num_classes = ws.data.num_classes
    if student is None or student.arch is None:
        return (lambda: build_model(model, num_classes, ws.seed)), str(model.name), None
    arch = load_arch(Path(student.arch).expanduser())
    space = space_for(arch)

    def make() -> nn.Module:  # the init a search evaluator gives this arch: seeded by (seed, arch_id)
        return build_candidate(space, arch, num_classes, ws.data.input_size, ws.seed)

    return make, f"arch:{arch.arch_id}", arch


def write_card(ws: Workspace, run: RunDir, name: str, arch: Arch | None = None, **extra: Any) -> None:
    """``model.json`` in ``run``: the network, its classes and the data it was trained on, and for a searched
    student ``arch.json`` plus the arch in the card."""
    if arch is not None:
        atomic_write_json(run.path / "arch.json", arch.to_json())
        extra["arch"] = arch.to_json()
    write_model_card(run.path / "model.json", model=name, num_classes=ws.data.num_classes, data=ws.data.name,
                     data_fingerprint=ws.data.fingerprint, **extra)


def distill_student(ws: Workspace, student_model: nn.Module, teacher: Teacher | None,
                    distill_cfg: DistillConfig | Any, run: RunDir, seed: int, *, student_name: str,
                    trainer_cfg: TrainerConfig | Any | None = None, label: str | None = None,
                    arch: Arch | None = None, evaluate_teacher: bool = True) -> dict[str, Any]:
    """Distil ``student_model`` from ``teacher`` into ``run`` (resuming there); return the trainer summary
    with the student, teacher, active loss weights and the teacher's test top-1 (``evaluate_teacher=False``: not
    measured; a search evaluator's candidates would otherwise pay a teacher pass over the test set each).

    ``teacher`` may be None for a CE-only loss; ``trainer_cfg`` defaults to the workspace's recipe;
    ``student_name`` picks the per-pair DKD beta; ``label`` names the run in its log lines (default "KD student
    <name>", or "CE baseline <name>" without a teacher).
    """
    cfg = distill_config(distill_cfg)
    tcfg = to_object(trainer_cfg, TrainerConfig) if trainer_cfg is not None else ws.trainer_config
    name = student_name
    if teacher is not None:
        teacher.to(memory_format=torch.channels_last)  # the trainer moves it to its device with the objective
    objective = DistillObjective(cfg, student_model, teacher, data=ws.data, split=tcfg.train_split, seed=seed,
                                 student_name=name, cache_dir=ws.cache_dir)
    role = f"{teacher_terms(cfg).upper()} student" if teacher else "CE baseline"
    trainer = ws.trainer(student_model, trainer_cfg=tcfg, run=run, objective=objective, seed=seed,
                         label=label or f"{role} {name}")
    summary = trainer.fit(resume=ws.resume)
    teacher_names = teacher.names if teacher is not None else []
    write_card(ws, run, name, arch, teacher=teacher_names, distill=active_weights(cfg))
    out = {"student": name, "teacher": teacher_names, "losses": active_weights(cfg), **summary}
    if teacher is not None and evaluate_teacher:
        out["teacher_test_top1"] = trainer.evaluate("test", teacher)["top1"]
    return out
