"""Replayable augmentation for in-memory image tensors.

The crop offsets and flips of an epoch are drawn for the whole set at once from a generator seeded by
(aug_seed, epoch), and a sample looks its draw up by its index. So sample i of epoch e gets the same
view whatever the batch size, order or split, and teacher outputs can be cached per
(aug_seed, epoch, index). The batch transform is index arithmetic on the whole batch: no per-sample loop,
no PIL, no worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kdnas.utils import generator

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def crop_flip_params(aug_seed: int, epoch: int, n: int, pad: int = 4, size: int = 32
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets (dy, dx) and flips for every sample of a set of `n`, for one epoch.

    A same-size crop of an image zero-padded by `pad` on each side starts at an offset in [0, 2 * pad];
    `size` (the image side) only bounds `pad`: a pad as large as the image could crop pure padding.
    """
    if not 0 <= pad < size:
        raise ValueError(f"crop padding {pad} must be in [0, {size})")
    gen = generator(aug_seed, epoch, "crop_flip")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    flip = torch.randint(0, 2, (n,), generator=gen, dtype=torch.bool)
    return dy, dx, flip


def apply_crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4
                    ) -> torch.Tensor:
    """Zero-padded crop + horizontal flip of a uint8 batch [B,3,H,W], one gather for the whole batch.

    Returns uint8 [B,3,H,W] in channels_last strides (the gather produces NHWC); call .contiguous() for
    NCHW. dy = dx = pad and no flip gives back the input.
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [B,H]
    cols = dx[:, None] + torch.arange(w, device=x.device)  # [B,W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices split by a slice put the indexed dims first: [B,H,W,C].
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
              ) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 (x/255 - mean)/std as one multiply-add; keeps the memory format."""
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device)
    scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
    shift = (torch.as_tensor(mean, dtype=torch.float32, device=x.device) / std_t).view(1, -1, 1, 1)
    return x.float().mul_(scale).sub_(shift)
