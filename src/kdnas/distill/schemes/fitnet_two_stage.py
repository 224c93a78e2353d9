"""FitNets' two-stage training (Romero et al. ICLR 2015, Sec. 2.2-2.3), ``distill=fitnet_two_stage``.

Stage 1 (``hint``): only the student's layers up to its guided layer ``distill.hint_stage`` (and the regressor)
train, on ``MSE(r(guided), hint)`` alone, for ``distill.fitnet_two_stage.hint_epochs`` epochs. Stage 2 (``kd``): a
fresh student takes stage 1's lower layers (weights and BN statistics) and trains whole with the configured terms
(the preset: KD); the regressor is dropped. Folders ``hint`` and ``kd``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from kdnas import teachers
from kdnas.config import ModelConfig, StudentConfig, TeacherConfig
from kdnas.distill.schemes import stage_row, summary_table
from kdnas.distill.student import distill_student, student_factory
from kdnas.distill.terms import DistillConfig, LossWeights, stage_index
from kdnas.engine.workspace import Workspace
from kdnas.errors import ConfigError


def lower_state_keys(net: nn.Module, stage: str, input_size: int) -> set[str]:
    """State-dict keys (parameters and buffers) of the modules that ``stage``'s output depends on: the lower
    layers, found by differentiating one eval-mode forward pass of blank images."""
    params = dict(net.named_parameters())
    was_training = net.training
    net.eval()
    f = net.forward_features(torch.zeros(2, 3, input_size, input_size))
    net.train(was_training)
    i = stage_index(net.stage_names, stage, "student", "hint_stage")
    grads = torch.autograd.grad(f.stages[i].sum(), list(params.values()), allow_unused=True)
    modules = {name.rpartition(".")[0] for name, g in zip(params, grads) if g is not None}
    return {key for key in net.state_dict() if key.rpartition(".")[0] in modules}


def run(ws: Workspace, distill: DistillConfig, *, model: ModelConfig, student: StudentConfig,
        teacher: TeacherConfig) -> dict[str, Any]:
    cfg = distill
    if cfg.fitnet_two_stage.hint_epochs < 1:
        raise ConfigError(f"distill.fitnet_two_stage.hint_epochs={cfg.fitnet_two_stage.hint_epochs} must be >= 1.")
    make_student, name, _ = student_factory(ws, model, student)
    frozen, seed = teachers.load(ws, teacher), ws.seed
    net = make_student()
    lower = lower_state_keys(net, cfg.hint_stage, ws.data.input_size)
    for key, p in net.named_parameters():
        p.requires_grad_(key in lower)
    hint_cfg = replace(cfg, weights=LossWeights(ce=0.0, fitnet=1.0))
    hint_trainer = replace(ws.trainer_config, epochs=cfg.fitnet_two_stage.hint_epochs)
    hint_run, kd_run = ws.run.sub("hint"), ws.run.sub("kd")
    hint = distill_student(ws, net, frozen, hint_cfg, hint_run, seed, student_name=name, trainer_cfg=hint_trainer)
    init = {k: v for k, v in net.state_dict().items() if k in lower}
    net = make_student()
    net.load_state_dict(init, strict=False)
    kd = distill_student(ws, net, frozen, cfg, kd_run, seed, student_name=name)
    rows = [stage_row(hint_run, "hint", name, {**hint, "lower_layers": sorted(lower)}),
            stage_row(kd_run, "kd", name, kd)]
    return summary_table(ws.run, "fitnet_two_stage", rows, **kd)
