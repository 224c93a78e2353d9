"""Pure distillation losses and the DisWOT similarity terms, on plain tensors.

Invariants of every function here: the student comes first, the teacher second, and teacher-side tensors are
detached (a loss only sends gradient into the student); reductions follow the reference code (RepDistiller,
mdistiller: a sum over classes / positions, a mean over the batch) unless stated otherwise; a shape mismatch
raises :class:`ValueError` naming both shapes, nothing is silently reshaped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# ----------------------------------------------------------------------------------------------- checks


def _check_same_shape(name: str, a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: student and teacher shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def _check_same_batch(name: str, a: Tensor, b: Tensor) -> None:
    if a.dim() == 0 or b.dim() == 0 or a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name}: student and teacher need the same batch size: {tuple(a.shape)} vs {tuple(b.shape)}"
        )


def _check_logits_target(name: str, logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 2 or target.shape != (logits.shape[0],):
        raise ValueError(
            f"{name}: expected logits [B, K] and target [B], got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )


# ------------------------------------------------------------------------------------------ logit-based


def _kl_per_sample(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) summed over classes, one value per sample: [B]."""
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits.detach() / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1)


def kd(student_logits: Tensor, teacher_logits: Tensor, T: float = 4.0) -> Tensor:
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", soft-target term.

    ``T^2 * mean_b KL(softmax(t_b/T) || softmax(s_b/T))``, i.e. RepDistiller ``DistillKL``
    (``size_average=False`` / B) and mdistiller ``kd_loss`` (``.sum(1).mean()``). The ``T^2`` keeps the
    gradient O(1) in T: ``d kd / d s = T * (softmax(s/T) - softmax(t/T)) / B``.
    """
    _check_same_shape("kd", student_logits, teacher_logits)
    return _kl_per_sample(student_logits, teacher_logits, T).mean() * T**2


def soft_target_ce(student_logits: Tensor, target_probs: Tensor) -> Tensor:
    """Cross-entropy toward a soft target, ``mean_b -sum_k q_bk log softmax(s_b)_k``.

    Label Refinery (Bagherinezhad et al. 2018) and Cream (Peng et al. NeurIPS 2020) train on it; it is
    ``F.cross_entropy`` with probability targets, the target detached.
    """
    _check_same_shape("soft_target_ce", student_logits, target_probs)
    return -(target_probs.detach() * F.log_softmax(student_logits, dim=1)).sum(1).mean()


def kd_per_sample(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    T: float = 4.0,
    alpha: float | Tensor = 0.9,
) -> Tensor:
    """Per-sample Hinton KD objective ``(1 - alpha) * CE(s, y) + alpha * T^2 * KL_T(t || s)``: [B].

    ``alpha`` may be a [B] tensor (one mixing weight per sample); :func:`oracle_kd` uses ``alpha = 0`` to
    fall back to plain cross-entropy on the samples no teacher gets right.
    """
    _check_same_shape("kd_per_sample", student_logits, teacher_logits)
    _check_logits_target("kd_per_sample", student_logits, target)
    ce = F.cross_entropy(student_logits, target, reduction="none")
    return (1 - alpha) * ce + alpha * T**2 * _kl_per_sample(student_logits, teacher_logits, T)


def kd_objective(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float = 4.0, alpha: float = 0.9
) -> Tensor:
    """Hinton et al. 2015 full objective ``(1 - alpha) * CE + alpha * T^2 * KL``, batch mean.

    Equal to ``(1 - alpha) * F.cross_entropy(s, y) + alpha * kd(s, t, T)``; the defaults are the KDAS
    (Kang et al. AAAI 2020) / DisWOT settings T = 4, alpha = 0.9.
    """
    return kd_per_sample(student_logits, teacher_logits, target, T, alpha).mean()


def _binary_target_probs(probs: Tensor, gt_mask: Tensor) -> Tensor:
    """mdistiller ``cat_mask``: [p_target, 1 - p_target] as a [B, 2] distribution."""
    target_p = (probs * gt_mask).sum(1, keepdim=True)
    other_p = (probs * ~gt_mask).sum(1, keepdim=True)
    return torch.cat([target_p, other_p], dim=1)


def dkd_parts(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, T: float = 4.0
) -> tuple[Tensor, Tensor]:
    """Zhao et al. CVPR 2022, "Decoupled Knowledge Distillation": per-sample (TCKD, NCKD).

    Both are [B] KL divergences at temperature T, *without* the ``T^2`` factor and without alpha/beta:

    * TCKD = KL(b^T || b^S) on the binary [p_target, 1 - p_target] distributions;
    * NCKD = KL(p^T || p^S) among the non-target classes, computed as mdistiller does by subtracting
      1000 from the target logit (after dividing by T) before the softmax.

    The paper's reformulation of KD holds *per sample*: ``KL_T(t || s) = TCKD + (1 - p_target^T) * NCKD`` with
    ``p_target^T`` the teacher's temperature-T probability of the true class. It does not hold between batch
    means (the weight differs per sample), which is why these come back unreduced.
    """
    _check_same_shape("dkd", student_logits, teacher_logits)
    _check_logits_target("dkd", student_logits, target)
    teacher_logits = teacher_logits.detach()
    gt_mask = F.one_hot(target, student_logits.shape[1]).bool()
    b_s = _binary_target_probs(F.softmax(student_logits / T, dim=1), gt_mask)
    b_t = _binary_target_probs(F.softmax(teacher_logits / T, dim=1), gt_mask)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="none").sum(1)
    # mdistiller's masking, op for op: logits / T - 1000 * gt_mask, then a temperature-1 KL.
    nckd = _kl_per_sample(student_logits / T - 1000.0 * gt_mask, teacher_logits / T - 1000.0 * gt_mask, 1.0)
    return tckd, nckd


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    T: float = 4.0,
) -> Tensor:
    """Zhao et al. CVPR 2022, DKD loss ``T^2 * mean_b (alpha * TCKD + beta * NCKD)``, mdistiller ``dkd_loss``.

    Defaults are mdistiller's CIFAR-100 config (alpha 1, beta 8, T 4); the CE term and the warm-up ramp
    belong to the caller, as in mdistiller's ``DKD.forward_train``.
    """
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, T)
    return (alpha * tckd + beta * nckd).mean() * T**2


# ---------------------------------------------------------------------------------------- feature-based


def fitnet(student_feat_regressed: Tensor, teacher_feat: Tensor) -> Tensor:
    """Romero et al. ICLR 2015, FitNets hint loss: MSE between the regressed student and the teacher hint.

    RepDistiller ``HintLoss`` (``nn.MSELoss()``, mean over every element); the regressor lives elsewhere.
    """
    _check_same_shape("fitnet", student_feat_regressed, teacher_feat)
    return F.mse_loss(student_feat_regressed, teacher_feat.detach())


def attention_map(f: Tensor, p: int = 2) -> Tensor:
    """Zagoruyko & Komodakis ICLR 2017, activation-based attention map ``F_sum^p`` (channel mean of |A|^p),
    L2-normalised: [B, C, H, W] -> [B, H*W].

    RepDistiller ``Attention.at``: ``normalize(f.pow(p).mean(1).view(B, -1))``.
    """
    if f.dim() != 4:
        raise ValueError(f"attention_map: expected a [B, C, H, W] feature map, got {tuple(f.shape)}")
    return F.normalize(f.pow(p).mean(1).view(f.shape[0], -1))


def _at_pair(f_s: Tensor, f_t: Tensor, p: int) -> Tensor:
    _check_same_batch("at", f_s, f_t)
    if f_s.dim() != 4 or f_t.dim() != 4:
        raise ValueError(
            f"at: expected [B, C, H, W] feature maps, got {tuple(f_s.shape)} and {tuple(f_t.shape)}"
        )
    # RepDistiller pools the map with the larger height down to the other one's size.
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return (attention_map(f_s, p) - attention_map(f_t.detach(), p)).pow(2).mean()


def at(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor], p: int = 2) -> Tensor:
    """Zagoruyko & Komodakis ICLR 2017, attention-transfer loss (distance of normalised maps), summed over
    the feature pairs.

    Each pair gives RepDistiller ``Attention.at_loss`` = ``(Q_s - Q_t).pow(2).mean()``; RepDistiller's
    training loop sums the list (and weights it by beta = 1000, the caller's business).
    """
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            f"at: need the same non-zero number of student and teacher maps, got "
            f"{len(student_feats)} and {len(teacher_feats)}"
        )
    return torch.stack([_at_pair(f_s, f_t, p) for f_s, f_t in zip(student_feats, teacher_feats)]).sum()


def _batch_gram(f: Tensor) -> Tensor:
    """Row-L2-normalised batch Gram matrix of the per-sample flattened features: [B, B]."""
    flat = f.reshape(f.shape[0], -1)
    return F.normalize(flat @ flat.t())


def sp(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Tung & Mori ICCV 2019, similarity-preserving KD loss ``L_SP = ||G_s - G_t||_F^2 / B^2``.

    ``G = normalize_rows(f f^T)`` on the flattened per-sample features (RepDistiller ``Similarity``); the
    channel / spatial sizes of student and teacher may differ, only the batch must match.
    """
    _check_same_batch("sp", student_feat, teacher_feat)
    bsz = student_feat.shape[0]
    return (_batch_gram(student_feat) - _batch_gram(teacher_feat.detach())).pow(2).sum() / bsz**2


def _pdist(e: Tensor, eps: float = 1e-12) -> Tensor:
    """RepDistiller ``RKDLoss.pdist`` (non-squared): clamped Euclidean distances, zero diagonal."""
    sq = e.pow(2).sum(1)
    dist = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return dist * (1 - torch.eye(len(e), dtype=dist.dtype, device=dist.device))


def _normalised_pdist(e: Tensor) -> Tensor:
    d = _pdist(e)
    return d / d[d > 0].mean()


def rkd_distance(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Park et al. CVPR 2019, RKD distance-wise loss (distance potential + Huber), RepDistiller ``RKDLoss``.

    Pairwise distances divided by their mean over pairs with positive distance, smooth-L1 (Huber, delta 1)
    between student and teacher, mean over all B^2 entries; the teacher side under ``no_grad``.
    """
    _check_same_batch("rkd", student_emb, teacher_emb)
    with torch.no_grad():
        t_d = _normalised_pdist(teacher_emb.reshape(teacher_emb.shape[0], -1))
    return F.smooth_l1_loss(_normalised_pdist(student_emb.reshape(student_emb.shape[0], -1)), t_d)


def _angles(e: Tensor) -> Tensor:
    """cos of the angle e_i - e_j, e_k - e_j for every triplet, flattened: [B^3]."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).view(-1)


def rkd_angle(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Park et al. CVPR 2019, RKD angle-wise loss (angle potential + Huber), as RepDistiller ``RKDLoss``:
    smooth-L1 of the triplet cosines, teacher side under ``no_grad``."""
    _check_same_batch("rkd", student_emb, teacher_emb)
    with torch.no_grad():
        t_a = _angles(teacher_emb.reshape(teacher_emb.shape[0], -1))
    return F.smooth_l1_loss(_angles(student_emb.reshape(student_emb.shape[0], -1)), t_a)


def rkd(student_emb: Tensor, teacher_emb: Tensor, w_dist: float = 25.0, w_angle: float = 50.0) -> Tensor:
    """Park et al. CVPR 2019, RKD-DA: ``w_dist * rkd_distance + w_angle * rkd_angle`` (RepDistiller 25/50)."""
    return w_dist * rkd_distance(student_emb, teacher_emb) + w_angle * rkd_angle(student_emb, teacher_emb)


def _pkt_probs(f: Tensor, eps: float) -> Tensor:
    """Cosine-similarity kernel mapped to [0, 1] and normalised row-wise into probabilities: [B, B]."""
    f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)


def pkt(student_emb: Tensor, teacher_emb: Tensor, eps: float = 1e-7) -> Tensor:
    """Passalis & Tefas ECCV 2018, probabilistic knowledge transfer: KL between cosine-kernel conditional
    probabilities.

    RepDistiller ``PKT.cosine_similarity_loss``: ``mean_ij q_ij log((q_ij + eps) / (p_ij + eps))`` with q
    the teacher's and p the student's conditional probabilities (a mean over all B^2 entries, as there).
    RepDistiller also zeroes NaNs after the normalisation; with ``eps`` in the denominator those only arise
    from NaN inputs, so that step is left out.
    """
    _check_same_batch("pkt", student_emb, teacher_emb)
    p_s = _pkt_probs(student_emb.reshape(student_emb.shape[0], -1), eps)
    p_t = _pkt_probs(teacher_emb.detach().reshape(teacher_emb.shape[0], -1), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ------------------------------------------------------------------------------------- KDAS oracle KD


def oracle_mask(member_logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """KDAS (Kang et al. AAAI 2020), oracle KD: which ensemble members classify each sample correctly.

    ``member_logits`` is [M, B, K]; returns ``correct`` [M, B] (argmax == target) and ``any_correct`` [B].
    """
    if member_logits.dim() != 3:
        raise ValueError(f"oracle: expected member logits [M, B, K], got {tuple(member_logits.shape)}")
    _check_logits_target("oracle", member_logits[0], target)
    correct = member_logits.argmax(dim=2) == target.unsqueeze(0)
    return correct, correct.any(dim=0)


def oracle_kd(
    student_logits: Tensor, member_logits: Tensor, target: Tensor, T: float = 4.0, alpha: float = 0.9
) -> Tensor:
    """KDAS (Kang et al. AAAI 2020), oracle KD loss, Eq. (4), batch mean.

    Per sample, the teacher is the mean logit vector of the members that classify it correctly and the loss
    is :func:`kd_per_sample` toward it; where no member is correct the sample gets plain ``CE(s, y)``
    (alpha = 0 for that sample).
    """
    correct, any_correct = oracle_mask(member_logits, target)
    if member_logits.shape[1:] != student_logits.shape:
        raise ValueError(
            f"oracle_kd: member logits {tuple(member_logits.shape)} do not match student "
            f"{tuple(student_logits.shape)} as [M, B, K] vs [B, K]"
        )
    weights = correct.unsqueeze(2).to(member_logits.dtype)
    oracle_logits = (member_logits.detach() * weights).sum(0) / weights.sum(0).clamp(min=1.0)
    per_sample_alpha = alpha * any_correct.to(student_logits.dtype)
    return kd_per_sample(student_logits, oracle_logits, target, T, per_sample_alpha).mean()


def oracle_disagreement_fraction(member_logits: Tensor, target: Tensor) -> float:
    """KDAS (Kang et al. AAAI 2020): fraction of samples on which at least one member is wrong."""
    correct, _ = oracle_mask(member_logits, target)
    return (~correct.all(dim=0)).float().mean().item()


# ------------------------------------------------------------------------------------------- DisWOT


def fc_grad(embedding: Tensor, logits: Tensor, target: Tensor) -> Tensor:
    """DisWOT (Dong et al. CVPR 2023) Grad-CAM input: gradient of the mean CE w.r.t. the classifier weight.

    For ``z = h W^T + b``: ``dCE/dW = (softmax(z) - onehot(y))^T h / B``, [K, C], in closed form, so it stays
    differentiable w.r.t. ``embedding`` and ``logits`` without a double backward.
    """
    _check_logits_target("fc_grad", logits, target)
    if embedding.dim() != 2 or embedding.shape[0] != logits.shape[0]:
        raise ValueError(
            f"fc_grad: expected embedding [B, C] with the logits' batch, got {tuple(embedding.shape)} "
            f"and logits {tuple(logits.shape)}"
        )
    delta = F.softmax(logits, dim=1) - F.one_hot(target, logits.shape[1]).to(logits.dtype)
    return delta.t() @ embedding / logits.shape[0]


def semantic_official(grad_s: Tensor, grad_t: Tensor) -> Tensor:
    """DisWOT (Dong et al. CVPR 2023) semantic similarity exactly as the official code (lliai/DisWOT-CVPR2023,
    README ``semantic_similarity_metric`` / ``channel_similarity``, ICKD-style).

    The official code views the fc-weight gradient g [K, C] as K maps of shape [C, 1] and builds, *per class*
    k, the C x C correlation ``g_k g_k^T`` with rows L2-normalised (``F.normalize(dim=2)``, eps 1e-12); the
    score is ``-sum_k ||M_k^s - M_k^t||_F^2 / (C K)``. Row i of ``g_k g_k^T`` is ``g_ki g_k``, so the
    [K, C, C] tensor is never built: its norms and inner products follow from g alone (O(KC) memory, equal
    to the literal code up to float rounding, eps clamp included). Channels are paired index by index, so
    student and teacher need the same C (and K); it is *not* invariant to permuting the student's channels,
    hence :func:`semantic_class`. Higher = more similar.
    """
    _check_same_shape("semantic_official", grad_s, grad_t)
    grad_t = grad_t.detach()
    eps = 1e-12  # F.normalize's default

    def row_scale(g: Tensor) -> Tensor:  # 1 / max(||row i of g_k g_k^T||, eps) = 1 / max(|g_ki| ||g_k||, eps)
        return 1.0 / (g.abs() * g.norm(dim=1, keepdim=True)).clamp(min=eps)

    # Row i of the normalised matrix is u_ki * g_k with u_ki = g_ki * row_scale_ki.
    u_s, u_t = grad_s * row_scale(grad_s), grad_t * row_scale(grad_t)
    sq_s = u_s.pow(2) * grad_s.pow(2).sum(1, keepdim=True)
    sq_t = u_t.pow(2) * grad_t.pow(2).sum(1, keepdim=True)
    cross = u_s * u_t * (grad_s * grad_t).sum(1, keepdim=True)
    num_classes, channels = grad_s.shape
    return -(sq_s + sq_t - 2 * cross).sum() / (channels * num_classes)


def _class_similarity_mismatch(grad_s: Tensor, grad_t: Tensor) -> Tensor:
    """``||A_s - A_t||_F^2 / K^2`` with ``A = normalize_rows(g g^T)`` the K x K class-similarity matrix."""
    if grad_s.dim() != 2 or grad_t.dim() != 2 or grad_s.shape[0] != grad_t.shape[0]:
        raise ValueError(
            f"semantic_class: expected fc gradients [K, C_s] and [K, C_t] with the same K, got "
            f"{tuple(grad_s.shape)} and {tuple(grad_t.shape)}"
        )
    grad_t = grad_t.detach()
    a_s, a_t = F.normalize(grad_s @ grad_s.t()), F.normalize(grad_t @ grad_t.t())
    return (a_s - a_t).pow(2).sum() / grad_s.shape[0] ** 2


def semantic_class(grad_s: Tensor, grad_t: Tensor) -> Tensor:
    """DisWOT (Dong et al. CVPR 2023) semantic similarity, width-agnostic form (ours, not the official code).

    Compares the K x K class-similarity matrices ``g g^T`` of the fc-weight gradients (rows L2-normalised):
    ``-||A_s - A_t||_F^2 / K^2``. ``g g^T`` is unchanged by any permutation (indeed any orthogonal map) of
    the channels, so student and teacher may have different widths C_s, C_t. Higher = more similar.
    """
    return -_class_similarity_mismatch(grad_s, grad_t)


def relational(feat_s: Tensor, feat_t: Tensor) -> Tensor:
    """DisWOT (Dong et al. CVPR 2023) relational similarity (official ``batch_similarity``): ``-sp(feat_s,
    feat_t)`` on the pre-pooling feature maps [B, C, H, W]; widths and resolutions may differ. Higher = more
    similar."""
    return -sp(feat_s, feat_t)


def diswot_loss(
    student_embedding: Tensor,
    student_logits: Tensor,
    student_feature_map: Tensor,
    teacher_embedding: Tensor,
    teacher_logits: Tensor,
    teacher_feature_map: Tensor,
    target: Tensor,
    w_sem: float = 1.0,
    w_rel: float = 3000.0,
    semantic: str = "class",
) -> Tensor:
    """DisWOT-dagger distiller (Dong et al. CVPR 2023): the two DisWOT similarity metrics used as a training
    loss. The official repository does not release it; this is *our definition from the paper*.

    ``loss = w_sem * (-S(g_s, g_t)) + w_rel * (-relational(F_s, F_t))`` on the current batch, where
    ``g = fc_grad(embedding, logits, target)``, F the pre-pooling feature maps and S the semantic form:
    ``semantic="official"`` (:func:`semantic_official`, equal widths only) or ``"class"``
    (:func:`semantic_class`, any widths). With the form the proxy uses for the pair (official when the widths
    are equal, the ``DisWOT`` term's ``auto``), the loss is minus the proxy's DisWOT score, weighted.

    Semantic term: the fc-gradient (Grad-CAM) form rather than class-activation embeddings, because it is the
    quantity the training-free proxy scores; its closed form is differentiable w.r.t. the student's embedding
    and logits (hence the classifier and backbone) without ``create_graph``. Teacher inputs are detached. The
    CE (and any KD) term is the caller's.

    Default weights (ours, not the paper's): the relational term *is* the SP loss, so it takes RepDistiller's
    SP weight 3000; the semantic term 1 (see :class:`kdnas.distill.terms.DisWOTConfig` for the measurements).
    """
    if semantic not in ("official", "class"):
        raise ValueError(f"diswot_loss: semantic={semantic!r} is not one of official, class")
    g_s = fc_grad(student_embedding, student_logits, target)
    g_t = fc_grad(teacher_embedding.detach(), teacher_logits.detach(), target)
    sem = semantic_official(g_s, g_t) if semantic == "official" else semantic_class(g_s, g_t)
    return -w_sem * sem + w_rel * sp(student_feature_map, teacher_feature_map)
