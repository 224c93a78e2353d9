"""Teacher-assistant KD (Mirzadeh et al. AAAI 2020, "Improved Knowledge Distillation via Teacher Assistant"),
``distill=takd``.

When the teacher is much larger than the student, distil in two steps: the configured teacher teaches an
intermediate-size assistant (``distill.schemes.assistant``), which then teaches the student (``model`` or
``student.arch``); both steps use the configured terms. Folders ``assistant`` and ``student``.
"""

from __future__ import annotations

from typing import Any

from kdnas.config import ModelConfig
from kdnas.context import RunContext, build_model
from kdnas.distill.schemes import frozen_teacher, stage_row, summary_table
from kdnas.distill.student import distill_student, student_factory
from kdnas.distill.terms import distill_config
from kdnas.teachers import build_teacher


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = distill_config(ctx.cfg.distill)
    seed, ta_name = ctx.cfg.seed, cfg.schemes.assistant
    teacher = build_teacher(ctx)
    assistant, ta_run = build_model(ModelConfig(name=ta_name), ctx.data.num_classes, seed), ctx.run.sub("assistant")
    ta = distill_student(ctx, assistant, teacher, cfg, ta_run, seed, student_name=ta_name)
    make_student, name, _ = student_factory(ctx)
    student_run = ctx.run.sub("student")
    student = distill_student(ctx, make_student(), frozen_teacher(ctx, assistant, ta_name), cfg, student_run, seed,
                              student_name=name)
    rows = [{"stage": "teacher", "model": "+".join(teacher.names), "test_top1_last": ta["teacher_test_top1"]},
            stage_row(ta_run, "assistant", ta_name, ta), stage_row(student_run, "student", name, student)]
    return summary_table(ctx, "takd", rows, **{**student, "teacher": teacher.names, "assistant": ta_name})
