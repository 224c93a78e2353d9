"""Search spaces, cost models, constraints and task=export (no training; tiny CPU forwards)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import kdnas.conf
from kdnas.errors import ConfigError, ConstraintError
from kdnas.models import create_model
from kdnas.spaces import Arch, create_space, list_spaces, load_arch, space_from_config
from kdnas.spaces.constraints import Constraint, constraint_from_config, sample_valid
from kdnas.spaces.costs import CostModel, LatencyTable, count_flops, count_params, latency_correlation

SPACES = list_spaces()  # every registered space (test_registries: == the space/ options)
CONF = Path(kdnas.conf.__file__).parent


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny forwards gain nothing from two, and spin-waiting threads on a shared
    2-core machine cost more CPU than the work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", SPACES)
def test_sampled_archs_build_forward_and_round_trip(name: str) -> None:
    space, rng = create_space(name), random.Random(0)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(20):
        arch = space.sample(rng)
        net = space.build(arch, num_classes=10).eval()
        with torch.no_grad():
            f = net.forward_features(x)
        assert f.logits.shape == (2, 10) and f.embedding.shape == (2, net.classifier.in_features)
        assert [s.shape[1] for s in f.stages] == net.stage_channels and all(s.shape[0] == 2 for s in f.stages)
        assert count_params(net) == sum(p.numel() for p in net.parameters())
        assert space.decode(json.dumps(space.encode(arch))) == arch
        assert space.decode(space.encode(arch)).arch_id == arch.arch_id == space.arch_id(arch)
        child = space.mutate(arch, rng)
        assert space.validate(child) and child.decisions != arch.decisions
        assert space.validate(space.crossover(arch, child, rng))
    assert all(len(d.options) >= 1 for d in space.decisions())


@pytest.mark.parametrize("name", ["mbconv_akd", "mbconv_cream"])
def test_mbconv_presets_build_for_224(name: str) -> None:
    space = create_space(name)
    net = space.build(space.sample(random.Random(1)), num_classes=1000, input_size=224).eval()
    with torch.no_grad():
        f = net.forward_features(torch.randn(1, 3, 224, 224))
    assert [s.shape[-1] for s in f.stages] == [112, 56, 28, 14, 7] and f.feature_map.shape[-1] == 7
    assert [s.shape[1] for s in f.stages] == net.stage_channels


def test_mnasnet_b1_is_reproduced_exactly() -> None:
    """MnasNet-B1's own choices give torchvision's mnasnet1_0: 4,383,312 params, 314.4M MACs at 224."""
    space = create_space("mbconv_akd")
    ops = ["dwsep", "mbconv_e3", "mbconv_e3", "mbconv_e6", "mbconv_e6", "mbconv_e6", "mbconv_e6"]
    choices = {}
    for b, (op, k) in enumerate(zip(ops, [3, 3, 5, 5, 3, 5, 3]), 1):
        choices.update({f"b{b}_op": op, f"b{b}_kernel": k, f"b{b}_se": 0.0, f"b{b}_skip": "identity",
                        f"b{b}_filters": 1.0, f"b{b}_layers": 0})
    costs = CostModel(space, num_classes=1000, input_size=224)(space.make(choices), ["params", "macs"])
    assert costs == {"params": 4_383_312, "macs": 314_415_872}


def test_sizes_and_enumeration() -> None:
    resnet = create_space("resnet_cifar")
    assert resnet.size() == 64 and len({a.arch_id for a in resnet.enumerate()}) == 64
    nb201 = create_space("nb201")
    assert nb201.size() == 15_625 == len(list(nb201.enumerate()))
    assert create_space("kdas_addon").size() == 7**3 * 2**3  # resnet20: 3 stages, 3 skip bits
    assert create_space("resnet_cifar_large").size() == 210**3


def test_resnet_cifar_default_depths_are_resnet20() -> None:
    space = create_space("resnet_cifar")
    net = space.build(space.make({"depth1": 3, "depth2": 3, "depth3": 3}), 100)
    assert count_params(net) == count_params(create_model("resnet20", num_classes=100)) == 278_324


def test_flops_of_a_single_conv_match_the_hand_count() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, 32) == {"macs": 8 * 3 * 9 * 32 * 32, "flops": 2 * 8 * 3 * 9 * 32 * 32}
    assert count_params(conv) == 8 * 3 * 9 + 8


def test_cost_model_meta_build_matches_real_network() -> None:
    space = create_space("nb201")
    arch = space.sample(random.Random(2))
    real = space.build(arch, 100)
    assert CostModel(space)(arch, ["params", "macs", "flops"]) == {"params": count_params(real), **count_flops(real)}


def test_hard_constraint_holds_for_every_sample() -> None:
    space, rng = create_space("resnet_cifar"), random.Random(0)
    constraint, costs = Constraint(params_max=200_000, macs_max=40e6), CostModel(space)
    for _ in range(6):
        arch = sample_valid(space, rng, constraint, costs=costs)
        c = costs(arch, ["params", "macs"])
        assert c["params"] <= 200_000 and c["macs"] <= 40e6 and constraint.check(c) == (True, [])


def test_impossible_constraint_raises_quickly() -> None:
    start = time.perf_counter()
    with pytest.raises(ConstraintError, match=r"constraint\.params_max=10 but the smallest params seen was"):
        sample_valid(create_space("resnet_cifar"), random.Random(0), Constraint(params_max=10), max_tries=30)
    assert time.perf_counter() - start < 15


def test_soft_factor_follows_mnasnet() -> None:
    soft = Constraint(latency_ms_max=5.0, mode="soft")
    assert soft.soft_factor({"latency_ms": 10.0}) == pytest.approx(2.0**-0.07)
    assert soft.soft_factor({"latency_ms": 2.5}) == pytest.approx(0.5**-0.07)  # under target: a small bonus
    hard = Constraint(latency_ms_max=5.0, params_max=100.0)  # hard: alpha=0, beta=-1
    assert hard.soft_factor({"latency_ms": 2.5, "params": 50.0}) == 1.0
    assert hard.soft_factor({"latency_ms": 10.0, "params": 400.0}) == pytest.approx(0.5 * 0.25)
    assert hard.reward(80.0, {"latency_ms": 10.0, "params": 50.0}) == pytest.approx(40.0)
    custom = Constraint(params_max=100.0, mode="soft", alpha=0.0, beta=-0.5)
    assert custom.soft_factor({"params": 400.0}) == pytest.approx(0.5)
    assert hard.check({"latency_ms": 10.0, "params": 50.0})[1] == ["latency_ms 10 > constraint.latency_ms_max=5"]


def test_archs_from_another_space_or_version_are_refused(tmp_path: Path) -> None:
    resnet, nb201 = create_space("resnet_cifar"), create_space("nb201")
    foreign = nb201.sample(random.Random(0))
    with pytest.raises(ConfigError, match=r"from space 'nb201' version 1.*'resnet_cifar' version 1 is expected"):
        resnet.decode(foreign.to_json())
    future = Arch("resnet_cifar", 2, resnet.sample(random.Random(0)).decisions)
    with pytest.raises(ConfigError, match=r"version 2.*version 1 is expected"):
        resnet.build(future, 10)
    good = resnet.sample(random.Random(0))
    with pytest.raises(ConfigError, match="not an option"):
        resnet.decode({**good.to_json(), "decisions": {**good.decisions, "depth1": 2}})
    with pytest.raises(ConfigError, match=r"space\.widths"):
        create_space("resnet_cifar", widths=[8, 16, 32]).validate(good)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(foreign.to_json()))
    assert load_arch(path) == foreign
    with pytest.raises(ConfigError, match="'resnet_cifar' is expected"):
        load_arch(path, expected_space="resnet_cifar")


def test_kdas_space_grows_round_by_round() -> None:
    first = create_space("kdas_addon")
    round1 = first.make({"op1": "conv3x3", "op2": "sepconv5x5", "op3": "avgpool3x3", "skip1_2": 1, "skip1_3": 1,
                         "skip2_3": 0})
    second = create_space("kdas_addon", base=round1.to_json())
    round2 = second.sample(random.Random(0))
    assert load_arch(json.loads(json.dumps(round2.to_json()))) == round2  # the arch file alone rebuilds
    p1, p2 = count_params(first.build(round1, 10)), count_params(second.build(round2, 10))
    assert p1 > count_params(create_model("resnet20", num_classes=10)) and p2 >= p1
    grown = create_space("kdas_addon", base=create_space("resnet_cifar").sample(random.Random(0)).to_json())
    assert grown.build(grown.sample(random.Random(0)), 10)(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"space\.base"):
        create_space("kdas_addon", base="vgg8")


def test_nb201_arch_string_both_ways() -> None:
    space = create_space("nb201")
    text = "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|"
    arch = space.from_arch_str(text)
    assert space.arch_str(arch) == text and arch.decisions["e1_2"] == "skip_connect"
    with pytest.raises(ConfigError, match="NAS-Bench-201 arch string"):
        space.from_arch_str("|nor_conv_3x3~0|+|none~0|")


def _option(path: Path) -> dict:
    """An option file's own keys (its defaults list names its schema)."""
    node = OmegaConf.to_container(OmegaConf.load(path))
    node.pop("defaults")
    return node


