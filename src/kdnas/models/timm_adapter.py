"""Any timm (>= 0.9) network as a :class:`FeatureNet`, so it can be a teacher or a student (``timm:<name>``).

One pass through the body: stage features come from timm's ``forward_intermediates`` (timm >= 1.0), or
else from forward hooks on the modules named in ``model.feature_info``. ``feature_map`` is what
``forward_features`` returns (NCHW for CNNs; ViTs give tokens), ``embedding`` is
``forward_head(pre_logits=True)`` (pooled, after head dropout) and the logits are the classifier applied
to it, exactly what timm's own ``forward`` computes.
"""

from __future__ import annotations

import difflib
import warnings
from functools import partial

import timm
import torch
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from torch import nn

from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet, Features


class TimmFeatureNet(FeatureNet):
    """Wraps a built timm model; ``use_intermediates=None`` picks ``forward_intermediates`` when present."""

    def __init__(self, model: nn.Module, num_classes: int, use_intermediates: bool | None = None) -> None:
        super().__init__()
        head = model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise ConfigError(
                f"timm model {type(model).__name__} has a {type(head).__name__} classifier; "
                "kdnas needs a single nn.Linear head (model.name)."
            )
        self.model = model
        self.num_classes = num_classes
        self.stage_channels = [info["num_chs"] for info in model.feature_info]
        if use_intermediates is None:
            use_intermediates = hasattr(model, "forward_intermediates")
        self.use_intermediates = use_intermediates
        self._captured: dict[int, torch.Tensor] = {}
        if not use_intermediates:
            modules = dict(model.named_modules())
            for i, info in enumerate(model.feature_info):
                # A partial of a bound method (not a closure), so copy.deepcopy rebinds it to the copy.
                modules[info["module"]].register_forward_hook(partial(self._capture, i))

    def _capture(self, idx: int, _module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        self._captured[idx] = output

    @property
    def classifier(self) -> nn.Linear:
        # A property, not a second registered reference: shared tensors would break safetensors checkpoints.
        return self.model.get_classifier()

    def forward_features(self, x: torch.Tensor) -> Features:
        if self.use_intermediates:
            fmap, stages = self.model.forward_intermediates(x)
        else:
            fmap = self.model.forward_features(x)
            stages = [self._captured.pop(i) for i in range(len(self.stage_channels))]
        emb = self.model.forward_head(fmap, pre_logits=True)
        return Features(logits=self.classifier(emb), stages=list(stages), feature_map=fmap, embedding=emb)


def adapt_small_input_stem(model: nn.Module) -> bool:
    """Make an ImageNet stem keep resolution on 32x32 inputs; returns False when no rule applies.

    - ResNet family (resnet*, resnext*, seresnet*, wide_resnet*, ...): a plain ``conv1`` becomes a 3x3
      stride-1 conv (the usual CIFAR ResNet-18 stem, freshly initialised), a deep stem (``*d``/``*s``)
      loses the stride of its first conv; ``maxpool`` is removed.
    - EfficientNet / MobileNetV3 family: ``conv_stem`` (already 3x3) gets stride 1, weights kept.
    ``feature_info`` reductions are not updated.
    """
    if isinstance(model, ResNet):
        if isinstance(model.conv1, nn.Conv2d):
            model.conv1 = nn.Conv2d(model.conv1.in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        else:
            model.conv1[0].stride = (1, 1)
        model.maxpool = nn.Identity()
        return True
    if isinstance(model, (EfficientNet, MobileNetV3)):
        model.conv_stem.stride = (1, 1)
        return True
    return False


def create_timm_model(
    name: str, num_classes: int, pretrained: bool = False, small_input_stem: bool = True, **kwargs
) -> TimmFeatureNet:
    """Build ``timm.create_model(name, ...)`` and wrap it; ``kwargs`` go to timm."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"Unknown timm model {name!r} (key: model.name, as timm:<name>).{hint}")
    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, features_only=False, **kwargs
        )
    except Exception as e:
        if not pretrained:
            raise
        raise ConfigError(
            f"Could not load pretrained weights for timm model {name!r} ({type(e).__name__}: {e}). "
            "Set model.pretrained=false, or fill the Hugging Face cache (HF_HOME) on a machine with internet "
            "access first; HF_HUB_OFFLINE=1 makes this fail at once instead of after retries."
        ) from e
    if small_input_stem and not adapt_small_input_stem(model):
        warnings.warn(
            f"small_input_stem: no rule for timm {type(model).__name__} ({name!r}); stem left unchanged, "
            "so 32x32 inputs are downsampled as for ImageNet.",
            stacklevel=2,
        )
    return TimmFeatureNet(model, num_classes)
