"""Label refinery (Bagherinezhad et al. 2018), ``distill=label_refinery``: generation 0 is the student trained
with CE; generation ``k`` is the same network trained from scratch on generation ``k - 1``'s predictions for the
very crops it sees, ``soft_weight * soft_target_ce(z, softmax(z_prev)) + (1 - soft_weight) * CE(z, y)``
(``distill.label_refinery.soft_weight``; 1 = the paper's). Generations go on while the selection split's last
top-1 improves on every earlier one, at most ``distill.label_refinery.max_generations`` after generation 0.
Folders ``gen0`` .. ``genN``.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn

from kdnas.config import ModelConfig, StudentConfig, TeacherConfig
from kdnas.data import Batch
from kdnas.distill import functional as kdf
from kdnas.distill.schemes import frozen_teacher, stage_row, summary_table
from kdnas.distill.student import student_factory, write_card
from kdnas.distill.terms import DistillConfig
from kdnas.engine.objective import Objective, StepOutput
from kdnas.engine.workspace import Workspace
from kdnas.errors import ConfigError
from kdnas.teachers import Teacher
from kdnas.utils import derive_seed, resolve_device


class RefineryObjective(Objective):
    """Soft-target CE toward the refinery's softmax (plus ``1 - soft_weight`` CE on the labels). The refinery
    is frozen and kept out of the parameters and ``state_dict``; it is expected on the training device."""

    def __init__(self, refinery: Teacher, soft_weight: float) -> None:
        super().__init__()
        self.__dict__["refinery"] = refinery  # not a submodule: never optimised, never checkpointed
        self.soft_weight = soft_weight

    def forward(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        soft = kdf.soft_target_ce(logits, self.refinery(batch.x).softmax(1))
        ce = F.cross_entropy(logits, batch.y)
        loss = self.soft_weight * soft + (1 - self.soft_weight) * ce
        return StepOutput(loss=loss, logits=logits, terms={"soft_ce": soft.detach(), "ce": ce.detach()})


def run(ws: Workspace, distill: DistillConfig, *, model: ModelConfig, student: StudentConfig,
        teacher: TeacherConfig) -> dict[str, Any]:
    s = distill.label_refinery
    if s.max_generations < 1 or not 0.0 <= s.soft_weight <= 1.0:
        raise ConfigError(f"distill=label_refinery needs distill.label_refinery.max_generations >= 1 (got "
                          f"{s.max_generations}) and 0 <= distill.label_refinery.soft_weight <= 1 (got "
                          f"{s.soft_weight}).")
    make_student, name, _ = student_factory(ws, model, student)
    device = resolve_device(ws.trainer_config.device)
    rows: list[dict[str, Any]] = []
    scores: list[float] = []
    objective, stopped = None, "max_generations"
    for k in range(s.max_generations + 1):
        gen, net = ws.run.sub(f"gen{k}"), make_student()
        trainer = ws.trainer(net, run=gen, objective=objective, seed=derive_seed(ws.seed, "generation", k))
        summary = trainer.fit(resume=ws.resume)
        write_card(ws, gen, name, scheme="label_refinery", generation=k)
        rows.append(stage_row(gen, f"gen{k}", name, summary))
        score = summary[f"{summary['selection_split']}_top1_last"]
        if scores and score <= max(scores):
            stopped = "no_improvement"
            break
        scores.append(score)
        objective = RefineryObjective(frozen_teacher(net, name, teacher.cache).to(device), s.soft_weight)
    best = max(range(len(scores)), key=scores.__getitem__)
    return summary_table(ws.run, "label_refinery", rows, best_generation=best, stopped=stopped,
                         **{k: v for k, v in rows[best].items() if k not in ("stage", "model")})
