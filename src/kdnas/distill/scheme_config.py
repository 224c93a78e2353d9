"""The parameters of the multi-stage schemes (:mod:`kdnas.distill.schemes`): one schema per scheme, a field of
:class:`~kdnas.distill.terms.DistillConfig` named after it (``distill.born_again.generations=2``), as the loss terms'
parameters are (``distill.dkd.alpha``). ``distill.scheme`` names the scheme that runs.

``distill.schemes.KEY`` (one schema shared by every scheme, before issue 17) still works for one deprecation
period: :func:`migrate_schemes` moves each key to its scheme's field with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any

log = logging.getLogger("kdnas")


@dataclass
class DMLConfig:
    students: list[str] = field(default_factory=list)  # the peers; [] = two copies of model.name


@dataclass
class BornAgainConfig:
    generations: int = 3  # generations after generation 0
    gen0: str = "ce"  # generation 0 trained with CE (ce) or the configured teacher (teacher)
    ensemble: bool = True  # also evaluate the mean-logit ensemble of all generations


@dataclass
class TAKDConfig:
    assistant: str = "resnet14"  # the teacher assistant


@dataclass
class LabelRefineryConfig:
    max_generations: int = 5  # cap on refined generations after the CE one
    soft_weight: float = 1.0  # weight of the soft-target CE (1 - soft_weight on the labels)


@dataclass
class FitNetTwoStageConfig:
    hint_epochs: int = 30  # stage-1 hint epochs (RepDistiller init_epochs)


# scheme name -> its schema (the DistillConfig field of that name)
SCHEME_CONFIGS: dict[str, type] = {"dml": DMLConfig, "born_again": BornAgainConfig, "takd": TAKDConfig,
                                   "label_refinery": LabelRefineryConfig, "fitnet_two_stage": FitNetTwoStageConfig}


@dataclass
class DeprecatedSchemeKeys:
    """``distill.schemes.*`` (deprecated): every scheme's keys in one node; None = not set."""

    students: list[str] | None = None
    generations: int | None = None
    gen0: str | None = None
    ensemble: bool | None = None
    assistant: str | None = None
    max_generations: int | None = None
    soft_weight: float | None = None
    hint_epochs: int | None = None


def _owner(key: str) -> str:
    return next(name for name, schema in SCHEME_CONFIGS.items() if key in {f.name for f in fields(schema)})


def migrate_schemes(cfg: Any) -> Any:
    """``cfg`` (a DistillConfig) with every ``distill.schemes.KEY`` that is set moved to ``distill.<scheme>.KEY``
    (a new object; ``cfg`` is not changed; the old key wins, being the one given), logging the new spelling."""
    old = cfg.schemes if isinstance(cfg.schemes, DeprecatedSchemeKeys) else DeprecatedSchemeKeys(**cfg.schemes)
    moved = {f.name: getattr(old, f.name) for f in fields(old) if getattr(old, f.name) is not None}
    if not moved:
        return cfg
    changes: dict[str, Any] = {}
    for key, value in moved.items():
        scheme = _owner(key)
        changes[scheme] = replace(changes.get(scheme, getattr(cfg, scheme)), **{key: value})
    log.warning("distill.schemes.* is deprecated (each scheme has its own parameters now): write %s",
                " ".join(f"distill.{_owner(k)}.{k}={v}" for k, v in moved.items()))
    return replace(cfg, schemes=DeprecatedSchemeKeys(), **changes)
