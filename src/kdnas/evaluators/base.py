"""The evaluator protocol, ``evaluate(archs) -> results``, and the disk cache every evaluator sits behind.

Every result is a JSON dict with a float ``reward``, cached under ``<cache_dir>/evals/<fingerprint>/<arch_id>.json``
(atomic writes); the fingerprint hashes everything the result depends on besides the arch (kind, settings, data,
batch or recipe, teacher, seed, :data:`EVAL_FORMAT`, :data:`RESULTS_VERSION`). ``evaluate_one`` is a pure function
of (arch, evaluator config), so the misses may be computed in workers (:mod:`kdnas.execution`)."""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from kdnas.distill.cache import hold
from kdnas.spaces.base import Arch, SearchSpace
from kdnas.utils import atomic_write_json, read_json, stable_hash

if TYPE_CHECKING:
    from kdnas.execution import Pool, WorkerSpec

log = logging.getLogger("kdnas")
EVAL_FORMAT = 1
# Bump an evaluator kind's version with any change to how its results are computed (training recipe code, a
# proxy's formula, the semantic-form rule, ...): it is part of the cache fingerprint, so cached results of the
# old code are not returned. tests/test_proxies.py checks the proxy scores of 3 archs against
# tests/data/proxy_golden.json, recorded under this version.
RESULTS_VERSION = {"proxy": 2, "train": 2}
COSTS = ("params", "flops")


class Evaluator(Protocol):
    fingerprint: str

    def evaluate(self, archs: Sequence[Arch]) -> list[dict[str, Any]]: ...


def sample_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """Up to ``n`` distinct uniformly sampled archs (fewer only when 50 n draws find no more), seeded."""
    rng, archs = random.Random(seed), {}
    for _ in range(50 * n):
        arch = space.sample(rng)
        archs.setdefault(arch.arch_id, arch)
        if len(archs) == n:
            break
    return list(archs.values())


def memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format


class CachedEvaluator:
    """Disk cache in front of :meth:`evaluate_one`; counts hits and misses. With a ``pool``, the misses of one
    :meth:`evaluate` call are computed in workers (rebuilt from :meth:`worker_spec`) instead of in-process."""

    def __init__(self, cache_dir: str | Path, identity: dict[str, Any], pool: Pool | None = None) -> None:
        self.identity, self.pool = identity, pool
        self.fingerprint = stable_hash({**identity, "format": EVAL_FORMAT,
                                        "results_version": RESULTS_VERSION[identity["kind"]]})
        self.root = Path(cache_dir).expanduser() / "evals" / self.fingerprint
        self.held = hold(self.root)  # task=cache never prunes the results of a running search
        self.hits = self.misses = 0
        self.positions: dict[str, str] = {}  # arch_id -> "k/N" in the search, for log lines (set by the loop)

    def lookup(self, arch: Arch) -> dict[str, Any] | None:
        try:
            entry = read_json(self.root / f"{arch.arch_id}.json")
        except (OSError, json.JSONDecodeError):
            return None
        return entry.get("result") if entry.get("arch_id") == arch.arch_id else None

    def evaluate(self, archs: Sequence[Arch]) -> list[dict[str, Any]]:
        """Results in the order of ``archs``; each miss is computed once (a repeat in ``archs`` is a hit) and
        cached in that order as results arrive, so a rerun after a kill recomputes only what was not written.
        Every position gets its own deep copy: no result aliases another or the cached one."""
        results = {a.arch_id: self.lookup(a) for a in archs}
        misses = [a for a in {a.arch_id: a for a in archs}.values() if results[a.arch_id] is None]
        for arch, result in zip(misses, self.compute(misses)):
            atomic_write_json(self.root / f"{arch.arch_id}.json", {
                "schema_version": 1, "arch_id": arch.arch_id, "arch": arch.to_json(), "identity": self.identity,
                "result": result})
            results[arch.arch_id] = result
        self.misses += len(misses)
        self.hits += len(archs) - len(misses)
        return [copy.deepcopy(results[a.arch_id]) for a in archs]

    def compute(self, archs: list[Arch]) -> Iterator[dict[str, Any]]:
        """``evaluate_one`` of each arch, in order: in-process (lazily, one at a time) or over the pool."""
        if self.pool is None or not archs:
            return map(self.evaluate_one, archs)
        return self.pool.map(self.worker_spec(), archs)

    def evaluate_one(self, arch: Arch) -> dict[str, Any]:
        raise NotImplementedError

    def worker_spec(self) -> WorkerSpec:
        raise NotImplementedError
