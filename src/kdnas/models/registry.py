"""The model registry (timm-style): ``@register_model`` on a factory ``fn(num_classes=..., **kwargs) -> FeatureNet``,
registered under the function's name; ``create_model(name, ...)`` builds one, ``timm:<name>`` through the adapter.
Every name has a ``conf/model/<name>.yaml`` option (tests/test_registries.py checks both directions)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig

from kdnas.config import ModelConfig, to_object
from kdnas.models.features import FeatureNet
from kdnas.registry import Registry
from kdnas.utils import derive_seed

FAMILIES = ("mobilenetv2", "resnet_cifar", "shufflenet", "vgg", "wrn")  # modules whose decorators fill MODELS
MODELS: Registry[Callable[..., FeatureNet]] = Registry(
    "model", "model.name", modules=[f"kdnas.models.{m}" for m in FAMILIES],
    hint="; or timm:<name> for any timm network (teacher.model takes the same names)")


def register_model(fn: Callable[..., FeatureNet]) -> Callable[..., FeatureNet]:
    """Register a factory ``fn(num_classes=..., **kwargs) -> FeatureNet`` under its function name."""
    return MODELS.add(fn.__name__, fn)


def list_models() -> list[str]:
    return MODELS.names()


def create_model(name: str, num_classes: int, **kwargs) -> FeatureNet:
    """Build a registered model, or ``timm:<name>`` through the adapter; unknown names list close matches."""
    if name.startswith("timm:"):
        from kdnas.models.timm_adapter import create_timm_model

        return create_timm_model(name[len("timm:") :], num_classes=num_classes, **kwargs)
    return MODELS.get(name)(num_classes=num_classes, **kwargs)


def build_model(model_cfg: ModelConfig | DictConfig, num_classes: int, seed: int) -> FeatureNet:
    """Create a network with init weights drawn from its own seed stream (independent of data order)."""
    mc = to_object(model_cfg, ModelConfig)
    torch.manual_seed(derive_seed(seed, "init", mc.name))
    kwargs = dict(mc.kwargs)
    if mc.name.startswith("timm:"):
        kwargs.update(pretrained=mc.pretrained, small_input_stem=mc.small_input_stem)
    return create_model(mc.name, num_classes=num_classes, **kwargs)
