"""Distillation terms: the ``distill`` config schema (:class:`DistillConfig`) and the loss-term registry (LOSS_TERMS).

Invariants: one term per field of :class:`LossWeights` (0 = off, so any term is switched on from the command line);
a term reads only the student's :class:`~kdnas.models.Features` and a :class:`TeacherOutput` and returns the
unweighted loss of :mod:`kdnas.distill.functional`; DistillObjective sums ``weight * scale(epoch) * term``. Defaults
follow RepDistiller (KD/FitNet/AT/SP/RKD/PKT/CRD) and mdistiller (DKD).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from kdnas.data import Batch, DataModule
from kdnas.distill import functional as kdf
from kdnas.distill.connectors import ConvRegressor
from kdnas.distill.crd import CRDLoss
from kdnas.distill.scheme_config import (
    SCHEME_CONFIGS,
    BornAgainConfig,
    DeprecatedSchemeKeys,
    DMLConfig,
    FitNetTwoStageConfig,
    LabelRefineryConfig,
    TAKDConfig,
    migrate_schemes,
)
from kdnas.errors import ConfigError
from kdnas.models import Features
from kdnas.proxies.diswot import semantic_form
from kdnas.registry import Registry

# ------------------------------------------------------------------------------------------- config


@dataclass
class LossWeights:
    """One float per term; 0 = off. The schema default is plain cross-entropy."""

    ce: float = 1.0
    kd: float = 0.0
    dkd: float = 0.0
    fitnet: float = 0.0
    at: float = 0.0
    sp: float = 0.0
    rkd: float = 0.0
    pkt: float = 0.0
    crd: float = 0.0
    oracle: float = 0.0
    diswot: float = 0.0


@dataclass
class DKDConfig:
    alpha: float = 1.0
    beta: float | None = None  # None = per teacher/student pair as mdistiller (see dkd_beta)
    warmup: int = 20  # epochs of linear ramp of the DKD term


@dataclass
class RKDConfig:
    w_dist: float = 25.0
    w_angle: float = 50.0


@dataclass
class CRDConfig:
    feat_dim: int = 128
    nce_k: int = 16384  # negatives; capped at (training samples - 1)
    nce_t: float = 0.07
    momentum: float = 0.5


@dataclass
class DisWOTConfig:
    """Weights and semantic form inside :func:`~kdnas.distill.functional.diswot_loss`. The relational term is SP
    and keeps SP's 3000; the semantic term gets 1: at 3000 (and even 300) the student's CE rose above 100 within
    one epoch on the bundled data (resnet8 from resnet8, batch 64, lr 0.05), and 10 (which matches the official
    form's gradient to SP's) cut one epoch's test top-1 from 24% to 17% (``scripts/diswot_grad_norms.py``, numbers
    in docs/decisions.md). ``semantic``: the proxy's rule (:func:`kdnas.proxies.diswot.semantic_form`): auto =
    official when student and teacher widths are equal, else class; or force official | class."""

    w_sem: float = 1.0
    w_rel: float = 3000.0
    semantic: str = "auto"


@dataclass
class DistillConfig:
    weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 4.0  # KD, DKD and oracle KD
    oracle_alpha: float = 0.9  # KDAS oracle KD mixing weight (1 - alpha on CE)
    dkd: DKDConfig = field(default_factory=DKDConfig)
    rkd: RKDConfig = field(default_factory=RKDConfig)
    crd: CRDConfig = field(default_factory=CRDConfig)
    diswot: DisWOTConfig = field(default_factory=DisWOTConfig)
    feature_stages: list[str] = field(default_factory=list)  # AT pairs by name; [] = every stage but the stem
    hint_stage: str = "stage2"  # FitNet hint/guided stage (RepDistiller hint_layer=2)
    sp_stage: str = "last"  # SP reads the last stage (RepDistiller feat[-2])
    compare_ce: bool = False  # task=distill: also train the same student with CE alone
    scheme: str = "none"  # none | a module of kdnas.distill.schemes; its parameters are distill.<scheme>.*
    dml: DMLConfig = field(default_factory=DMLConfig)
    born_again: BornAgainConfig = field(default_factory=BornAgainConfig)
    takd: TAKDConfig = field(default_factory=TAKDConfig)
    label_refinery: LabelRefineryConfig = field(default_factory=LabelRefineryConfig)
    fitnet_two_stage: FitNetTwoStageConfig = field(default_factory=FitNetTwoStageConfig)
    schemes: DeprecatedSchemeKeys = field(default_factory=DeprecatedSchemeKeys)  # deprecated: distill.<scheme>.*


def distill_config(node: Any) -> DistillConfig:
    """A validated :class:`DistillConfig` from a config node (typed already when composed from a preset;
    this also catches keys added with ``+distill...`` and untyped dicts)."""
    if isinstance(node, DistillConfig):
        cfg = node
    elif node is None:
        raise ConfigError("No distillation loss configured: choose one with distill=kd (or ce, dkd, fitnet, at, "
                          "sp, rkd, pkt, crd, kd_at, oracle, diswot).")
    else:
        # A plain container, so that keys a typed node carries past its schema (`+distill.x=...`) are checked
        # here: OmegaConf.to_object would drop them silently.
        plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        try:
            cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DistillConfig), plain))
        except OmegaConfBaseException as e:
            raise ConfigError(f"distill.{e.full_key}: {str(e).splitlines()[0]}. Valid keys are those of "
                              "kdnas.distill.terms.DistillConfig (weights: " +
                              ", ".join(asdict(LossWeights())) + ").") from None
    bad = [k for k, w in asdict(cfg.weights).items() if w < 0]
    if bad:
        raise ConfigError(f"distill.weights.{bad[0]}={getattr(cfg.weights, bad[0])} is negative; weights are >= 0 "
                          "(0 = off).")
    if not any(asdict(cfg.weights).values()):
        raise ConfigError("Every distill.weights.* is 0: nothing to minimise. Set e.g. distill.weights.ce=1.")
    if cfg.temperature <= 0:
        raise ConfigError(f"distill.temperature={cfg.temperature} must be > 0 (4 is the usual value).")
    return migrate_schemes(cfg)


def distill_identity(cfg: DistillConfig) -> dict[str, Any]:
    """Every distill value, as caches key it: the layout of before the per-scheme split (the schemes' parameters
    in one ``schemes`` node), so evaluation caches written by an older kdnas stay valid after an upgrade."""
    out = asdict(migrate_schemes(cfg))
    schemes: dict[str, Any] = {}
    for name in SCHEME_CONFIGS:
        schemes.update(out.pop(name))
    out["schemes"] = schemes
    return out


def active_weights(cfg: DistillConfig) -> dict[str, float]:
    return {k: w for k, w in asdict(cfg.weights).items() if w}


def teacher_terms(cfg: DistillConfig) -> str:
    """The active terms besides CE, joined by ``+`` (``"kd"``, ``"kd+at"``; ``""`` for CE alone): how run logs and
    tables name what a student learnt from its teacher."""
    return "+".join(k for k in active_weights(cfg) if k != "ce")


def dkd_beta(teacher: str, student: str) -> float:
    """mdistiller's per-pair CIFAR-100 beta: 2 for ResNet-56/110 teachers, 6 for VGG teachers and WRN->WRN,
    8 otherwise (e.g. ResNet32x4 -> ResNet8x4, WRN-40-2 -> ShuffleNetV1)."""
    if teacher in ("resnet56", "resnet110"):
        return 2.0
    if teacher.startswith("vgg") or (teacher.startswith("wrn") and student.startswith("wrn")):
        return 6.0
    return 8.0


# -------------------------------------------------------------------------------------------- terms


@dataclass
class TeacherOutput:
    logits: Tensor  # [B, K] the teacher signal (ensembles: mean of the members' logits)
    members: Tensor  # [M, B, K] every member's logits
    features: Features | None  # single online teacher, when some term reads its features


@dataclass
class TermContext:
    """What a term may size itself from: the config, one probe forward pass of each network, the data."""

    cfg: DistillConfig
    student: Features
    teacher: Features | None
    student_stages: list[str]
    teacher_stages: list[str]
    pair: tuple[str, str]  # (teacher name, student name)
    data: DataModule
    split: str
    seed: int


class Term(nn.Module):
    """One loss term. ``needs_features``: reads teacher features (the teacher then runs online)."""

    needs_features: ClassVar[bool] = False

    def __init__(self, ctx: TermContext) -> None:
        super().__init__()

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def scale(self, epoch: int) -> float:
        """Epoch-dependent factor on the weight (DKD warm-up)."""
        return 1.0

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch state (CRD negative sampling stream)."""


