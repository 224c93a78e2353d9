"""A timm-style model registry: ``@register_model`` on a factory, ``create_model(name, ...)`` to build.

Names prefixed ``timm:`` go to the timm adapter, so any timm network is a teacher or student too.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from kdnas.config import ModelConfig, to_object
from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet
from kdnas.utils import derive_seed

_MODELS: dict[str, Callable[..., FeatureNet]] = {}


def register_model(fn: Callable[..., FeatureNet]) -> Callable[..., FeatureNet]:
    """Register a factory ``fn(num_classes=..., **kwargs) -> FeatureNet`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    _import_families()
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs) -> FeatureNet:
    """Build a registered model, or ``timm:<name>`` through the adapter; unknown names list close matches."""
    _import_families()
    if name.startswith("timm:"):
        from kdnas.models.timm_adapter import create_timm_model

        return create_timm_model(name[len("timm:") :], num_classes=num_classes, **kwargs)
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=4, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"Unknown model {name!r} (key: model.name / teacher.model).{hint} "
            f"Run `kdnas task=list` for all {len(_MODELS)} registered models, or use `timm:<name>`."
        )
    return _MODELS[name](num_classes=num_classes, **kwargs)


def _import_families() -> None:
    # Importing the family modules runs their @register_model decorators.
    from kdnas.models import mobilenetv2, resnet_cifar, shufflenet, vgg, wrn  # noqa: F401


def build_model(model_cfg: ModelConfig | DictConfig, num_classes: int, seed: int) -> FeatureNet:
    """Create a network with init weights drawn from its own seed stream (independent of data order)."""
    mc = to_object(model_cfg, ModelConfig)
    torch.manual_seed(derive_seed(seed, "init", mc.name))
    kwargs = dict(mc.kwargs)
    if mc.name.startswith("timm:"):
        kwargs.update(pretrained=mc.pretrained, small_input_stem=mc.small_input_stem)
    return create_model(mc.name, num_classes=num_classes, **kwargs)
