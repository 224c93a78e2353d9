"""Born-again networks (Furlanello et al. ICML 2018), ``distill=born_again``: generation ``k`` (1 ..
``distill.born_again.generations``) is the student network distilled from generation ``k - 1`` (the preset: KL at
T = 1, the paper's BAN); generation 0 is trained with CE (``gen0=ce``) or is the configured teacher
(``gen0=teacher``). Every generation starts from the student's seeded init and draws its own data order;
``ensemble`` also evaluates the mean-logit ensemble of all generations (BANE). Folders ``gen0`` .. ``genN`` and
``ensemble``; each distilled generation records its teacher's weights hash (``teacher_sha256``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kdnas import teachers
from kdnas.config import ModelConfig, StudentConfig, TeacherConfig
from kdnas.distill.schemes import evaluate, frozen_teacher, stage_row, summary_table
from kdnas.distill.student import distill_student, student_factory
from kdnas.distill.terms import DistillConfig, LossWeights
from kdnas.engine.workspace import Workspace
from kdnas.errors import ConfigError
from kdnas.teachers import Teacher
from kdnas.utils import derive_seed


def run(ws: Workspace, distill: DistillConfig, *, model: ModelConfig, student: StudentConfig,
        teacher: TeacherConfig) -> dict[str, Any]:
    cfg, s = distill, distill.born_again
    if s.generations < 1 or s.gen0 not in ("ce", "teacher"):
        raise ConfigError(f"distill=born_again needs distill.born_again.generations >= 1 (got {s.generations}) and "
                          f"distill.born_again.gen0 one of ce, teacher (got {s.gen0!r}).")
    make_student, name, _ = student_factory(ws, model, student)
    gen0 = ws.run.sub("gen0")
    if s.gen0 == "teacher":
        current = teachers.load(ws, teacher)
        nets, names = list(current.members), list(current.names)
        rows = [stage_row(gen0, "gen0", "+".join(names), evaluate(ws, current, gen0))]
    else:
        nets, names = [make_student()], [name]
        ce = replace(cfg, weights=LossWeights())
        rows = [stage_row(gen0, "gen0", name, distill_student(ws, nets[0], None, ce, gen0, ws.seed,
                                                              student_name=name))]
        current = frozen_teacher(nets[0], name, teacher.cache)
    for k in range(1, s.generations + 1):
        gen, net = ws.run.sub(f"gen{k}"), make_student()
        summary = distill_student(ws, net, current, cfg, gen, derive_seed(ws.seed, "generation", k),
                                  student_name=name)
        rows.append(stage_row(gen, f"gen{k}", name, {**summary, "teacher_sha256": current.hashes}))
        nets.append(net)
        names.append(name)
        current = frozen_teacher(net, name, teacher.cache)
    if s.ensemble:
        ensemble = ws.run.sub("ensemble")
        rows.append(stage_row(ensemble, "ensemble", "+".join(names), evaluate(ws, Teacher(nets, names), ensemble)))
    return summary_table(ws.run, "born_again", rows, generations=s.generations, gen0=s.gen0)
