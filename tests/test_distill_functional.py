"""kdnas.distill.functional against hand-worked values, reference formulas and known identities.

Everything runs on tiny float64 tensors; the hand computations use numpy so they share no code with the
implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdnas.data import Batch
from kdnas.distill import functional as kdf
from kdnas.distill.crd import nce_loss
from kdnas.distill.terms import (
    DistillConfig,
    TeacherOutput,
    TermContext,
    blank_features,
    build_terms,
    distill_config,
    dkd_beta,
)
from kdnas.errors import ConfigError
from kdnas.models import FeatureNet, create_model

DT = torch.float64


def t(x) -> Tensor:
    return torch.tensor(x, dtype=DT)


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) over the last axis."""
    return (p * (np.log(p) - np.log(q))).sum(-1)


def np_ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return -np.log(np_softmax(z)[np.arange(len(y)), y])


def np_huber(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1.0, 0.5 * d**2, d - 0.5).mean())


S = [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.5, 3.0]]
TT = [[2.0, 1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, 4.0]]
Y = [1, 0, 2]


# --------------------------------------------------------------------------------------------------- KD


def test_kd_hand_computed() -> None:
    s, tl, T = np.array(S), np.array(TT), 2.0
    # KL(softmax(t/T) || softmax(s/T)) per sample, mean over the 3 samples, times T^2 = 4.
    expected = np_kl(np_softmax(tl / T), np_softmax(s / T)).mean() * T**2
    assert kdf.kd(t(S), t(TT), T=T).item() == pytest.approx(expected, rel=1e-12)
    # RepDistiller DistillKL: kl_div(..., sum) * T^2 / B.
    repd = F.kl_div(F.log_softmax(t(S) / T, 1), F.softmax(t(TT) / T, 1), reduction="sum") * T**2 / 3
    assert kdf.kd(t(S), t(TT), T=T).item() == pytest.approx(repd.item(), rel=1e-12)


def test_kd_of_itself_is_zero() -> None:
    assert kdf.kd(t(S), t(S)).item() == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("T", [1.0, 4.0, 20.0])
def test_kd_gradient_is_T_times_prob_difference(T: float) -> None:
    s = t(S).requires_grad_(True)
    kdf.kd(s, t(TT), T=T).backward()
    # d/ds [T^2/B * KL(p_t || softmax(s/T))] = T^2/B * (softmax(s/T) - p_t) / T
    expected = T * (F.softmax(t(S) / T, 1) - F.softmax(t(TT) / T, 1)) / 3
    torch.testing.assert_close(s.grad, expected)


def test_soft_target_ce() -> None:
    q = F.softmax(t(TT), 1)
    torch.testing.assert_close(kdf.soft_target_ce(t(S), q), F.cross_entropy(t(S), q))
    onehot = F.one_hot(torch.tensor(Y), 3).to(DT)
    torch.testing.assert_close(kdf.soft_target_ce(t(S), onehot), F.cross_entropy(t(S), torch.tensor(Y)))


def test_kd_objective_mixes_ce_and_kd() -> None:
    y = torch.tensor(Y)
    expected = 0.1 * F.cross_entropy(t(S), y) + 0.9 * kdf.kd(t(S), t(TT), T=4.0)
    torch.testing.assert_close(kdf.kd_objective(t(S), t(TT), y, T=4.0, alpha=0.9), expected)
    per = kdf.kd_per_sample(t(S), t(TT), y, T=4.0, alpha=0.9)
    assert per.shape == (3,)
    torch.testing.assert_close(per.mean(), expected)


# -------------------------------------------------------------------------------------------------- DKD


def np_dkd_parts(s: np.ndarray, tl: np.ndarray, y: np.ndarray, T: float) -> tuple[np.ndarray, np.ndarray]:
    """Paper definitions: binary [p_t, 1 - p_t] KL, and KL among the non-target classes renormalised."""
    ps, pt = np_softmax(s / T), np_softmax(tl / T)
    tckd, nckd = [], []
    for i, yi in enumerate(y):
        bs = np.array([ps[i, yi], 1 - ps[i, yi]])
        bt = np.array([pt[i, yi], 1 - pt[i, yi]])
        tckd.append(np_kl(bt, bs))
        rest = np.arange(s.shape[1]) != yi
        nckd.append(np_kl(np_softmax(tl[i, rest] / T), np_softmax(s[i, rest] / T)))
    return np.array(tckd), np.array(nckd)


