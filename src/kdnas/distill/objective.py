"""The distillation objective: a weighted sum of :mod:`kdnas.distill.terms` for one batch.

The student runs ``forward_features`` once and every term reads that. The teacher is a frozen eval-mode
network (or ensemble) run under ``no_grad``, or, when every active term reads logits only and
``teacher.cache`` is not ``off``, its logits are looked up by ``batch.index`` in the epoch's
:class:`~kdnas.distill.cache.TeacherLogitCache` entry, so a warm-cache KD step costs a student step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdnas.data import Batch, DataModule
from kdnas.distill import functional as kdf
from kdnas.distill.cache import TeacherLogitCache
from kdnas.distill.terms import DistillConfig, TeacherOutput, TermContext, active_weights, blank_features, build_terms
from kdnas.engine.objective import Objective, StepOutput
from kdnas.errors import ConfigError
from kdnas.teachers import Teacher

log = logging.getLogger("kdnas")


class DistillObjective(Objective):
    """``sum_i w_i * scale_i(epoch) * term_i``; the unweighted terms come back detached for logging, plus the
    oracle disagreement fraction (Kang et al. AAAI 2020) when the teacher is an ensemble.

    The teacher is kept out of this module's parameters and ``state_dict`` (it is frozen and has its own
    store), but follows it across devices. Connectors and CRD memories are submodules: the engine optimises
    and checkpoints them with the student.
    """

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: Teacher | None, *, data: DataModule,
                 split: str, seed: int, student_name: str, cache_dir: str | Path | None = None) -> None:
        super().__init__()
        self.weights = active_weights(cfg)
        if teacher is None and set(self.weights) != {"ce"}:
            raise ConfigError(f"distill.weights {sorted(self.weights)} need a teacher; configure teacher=... .")
        if teacher is not None and teacher.combine == "oracle" and "oracle" not in self.weights:
            raise ConfigError("teacher.combine=oracle distils with the KDAS oracle loss: add distill=oracle (or "
                              "distill.weights.oracle=1), or use teacher.combine=mean.")
        self.__dict__["teacher"] = teacher  # not a submodule: never optimised, never checkpointed
        single = teacher is not None and len(teacher.members) == 1
        self.terms = build_terms(TermContext(
            cfg, blank_features(student, data.input_size),
            blank_features(teacher.members[0], data.input_size) if single else None,
            student.stage_names, teacher.members[0].stage_names if single else [],
            (teacher.names[0] if teacher is not None else "", student_name), data, split, seed))
        self.online_features = any(term.needs_features for term in self.terms.values())
        self.cache: TeacherLogitCache | None = None
        if teacher is not None and teacher.cache != "off" and cache_dir is not None:
            if self.online_features:
                log.info("teacher.cache=%s: the %s terms read teacher features, so the teacher runs online",
                         teacher.cache, "/".join(n for n, t in self.terms.items() if t.needs_features))
            else:
                self.cache = TeacherLogitCache(cache_dir, data, split, seed, teacher.cache)
        # training-set index -> cache row, on the training device
        self.register_buffer("rows", self.cache.rows if self.cache else None, persistent=False)
        self.epoch_logits: Tensor | None = None  # [M, N, K] fp16 of the current epoch, from the cache

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DistillObjective:
        """``.to(device)`` and friends move the teacher too."""
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def on_epoch_start(self, epoch: int) -> None:
        for term in self.terms.values():
            term.on_epoch_start(epoch)
        if self.cache is not None:
            logits = [self.cache.get(m, h, epoch) for m, h in zip(self.teacher.members, self.teacher.hashes)]
            self.epoch_logits = torch.stack(logits).to(self.rows.device)

    @torch.no_grad()
    def teacher_outputs(self, batch: Batch) -> TeacherOutput:
        if self.online_features:
            f = self.teacher.forward_features(batch.x)
            return TeacherOutput(f.logits, f.logits[None], f)
        if self.epoch_logits is not None:
            members = self.epoch_logits[:, self.rows[batch.index]].float()
        else:
            members = self.teacher.member_logits(batch.x)
        return TeacherOutput(members.mean(0), members, None)

    def forward(self, model: nn.Module, batch: Batch, epoch: int) -> StepOutput:
        out = model.forward_features(batch.x)
        t = self.teacher_outputs(batch) if self.teacher is not None else None
        loss = out.logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        # The losses in fp32 under trainer.amp: fp16 turns RKD's normalised zero differences and large pairwise
        # distances into NaN/inf. A no-op without autocast.
        with torch.autocast(out.logits.device.type, enabled=False):
            s, t = _float(out), _float(t)
            for name, term in self.terms.items():
                value = term(s, t, batch)
                loss = loss + self.weights[name] * term.scale(epoch) * value
                terms[name] = value.detach()
        if t is not None and t.members.shape[0] > 1:
            terms["oracle_disagreement"] = torch.tensor(kdf.oracle_disagreement_fraction(t.members, batch.y))
        return StepOutput(loss=loss, logits=out.logits, terms=terms)


def _float(x: Any) -> Any:
    """``Features`` / ``TeacherOutput`` with every floating tensor in fp32 (the same objects when already fp32)."""
    if isinstance(x, Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, list):
        return [_float(v) for v in x]
    if is_dataclass(x):
        return replace(x, **{f.name: _float(getattr(x, f.name)) for f in fields(x)})
    return x