# The loss classes, one per field of LossWeights (tests/test_registries.py checks both directions); registered below.
LOSS_TERMS: Registry[type[Term]] = Registry("loss term", "distill.weights.<term>")


def register_term(name: str) -> Callable[[type[Term]], type[Term]]:
    return LOSS_TERMS.register(name)


def build_terms(ctx: TermContext) -> nn.ModuleDict:
    return nn.ModuleDict({name: LOSS_TERMS.get(name)(ctx) for name in active_weights(ctx.cfg)})


def reads_teacher_features(cfg: DistillConfig) -> bool:
    """Whether an active term reads the teacher's features: the teacher then runs online (no logit cache)."""
    return any(LOSS_TERMS.get(name).needs_features for name in active_weights(cfg))


def stage_index(names: list[str], name: str, who: str, key: str) -> int:
    if name == "last":
        return len(names) - 1
    if name not in names:
        raise ConfigError(f"distill.{key}={name!r}: the {who} has no such stage; its stages are {names} (or 'last').")
    return names.index(name)


class _FeatureTerm(Term):
    needs_features = True

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        if ctx.teacher is None:
            raise ConfigError("Feature distillation terms need a single teacher network; an ensemble gives logits "
                              "only. Use teacher=store/checkpoint, or logit terms (kd, dkd, oracle).")

    def pair_index(self, ctx: TermContext, name: str, key: str) -> tuple[int, int]:
        return (stage_index(ctx.student_stages, name, "student", key),
                stage_index(ctx.teacher_stages, name, "teacher", key))