def test_config_groups_and_unknown_keys() -> None:
    for path in sorted((CONF / "space").glob("*.yaml")):
        assert space_from_config(_option(path)).name == path.stem
    for path in sorted((CONF / "constraint").glob("*.yaml")):
        constraint_from_config(_option(path))
    assert constraint_from_config(_option(CONF / "constraint" / "params_1m.yaml")).targets == {"params": 1e6}
    with pytest.raises(ConfigError, match=r"space\.depth\b"):
        space_from_config({"name": "resnet_cifar", "depth": [1, 2]})
    with pytest.raises(ConfigError, match=r"space\.name='resnet_cifr'.*resnet_cifar"):
        create_space("resnet_cifr")
    with pytest.raises(ConfigError, match=r"constraint\.param_max"):
        constraint_from_config({"param_max": 5})


def test_latency_table_predicts_measured_latency(tmp_path: Path) -> None:
    space, table = create_space("resnet_cifar"), LatencyTable(threads=1)
    depths = [(1, 1, 1), (3, 3, 3), (5, 5, 5), (7, 7, 7), (1, 3, 5), (7, 5, 3), (1, 7, 7), (3, 1, 1)]
    archs = [space.make({"depth1": a, "depth2": b, "depth3": c}) for a, b, c in depths]  # a wide latency range
    result = latency_correlation(space, table, archs=archs, repeats=10)
    print(f"\nLUT vs measured latency, resnet_cifar, 8 archs: spearman {result['spearman']:.3f} "
          f"pearson {result['pearson']:.3f}")
    assert result["n"] == 8 and result["spearman"] > 0
    table.save(tmp_path / "lut.json")
    loaded = LatencyTable.load(tmp_path / "lut.json", threads=1)
    assert loaded.entries == table.entries and LatencyTable.load(tmp_path / "lut.json", threads=7).entries == {}
    arch = space.sample(random.Random(5))
    assert CostModel(space, latency_table=loaded)(arch, ["latency_ms"])["latency_ms"] > 0