def test_dkd_matches_paper_definitions() -> None:
    s, tl, y, T = np.array(S), np.array(TT), np.array(Y), 4.0
    tckd, nckd = kdf.dkd_parts(t(S), t(TT), torch.tensor(Y), T=T)
    e_tckd, e_nckd = np_dkd_parts(s, tl, y, T)
    np.testing.assert_allclose(tckd.numpy(), e_tckd, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(nckd.numpy(), e_nckd, rtol=1e-9, atol=1e-12)
    # mdistiller dkd_loss: (alpha * TCKD_sum + beta * NCKD_sum) * T^2 / B.
    expected = (1.0 * e_tckd + 8.0 * e_nckd).mean() * T**2
    assert kdf.dkd(t(S), t(TT), torch.tensor(Y)).item() == pytest.approx(expected, rel=1e-9)
    assert kdf.dkd(t(S), t(TT), torch.tensor(Y), alpha=2.0, beta=0.5, T=2.0).item() == pytest.approx(
        (2.0 * np_dkd_parts(s, tl, y, 2.0)[0] + 0.5 * np_dkd_parts(s, tl, y, 2.0)[1]).mean() * 4.0, rel=1e-9
    )


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_decomposition_identity(T: float) -> None:
    """KL_T(t || s) = TCKD + (1 - p_target^T) * NCKD per sample (all before T^2 and alpha/beta)."""
    torch.manual_seed(0)
    s, tl, y = torch.randn(6, 5, dtype=DT) * 3, torch.randn(6, 5, dtype=DT) * 3, torch.randint(0, 5, (6,))
    tckd, nckd = kdf.dkd_parts(s, tl, y, T=T)
    p_target = F.softmax(tl / T, 1).gather(1, y[:, None]).squeeze(1)
    per_sample_kl = kdf.kd_per_sample(s, tl, y, T=T, alpha=1.0) / T**2
    torch.testing.assert_close(per_sample_kl, tckd + (1 - p_target) * nckd)
    torch.testing.assert_close(kdf.kd(s, tl, T=T), ((tckd + (1 - p_target) * nckd) * T**2).mean())


def test_dkd_is_zero_for_identical_logits() -> None:
    assert kdf.dkd(t(S), t(S), torch.tensor(Y)).item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------ feature KD


def test_fitnet_is_mse() -> None:
    a, b = t([[1.0, 2.0], [3.0, 4.0]]), t([[0.0, 2.0], [5.0, 4.0]])
    assert kdf.fitnet(a, b).item() == pytest.approx((1 + 0 + 4 + 0) / 4)


def test_attention_hand_computed() -> None:
    f_s = t([[[[1.0, 2.0], [3.0, 4.0]]]])  # one channel: squares 1, 4, 9, 16
    f_t = t([[[[1.0, 1.0], [1.0, 1.0]], [[-1.0, 1.0], [1.0, -1.0]]]])  # channel mean of squares: all 1
    q_s = np.array([1, 4, 9, 16]) / math.sqrt(1 + 16 + 81 + 256)
    q_t = np.ones(4) / 2
    np.testing.assert_allclose(kdf.attention_map(f_s).numpy(), q_s[None])
    expected = ((q_s - q_t) ** 2).mean()
    assert kdf.at([f_s], [f_t]).item() == pytest.approx(expected, rel=1e-12)
    # two pairs are summed
    assert kdf.at([f_s, f_s], [f_t, f_s]).item() == pytest.approx(expected, rel=1e-12)


def test_attention_pools_larger_map_to_smaller() -> None:
    torch.manual_seed(1)
    f_s, f_t = torch.randn(2, 3, 2, 2, dtype=DT), torch.randn(2, 5, 4, 4, dtype=DT)
    pooled = F.avg_pool2d(f_t, 2)  # 4x4 -> 2x2, what adaptive pooling does for an integer ratio
    expected = (kdf.attention_map(f_s) - kdf.attention_map(pooled)).pow(2).mean()
    torch.testing.assert_close(kdf.at([f_s], [f_t]), expected)
    torch.testing.assert_close(kdf.at([f_t], [f_s]), expected)


def test_sp_hand_computed() -> None:
    f_s, f_t = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])
    # G_s = [[1, 1], [1, 2]] -> rows [1, 1]/sqrt2, [1, 2]/sqrt5; G_t = I.
    g_s = np.array([[1, 1] / np.sqrt(2), [1, 2] / np.sqrt(5)])
    expected = ((g_s - np.eye(2)) ** 2).sum() / 4
    assert kdf.sp(t(f_s), t(f_t)).item() == pytest.approx(expected, rel=1e-12)
    # widths may differ: a 4-D map against a flat one
    assert kdf.sp(t(f_s).view(2, 2, 1, 1), t(np.hstack([f_t, f_t]))).item() == pytest.approx(expected)


