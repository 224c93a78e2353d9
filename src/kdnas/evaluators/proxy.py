"""The training-free evaluator: proxy scores (:mod:`kdnas.proxies`) of each candidate on fixed batches, the same
batch(es) for every candidate of a search; the teacher's statistics are computed once, on first need."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdnas import teachers
from kdnas.config import ModelConfig, TeacherConfig
from kdnas.data import Batch, DataModule
from kdnas.distill.cache import tensor_sha256
from kdnas.engine.workspace import Workspace
from kdnas.errors import ConfigError
from kdnas.evaluators.base import COSTS, CachedEvaluator, memory_format, sample_archs
from kdnas.models import build_model, create_model
from kdnas.models.features import FeatureNet
from kdnas.proxies import apply_init, compute_proxies, get_proxy, teacher_stats
from kdnas.proxies.base import INITS
from kdnas.proxies.diswot import COMBINES, DISWOT_TERMS, SEMANTIC_CHOICES, TeacherStats, semantic_form
from kdnas.spaces.base import Arch, SearchSpace, build_candidate
from kdnas.utils import derive_seed, resolve_device

log = logging.getLogger("kdnas")


@dataclass(frozen=True)
class ProxySettings:
    """``evaluator=proxy``, typed (``evaluator.proxy`` is ``name``): which score rewards the search, and how every
    proxy is computed. Its fields and the cache identity (``asdict``) are those of the former ``proxy`` group."""

    name: str = "diswot"  # the reward (a registered proxy)
    semantic: str = "auto"  # auto (official iff every arch has the teacher's width, else class) | official | class
    combine: str = "sum"  # diswot = semantic | relational | sum | rank
    init: str = "default"  # default (the network's init) | normal (DisWOT's N(0, 1) re-init)
    teacher_state: str = "random"  # random (DisWOT: a freshly initialised teacher) | trained
    batch_size: int = 64
    num_batches: int = 1  # scores are averaged over this many fixed batches
    split: str = "train"  # where the fixed batches come from (mini-train)
    rank_reference: int = 32  # combine=rank: archs sampled once per search as the rank reference

    def __post_init__(self) -> None:
        get_proxy(self.name)
        allowed = {"semantic": SEMANTIC_CHOICES, "combine": COMBINES, "init": INITS,
                   "teacher_state": ("random", "trained")}
        for key, options in allowed.items():
            if getattr(self, key) not in options:
                raise ConfigError(f"evaluator.{key}={getattr(self, key)!r} is not one of {', '.join(options)}.")
        if self.combine == "rank" and self.rank_reference < 2:
            raise ConfigError("evaluator.combine=rank needs evaluator.rank_reference >= 2 reference archs.")


def proxy_batches(data: DataModule, settings: ProxySettings, seed: int, device: torch.device,
                  channels_last: bool = False) -> list[Batch]:
    """The fixed batches every candidate of a search is scored on: the first ``num_batches`` of a shuffled
    epoch of ``split`` drawn from the run seed (the training loader, as DisWOT's code)."""
    source = data.loader(settings.split, settings.batch_size, train=True, seed=derive_seed(seed, "proxy-batch"),
                         device=device, channels_last=channels_last, max_batches=settings.num_batches)
    batches = list(source.epoch(0))
    if len(batches) < settings.num_batches or len(batches[-1].y) < settings.batch_size:
        raise ConfigError(f"evaluator.batch_size={settings.batch_size} x evaluator.num_batches={settings.num_batches} "
                          f"needs more images than split {settings.split!r} has ({source.num_samples} used).")
    return batches


class ProxyEvaluator(CachedEvaluator):
    """Scores candidates with ``names`` (the reward ``settings.name`` among them) on fixed ``batches``.

    ``teacher`` builds the network DisWOT compares against (random or trained, mode already set); it is
    called, and its statistics computed, once, when the first uncached candidate needs them. Candidates take
    the batches' device and memory format (channels_last: ~1.6x faster on CPU).

    DisWOT's semantic form is decided once, here, from the space's final widths and ``teacher_width`` (the
    teacher's embedding size; None: read from the teacher, which is then built now), and is part of the cache
    identity and of every result (``semantic_form``)."""

    def __init__(self, space: SearchSpace, batches: list[Batch], settings: ProxySettings, *, names: Sequence[str],
                 teacher: Callable[[], nn.Module] | None, teacher_identity: Any, num_classes: int, seed: int,
                 cache_dir: str | Path, teacher_width: int | None = None) -> None:
        self.names = tuple(dict.fromkeys([settings.name, *names]))
        self.needs_teacher = any("teacher" in get_proxy(n).needs for n in self.names)
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"Proxies {self.names} compare against a teacher; configure teacher=... .")
        self.space, self.batches, self.settings, self.teacher = space, batches, settings, teacher
        self.num_classes, self.seed = num_classes, seed
        self.input_size = batches[0].x.shape[-1]
        self.memory_format = memory_format(batches[0].x)
        self.stats: list[TeacherStats] | None = None
        self.semantic_form: str | None = None
        if {"diswot", "diswot_semantic"} & set(self.names):
            if teacher_width is None:
                built = self.teacher()
                self.teacher, teacher_width = (lambda: built), embedding_width(built)
            self.semantic_form = semantic_form(settings.semantic, space.final_widths(), teacher_width)
        super().__init__(cache_dir, {
            "kind": "proxy", "names": list(self.names), "settings": asdict(settings),
            "semantic_form": self.semantic_form,
            "memory_format": str(self.memory_format),
            "teacher": teacher_identity if self.needs_teacher else None, "num_classes": num_classes, "seed": seed,
            "batches": [[tensor_sha256(b.x), tensor_sha256(b.y)] for b in batches]})

    def build(self, arch: Arch) -> FeatureNet:
        model = build_candidate(self.space, arch, self.num_classes, self.input_size, self.seed)
        return apply_init(model, self.settings.init).to(self.batches[0].x.device, memory_format=self.memory_format)

    def per_batch(self, model: FeatureNet, names: Sequence[str]) -> list[dict[str, float]]:
        stats = self.teacher_stats() if self.needs_teacher else [None] * len(self.batches)
        return [compute_proxies(model, b, names, s) for b, s in zip(self.batches, stats)]

    def teacher_stats(self) -> list[TeacherStats]:
        """Once per evaluator (so once per search): the teacher pass on each batch, and for ``combine=rank``
        the DisWOT terms of ``rank_reference`` sampled archs on each batch."""
        if self.stats is None:
            s = self.settings
            teacher = self.teacher()
            form = self.semantic_form or "class"  # unused when no DisWOT semantic score is asked for
            self.stats = [teacher_stats(teacher, b, semantic=form, combine=s.combine) for b in self.batches]
            log.info("DisWOT teacher statistics computed on %d batch(es), once for this search", len(self.batches))
            if s.combine == "rank":
                reference = sample_archs(self.space, s.rank_reference, derive_seed(self.seed, "rank-reference"))
                refs = [self.per_batch(self.build(a), DISWOT_TERMS) for a in reference]
                for i, st in enumerate(self.stats):
                    st.reference = {t: torch.tensor([r[i][t] for r in refs]) for t in DISWOT_TERMS}
        return self.stats

    def evaluate_one(self, arch: Arch) -> dict[str, Any]:
        """Scores averaged over the batches; the costs come from the same pass (the ``params`` and ``flops``
        proxies, as :mod:`kdnas.spaces.costs` defines them, cheaper than a second, meta-device count)."""
        start = time.perf_counter()
        runs = self.per_batch(self.build(arch), (*self.names, *COSTS))
        scores = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        return {"reward": scores[self.settings.name], "costs": {k: int(scores[k]) for k in COSTS},
                "scores": {k: v for k, v in scores.items() if k not in COSTS or k in self.names},
                "seconds": time.perf_counter() - start,
                **({"semantic_form": self.semantic_form} if self.semantic_form else {})}


