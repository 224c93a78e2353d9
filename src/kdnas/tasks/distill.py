"""task=distill: train a student (zoo name, ``timm:<name>``, or a searched architecture ``student.arch=PATH``)
from a teacher (store, checkpoint, ensemble) with any weighted sum of distillation terms (``distill=...``).

Reports the distilled student's best and last top-1 and, with ``distill.compare_ce=true``, those of the same
student (same init, data order and recipe) trained with cross-entropy alone, and the gain. Schemes
(``distill.scheme=NAME``) live in ``kdnas.distill.schemes.NAME``; they and this task build on
:func:`kdnas.distill.student.distill_student` (re-exported here under its old name).
"""

from __future__ import annotations

import importlib
import logging
import math
from typing import Any

import torch
from torch import nn

from kdnas import teachers
from kdnas.config import ModelConfig, StudentConfig, TrainerConfig, to_object
from kdnas.context import RunContext
from kdnas.distill.student import distill_student, student_factory, write_card
from kdnas.distill.terms import DistillConfig, active_weights, distill_config
from kdnas.engine.trainer import autocast_context
from kdnas.errors import ConfigError

__all__ = ["comparison_line", "distill_student", "paired_comparison", "run", "student_factory", "test_hits"]
log = logging.getLogger("kdnas")
TOP1 = ("test_top1_best", "test_top1_last")


@torch.no_grad()
def test_hits(ctx: RunContext, model: nn.Module, trainer_cfg: TrainerConfig | Any | None = None) -> torch.Tensor:
    """Per test image, whether ``model``'s top-1 prediction is right (bool, in the test split's order): what a
    paired comparison of two students needs."""
    tcfg = to_object(trainer_cfg if trainer_cfg is not None else ctx.cfg.trainer, TrainerConfig)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = []
    for batch in ctx.data.loader("test", tcfg.eval_batch_size, train=False, seed=0, device=device,
                                 channels_last=tcfg.channels_last).epoch(0):
        with autocast_context(device, tcfg.amp):
            hits.append(model(batch.x).argmax(1).eq(batch.y).cpu())
    model.train(was_training)
    return torch.cat(hits)


def paired_comparison(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Top-1 of ``a`` minus top-1 of ``b`` (points) on the same images, with the paired standard error: the s.d. of
    the per-image differences over sqrt(n). Images both get right or both get wrong cancel out, so this is much
    tighter than two independent binomial errors."""
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"paired comparison needs two equal-length hit vectors of >= 2 images, got {a.shape}, "
                         f"{b.shape}")
    d = a.double() - b.double()
    n = d.numel()
    se = 100.0 * d.std(unbiased=True).item() / math.sqrt(n)
    diff = 100.0 * d.mean().item()
    return {"a_top1": 100.0 * a.double().mean().item(), "b_top1": 100.0 * b.double().mean().item(), "diff": diff,
            "se": se, "z": diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff)),
            "n": n, "a_only": int((d > 0).sum()), "b_only": int((d < 0).sum())}


def comparison_line(cmp: dict[str, float], a: str, b: str = "CE") -> str:
    """One line a newcomer can read: both top-1s, the difference, its paired s.e. and whether it clears the noise
    (|difference| > 2 s.e., about 95 %)."""
    verdict = (f"{a if cmp['diff'] > 0 else b} is better beyond the noise" if abs(cmp["z"]) > 2
               else "inside the noise (|difference| <= 2 s.e.)")
    return (f"{a} vs {b} on {cmp['n']} test images: {cmp['a_top1']:.2f} vs {cmp['b_top1']:.2f} top-1, difference "
            f"{cmp['diff']:+.2f} points, paired s.e. {cmp['se']:.2f} (z = {cmp['z']:+.1f}): {verdict}")


def student_settings(cfg: Any) -> tuple[ModelConfig, StudentConfig]:
    """The typed ``model`` and ``student`` settings of a composed config."""
    return to_object(cfg.model, ModelConfig), to_object(cfg.student, StudentConfig)


def run_scheme(ctx: RunContext, dcfg: DistillConfig) -> dict[str, Any]:
    """``distill.scheme``'s module ``run`` with the workspace and the settings it reads."""
    name = f"kdnas.distill.schemes.{dcfg.scheme}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not name.startswith(str(e.name)):  # the scheme exists but lacks a dependency of its own
            raise
        raise ConfigError(f"distill.scheme={dcfg.scheme!r} is not a distillation scheme of this install (a module "
                          "kdnas.distill.schemes.<name>); use distill.scheme=none for plain distillation.") from None
    model, student = student_settings(ctx.cfg)
    return module.run(ctx.workspace, dcfg, model=model, student=student,
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
        losses = "+".join(k for k in active_weights(dcfg) if k != "ce").upper() or "CE"
        cmp = paired_comparison(test_hits(ctx, student), test_hits(ctx, ce_student))
        summary["gain_test_top1_last_se"] = cmp["se"]
        log.info("%s", comparison_line(cmp, losses))
    return summary