def test_rkd_distance_hand_computed() -> None:
    s = t([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # distances 3, 4, 5; mean over the 6 off-diagonal = 4
    te = t([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # distances 1, 1, sqrt2
    d_s = np.array([[0, 3, 4], [3, 0, 5], [4, 5, 0]]) / 4.0
    r2 = math.sqrt(2)
    d_t = np.array([[0, 1, 1], [1, 0, r2], [1, r2, 0]]) / ((4 + 2 * r2) / 6)
    assert kdf.rkd_distance(s, te).item() == pytest.approx(np_huber(d_s, d_t), rel=1e-12)


def test_rkd_angle_hand_computed() -> None:
    s = t([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    te = t([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])

    def cosines(e: np.ndarray) -> np.ndarray:
        out = np.zeros((3, 3, 3))
        for i in range(3):  # RepDistiller: angle at vertex i between e_j - e_i and e_k - e_i
            for j in range(3):
                for k in range(3):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    if nu > 0 and nv > 0:
                        out[i, j, k] = u @ v / (nu * nv)
        return out

    expected = np_huber(cosines(s.numpy()), cosines(te.numpy()))
    assert kdf.rkd_angle(s, te).item() == pytest.approx(expected, rel=1e-9)


def test_rkd_weights_and_scale_invariance() -> None:
    torch.manual_seed(2)
    s, te = torch.randn(5, 4, dtype=DT), torch.randn(5, 7, dtype=DT)
    torch.testing.assert_close(kdf.rkd(s, te), 25 * kdf.rkd_distance(s, te) + 50 * kdf.rkd_angle(s, te))
    # distances are normalised by their mean and angles are scale-free
    assert kdf.rkd(3.0 * s, s).item() == pytest.approx(0.0, abs=1e-10)


def test_pkt_hand_computed() -> None:
    f_s, f_t, eps = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]), 1e-7

    def probs(f: np.ndarray) -> np.ndarray:
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        k = (f @ f.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    p_s, p_t = probs(f_s), probs(f_t)
    expected = (p_t * np.log((p_t + eps) / (p_s + eps))).mean()
    assert kdf.pkt(t(f_s), t(f_t)).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "loss",
    [
        lambda a, b: kdf.sp(a, b),
        lambda a, b: kdf.at([a], [b]),
        lambda a, b: kdf.rkd(a, b),
        lambda a, b: kdf.pkt(a.flatten(1), b.flatten(1)),
        lambda a, b: kdf.fitnet(a, b),
    ],
    ids=["sp", "at", "rkd", "pkt", "fitnet"],
)
def test_feature_losses_vanish_when_student_equals_teacher(loss: Callable[[Tensor, Tensor], Tensor]) -> None:
    torch.manual_seed(3)
    f = torch.randn(4, 3, 2, 2, dtype=DT)
    assert loss(f, f.clone()).item() == pytest.approx(0.0, abs=1e-10)


# ------------------------------------------------------------------------------------------- oracle KD

# 3 members x 4 samples x 3 classes; targets 0, 1, 2, 0.
MEMBERS = [
    [[3.0, 0.0, 0.0], [0.0, 0.0, 2.0], [2.0, 0.0, 0.0], [1.0, 0.0, 0.0]],  # right on 0, 3
    [[2.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [2.0, 1.0, 0.0]],  # right on 0, 3
    [[0.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.0]],  # right on 1, 3
]
ORACLE_Y = [0, 1, 2, 0]
STUDENT = [[0.5, 0.2, 0.1], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]


def test_oracle_mask_and_disagreement() -> None:
    correct, any_correct = kdf.oracle_mask(t(MEMBERS), torch.tensor(ORACLE_Y))
    assert correct.tolist() == [
        [True, False, False, True],
        [True, False, False, True],
        [False, True, False, True],
    ]
    assert any_correct.tolist() == [True, True, False, True]
    # samples 0, 1, 2 have at least one wrong member; sample 3 has none
    assert kdf.oracle_disagreement_fraction(t(MEMBERS), torch.tensor(ORACLE_Y)) == pytest.approx(0.75)


def test_oracle_kd_hand_computed() -> None:
    m, s, y, T, a = np.array(MEMBERS), np.array(STUDENT), np.array(ORACLE_Y), 4.0, 0.9
    teachers = [m[[0, 1], 0].mean(0), m[2, 1], None, m[:, 3].mean(0)]
    per_sample = []
    for i, tl in enumerate(teachers):
        ce = np_ce(s[i : i + 1], y[i : i + 1])[0]
        if tl is None:
            per_sample.append(ce)
        else:
            kl = np_kl(np_softmax(tl / T), np_softmax(s[i] / T))
            per_sample.append((1 - a) * ce + a * T**2 * kl)
    got = kdf.oracle_kd(t(STUDENT), t(MEMBERS), torch.tensor(ORACLE_Y), T=T, alpha=a)
    assert got.item() == pytest.approx(np.mean(per_sample), rel=1e-12)


def test_oracle_kd_is_kd_objective_per_sample_and_ce_when_none_correct() -> None:
    torch.manual_seed(4)
    members, s = torch.randn(4, 8, 5, dtype=DT) * 2, torch.randn(8, 5, dtype=DT)
    y = torch.randint(0, 5, (8,))
    correct, any_correct = kdf.oracle_mask(members, y)
    assert any_correct.any() and not any_correct.all()  # both branches exercised with this seed
    expected = []
    for i in range(8):
        si, yi = s[i : i + 1], y[i : i + 1]
        if any_correct[i]:
            teacher = members[correct[:, i], i].mean(0, keepdim=True)
            expected.append(kdf.kd_objective(si, teacher, yi, T=3.0, alpha=0.7))
        else:
            expected.append(F.cross_entropy(si, yi))
    torch.testing.assert_close(kdf.oracle_kd(s, members, y, T=3.0, alpha=0.7), torch.stack(expected).mean())


# ----------------------------------------------------------------------------------------------- DisWOT


def test_fc_grad_matches_autograd() -> None:
    torch.manual_seed(5)
    fc = nn.Linear(6, 4).to(DT)
    h, y = torch.randn(5, 6, dtype=DT), torch.randint(0, 4, (5,))
    logits = fc(h)
    F.cross_entropy(logits, y).backward()
    torch.testing.assert_close(kdf.fc_grad(h, logits.detach(), y), fc.weight.grad)


def official_channel_similarity(f_t: Tensor, f_s: Tensor) -> Tensor:
    """The DisWOT README's ``channel_similarity`` written out with the literal [K, C, C] tensor."""
    k, c = f_s.shape
    emd_s = F.normalize(torch.bmm(f_s.view(k, c, 1), f_s.view(k, 1, c)), dim=2)
    emd_t = F.normalize(torch.bmm(f_t.view(k, c, 1), f_t.view(k, 1, c)), dim=2)
    return (emd_s - emd_t).pow(2).sum() / (c * k)


def test_semantic_official_matches_literal_code() -> None:
    torch.manual_seed(6)
    g_s, g_t = torch.randn(4, 6, dtype=DT), torch.randn(4, 6, dtype=DT)
    g_s[1, 2] = 0.0  # a zero entry gives a zero row, as in the literal code
    torch.testing.assert_close(kdf.semantic_official(g_s, g_t), -official_channel_similarity(g_t, g_s))
    assert kdf.semantic_official(g_s, g_s).item() == pytest.approx(0.0, abs=1e-12)


def test_semantic_class_is_channel_permutation_invariant_official_is_not() -> None:
    torch.manual_seed(7)
    g_s, g_t = torch.randn(5, 8, dtype=DT), torch.randn(5, 8, dtype=DT)
    perm = torch.randperm(8)
    torch.testing.assert_close(kdf.semantic_class(g_s[:, perm], g_t), kdf.semantic_class(g_s, g_t))
    assert kdf.semantic_class(g_t[:, perm], g_t).item() == pytest.approx(0.0, abs=1e-12)
    official = kdf.semantic_official(g_s, g_t).item()
    assert abs(kdf.semantic_official(g_s[:, perm], g_t).item() - official) > 1e-3
    assert kdf.semantic_official(g_t[:, perm], g_t).item() < -1e-3
    # the width-agnostic form accepts different widths
    assert kdf.semantic_class(torch.randn(5, 3, dtype=DT), g_t).item() <= 0.0


def test_semantic_class_hand_computed() -> None:
    g_s, g_t = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    a_s = np.array([[1, 1] / np.sqrt(2), [1, 2] / np.sqrt(5)])  # g_s g_s^T = [[1, 1], [1, 2]]
    expected = -((a_s - np.eye(2)) ** 2).sum() / 4  # g_t g_t^T is diagonal -> I after row norm
    assert kdf.semantic_class(t(g_s), t(g_t)).item() == pytest.approx(expected, rel=1e-12)


def test_relational_is_minus_sp() -> None:
    torch.manual_seed(8)
    f_s, f_t = torch.randn(4, 3, 2, 2, dtype=DT), torch.randn(4, 6, 4, 4, dtype=DT)
    torch.testing.assert_close(kdf.relational(f_s, f_t), -kdf.sp(f_s, f_t))
    assert kdf.relational(f_t, f_t).item() == pytest.approx(0.0, abs=1e-12)


def test_diswot_loss_definition_and_gradients() -> None:
    torch.manual_seed(9)
    h_s = torch.randn(6, 4, dtype=DT, requires_grad=True)
    z_s = torch.randn(6, 5, dtype=DT, requires_grad=True)
    f_s = torch.randn(6, 4, 2, 2, dtype=DT, requires_grad=True)
    h_t, z_t, f_t = (
        torch.randn(6, 8, dtype=DT),
        torch.randn(6, 5, dtype=DT),
        torch.randn(6, 8, 3, 3, dtype=DT),
    )
    y = torch.randint(0, 5, (6,))
    loss = kdf.diswot_loss(h_s, z_s, f_s, h_t, z_t, f_t, y, w_sem=2.0, w_rel=3.0)
    g_s, g_t = kdf.fc_grad(h_s, z_s, y), kdf.fc_grad(h_t, z_t, y)
    torch.testing.assert_close(loss, -2.0 * kdf.semantic_class(g_s, g_t) - 3.0 * kdf.relational(f_s, f_t))
    loss.backward()
    for x in (h_s, z_s, f_s):
        assert x.grad is not None and x.grad.abs().sum() > 0
    assert kdf.diswot_loss(h_t, z_t, f_t, h_t, z_t, f_t, y).item() == pytest.approx(0.0, abs=1e-10)


# ---------------------------------------------------------------------------------- teacher gets no grad


def _y4() -> Tensor:
    return torch.tensor([0, 1, 2, 1])


TEACHER_CASES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], tuple[int, ...]]] = {
    "kd": (lambda s, te: kdf.kd(s, te), (4, 3)),
    "kd_objective": (lambda s, te: kdf.kd_objective(s, te, _y4()), (4, 3)),
    "soft_target_ce": (lambda s, te: kdf.soft_target_ce(s, te.softmax(1)), (4, 3)),
    "dkd": (lambda s, te: kdf.dkd(s, te, _y4()), (4, 3)),
    "oracle_kd": (lambda s, te: kdf.oracle_kd(s, torch.stack([te, -te]), _y4()), (4, 3)),
    "fitnet": (kdf.fitnet, (4, 3, 2, 2)),
    "at": (lambda s, te: kdf.at([s], [te]), (4, 3, 2, 2)),
    "sp": (kdf.sp, (4, 3, 2, 2)),
    "rkd": (kdf.rkd, (4, 3)),
    "pkt": (kdf.pkt, (4, 3)),
    "semantic_official": (kdf.semantic_official, (4, 3)),
    "semantic_class": (kdf.semantic_class, (4, 3)),
    "diswot": (lambda s, te: kdf.diswot_loss(s, s, s, te, te, te, _y4()), (4, 4)),
}


@pytest.mark.parametrize("name", sorted(TEACHER_CASES))
def test_gradient_reaches_only_the_student(name: str) -> None:
    loss_fn, shape = TEACHER_CASES[name]
    torch.manual_seed(10)
    s = torch.randn(*shape, dtype=DT, requires_grad=True)
    te = torch.randn(*shape, dtype=DT, requires_grad=True)
    loss_fn(s, te).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert te.grad is None


# ------------------------------------------------------------------------------------------ shape errors

SHAPE_ERRORS: dict[str, Callable[[], object]] = {
    "kd": lambda: kdf.kd(torch.zeros(2, 3), torch.zeros(2, 4)),
    "dkd_target": lambda: kdf.dkd(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long)),
    "fitnet": lambda: kdf.fitnet(torch.zeros(2, 3), torch.zeros(2, 4)),
    "at_count": lambda: kdf.at([torch.zeros(2, 1, 2, 2)], []),
    "at_batch": lambda: kdf.at([torch.zeros(2, 1, 2, 2)], [torch.zeros(3, 1, 2, 2)]),
    "at_dim": lambda: kdf.at([torch.zeros(2, 4)], [torch.zeros(2, 4)]),
    "sp": lambda: kdf.sp(torch.zeros(2, 3), torch.zeros(3, 3)),
    "rkd": lambda: kdf.rkd(torch.zeros(2, 3), torch.zeros(3, 3)),
    "pkt": lambda: kdf.pkt(torch.zeros(2, 3), torch.zeros(3, 3)),
    "oracle_dim": lambda: kdf.oracle_kd(
        torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    ),
    "oracle_classes": lambda: kdf.oracle_kd(
        torch.zeros(2, 3), torch.zeros(1, 2, 4), torch.zeros(2, dtype=torch.long)
    ),
    "fc_grad": lambda: kdf.fc_grad(torch.zeros(3, 5), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long)),
    "semantic_official_width": lambda: kdf.semantic_official(torch.zeros(4, 3), torch.zeros(4, 5)),
    "semantic_class_classes": lambda: kdf.semantic_class(torch.zeros(4, 3), torch.zeros(5, 3)),
}


