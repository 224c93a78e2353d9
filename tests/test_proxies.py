"""Training-free proxies: DisWOT's closed-form semantic term, the class form's invariance, hand-checked
NASWOT, SynFlow's sign, one shared pass for all proxies, teacher statistics computed once per search."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdnas.config import DataConfig, ModelConfig
from kdnas.context import build_model
from kdnas.data import Batch, build_data
from kdnas.distill.functional import fc_grad, semantic_class, semantic_official
from kdnas.errors import ConfigError
from kdnas.evaluators import RESULTS_VERSION, ProxyEvaluator, ProxySettings, proxy_batches
from kdnas.models import FeatureNet, Features, create_model
from kdnas.proxies import compute_proxies, list_proxies, teacher_stats
from kdnas.spaces import create_space, list_spaces
from kdnas.utils import derive_seed


def _batch(n: int = 16, classes: int = 10, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g), torch.arange(n))


def _net(name: str, seed: int = 0) -> FeatureNet:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10)


def _backward_fc_grad(net: FeatureNet, batch: Batch) -> torch.Tensor:
    """What DisWOT's official code reads: ``fc.weight.grad`` after ``CE.backward()``."""
    net.zero_grad()
    F.cross_entropy(net(batch.x), batch.y).backward()
    return net.classifier.weight.grad.clone()


def test_closed_form_semantic_score_equals_the_backward_pass() -> None:
    batch = _batch()
    student, teacher = _net("resnet8", 1).train(), _net("resnet20", 2).train()
    stats = teacher_stats(teacher, batch)
    assert torch.allclose(stats.fc_grad, _backward_fc_grad(teacher, batch), atol=1e-6)
    score = compute_proxies(student, batch, ["diswot_semantic"], stats)["diswot_semantic"]
    expected = semantic_official(_backward_fc_grad(student, batch), _backward_fc_grad(teacher, batch)).item()
    assert score == pytest.approx(expected, rel=1e-4)


def test_class_form_is_invariant_to_channel_permutations_and_used_across_widths() -> None:
    batch = _batch()
    feats = _net("resnet8", 1).train().forward_features(batch.x)
    ft = _net("resnet20", 2).train().forward_features(batch.x)
    g_t = fc_grad(ft.embedding, ft.logits, batch.y).detach()
    perm = torch.randperm(feats.embedding.shape[1], generator=torch.Generator().manual_seed(0))
    g = fc_grad(feats.embedding, feats.logits, batch.y)
    g_perm = fc_grad(feats.embedding[:, perm], feats.logits, batch.y)  # the same network, channels permuted
    assert torch.allclose(g_perm, g[:, perm])
    assert semantic_class(g_perm, g_t).item() == pytest.approx(semantic_class(g, g_t).item(), rel=1e-5)
    assert semantic_official(g_perm, g_t).item() != pytest.approx(semantic_official(g, g_t).item(), rel=1e-3)
    # resnet8x4 ends with 256 channels, resnet20 with 64: the class form scores it; the official one refuses
    # (never a silent per-candidate switch of formula)
    wide, teacher = _net("resnet8x4", 3).train(), _net("resnet20", 2).train()
    stats = teacher_stats(teacher, batch, semantic="class")
    score = compute_proxies(wide, batch, ["diswot_semantic"], stats)["diswot_semantic"]
    f = wide.forward_features(batch.x)
    assert score == pytest.approx(semantic_class(fc_grad(f.embedding, f.logits, batch.y), stats.fc_grad).item(),
                                  rel=1e-4)
    with pytest.raises(ValueError, match="semantic_official"):
        compute_proxies(wide, batch, ["diswot_semantic"], teacher_stats(teacher, batch, semantic="official"))


@pytest.mark.parametrize("name", list_spaces())
def test_final_widths_are_the_built_classifier_widths(name: str) -> None:
    space = create_space(name)
    rng = random.Random(0)
    built = set()
    with torch.device("meta"):
        for arch in [space.sample(rng) for _ in range(6)]:
            built.add(space.build(arch, 10).classifier.in_features)
    assert built <= space.final_widths()
    if name == "resnet_cifar_large":  # every (width multiplier, block) pair: exactly the analytic set
        base = space.sample(rng).decisions
        with torch.device("meta"):
            widths = {space.build(space.make({**base, "width3": m, "block3": b}), 10).classifier.in_features
                      for m in space.WIDTH_MULTS for b in space.BLOCK_TYPES}
        assert widths == space.final_widths() and 64 in widths and len(widths) > 1


def _resnet20() -> nn.Module:
    return _net("resnet20", 2).train()