@pytest.mark.slow  # 3-5 s (make test-fast stays under 3 minutes)
def test_export_round_trip_to_onnx(tmp_path: Path) -> None:
    import onnx

    from kdnas.api import run
    from kdnas.engine.checkpoint import save_weights

    space = create_space("resnet_cifar")
    arch = space.make({"depth1": 1, "depth2": 1, "depth3": 1})
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "arch.json").write_text(json.dumps({**arch.to_json(), "num_classes": 10}))
    torch.manual_seed(0)
    net = space.build(arch, 10).eval()
    save_weights(trained / "model.safetensors", net.state_dict())
    out = tmp_path / "export"
    summary = run("export", [f"++export.run_dir={trained}", "++export.latency_repeats=3", "logger=none"], out)
    assert summary["trained"] and summary["params"] == count_params(net) and summary["macs"] > 0
    assert load_arch(out / "arch.json") == arch and (out / "model.safetensors").is_file()
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model)
    x = torch.randn(3, 3, 32, 32)  # a batch size other than the traced one: the batch dimension is dynamic
    try:
        import onnxruntime

        got = onnxruntime.InferenceSession(str(out / "model.onnx")).run(None, {"input": x.numpy()})[0]
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        got = ReferenceEvaluator(model).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), net(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"export\.arch=PATH"):
        run("export", ["logger=none"], tmp_path / "nothing")
