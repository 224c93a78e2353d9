"""Deep mutual learning (Zhang et al. CVPR 2018), ``distill=dml``: two or more peers learn together without a
pre-trained teacher; peer ``k`` minimises ``w_ce * CE(z_k, y) + w_kd * mean_{l != k} kd(z_k, z_l, T)`` with the
others' logits detached.

Invariant: one joint optimiser over the sum of the peers' losses takes the same steps as the paper's one optimiser
per peer (each peer's gradient is that of its own loss).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.config import ModelConfig, StudentConfig, TeacherConfig
from kdnas.data import Batch
from kdnas.distill import functional as kdf
from kdnas.distill.schemes import stage_row, summary_table, top1
from kdnas.distill.student import write_card
from kdnas.distill.terms import DistillConfig, active_weights
from kdnas.engine.checkpoint import save_weights
from kdnas.engine.objective import Objective, StepOutput
from kdnas.engine.workspace import Workspace
from kdnas.errors import ConfigError
from kdnas.models import build_model
from kdnas.utils import derive_seed


class MutualObjective(Objective):
    """Sum over peers of CE + mean KL toward the other peers' detached predictions. The model the engine
    passes is peer 0; ``peers`` (peers 1..K-1) are trained, checkpointed and moved with this module."""

    def __init__(self, peers: list[nn.Module], *, ce: float, kd: float, temperature: float) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.ce, self.kd, self.T = ce, kd, temperature

    def forward(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = [model(batch.x), *(peer(batch.x) for peer in self.peers)]
        loss = logits[0].new_zeros(())
        terms: dict[str, torch.Tensor] = {}
        for k, z in enumerate(logits):
            ce = F.cross_entropy(z, batch.y)
            kl = torch.stack([kdf.kd(z, other, self.T) for j, other in enumerate(logits) if j != k]).mean()
            loss = loss + self.ce * ce + self.kd * kl
            terms[f"ce_{k}"], terms[f"kl_{k}"] = ce.detach(), kl.detach()
        return StepOutput(loss=loss, logits=logits[0], terms=terms)


def run(ws: Workspace, distill: DistillConfig, *, model: ModelConfig, student: StudentConfig,
        teacher: TeacherConfig) -> dict[str, Any]:
    """Train the peers (``distill.dml.students``, default two copies of ``model``) together, updated simultaneously;
    peer ``k > 0`` draws its init from its own seed. Folders: ``mutual/`` (the shared run) and ``peer{k}/`` (each
    peer's weights, card and top-1)."""
    cfg = distill
    names = list(cfg.dml.students) or [str(model.name)] * 2
    if len(names) < 2:
        raise ConfigError(f"distill=dml needs >= 2 peers, got distill.dml.students={names}.")
    if extra := set(active_weights(cfg)) - {"ce", "kd"}:
        raise ConfigError(f"distill=dml trains its peers with the ce and kd weights only; set distill.weights of "
                          f"{sorted(extra)} to 0.")
    seed, num_classes = ws.seed, ws.data.num_classes
    seeds = [seed, *(derive_seed(seed, "dml_peer", k) for k in range(1, len(names)))]
    nets = [build_model(ModelConfig(name=n), num_classes, s) for n, s in zip(names, seeds)]
    objective = MutualObjective(nets[1:], ce=cfg.weights.ce, kd=cfg.weights.kd, temperature=cfg.temperature)
    mutual = ws.run.sub("mutual")
    trainer = ws.trainer(nets[0], run=mutual, objective=objective, seed=seed)
    shared = trainer.fit(resume=ws.resume)
    mutual.write_summary(shared)
    rows = []
    for k, (net, name) in enumerate(zip(nets, names)):
        peer = ws.run.sub(f"peer{k}")
        save_weights(peer.path / "model.safetensors", net.state_dict())
        write_card(ws, peer, name, init_seed=seeds[k], scheme="dml")
        rows.append(stage_row(peer, f"peer{k}", name, top1(trainer, net)))
    return summary_table(ws.run, "dml", rows, students=names, **shared)
