"""Born-again networks (Furlanello et al. ICML 2018, "Born-Again Neural Networks"), ``distill=born_again``.

Generation 0 is the student network trained with CE (``distill.schemes.gen0=ce``) or the configured teacher
(``gen0=teacher``: teacher=store/checkpoint); generation ``k = 1..distill.schemes.generations`` is the same
student network distilled from generation ``k - 1`` with the configured terms (the preset: the teacher's
soft outputs alone, KL at T = 1, as the paper's BAN); every generation starts from the student's seeded init
and draws its own data order. With ``distill.schemes.ensemble`` the mean-logit
ensemble of every generation (the paper's BANE) is evaluated too. Folders ``gen0`` .. ``genN`` and
``ensemble``; every distilled generation records its teacher's weights hash (``teacher_sha256``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kdnas.context import RunContext
from kdnas.distill.schemes import evaluate, frozen_teacher, stage_row, summary_table
from kdnas.distill.student import distill_student, student_factory
from kdnas.distill.terms import LossWeights, distill_config
from kdnas.errors import ConfigError
from kdnas.teachers import Teacher, build_teacher
from kdnas.utils import derive_seed


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = distill_config(ctx.cfg.distill)
    s = cfg.schemes
    if s.generations < 1 or s.gen0 not in ("ce", "teacher"):
        raise ConfigError(f"distill=born_again needs distill.schemes.generations >= 1 (got {s.generations}) and "
                          f"distill.schemes.gen0 one of ce, teacher (got {s.gen0!r}).")
    make_student, name, _ = student_factory(ctx)
    gen0 = ctx.run.sub("gen0")
    if s.gen0 == "teacher":
        teacher = build_teacher(ctx)
        nets, names = list(teacher.members), list(teacher.names)
        rows = [stage_row(gen0, "gen0", "+".join(names), evaluate(ctx, teacher, gen0))]
    else:
        nets, names = [make_student()], [name]
        ce = replace(cfg, weights=LossWeights())
        rows = [stage_row(gen0, "gen0", name, distill_student(ctx, nets[0], None, ce, gen0, ctx.cfg.seed,
                                                              student_name=name))]
        teacher = frozen_teacher(ctx, nets[0], name)
    for k in range(1, s.generations + 1):
        gen, net = ctx.run.sub(f"gen{k}"), make_student()
        summary = distill_student(ctx, net, teacher, cfg, gen, derive_seed(ctx.cfg.seed, "generation", k),
                                  student_name=name)
        rows.append(stage_row(gen, f"gen{k}", name, {**summary, "teacher_sha256": teacher.hashes}))
        nets.append(net)
        names.append(name)
        teacher = frozen_teacher(ctx, net, name)
    if s.ensemble:
        ensemble = ctx.run.sub("ensemble")
        rows.append(stage_row(ensemble, "ensemble", "+".join(names), evaluate(ctx, Teacher(nets, names), ensemble)))
    return summary_table(ctx, "born_again", rows, generations=s.generations, gen0=s.gen0)
