"""Tabular replay: the real strategies search a table of measured archs (decisions, KD and CE top-1, costs) instead
of training candidates, for cheap many-seed comparisons (as NAS-Bench-101/201 replays do).

An arch the table lacks scores as its nearest row (fewest differing decisions, then table order). Every strategy is
judged by the KD top-1 of its winners under one hard cost limit, whatever its reward (``kd`` or ``ce``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from kdnas.correlation import mean_se
from kdnas.errors import ConfigError
from kdnas.spaces.base import Arch, Decision, SearchSpace
from kdnas.spaces.constraints import Constraint
from kdnas.spaces.costs import COST_KEYS
from kdnas.strategies.base import create_strategy, reward_key
from kdnas.utils import canonical_json, read_jsonl, stable_hash

ACCURACIES = ("kd_top1", "ce_top1")
CONF = Path(__file__).resolve().parents[1] / "conf" / "strategy"


def _value(cell: Any) -> Any:
    """A TSV cell as the number it spells, else the string."""
    for kind in (int, float):
        try:
            return kind(cell)
        except (TypeError, ValueError):
            pass
    return cell


@dataclass
class Table:
    """Rows of ``{"decisions": {...}, "kd_top1", "ce_top1", <costs>}``, one per arch (first row wins)."""

    rows: list[dict[str, Any]]

    def __post_init__(self) -> None:
        unique = {canonical_json(r["decisions"]): r for r in reversed(self.rows)}
        self.rows = [r for r in self.rows if unique[canonical_json(r["decisions"])] is r]
        names = sorted(self.rows[0]["decisions"]) if self.rows else []
        missing = [k for k in ACCURACIES if any(k not in r for r in self.rows)]
        if not self.rows or missing or any(sorted(r["decisions"]) != names for r in self.rows):
            raise ConfigError(f"A replay table needs rows with the same decisions and {', '.join(ACCURACIES)} "
                              f"(missing {missing or 'rows'}).")
        self.decisions = [Decision(n, sorted({canonical_json(r["decisions"][n]): r["decisions"][n]
                                              for r in self.rows}.values(), key=canonical_json))
                          for n in names]  # values may be lists (resnet_cifar's fixed `widths`)
        self.index = {canonical_json(r["decisions"]): i for i, r in enumerate(self.rows)}
        self.codes = np.array([[d.options.index(r["decisions"][d.name]) for d in self.decisions] for r in self.rows])
        self.costs = [k for k in COST_KEYS if all(k in r for r in self.rows)]

    @classmethod
    def load(cls, path: str | Path) -> Table:
        """``correlate.tsv`` (decision columns between ``arch_id`` and ``params_count``), or a ``.jsonl``/``.csv``
        with ``arch`` (decisions or an arch JSON), ``kd_top1``, ``ce_top1``, ``params``; rows without both
        accuracies (an arch the correlate run did not train) are left out."""
        path = Path(path).expanduser()
        if path.suffix == ".jsonl":
            records = read_jsonl(path, missing_ok=False)
        else:
            with open(path, newline="") as f:
                records = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
        if records and "arch" not in records[0]:  # correlate.tsv: decisions between arch_id and params_count
            cols = list(records[0])
            end = next((c for c in ("params_count", "params") if c in cols), None)
            if "arch_id" not in cols or end is None:
                raise ConfigError(f"{path}: a correlate.tsv needs the columns arch_id, <decisions...>, params_count "
                                  f"(or params); it has {cols}.")
            names = cols[cols.index("arch_id") + 1: cols.index(end)]
            decisions = [{n: _value(r[n]) for n in names} for r in records]
            for r in records:  # correlate's parameter count; its `params` proxy column, where present, is the same
                r.setdefault("params", r.get("params_count"))
        else:
            archs = [json.loads(r["arch"]) if isinstance(r["arch"], str) else r["arch"] for r in records]
            decisions = [a.get("decisions", a) for a in archs]
        return cls([{"decisions": d, **{k: float(v) for k, v in r.items() if k in (*ACCURACIES, *COST_KEYS)}}
                    for d, r in zip(decisions, records) if all(r.get(k) not in (None, "") for k in ACCURACIES)])

    def lookup(self, arch: Arch) -> dict[str, Any]:
        """The arch's row, or its nearest row in Hamming distance over the decisions."""
        exact = self.index.get(canonical_json({d.name: arch.decisions[d.name] for d in self.decisions}))
        if exact is not None:
            return self.rows[exact]
        code = np.array([d.options.index(arch.decisions[d.name]) for d in self.decisions])
        return self.rows[int((self.codes != code).sum(1).argmin())]

    def best_kd(self, constraint: Constraint) -> float:
        """The best KD top-1 of a row meeting the constraint (the replay's ceiling)."""
        return max(r["kd_top1"] for r in self.rows if constraint.check(r)[0])