@pytest.mark.parametrize("name", sorted(SHAPE_ERRORS))
def test_shape_mismatch_raises_value_error(name: str) -> None:
    with pytest.raises(ValueError):
        SHAPE_ERRORS[name]()


# ------------------------------------------------------------------- hand values for the remaining terms


def test_soft_target_ce_hand_computed() -> None:
    s, q = np.array(S), np_softmax(np.array(TT))
    expected = -(q * np.log(np_softmax(s))).sum(1).mean()
    assert kdf.soft_target_ce(t(S), t(q)).item() == pytest.approx(expected, rel=1e-12)


def test_kd_per_sample_hand_computed_with_per_sample_alpha() -> None:
    s, tl, y, T = np.array(S), np.array(TT), np.array(Y), 3.0
    alpha = np.array([0.9, 0.0, 0.5])
    expected = (1 - alpha) * np_ce(s, y) + alpha * T**2 * np_kl(np_softmax(tl / T), np_softmax(s / T))
    got = kdf.kd_per_sample(t(S), t(TT), torch.tensor(Y), T=T, alpha=t(alpha))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    assert kdf.kd_objective(t(S), t(TT), torch.tensor(Y), T=T, alpha=0.9).item() == pytest.approx(
        ((0.1 * np_ce(s, y)) + 0.9 * T**2 * np_kl(np_softmax(tl / T), np_softmax(s / T))).mean(), rel=1e-12)


