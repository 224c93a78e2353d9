"""Cream's meta matching and path distillation: which board entry teaches the current path, and how much.

:class:`MetaMatching` is the official ``Linear(num_classes * S -> 1)`` (S = 4 stored images per board entry); its
input for entry j is the current path's softmax on j's S images minus the softmax j stored on admission. The entry
with the highest score teaches, with ``rho = sigmoid(+score)``, through :func:`cream_loss` (KD at temperature 1).
:func:`lookahead_hypergradient` gives the matching network's gradient (one-step look-ahead, Eq. 7) over all the
path's weights. Departures from the official code: docs/decisions.md, "Cream".

Reference: Peng et al., NeurIPS 2020, Sec. 3.2, Eqs. 5-7; official ``lib/models/MetaMatchingNetwork.py``,
``PrioritizedBoard.select_teacher`` and ``lib/core/train.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from kdnas.distill.functional import kd


class MetaMatching(nn.Module):
    """Scores how well each board entry fits the current path (official ``meta_layer``)."""

    def __init__(self, num_classes: int, slice_size: int = 4) -> None:
        super().__init__()
        self.layer = nn.Linear(num_classes * slice_size, 1)

    def forward(self, diffs: Tensor) -> Tensor:
        """[E, S, K] softmax differences -> [E] matching scores."""
        return self.layer(diffs.flatten(1)).squeeze(1)

    def select(self, current_probs: Tensor, stored_probs: Tensor) -> tuple[int, Tensor]:
        """(index of the best-matching entry, its ``rho = sigmoid(score)``, differentiable in the weights)."""
        scores = self(current_probs.detach() - stored_probs)
        index = int(scores.argmax())
        return index, torch.sigmoid(scores[index])


def cream_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, rho: Tensor | float) -> Tensor:
    """Path distillation (Eq. 5 as coded officially): ``(rho * KD_T=1 + (2 - rho) * CE) / 2``."""
    return (rho * kd(student_logits, teacher_logits, T=1.0) + (2 - rho) * F.cross_entropy(student_logits, target)) / 2


def lookahead_hypergradient(model: nn.Module, params: dict[str, Tensor],
                            inner: Callable[[Callable[..., Tensor]], Tensor],
                            outer: Callable[[Callable[..., Tensor]], Tensor], lr: float,
                            wrt: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``d outer(w - lr * grad_w inner(w)) / d wrt`` over every tensor in ``params`` (Eq. 7).

    ``inner`` and ``outer`` receive a function that runs ``model`` with the given weights (``functional_call``),
    so ``inner`` may depend on ``wrt`` (e.g. through ``rho``); parameters missing from ``params`` stay fixed.
    """

    def run(weights: dict[str, Tensor]) -> Callable[..., Tensor]:
        return lambda *args: functional_call(model, weights, args)

    grads = torch.autograd.grad(inner(run(params)), list(params.values()), create_graph=True)
    ahead = {name: w - lr * g for (name, w), g in zip(params.items(), grads)}
    return torch.autograd.grad(outer(run(ahead)), list(wrt))
