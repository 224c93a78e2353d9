"""Model zoo and timm adapter: the Features contract, RepDistiller parameter counts, the ResNet builder."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from kdnas.errors import ConfigError
from kdnas.models import FeatureNet, create_model, list_models
from kdnas.models.resnet_cifar import build_cifar_resnet
from kdnas.models.timm_adapter import TimmFeatureNet


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def check_feature_api(model: FeatureNet, x: torch.Tensor, num_classes: int = 10) -> None:
    model.eval()
    with torch.no_grad():
        f = model.forward_features(x)
        logits = model(x)
    assert f.logits.shape == (2, num_classes)
    assert len(f.stages) == len(model.stage_channels)
    for stage, ch in zip(f.stages, model.stage_channels):
        assert stage.dim() == 4 and stage.shape[:2] == (2, ch)
    assert f.feature_map.dim() == 4
    assert f.embedding.shape == (2, model.classifier.in_features)
    assert torch.allclose(logits, f.logits)
    assert torch.allclose(model.classifier(f.embedding), f.logits, atol=1e-5)


def test_zoo_is_registered() -> None:
    names = set(list_models())
    assert {"resnet8", "resnet110", "resnet8x4", "resnet32x4", "wrn_40_2", "vgg13"} <= names
    assert {"mobilenetv2", "mobilenetv2_w1", "shufflenetv1", "shufflenetv2"} <= names


@pytest.mark.parametrize("name", list_models())
def test_feature_api(name: str, x: torch.Tensor) -> None:
    model = create_model(name, num_classes=10)
    assert model.num_classes == 10
    check_feature_api(model, x)


# Counts for 100 classes, as in CRD / RepDistiller tables; measured here and checked against a verbatim
# copy of RepDistiller's code (identical state dicts, identical logits and preact features).
PARAMS_100 = {
    "resnet20": 0.278e6,
    "resnet56": 0.862e6,
    "resnet110": 1.737e6,
    "resnet8x4": 1.234e6,
    "resnet32x4": 7.434e6,
    "wrn_16_2": 0.703e6,
    "wrn_40_2": 2.255e6,
    "vgg8": 3.965e6,
    "vgg13": 9.462e6,
    "mobilenetv2": 0.813e6,
    "shufflenetv1": 0.949e6,
    "shufflenetv2": 1.356e6,
}


@pytest.mark.parametrize("name", sorted(PARAMS_100))
def test_param_counts(name: str) -> None:
    n = sum(p.numel() for p in create_model(name, num_classes=100).parameters())
    assert n == pytest.approx(PARAMS_100[name], rel=0.02)


def test_build_cifar_resnet(x: torch.Tensor) -> None:
    net = build_cifar_resnet([1, 3, 5], [16, 32, 64], 10)
    check_feature_api(net, x)
    assert net.stage_channels == [16, 16, 32, 64]
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [1, 3, 5]
    deeper = build_cifar_resnet([2, 3, 5], [16, 32, 64], 10)
    extra = sum(p.numel() for p in deeper.parameters()) - sum(p.numel() for p in net.parameters())
    assert extra == 2 * (16 * 16 * 9 + 2 * 16)  # one more 16->16 basic block: two 3x3 convs + two BNs


def test_build_cifar_resnet_variants(x: torch.Tensor) -> None:
    bottleneck = build_cifar_resnet([1, 1], [8, 16], 10, stem_width=12, block="bottleneck", kernel_size=5)
    check_feature_api(bottleneck, x)
    assert bottleneck.stage_channels == [12, 32, 64]
    four = build_cifar_resnet([1, 1, 1, 1], [8, 16, 32, 64], 10)
    check_feature_api(four, x)
    assert four.forward_features(x).feature_map.shape[-1] == 4
    for bad in ({"depths": [1, 0, 1]}, {"block": "dense"}, {"kernel_size": 4}, {"widths": [16, 32]}):
        kw = {"depths": [1, 1, 1], "widths": [16, 32, 64], "num_classes": 10, **bad}
        with pytest.raises(ConfigError):
            build_cifar_resnet(**kw)


def test_unknown_model_suggests_close_match() -> None:
    with pytest.raises(ConfigError, match="resnet20"):
        create_model("resnet21", num_classes=10)
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("timm:resnet18x", num_classes=10)


@pytest.mark.parametrize("name", ["timm:resnet18", pytest.param("timm:mobilenetv3_small_050", marks=pytest.mark.slow)])
def test_timm_adapter(name: str, x: torch.Tensor) -> None:
    model = create_model(name, num_classes=10)
    check_feature_api(model, x)
    with torch.no_grad():
        assert torch.allclose(model(x), model.model(x))  # same as timm's own forward
        assert model.forward_features(x).feature_map.shape[-1] == (4 if "resnet" in name else 2)
    assert not any(k.startswith("classifier.") for k in model.state_dict())  # no duplicated head tensors


def test_timm_hook_fallback_matches_intermediates(x: torch.Tensor) -> None:
    model = create_model("timm:resnet18", num_classes=10).eval()
    # Through a deepcopy (as EMA teachers do): the copy's hooks must fill the copy, not the original.
    hooked = copy.deepcopy(TimmFeatureNet(model.model, num_classes=10, use_intermediates=False))
    with torch.no_grad():
        a, b = model.forward_features(x), hooked.forward_features(x)
    assert len(a.stages) == len(b.stages)
    assert all(torch.equal(s, t) for s, t in zip(a.stages, b.stages))
    assert torch.equal(a.logits, b.logits)


def test_timm_small_input_stem_warns_for_unadapted_family() -> None:
    with pytest.warns(UserWarning, match="small_input_stem"):
        create_model("timm:convnext_atto", num_classes=10)


def test_timm_pretrained_failure_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("no internet")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="model.pretrained"):
        create_model("timm:resnet18", num_classes=10, pretrained=True)
