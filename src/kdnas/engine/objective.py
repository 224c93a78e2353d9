"""Training objectives: what the engine minimises for one batch.

The engine owns the loop (data, optimiser, AMP, checkpoints); an objective owns the loss. An objective is
an ``nn.Module`` so that its trainable parts (distillation connectors, CRD embeddings) are optimised and
checkpointed with the student, and its buffers (memory banks) resume exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.data import Batch


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # detached parts, logged per epoch


class Objective(nn.Module):
    """Base objective: plain cross-entropy (with optional label smoothing)."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        logits = model(batch.x)
        loss = F.cross_entropy(logits, batch.y, label_smoothing=self.label_smoothing)
        return StepOutput(loss=loss, logits=logits)

    def on_epoch_start(self, epoch: int) -> None:
        """Hook for epoch-dependent objectives (DKD warm-up, cache prefetch)."""

    def extra_state(self) -> dict:
        """Non-tensor state to checkpoint besides ``state_dict()`` (JSON-able)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Inverse of :meth:`extra_state`."""
