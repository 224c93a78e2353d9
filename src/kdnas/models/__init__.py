"""Model zoo: RepDistiller's CIFAR networks, a timm adapter, all answering the :class:`Features` API."""

from kdnas.models.features import FeatureNet, Features
from kdnas.models.registry import MODELS, build_model, create_model, list_models, register_model

__all__ = ["MODELS", "FeatureNet", "Features", "build_model", "create_model", "list_models", "register_model"]
