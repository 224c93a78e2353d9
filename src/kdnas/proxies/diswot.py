"""DisWOT (Dong et al., CVPR 2023) as a training-free proxy: a candidate's semantic (Eq. 1-2: classifier-gradient
similarity) and relational (Eq. 3-4: SP Gram matrices) similarity to the teacher, both at initialisation.

Invariants: the terms are :mod:`kdnas.distill.functional`'s, so proxy and DisWOT-dagger loss measure the same thing;
one search scores every candidate with one semantic form (:func:`semantic_form`); the teacher's statistics are
computed once per search (:func:`teacher_stats`). Departures from the official code: docs/decisions.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdnas.data import Batch
from kdnas.distill.functional import fc_grad, relational, semantic_class, semantic_official
from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet, Features
from kdnas.proxies.base import SharedPasses, register_proxy

SEMANTIC_FORMS = {"official": semantic_official, "class": semantic_class}
SEMANTIC_CHOICES = ("auto", *SEMANTIC_FORMS)  # evaluator.semantic
DISWOT_TERMS = ("diswot_semantic", "diswot_relational")  # the score's two terms (names of their columns)
COMBINES = ("semantic", "relational", "sum", "rank")


@dataclass
class TeacherStats:
    """What a candidate is compared with: the teacher's classifier gradient [K, C_t] and pre-pooling map
    [B, C, H, W] on the search's fixed batch, and how to compare (``semantic`` form, ``combine`` mode).

    ``reference`` holds each term over a reference set of archs; ``combine=rank`` scores a candidate by its
    mean rank (empirical CDF) within it, so that neither term's scale dominates the sum."""

    fc_grad: Tensor
    feature_map: Tensor
    semantic: str = "official"
    combine: str = "sum"
    reference: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.semantic not in SEMANTIC_FORMS:
            raise ConfigError(f"evaluator.semantic={self.semantic!r} is not one of {', '.join(SEMANTIC_FORMS)}.")
        if self.combine not in COMBINES:
            raise ConfigError(f"evaluator.combine={self.combine!r} is not one of {', '.join(COMBINES)}.")


@torch.no_grad()
def teacher_stats(teacher: FeatureNet, batch: Batch, *, semantic: str = "official", combine: str = "sum"
                  ) -> TeacherStats:
    """One teacher forward pass on ``batch``, in the teacher's current mode (the caller decides: train-mode
    BN for a randomly initialised teacher, as the official code, eval mode for a trained one)."""
    feats = teacher.forward_features(batch.x)
    return TeacherStats(fc_grad(feats.embedding, feats.logits, batch.y), feats.feature_map, semantic, combine)


def semantic_form(requested: str, student_widths: set[int] | None, teacher_width: int, key: str = "evaluator.semantic"
                  ) -> str:
    """The one semantic form a search scores every candidate with (``evaluator.semantic``): ``auto`` = ``official``
    when every arch's final width (``student_widths``; None = unknown) is the teacher's, else ``class``.
    Switching per candidate would rank width-matched candidates on another scale (about -0.5 against -0.1)."""
    if requested not in SEMANTIC_CHOICES:
        raise ConfigError(f"{key}={requested!r} is not one of {', '.join(SEMANTIC_CHOICES)}.")
    uniform = student_widths == {teacher_width}
    if requested == "official" and not uniform:
        found = "unknown widths" if student_widths is None else f"widths {sorted(student_widths)}"
        raise ConfigError(f"{key}=official pairs student and teacher channels one to one, so every student must "
                          f"end with the teacher's width ({teacher_width}); here the students have {found}. Use "
                          f"{key}=auto (or class): the width-agnostic class form, for every student.")
    return ("official" if uniform else "class") if requested == "auto" else requested


def semantic_score(features: Features, target: Tensor, stats: TeacherStats) -> float:
    """Semantic similarity (higher = more similar) in the search's one form ``stats.semantic``; the official
    form on a student of another width raises (:func:`semantic_form` rules it out per search)."""
    g_s = fc_grad(features.embedding, features.logits, target)
    return SEMANTIC_FORMS[stats.semantic](g_s, stats.fc_grad).item()


def ecdf(reference: Tensor, value: float) -> float:
    """Mid-rank empirical CDF of ``value`` within ``reference``, in [0, 1]."""
    below, ties = (reference < value).sum().item(), (reference == value).sum().item()
    return (below + 0.5 * ties) / len(reference)


def combine_terms(terms: dict[str, float], combine: str, reference: dict[str, Tensor] | None = None) -> float:
    """``evaluator.combine``: one term, their raw sum (the paper's fitness), or their mean rank-normalised value."""
    if combine == "semantic":
        return terms["diswot_semantic"]
    if combine == "relational":
        return terms["diswot_relational"]
    if combine == "sum":
        return terms["diswot_semantic"] + terms["diswot_relational"]
    if reference is None:
        raise ConfigError("evaluator.combine=rank needs reference scores (set evaluator.rank_reference > 0).")
    return sum(ecdf(reference[t], terms[t]) for t in DISWOT_TERMS) / len(DISWOT_TERMS)


@register_proxy("diswot_semantic", needs={"forward", "teacher"})
def diswot_semantic(p: SharedPasses) -> float:
    return semantic_score(p.features, p.batch.y, p.teacher)


@register_proxy("diswot_relational", needs={"forward", "teacher"})
def diswot_relational(p: SharedPasses) -> float:
    return relational(p.features.feature_map, p.teacher.feature_map).item()


@register_proxy("diswot", needs={"forward", "teacher"})
def diswot(p: SharedPasses) -> dict[str, float]:
    """The combined score (``evaluator.combine``), reported with both terms."""
    terms = {"diswot_semantic": diswot_semantic(p), "diswot_relational": diswot_relational(p)}
    return {"diswot": combine_terms(terms, p.teacher.combine, p.teacher.reference), **terms}