def _evaluator(space_name: str, tmp_path: Path, semantic: str = "auto", width: int | None = 64) -> ProxyEvaluator:
    return ProxyEvaluator(create_space(space_name), [_batch(16)], ProxySettings(semantic=semantic),
                          names=["diswot_semantic"], teacher=_resnet20, teacher_identity="resnet20", num_classes=10,
                          seed=0, cache_dir=tmp_path, teacher_width=width)


def test_one_semantic_form_per_search_whatever_a_candidate_s_width(tmp_path: Path) -> None:
    """resnet_cifar_large with a resnet20 teacher: a candidate that happens to end with the teacher's 64
    channels is scored with the same (class) formula as one ending with 48, not the official one."""
    evaluator = _evaluator("resnet_cifar_large", tmp_path)
    space = evaluator.space
    base = {f"{k}{i}": v for i in (1, 2, 3) for k, v in (("block", "basic"), ("kernel", 3), ("width", 0.5),
                                                          ("depth", 1))}
    matched, narrower = (space.make({**base, "width3": m}) for m in (1.0, 0.75))
    teacher = teacher_stats(_resnet20(), evaluator.batches[0], semantic="class")
    results = evaluator.evaluate([matched, narrower])
    assert evaluator.semantic_form == "class"
    for arch, result in zip((matched, narrower), results):
        net = evaluator.build(arch)
        f = net.forward_features(evaluator.batches[0].x)
        expected = semantic_class(fc_grad(f.embedding, f.logits, evaluator.batches[0].y), teacher.fc_grad).item()
        assert result["scores"]["diswot_semantic"] == pytest.approx(expected, rel=1e-4)
        assert result["semantic_form"] == "class"
    assert net.classifier.in_features == 48 and evaluator.build(matched).classifier.in_features == 64


def test_semantic_form_auto_official_and_refused(tmp_path: Path) -> None:
    uniform = _evaluator("resnet_cifar", tmp_path)  # every arch ends with 64 channels, as resnet20
    assert uniform.semantic_form == "official" and uniform.identity["semantic_form"] == "official"
    forced = _evaluator("resnet_cifar", tmp_path, semantic="class")
    assert forced.semantic_form == "class" and forced.fingerprint != uniform.fingerprint  # part of the cache key
    built = _evaluator("resnet_cifar", tmp_path, width=None)  # the width read from the teacher itself
    assert built.semantic_form == "official" and built.fingerprint == uniform.fingerprint
    with pytest.raises(ConfigError, match="evaluator.semantic=official"):
        _evaluator("resnet_cifar_large", tmp_path, semantic="official")
    with pytest.raises(ConfigError, match="evaluator.semantic=official"):  # resnet_cifar ends at 64, teacher at 32
        _evaluator("resnet_cifar", tmp_path, semantic="official", width=32)


