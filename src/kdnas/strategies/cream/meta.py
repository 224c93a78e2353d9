"""Meta matching and path distillation of Cream (Peng et al., NeurIPS 2020, Sec. 3.2, Eqs. 5-7; official
``lib/models/MetaMatchingNetwork.py``, ``PrioritizedBoard.select_teacher`` and ``lib/core/train.py``).

The matching network is the official ``Linear(num_classes * S -> 1)`` (S = 4 stored images per board entry).
Its input for entry j is the current path's softmax on the entry's S images minus the softmax the entry
stored on admission; the entry with the highest score teaches, with ``rho = sigmoid(score)``, through

    loss = (rho * KD + (2 - rho) * CE) / 2,   KD at temperature 1.

The official code uses the soft-target cross-entropy ``-sum softmax(t) log softmax(s)`` for the KD term; it
differs from ``KL(softmax(t) || softmax(s))`` by the teacher's entropy, a constant in the student's weights,
so both give the same gradients and the same hypergradient (only the logged value differs).

Every ``meta_every`` steps (official 200) the matching network takes one SGD step (lr 1e-4, gradient norm
clipped to 1 as the official code does) on the one-step look-ahead hypergradient (Eq. 7): train the student
on S images with the loss above, ``w' = w - lr * grad_w loss(w, theta)``, and differentiate the CE of the
updated student on the next S images of the batch with respect to ``theta``.

Bugs of the official code fixed here:

1. ``rho`` came from the *last* board entry: ``meta_value = F.sigmoid(-weight)`` after the loop uses the
   loop variable ``weight`` (the last entry's score), not the chosen entry's ``meta_value``. Here ``rho`` is
   the chosen entry's.
2. The sign. The official code picks the entry with the highest score and then weights its KD term by
   ``sigmoid(-score)``, the smallest weight any entry could get. The paper (Eq. 5-6) selects the path with the
   largest matching degree and uses that degree as the KD weight. We follow the paper: ``rho = sigmoid(+score)``.
   With the official sign the hypergradient works against the selection: when distilling from the chosen
   entry lowers the validation loss, the gradient raises ``rho``, i.e. lowers that entry's score, so it stops
   being chosen; with ``+score`` "useful teacher" means both "chosen" and "weighted more".
3. A newly admitted entry stored the *teacher's* softmax (``teacher_output``) instead of its own whenever the
   board was non-empty, so matching compared paths with their teachers. Each entry stores its own softmax.
4. The hypergradient was truncated to the first weight tensor: ``torch.autograd.grad(students_weight[0], ...,
   grad_outputs=grad_student_val)`` back-propagates through the stem convolution's update only. Here the
   look-ahead runs over all the path's weights with ``torch.func.functional_call``.

Other choices: the look-ahead is a plain SGD step at the current learning rate (the official
``simulate_sgd_update``) and is not applied (the official code also takes a real student step on the four
images there); its inner loss is the training loss above (the official one keeps only ``rho * KD``). ``rho``
is detached in the training step, so the matching network learns from the hypergradient alone (in the
official code the training loss also reached it). The current path's softmax on the stored images is computed
with one forward pass over all entries' images (train-mode BN over K x S images instead of per entry).
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