@register_term("ce")
class CE(Term):
    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return F.cross_entropy(s.logits, batch.y)


@register_term("kd")
class KD(Term):
    """Hinton et al. 2015 soft targets, :func:`~kdnas.distill.functional.kd`."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        self.T = ctx.cfg.temperature

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return kdf.kd(s.logits, t.logits, self.T)


@register_term("dkd")
class DKD(Term):
    """Zhao et al. CVPR 2022, :func:`~kdnas.distill.functional.dkd`, ramped by ``min(epoch / warmup, 1)`` with
    mdistiller's 1-based epochs (so the first epoch already gets ``1 / warmup``)."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        c = ctx.cfg.dkd
        self.alpha, self.T, self.warmup = c.alpha, ctx.cfg.temperature, c.warmup
        self.beta = c.beta if c.beta is not None else dkd_beta(*ctx.pair)

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return kdf.dkd(s.logits, t.logits, batch.y, self.alpha, self.beta, self.T)

    def scale(self, epoch: int) -> float:
        return min((epoch + 1) / self.warmup, 1.0) if self.warmup > 0 else 1.0


@register_term("oracle")
class Oracle(Term):
    """KDAS (Kang et al. AAAI 2020) oracle KD over the teacher's members, Eq. (4); includes its own CE part."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        self.T, self.alpha = ctx.cfg.temperature, ctx.cfg.oracle_alpha

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return kdf.oracle_kd(s.logits, t.members, batch.y, self.T, self.alpha)


@register_term("fitnet")
class FitNet(_FeatureTerm):
    """Romero et al. ICLR 2015 hint loss on ``hint_stage``, through a regressor sized from the probe."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        self.i, self.j = self.pair_index(ctx, ctx.cfg.hint_stage, "hint_stage")
        self.regressor = ConvRegressor(ctx.student.stages[self.i].shape, ctx.teacher.stages[self.j].shape)

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return kdf.fitnet(self.regressor(s.stages[self.i]), t.features.stages[self.j])


