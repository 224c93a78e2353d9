"""The uniform feature API every network in kdnas answers (zoo, timm adapter, searched networks).

Losses and proxies read only :class:`Features`, so any student or teacher can be distilled from or
scored without knowing its family.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Features:
    """Everything a distillation loss or a training-free proxy needs from one forward pass.

    logits:      [B, K] class scores.
    stages:      one tensor per stage, [B, C_i, H_i, W_i]; pre-activation where the KD papers use it
                 (RepDistiller's ``preact=True`` features for ResNets/WRN), else the stage output.
    feature_map: [B, C, H, W] the final map right before global pooling (post-activation); Grad-CAM
                 and DisWOT's relational term read this.
    embedding:   [B, C] the pooled vector fed to the classifier.
    """

    logits: torch.Tensor
    stages: list[torch.Tensor]
    feature_map: torch.Tensor
    embedding: torch.Tensor


class FeatureNet(nn.Module):
    """Base class: subclasses implement :meth:`forward_features` and set the attributes below.

    ``forward`` returns logits only, so a FeatureNet trains, exports (ONNX) and compiles like any model.
    """

    num_classes: int
    stage_channels: list[int]
    classifier: nn.Linear

    def forward_features(self, x: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward_features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits

    @property
    def stage_names(self) -> list[str]:
        return [f"stage{i}" for i in range(len(self.stage_channels))]


def pool_and_classify(net: FeatureNet, stages: list[torch.Tensor], fmap: torch.Tensor) -> Features:
    """Shared tail of every CNN here: global average pool, flatten, linear classifier."""
    emb = torch.flatten(nn.functional.adaptive_avg_pool2d(fmap, 1), 1)
    return Features(logits=net.classifier(emb), stages=stages, feature_map=fmap, embedding=emb)