def np_fc_grad(h: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np_softmax(z) - np.eye(z.shape[1])[y]).T @ h / len(y)


def np_semantic_official(g_s: np.ndarray, g_t: np.ndarray) -> float:
    """Per class k, the C x C matrix g_k g_k^T with L2-normalised rows (a zero row stays zero)."""
    def maps(g: np.ndarray) -> np.ndarray:
        m = np.einsum("ki,kj->kij", g, g)
        norm = np.linalg.norm(m, axis=2, keepdims=True)
        return np.divide(m, norm, out=np.zeros_like(m), where=norm > 0)

    k, c = g_s.shape
    return -float(((maps(g_s) - maps(g_t)) ** 2).sum() / (c * k))


def np_semantic_class(g_s: np.ndarray, g_t: np.ndarray) -> float:
    def rows(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return -float(((rows(g_s @ g_s.T) - rows(g_t @ g_t.T)) ** 2).sum() / len(g_s) ** 2)


def np_sp(f_s: np.ndarray, f_t: np.ndarray) -> float:
    def gram(f: np.ndarray) -> np.ndarray:
        flat = f.reshape(len(f), -1)
        g = flat @ flat.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    return float(((gram(f_s) - gram(f_t)) ** 2).sum() / len(f_s) ** 2)


def test_semantic_official_hand_computed() -> None:
    g_s, g_t = np.array([[1.0, 2.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 1.0]])
    # class 0: [[1, 2], [2, 4]] -> both rows [1, 2]/sqrt5; teacher [[1, 0], [0, 0]] -> rows [1, 0] and 0
    # class 1: [[0, 0], [0, 1]] -> rows 0 and [0, 1]; teacher [[1, 1], [1, 1]] -> both rows [1, 1]/sqrt2
    r5, r2 = 1 / math.sqrt(5), 1 / math.sqrt(2)
    by_hand = ((r5 - 1) ** 2 + (2 * r5) ** 2 + r5**2 + (2 * r5) ** 2 + 2 * r2**2 + r2**2 + (1 - r2) ** 2) / 4
    assert np_semantic_official(g_s, g_t) == pytest.approx(-by_hand, rel=1e-12)
    assert kdf.semantic_official(t(g_s), t(g_t)).item() == pytest.approx(-by_hand, rel=1e-9)


@pytest.mark.parametrize("form", ["official", "class"])
def test_diswot_loss_hand_computed(form: str) -> None:
    rng = np.random.default_rng(11)
    h_s, h_t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4 if form == "official" else 7))
    z_s, z_t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    f_s, f_t = rng.normal(size=(6, 4, 2, 2)), rng.normal(size=(6, 3, 3, 3))
    y = np.array([0, 1, 2, 3, 4, 1])
    g_s, g_t = np_fc_grad(h_s, z_s, y), np_fc_grad(h_t, z_t, y)
    semantic = np_semantic_official(g_s, g_t) if form == "official" else np_semantic_class(g_s, g_t)
    expected = -2.0 * semantic + 30.0 * np_sp(f_s, f_t)
    got = kdf.diswot_loss(t(h_s), t(z_s), t(f_s), t(h_t), t(z_t), t(f_t), torch.tensor(y), w_sem=2.0, w_rel=30.0,
                          semantic=form)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_crd_nce_loss_hand_computed() -> None:
    scores, n_data = np.array([[0.5, 0.1, 0.2], [0.9, 0.3, 0.05]]), 10  # positive first, then K = 2 negatives
    m_pn = 2 / n_data
    expected = -(np.log(scores[:, 0] / (scores[:, 0] + m_pn)).sum() + np.log(m_pn / (scores[:, 1:] + m_pn)).sum()) / 2
    assert nce_loss(t(scores), n_data, eps=0.0).item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------- terms: each one wires its function correctly


