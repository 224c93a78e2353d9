"""task=distill: distil a student (``model``, or a searched ``student.arch``) from the run's teacher with the
``distill`` terms, or run a multi-stage scheme (``distill.scheme``); with ``distill.compare_ce=true`` also the same
student with CE alone and the paired gain. Dispatch only: the work is in :mod:`kdnas.distill`."""

from __future__ import annotations

import logging
from typing import Any

from kdnas import teachers
from kdnas.config import ModelConfig, StudentConfig, to_object
from kdnas.context import RunContext
from kdnas.correlation import comparison_line, paired_comparison, test_hits
from kdnas.distill.schemes import SCHEMES
from kdnas.distill.student import distill_student, student_factory, write_card
from kdnas.distill.terms import DistillConfig, active_weights, distill_config, teacher_terms

log = logging.getLogger("kdnas")
TOP1 = ("test_top1_best", "test_top1_last")


def student_settings(cfg: Any) -> tuple[ModelConfig, StudentConfig]:
    """The typed ``model`` and ``student`` settings of a composed config."""
    return to_object(cfg.model, ModelConfig), to_object(cfg.student, StudentConfig)


def run_scheme(ctx: RunContext, dcfg: DistillConfig) -> dict[str, Any]:
    """``distill.scheme``'s ``run`` (:data:`~kdnas.distill.schemes.SCHEMES`) with the workspace and the settings it
    reads."""
    scheme = SCHEMES.get(dcfg.scheme)
    model, student = student_settings(ctx.cfg)
    return scheme(ctx.workspace, dcfg, model=model, student=student,
                  teacher=teachers.teacher_config(ctx.cfg.teacher))


def run(ctx: RunContext) -> dict[str, Any]:
    cfg, ws = ctx.cfg, ctx.workspace
    dcfg = distill_config(cfg.distill)
    if dcfg.scheme != "none":
        return run_scheme(ctx, dcfg)
    make_student, name, arch = student_factory(ws, *student_settings(cfg))
    teacher = teachers.load(ws, cfg.teacher) if set(active_weights(dcfg)) - {"ce"} else None
    student = make_student()
    summary = distill_student(ws, student, teacher, dcfg, ws.run, ws.seed, student_name=name, arch=arch)
    if dcfg.compare_ce:
        ce_run, ce_student = ws.run.sub("ce"), make_student()
        ce = ws.trainer(ce_student, run=ce_run, seed=ws.seed, label=f"CE baseline {name}").fit(resume=ws.resume)
        ce_run.write_summary(ce)
        write_card(ws, ce_run, name, arch)
        summary.update({f"ce_{k}": ce[k] for k in TOP1})
        summary.update({f"gain_{k}": summary[k] - ce[k] for k in TOP1})
        losses = teacher_terms(dcfg).upper() or "CE"
        hits = [test_hits(ws.data, net, ws.trainer_config) for net in (student, ce_student)]
        cmp = paired_comparison(*hits)
        summary["gain_test_top1_last_se"] = cmp["se"]
        log.info("%s", comparison_line(cmp, losses))
    return summary
