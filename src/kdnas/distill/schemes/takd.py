"""Teacher-assistant KD (Mirzadeh et al. AAAI 2020), ``distill=takd``: the configured teacher teaches an
intermediate-size assistant (``distill.takd.assistant``), which then teaches the student; both steps use the
configured terms. Folders ``assistant`` and ``student``.
"""

from __future__ import annotations

from typing import Any

from kdnas import teachers
from kdnas.config import ModelConfig, StudentConfig, TeacherConfig
from kdnas.distill.schemes import frozen_teacher, stage_row, summary_table
from kdnas.distill.student import distill_student, student_factory
from kdnas.distill.terms import DistillConfig
from kdnas.engine.workspace import Workspace
from kdnas.models import build_model


def run(ws: Workspace, distill: DistillConfig, *, model: ModelConfig, student: StudentConfig,
        teacher: TeacherConfig) -> dict[str, Any]:
    cfg = distill
    seed, ta_name = ws.seed, cfg.takd.assistant
    frozen = teachers.load(ws, teacher)
    assistant, ta_run = build_model(ModelConfig(name=ta_name), ws.data.num_classes, seed), ws.run.sub("assistant")
    ta = distill_student(ws, assistant, frozen, cfg, ta_run, seed, student_name=ta_name)
    make_student, name, _ = student_factory(ws, model, student)
    student_run = ws.run.sub("student")
    trained = distill_student(ws, make_student(), frozen_teacher(assistant, ta_name, teacher.cache), cfg, student_run,
                              seed, student_name=name)
    rows = [{"stage": "teacher", "model": "+".join(frozen.names), "test_top1_last": ta["teacher_test_top1"]},
            stage_row(ta_run, "assistant", ta_name, ta), stage_row(student_run, "student", name, trained)]
    return summary_table(ws.run, "takd", rows, **{**trained, "teacher": frozen.names, "assistant": ta_name})