class TableSpace(SearchSpace):
    """The factorised space of a table's decision values (no network is ever built)."""

    name = "table"

    def __init__(self, table: Table) -> None:
        super().__init__()
        self.table = table

    def decisions(self) -> list[Decision]:
        return self.table.decisions


class TableCosts:
    """The cost model of a table space: a row's costs (a drop-in for :class:`~kdnas.spaces.costs.CostModel`)."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def __call__(self, arch: Arch, keys: Sequence[str] = COST_KEYS) -> dict[str, float]:
        missing = sorted(set(keys) - set(self.table.costs))
        if missing:
            raise ConfigError(f"The replay table has no {missing} column(s); it has {self.table.costs}.")
        row = self.table.lookup(arch)
        return {k: row[k] for k in keys}


class TableEvaluator:
    """Scores archs by table lookup; ``reward`` is the ``kd`` or ``ce`` top-1."""

    def __init__(self, table: Table, reward: str) -> None:
        if reward not in ("kd", "ce"):
            raise ConfigError(f"Replay reward {reward!r} is not one of kd, ce.")
        self.table, self.reward = table, reward
        self.fingerprint = stable_hash({"table": [canonical_json(r) for r in table.rows], "reward": reward})

    def evaluate(self, archs: Sequence[Arch]) -> list[dict[str, Any]]:
        rows = [self.table.lookup(a) for a in archs]
        return [{"reward": r[f"{self.reward}_top1"], **{k: r[k] for k in (*ACCURACIES, *self.table.costs)}}
                for r in rows]


def shipped_config(name: str) -> dict[str, Any]:
    """The shipped ``conf/strategy/<name>.yaml``'s own keys (its defaults list names only its schema)."""
    node = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))
    node.pop("defaults", None)
    return node


def replay(table: Table, strategy: Mapping[str, Any], reward: str, *, seed: int, budget: int, batch: int,
           constraint: Constraint) -> list[float]:
    """One search of ``budget`` evaluations; the KD top-1 of the winner after each evaluation. A strategy that
    names its reward kind (AKD's ``reward``) is told the replay's."""
    cfg = {**strategy, "reward": reward} if "reward" in strategy else dict(strategy)
    search = create_strategy(cfg, TableSpace(table), constraint=constraint, costs=TableCosts(table), seed=seed)
    evaluator = TableEvaluator(table, reward)
    while len(search.history) < budget:
        archs = search.ask(min(batch, budget - len(search.history)))
        if not archs:
            break
        search.tell(archs, evaluator.evaluate(archs))
    curve, best = [], None
    for _, result in search.history:
        if best is None or reward_key(result) > reward_key(best):
            best = result
        curve.append(best["kd_top1"])
    return curve


def _mean_se(values: Sequence[float]) -> dict[str, float]:
    mean, se = mean_se(values)
    return {"mean": float(mean), "se": float(se)}


def compare(table: Table, strategies: Mapping[str, Mapping[str, Any]], *, seeds: Sequence[int], budget: int,
            batch: int, constraint: Constraint, rewards: Sequence[str] = ("kd", "ce"),
            checkpoints: Sequence[int] = ()) -> dict[str, Any]:
    """Every strategy x reward over ``seeds``: winners' KD top-1 (mean, s.e.) at each checkpoint, and paired
    differences (same seeds) of each strategy against ``random`` and of the KD against the CE reward."""
    marks = sorted({min(c, budget) for c in checkpoints} | {budget})
    curves = {f"{s}/{r}": [replay(table, cfg, r, seed=k, budget=budget, batch=batch, constraint=constraint)
                           for k in seeds] for s, cfg in strategies.items() for r in rewards}

    def at(name: str, mark: int) -> list[float]:
        return [c[min(mark, len(c)) - 1] for c in curves[name]]

    def paired(a: str, b: str) -> dict[str, float]:
        diff = np.subtract(at(a, budget), at(b, budget))
        return {**_mean_se(diff), "wins": float((diff > 0).mean()), "ties": float((diff == 0).mean())}

    pairs = {f"{s}/{r} - random/{r}": paired(f"{s}/{r}", f"random/{r}")
             for s in strategies if s != "random" and "random" in strategies for r in rewards}
    if {"kd", "ce"} <= set(rewards):
        pairs.update({f"{s}/kd - {s}/ce": paired(f"{s}/kd", f"{s}/ce") for s in strategies})
    return {"schema_version": 1, "budget": budget, "batch": batch, "seeds": list(seeds), "rows": len(table.rows),
            "constraint": constraint.targets, "ceiling_kd_top1": table.best_kd(constraint), "checkpoints": marks,
            "results": {n: {str(m): _mean_se(at(n, m)) for m in marks} for n in curves}, "paired": pairs,
            "curves": curves}
