"""Costs of a network: exact parameter count, MACs/FLOPs, measured latency, and a per-layer latency look-up
table (as MnasNet/FBNet/Cream).

Invariants: ``flops`` = 2 x ``macs`` (papers' "FLOPs" usually mean ``macs``); latency tables are keyed by device,
torch threads and batch size, and rank archs rather than predict milliseconds, so search decisions use a stored
table (entries timed once, when first needed), never live timings.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdnas.errors import ConfigError
from kdnas.spaces.base import Arch, SearchSpace
from kdnas.utils import atomic_write_json, read_json, stable_hash

COST_KEYS = ("params", "macs", "flops", "latency_ms")
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _forward(model: nn.Module, input_size: int, batch_size: int) -> None:
    """One eval-mode forward pass on an input of the model's device (meta included); mode restored."""
    was_training = model.training
    try:
        model.eval()(torch.zeros(batch_size, 3, input_size, input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)


def count_flops(model: nn.Module, input_size: int = 32, batch_size: int = 1) -> dict[str, int]:
    """``{"macs", "flops"}`` of one eval-mode forward pass (flops = 2 x macs); works on the meta device.
    ``FlopCounterMode`` counts convolutions and matrix products only (BN, activations, pooling and additions are
    not), which is what MnasNet, Cream and DisWOT report as "FLOPs"/"MACs"."""
    with FlopCounterMode(display=False) as counter:
        _forward(model, input_size, batch_size)
    flops = int(counter.get_total_flops())
    return {"macs": flops // 2, "flops": flops}


def _timings_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - start) * 1e3)
    return out


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: as is), restoring the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: int = 32, batch_size: int = 1, device: str = "cpu",
                    warmup: int = 5, repeats: int = 20, threads: int | None = None) -> dict[str, Any]:
    """Wall-clock latency of an eval-mode forward pass (the model is moved to ``device``)."""
    dev = torch.device(device)
    model = model.eval().to(dev)
    x = torch.randn(batch_size, 3, input_size, input_size, device=dev)
    with _threads(threads):
        times = _timings_ms(lambda: model(x), dev, warmup, repeats)
        threads = torch.get_num_threads()
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "batch_size": batch_size, "device": str(dev), "threads": threads}


def trace_units(model: nn.Module, input_size: int, batch_size: int = 1) -> list[tuple[str, nn.Module, list]]:
    """(key, module, input shapes) for every unit call of one forward pass; key = hash(repr, shapes)."""
    calls: dict[nn.Module, list[list[tuple[int, ...]] | None]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        ok = all(isinstance(a, torch.Tensor) for a in args)
        calls.setdefault(module, []).append([tuple(a.shape) for a in args] if ok else None)

    hooks = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        _forward(model, input_size, batch_size)
    finally:
        for h in hooks:
            h.remove()
    units: list[tuple[str, nn.Module, list]] = []

    def walk(parent: nn.Module) -> None:
        for child in parent.children():
            shapes = calls.get(child, [])
            if not shapes or isinstance(child, CONTAINERS) or None in shapes:
                walk(child)
            else:
                units.extend((stable_hash([repr(child), s]), child, s) for s in shapes)

    walk(model)
    return units


@dataclass
class LatencyTable:
    """Per-unit latencies (ms) for one (device, threads, batch size); saved as JSON beside other tables. A network
    is split into *units* (the blocks it calls: every called module that is not a container, e.g. a ResNet block,
    an MBConv, an NB201 cell, a stem conv); each distinct (unit config, input shape) is timed once in isolation,
    and an arch's latency is predicted as the sum over its units. Functional ops between units (a ReLU, the final
    pooling) are not counted, and a unit timed alone runs with warm caches, so predictions rank archs rather than
    match measured milliseconds."""

    device: str = "cpu"
    threads: int = field(default_factory=torch.get_num_threads)
    batch_size: int = 1
    entries: dict[str, float] = field(default_factory=dict)
    warmup: int = 3
    repeats: int = 10

    @property
    def key(self) -> str:
        return f"{self.device}|threads={self.threads}|batch={self.batch_size}"

    def missing(self, model: nn.Module, input_size: int) -> int:
        return sum(k not in self.entries for k, _, _ in trace_units(model, input_size, self.batch_size))

    @torch.no_grad()
    def measure(self, model: nn.Module, input_size: int) -> int:
        """Time every unit of ``model`` (a real, not meta, network; put in eval mode) that the table lacks."""
        dev = torch.device(self.device)
        model = model.eval().to(dev)
        new = 0
        with _threads(self.threads):
            for key, module, shapes in trace_units(model, input_size, self.batch_size):
                if key not in self.entries:
                    x = [torch.randn(s, device=dev) for s in shapes]
                    times = _timings_ms(lambda m=module, x=x: m(*x), dev, self.warmup, self.repeats)
                    self.entries[key] = float(np.median(times))
                    new += 1
        return new

    def predict(self, model: nn.Module, input_size: int) -> float:
        """Sum of unit latencies (ms); units missing from the table are timed first (needs a real model)."""
        units = trace_units(model, input_size, self.batch_size)
        if any(k not in self.entries for k, _, _ in units):
            if _device_of(model).type == "meta":
                raise ValueError("LatencyTable.predict: units are missing and a meta-device model cannot be timed")
            self.measure(model, input_size)
        return float(sum(self.entries[k] for k, _, _ in units))

    def save(self, path: str | Path) -> None:
        """Merge this table into the JSON file at ``path`` (other devices' tables are kept)."""
        path = Path(path)
        data = read_json(path) if path.exists() else {"schema_version": 1, "tables": {}}
        old = data["tables"].get(self.key, {}).get("entries", {})
        data["tables"][self.key] = {"device": self.device, "threads": self.threads, "batch_size": self.batch_size,
                                    "entries": {**old, **self.entries}}
        atomic_write_json(path, data)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None, batch_size: int = 1
             ) -> LatencyTable:
        """The table for (device, threads, batch size) from ``path``; empty when the file or key is absent."""
        table = cls(device, threads or torch.get_num_threads(), batch_size)
        path = Path(path)
        if path.exists():
            table.entries = dict(read_json(path)["tables"].get(table.key, {}).get("entries", {}))
        return table


