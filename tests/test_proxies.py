"""Training-free proxies: DisWOT's closed-form semantic term, the class form's invariance, hand-checked
NASWOT, SynFlow's sign, one shared pass for all proxies, teacher statistics computed once per search."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdnas.data import Batch
from kdnas.distill.functional import fc_grad, semantic_class, semantic_official
from kdnas.evaluators import ProxyEvaluator, ProxySettings
from kdnas.models import FeatureNet, Features, create_model
from kdnas.proxies import compute_proxies, list_proxies, teacher_stats
from kdnas.spaces import create_space


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
    # resnet8x4 ends with 256 channels, resnet20 with 64: the official form cannot pair them -> class form
    wide, teacher = _net("resnet8x4", 3).train(), _net("resnet20", 2).train()
    stats = teacher_stats(teacher, batch, semantic="official")
    score = compute_proxies(wide, batch, ["diswot_semantic"], stats)["diswot_semantic"]
    f = wide.forward_features(batch.x)
    assert score == pytest.approx(semantic_class(fc_grad(f.embedding, f.logits, batch.y), stats.fc_grad).item(),
                                  rel=1e-4)


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
                               teacher_identity="test", num_classes=10, seed=0, cache_dir=tmp_path)
    archs = list(space.enumerate())[:3]
    first = evaluator.evaluate(archs[:2]) + evaluator.evaluate(archs[2:])
    assert len(builds) == 1 and len(forwards) == len(batches)
    assert all(set(r["scores"]) == {"diswot", "diswot_semantic", "diswot_relational", "params"} for r in first)
    if combine == "rank":
        assert all(0.0 <= r["reward"] <= 1.0 for r in first)
    again = ProxyEvaluator(space, batches, settings, names=["params"], teacher=make_teacher, teacher_identity="test",
                           num_classes=10, seed=0, cache_dir=tmp_path)
    assert again.evaluate(archs) == first and again.hits == 3 and len(builds) == 1  # cached: no teacher at all