def embedding_width(net: nn.Module) -> int:
    """The classifier's input width of a network (a :class:`~kdnas.teachers.Teacher`: its first member)."""
    members = getattr(net, "members", None)
    return (members[0] if members is not None else net).classifier.in_features


def proxy_evaluator(ws: Workspace, space: SearchSpace, settings: ProxySettings, teacher: TeacherConfig,
                    names: Sequence[str] = ()) -> ProxyEvaluator:
    """The :class:`ProxyEvaluator` of ``settings`` on ``ws``'s data, seed and device (the run's ``trainer``):
    ``teacher`` is DisWOT's reference network, freshly initialised (``teacher.model``) or the run's trained
    teacher, per ``settings.teacher_state``."""
    recipe = ws.trainer_config
    device = resolve_device(recipe.device)
    fmt = torch.channels_last if recipe.channels_last else torch.preserve_format
    num_classes = ws.data.num_classes
    if settings.teacher_state == "random":
        def reference() -> nn.Module:
            net = build_model(ModelConfig(name=teacher.model), num_classes, derive_seed(ws.seed, "proxy-teacher"))
            return apply_init(net, settings.init).to(device, memory_format=fmt).train()  # train-mode BN, as candidates

        identity: Any = {"state": "random", "model": teacher.model}
        with torch.device("meta"):  # its width only: no memory, no init
            width = embedding_width(create_model(teacher.model, num_classes=num_classes))
    else:
        trained = teachers.load(ws, teacher).to(device, memory_format=fmt)  # frozen, eval mode
        reference, identity, width = (lambda: trained), {"state": "trained", "weights": trained.hashes}, None
    return ProxyEvaluator(space, proxy_batches(ws.data, settings, ws.seed, device, recipe.channels_last), settings,
                          names=names, teacher=reference, teacher_identity=identity, num_classes=num_classes,
                          seed=ws.seed, cache_dir=ws.cache_dir, teacher_width=width)
