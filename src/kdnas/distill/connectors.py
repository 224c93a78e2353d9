"""Trainable adapters between student and teacher features, sized from one probe forward pass and trained
with the student (they live in the objective, so the engine optimises and checkpoints them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from kdnas.errors import ConfigError


class ConvRegressor(nn.Module):
    """FitNets regressor (Romero et al. ICLR 2015, Sec. 2.2) as RepDistiller ``ConvReg``: maps a student map
    [B, C_s, H_s, W_s] to the teacher's [B, C_t, H_t, W_t], then BN + ReLU.

    Same resolution: a 1x1 conv; student twice the teacher's side: 3x3 stride-2 conv; half: 4x4 stride-2
    transposed conv; otherwise larger: a (1 + H_s - H_t) x (1 + W_s - W_t) valid conv.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int]) -> None:
        super().__init__()
        (_, s_c, s_h, s_w), (_, t_c, t_h, t_w) = s_shape, t_shape
        if s_h == 2 * t_h:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ConfigError(f"FitNet: cannot regress a student map of {s_h}x{s_w} onto a teacher map of {t_h}x{t_w}; "
                              "pick another distill.hint_stage.")
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class Embed(nn.Module):
    """CRD embedding head (Tian et al. ICLR 2020, RepDistiller ``Embed``): linear projection, L2-normalised."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)