def _meta_build(space: SearchSpace, arch: Arch, num_classes: int, input_size: int) -> nn.Module:
    with torch.device("meta"):  # shapes only: no weight init, no memory
        return space.build(arch, num_classes, input_size)


class CostModel:
    """Costs of a space's archs, cached per arch_id: params/MACs/FLOPs from a meta-device build; latency
    predicted by ``latency_table`` (an in-memory CPU table, filled as needed, when none is given)."""

    def __init__(self, space: SearchSpace, num_classes: int = 100, input_size: int = 32,
                 latency_table: LatencyTable | None = None) -> None:
        self.space, self.num_classes, self.input_size = space, num_classes, input_size
        self.latency_table = latency_table
        self._cache: dict[str, dict[str, float]] = {}

    def __call__(self, arch: Arch, keys: Sequence[str] = COST_KEYS) -> dict[str, float]:
        unknown = set(keys) - set(COST_KEYS)
        if unknown:
            raise ConfigError(f"Unknown cost(s) {sorted(unknown)}; known: {', '.join(COST_KEYS)}.")
        space = self.space.for_arch(arch)
        c = self._cache.setdefault(space.arch_id(arch), {})
        missing = set(keys) - set(c)
        if missing:
            meta = _meta_build(space, arch, self.num_classes, self.input_size)
            c["params"] = count_params(meta)
            if missing & {"macs", "flops"}:
                c.update(count_flops(meta, self.input_size))
            if "latency_ms" in missing:
                table = self.latency_table = self.latency_table or LatencyTable()
                if table.missing(meta, self.input_size):
                    table.measure(space.build(arch, self.num_classes, self.input_size), self.input_size)
                c["latency_ms"] = table.predict(meta, self.input_size)
        return {k: c[k] for k in keys}


def latency_correlation(space: SearchSpace, table: LatencyTable, n: int = 10, seed: int = 0, num_classes: int = 100,
                        input_size: int = 32, warmup: int = 5, repeats: int = 20, rounds: int = 3,
                        archs: Sequence[Arch] | None = None) -> dict[str, Any]:
    """Spearman/Pearson correlation of LUT-predicted vs measured latency over ``archs`` (default: ``n``
    distinct sampled archs). Measurements go round-robin over the archs ``rounds`` times (median of the
    rounds' medians), so a change in machine load shifts every arch alike."""
    rng, by_id = random.Random(seed), {a.arch_id: a for a in archs or []}
    while archs is None and len(by_id) < n and len(by_id) != space.size():
        arch = space.sample(rng)
        by_id[arch.arch_id] = arch
    models = [space.build(arch, num_classes, input_size) for arch in by_id.values()]
    predicted = [table.predict(model, input_size) for model in models]
    per_round = [[measure_latency(model, input_size, table.batch_size, table.device, warmup, repeats, table.threads)
                  ["median_ms"] for model in models] for _ in range(rounds)]
    measured = [float(np.median(times)) for times in zip(*per_round)]
    from scipy import stats  # here: scipy costs ~0.7 s at import, and every kdnas command imports this module

    return {"n": len(models), "spearman": float(stats.spearmanr(predicted, measured)[0]),
            "pearson": float(stats.pearsonr(predicted, measured)[0]), "predicted_ms": predicted,
            "measured_ms": measured, "arch_ids": list(by_id), "device": table.device, "threads": table.threads}