def _term_context(cfg: DistillConfig, student: FeatureNet, teacher: FeatureNet) -> TermContext:
    return TermContext(cfg, blank_features(student, 32), blank_features(teacher, 32), student.stage_names,
                       teacher.stage_names, ("resnet20", "resnet8"), data=None, split="train", seed=0)  # type: ignore[arg-type]


def test_every_term_computes_its_function_on_the_configured_inputs() -> None:
    torch.manual_seed(12)
    student, teacher = create_model("resnet8", num_classes=10).double(), create_model("resnet20", num_classes=10)
    teacher = teacher.double().eval()
    x, y = torch.randn(4, 3, 32, 32, dtype=DT), torch.tensor([0, 1, 2, 1])
    fs, ft = student.forward_features(x), teacher.forward_features(x)
    members = torch.stack([ft.logits, -ft.logits])
    out, batch = TeacherOutput(ft.logits, members, ft), Batch(x, y, torch.arange(4))
    cfg = distill_config({"weights": {n: 1.0 for n in ("ce", "kd", "dkd", "oracle", "fitnet", "at", "sp", "rkd",
                                                       "pkt", "diswot")},
                          "temperature": 3.0, "dkd": {"alpha": 2.0, "warmup": 4},
                          "rkd": {"w_dist": 5.0, "w_angle": 7.0}, "oracle_alpha": 0.6,
                          "diswot": {"w_sem": 2.0, "w_rel": 30.0}})
    terms = build_terms(_term_context(cfg, student, teacher)).double()  # the FitNet regressor too
    fitnet = terms["fitnet"].regressor
    expected = {
        "ce": F.cross_entropy(fs.logits, y),
        "kd": kdf.kd(fs.logits, ft.logits, 3.0),
        "dkd": kdf.dkd(fs.logits, ft.logits, y, 2.0, dkd_beta("resnet20", "resnet8"), 3.0),
        "oracle": kdf.oracle_kd(fs.logits, members, y, 3.0, 0.6),
        "fitnet": kdf.fitnet(fitnet(fs.stages[2]), ft.stages[2]),  # hint_stage=stage2
        "at": kdf.at(fs.stages[1:], ft.stages[1:]),  # every stage but the stem
        "sp": kdf.sp(fs.stages[-1], ft.stages[-1]),  # sp_stage=last
        "rkd": kdf.rkd(fs.embedding, ft.embedding, 5.0, 7.0),
        "pkt": kdf.pkt(fs.embedding, ft.embedding),
        "diswot": kdf.diswot_loss(fs.embedding, fs.logits, fs.feature_map, ft.embedding, ft.logits, ft.feature_map, y,
                                  2.0, 30.0, "official"),  # resnet8 and resnet20 both end with 64 channels
    }
    for name, value in expected.items():
        torch.testing.assert_close(terms[name](fs, out, batch), value, msg=name)
    assert [terms["dkd"].scale(e) for e in (0, 1, 3, 9)] == [0.25, 0.5, 1.0, 1.0]  # mdistiller's 1-based ramp
    assert terms["diswot"].semantic == "official"


def test_diswot_term_takes_the_class_form_across_widths_and_refuses_forced_official() -> None:
    student, teacher = create_model("resnet8x4", num_classes=10), create_model("resnet20", num_classes=10)
    cfg = distill_config({"weights": {"ce": 1.0, "diswot": 1.0}})
    assert build_terms(_term_context(cfg, student, teacher))["diswot"].semantic == "class"  # 256 vs 64 channels
    forced = distill_config({"weights": {"ce": 1.0, "diswot": 1.0}, "diswot": {"semantic": "official"}})
    with pytest.raises(ConfigError, match="distill.diswot.semantic=official"):
        build_terms(_term_context(forced, student, teacher))