class TwoUnits(FeatureNet):
    """x [B, 2] -> relu(x) (identity weights): the binary codes are the signs of the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes, self.stage_channels = 2, [2]
        self.classifier = nn.Linear(2, 2)

    def forward_features(self, x: torch.Tensor) -> Features:
        h = F.relu(x)
        return Features(self.classifier(h), [h], h[:, :, None, None], h)


def test_naswot_hand_case() -> None:
    x = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])  # codes 10, 11, 00
    # K_ij = units - Hamming(c_i, c_j) = [[2, 1, 1], [1, 2, 0], [1, 0, 2]], det = 4
    score = compute_proxies(TwoUnits(), Batch(x, torch.tensor([0, 1, 0]), torch.arange(3)), ["naswot"])["naswot"]
    assert score == pytest.approx(math.log(4.0))


def test_synflow_positive_and_all_proxies_share_one_pass() -> None:
    batch = _batch()
    model, teacher = _net("resnet8", 1), _net("resnet20", 2).train()
    calls = []
    model.conv1.register_forward_hook(lambda *_: calls.append(1))
    scores = compute_proxies(model, batch, list_proxies(), teacher_stats(teacher, batch))
    assert set(list_proxies()) <= set(scores)
    assert len(calls) == 2  # the shared pass + synflow's own (all-ones input, |weights|, float64) on a copy
    assert scores["synflow"] > 0 and scores["params"] == sum(p.numel() for p in model.parameters())
    assert scores["diswot"] == pytest.approx(scores["diswot_semantic"] + scores["diswot_relational"])
    assert all(math.isfinite(v) for v in scores.values())


@pytest.mark.parametrize("combine", ["sum", "rank"])
def test_teacher_statistics_are_computed_once_per_search(tmp_path: Path, combine: str) -> None:
    space = create_space("resnet_cifar")
    teacher = _net("resnet20", 2).train()
    forwards, builds = [], []
    teacher.conv1.register_forward_hook(lambda *_: forwards.append(1))

    def make_teacher() -> nn.Module:
        builds.append(1)
        return teacher

    settings = ProxySettings(combine=combine, rank_reference=4)
    batches = [_batch(8, seed=0), _batch(8, seed=1)]
    evaluator = ProxyEvaluator(space, batches, settings, names=["params"], teacher=make_teacher,
                               teacher_identity="test", num_classes=10, seed=0, cache_dir=tmp_path, teacher_width=64)
    archs = list(space.enumerate())[:3]
    first = evaluator.evaluate(archs[:2]) + evaluator.evaluate(archs[2:])
    assert len(builds) == 1 and len(forwards) == len(batches)
    assert all(set(r["scores"]) == {"diswot", "diswot_semantic", "diswot_relational", "params"} for r in first)
    if combine == "rank":
        assert all(0.0 <= r["reward"] <= 1.0 for r in first)
    again = ProxyEvaluator(space, batches, settings, names=["params"], teacher=make_teacher, teacher_identity="test",
                           num_classes=10, seed=0, cache_dir=tmp_path, teacher_width=64)
    assert again.evaluate(archs) == first and again.hits == 3 and len(builds) == 1  # cached: no teacher at all


# -- results version: a proxy's output may change only with a bump of RESULTS_VERSION["proxy"] --------------

GOLDEN = Path(__file__).parent / "data" / "proxy_golden.json"
GOLDEN_ARCHS = [(1, 1, 1), (3, 3, 3), (1, 5, 3)]  # resnet_cifar depths


def _golden_scores(cache: Path) -> dict[str, dict[str, float]]:
    """Every registered proxy on 3 fixed resnet_cifar archs, on the bundled data's fixed proxy batch, against the
    random resnet20 teacher a search builds (evaluator.teacher_state=random), through the search's evaluator."""
    data = build_data(DataConfig(max_train_per_class=20, max_test_per_class=10), cache / "data", cache)
    settings = ProxySettings(batch_size=16)
    space = create_space("resnet_cifar")

    def teacher() -> nn.Module:
        return build_model(ModelConfig(name="resnet20"), data.num_classes, derive_seed(0, "proxy-teacher")).train()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluator = ProxyEvaluator(space, proxy_batches(data, settings, 0, torch.device("cpu")), settings,
                                   names=list_proxies(), teacher=teacher, teacher_identity="golden",
                                   num_classes=data.num_classes, seed=0, cache_dir=cache / "golden-evals")
        archs = [space.make({f"depth{i + 1}": d for i, d in enumerate(depths)}) for depths in GOLDEN_ARCHS]
        return {"-".join(map(str, depths)): r["scores"] for depths, r in zip(GOLDEN_ARCHS, evaluator.evaluate(archs))}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_proxy_scores_change_only_with_a_results_version_bump(tmp_path: Path) -> None:
    """Cached proxy results are keyed on RESULTS_VERSION["proxy"]: if this fails, a change altered the scores, so
    bump RESULTS_VERSION["proxy"] in kdnas/evaluators/base.py (stale cached scores would be served otherwise) and
    regenerate the golden file: KDNAS_REGENERATE_GOLDEN=1 pytest tests/test_proxies.py -k results_version."""
    scores = _golden_scores(tmp_path)
    if os.environ.get("KDNAS_REGENERATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"results_version": RESULTS_VERSION["proxy"], "archs": GOLDEN_ARCHS,
                                      "scores": scores}, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["results_version"] == RESULTS_VERSION["proxy"], (
        f"RESULTS_VERSION['proxy'] is {RESULTS_VERSION['proxy']} but {GOLDEN.name} was recorded under "
        f"{golden['results_version']}: regenerate it (KDNAS_REGENERATE_GOLDEN=1 pytest tests/test_proxies.py "
        "-k results_version).")
    changed = {(arch, name): (value, golden["scores"][arch].get(name))
               for arch, row in scores.items() for name, value in row.items()
               if golden["scores"][arch].get(name) is None
               or not math.isclose(value, golden["scores"][arch][name], rel_tol=1e-3, abs_tol=1e-6)}
    assert set(scores) == set(golden["scores"]) and not changed, (
        f"Proxy scores changed without a bump of RESULTS_VERSION['proxy'] (now, golden): {changed}. Bump "
        "RESULTS_VERSION['proxy'] in kdnas/evaluators/base.py and regenerate the golden file "
        "(KDNAS_REGENERATE_GOLDEN=1 pytest tests/test_proxies.py -k results_version).")


def test_results_version_is_part_of_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _evaluator("resnet_cifar", tmp_path).fingerprint
    monkeypatch.setitem(RESULTS_VERSION, "proxy", RESULTS_VERSION["proxy"] + 1)
    assert _evaluator("resnet_cifar", tmp_path).fingerprint != before