@register_term("at")
class AT(_FeatureTerm):
    """Zagoruyko & Komodakis ICLR 2017 attention transfer, summed over ``feature_stages``."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        names = ctx.cfg.feature_stages or ctx.student_stages[1:]
        self.pairs = [self.pair_index(ctx, name, "feature_stages") for name in names]

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return kdf.at([s.stages[i] for i, _ in self.pairs], [t.features.stages[j] for _, j in self.pairs])


@register_term("sp")
class SP(_FeatureTerm):
    """Tung & Mori ICCV 2019 similarity preserving on ``sp_stage``."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        self.i, self.j = self.pair_index(ctx, ctx.cfg.sp_stage, "sp_stage")

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return kdf.sp(s.stages[self.i], t.features.stages[self.j])


@register_term("rkd")
class RKD(_FeatureTerm):
    """Park et al. CVPR 2019 relational KD (distance + angle) on the pooled embeddings."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        self.w_dist, self.w_angle = ctx.cfg.rkd.w_dist, ctx.cfg.rkd.w_angle

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return kdf.rkd(s.embedding, t.features.embedding, self.w_dist, self.w_angle)


@register_term("pkt")
class PKT(_FeatureTerm):
    """Passalis & Tefas ECCV 2018 probabilistic knowledge transfer on the pooled embeddings."""

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return kdf.pkt(s.embedding, t.features.embedding)


@register_term("crd")
class CRD(_FeatureTerm):
    """Tian et al. ICLR 2020 contrastive representation distillation on the pooled embeddings."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        c = ctx.cfg.crd
        self.loss = CRDLoss(ctx.student.embedding.shape[1], ctx.teacher.embedding.shape[1], labels=ctx.data.labels[
            "train"], indices=ctx.data.split_indices(ctx.split), num_classes=ctx.data.num_classes,
            feat_dim=c.feat_dim, nce_k=c.nce_k, nce_t=c.nce_t, momentum=c.momentum, seed=ctx.seed)

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        return self.loss(s.embedding, t.features.embedding, batch.index, batch.y)

    def on_epoch_start(self, epoch: int) -> None:
        self.loss.on_epoch_start(epoch)


@register_term("diswot")
class DisWOT(_FeatureTerm):
    """DisWOT (Dong et al. CVPR 2023) semantic + relational similarity as a loss,
    :func:`~kdnas.distill.functional.diswot_loss`."""

    def __init__(self, ctx: TermContext) -> None:
        super().__init__(ctx)
        c = ctx.cfg.diswot
        self.w_sem, self.w_rel = c.w_sem, c.w_rel
        self.semantic = semantic_form(c.semantic, {ctx.student.embedding.shape[1]}, ctx.teacher.embedding.shape[1],
                                      key="distill.diswot.semantic")

    def forward(self, s: Features, t: TeacherOutput, batch: Batch) -> Tensor:
        f = t.features
        return kdf.diswot_loss(s.embedding, s.logits, s.feature_map, f.embedding, f.logits, f.feature_map, batch.y,
                               self.w_sem, self.w_rel, self.semantic)


def blank_features(net: nn.Module, input_size: int) -> Features:
    """One eval-mode, gradient-free forward pass of two blank images: the shapes terms size themselves from."""
    p = next(net.parameters())
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net.forward_features(torch.zeros(2, 3, input_size, input_size, device=p.device, dtype=p.dtype))
    net.train(was_training)
    return out
