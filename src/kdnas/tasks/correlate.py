"""task=correlate: how well each training-free proxy predicts trained accuracy over an arch set (every arch of
``space=`` or N sampled), against a ground truth trained with KD and with CE or read from a file.

Invariants: trained results are cached per (arch_id, recipe hash), so a killed run rerun continues where it
stopped and a rerun trains nothing; in-process or in workers, the results are the same.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from kdnas.config import TrainerConfig, dataclass_from_node
from kdnas.context import RunContext, to_object
from kdnas.correlation import markdown, proxy_stats, rank_normalise, scatter, seed_noise
from kdnas.engine.trainer import apply_runtime
from kdnas.errors import ConfigError
from kdnas.evaluators import proxy_evaluator, sample_archs, train_evaluator
from kdnas.execution import Pool, evaluation_pool
from kdnas.proxies.diswot import DISWOT_TERMS
from kdnas.spaces import space_from_config
from kdnas.spaces.base import Arch, SearchSpace
from kdnas.spaces.costs import CostModel
from kdnas.tasks.search import proxy_settings, teacher_settings, train_settings, worker_recipe
from kdnas.utils import atomic_write_json, derive_seed

Truth = dict[str, dict[str, list[float]]]  # ground truth name -> arch_id -> accuracy per seed
MAX_ENUMERATED = 10_000
SUFFIX = "_top1"


@dataclass
class CorrelateSettings:
    """The ``correlate:`` config group."""

    archs: Any = "all"  # all | N
    proxies: list[str] = field(default_factory=lambda: ["diswot", "params"])
    objectives: list[str] = field(default_factory=lambda: ["kd", "ce"])
    trainer: dict[str, Any] = field(default_factory=dict)
    ground_truth: str | None = None
    cached_only: bool = False
    metric: str = "val_top1"  # val_top1 | test_top1
    noise_seeds: int = 1
    noise_subset: int = 4
    top_k: int = 5
    bands: int = 3

    def __post_init__(self) -> None:
        if self.metric not in ("val_top1", "test_top1"):
            raise ConfigError(f"correlate.metric={self.metric!r} is not one of val_top1, test_top1.")

    @classmethod
    def from_config(cls, node: Any) -> CorrelateSettings:
        return dataclass_from_node(cls, node, "correlate")


def arch_set(space: SearchSpace, spec: Any, seed: int) -> list[Arch]:
    """Every arch (``all``, in enumeration order) or ``spec`` distinct sampled ones (seeded)."""
    if str(spec) == "all":
        size = space.size()
        if size is None or size > MAX_ENUMERATED:
            raise ConfigError(f"correlate.archs=all: space {space.name!r} has {size or 'unbounded'} archs; pass a "
                              f"number instead (correlate.archs=64).")
        return list(space.enumerate())
    return sample_archs(space, int(spec), derive_seed(seed, "correlate-archs"))


def _option(space: SearchSpace, name: str, cell: str, where: str) -> Any:
    options = next(d.options for d in space.decisions() if d.name == name)
    for option in options:
        if str(option) == cell.strip():
            return option
    raise ConfigError(f"{where}: {name}={cell!r} is not an option of space {space.name!r} ({options}).")


def read_ground_truth(path: str | Path, space: SearchSpace) -> tuple[list[Arch], Truth]:
    """A TSV/CSV with one column per searchable decision and accuracy columns ``<name>_top1`` (e.g. kd_top1,
    ce_top1); several rows of one arch are several seeds (the first is the ground truth)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"correlate.ground_truth={str(path)!r} does not exist.")
    names = [d.name for d in space.decisions()]
    archs: dict[str, Arch] = {}
    truth: Truth = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="," if path.suffix == ".csv" else "\t")
        missing = set(names) - set(reader.fieldnames or [])
        if missing or not any(c.endswith(SUFFIX) for c in reader.fieldnames or []):
            raise ConfigError(f"{path}: needs columns {names} and at least one accuracy column <name>{SUFFIX} "
                              f"(e.g. kd{SUFFIX}); missing {sorted(missing)}.")
        for i, row in enumerate(reader, start=2):
            arch = space.make({n: _option(space, n, row[n], f"{path}:{i}") for n in names})
            archs.setdefault(arch.arch_id, arch)
            for col, cell in row.items():
                if col.endswith(SUFFIX) and cell not in ("", None):
                    truth[col][arch.arch_id].append(float(cell))
    return list(archs.values()), {k: dict(v) for k, v in truth.items()}


def noise_subset(archs: list[Arch], k: int) -> list[Arch]:
    """``k`` archs spread evenly over the set (small to large in enumeration order)."""
    idx = np.unique(np.linspace(0, len(archs) - 1, min(k, len(archs))).round().astype(int))
    return [archs[i] for i in idx]


def train_truth(ctx: RunContext, space: SearchSpace, s: CorrelateSettings, archs: list[Arch], costs: CostModel,
                pool: Pool | None = None) -> tuple[Truth, dict[str, int]]:
    """(ground truth, the augmentation seed of each seed's runs). Every arch of one seed trains on the same views
    (one aug seed per evaluator, KD and CE alike), so the teacher's logits of an epoch are computed once per seed.
    The recipe is the run's ``trainer`` with ``correlate.trainer`` on top; candidates train where a search's do:
    in-process, or ``search.workers`` at a time per ``search.executor`` (worker processes, submitit jobs locally or
    on SLURM with ``search.slurm``)."""
    truth: Truth = {}
    aug_seeds: dict[str, int] = {}
    teacher, worker = teacher_settings(ctx), worker_recipe(ctx)
    recipe = to_object(OmegaConf.merge(ctx.cfg.trainer, s.trainer), TrainerConfig)  # correlate.trainer on top
    for objective in s.objectives:
        per_arch: dict[str, list[float]] = defaultdict(list)
        settings = train_settings(ctx, objective, recipe)  # the same for every seed
        for k in range(1 + s.noise_seeds):
            subset = archs if k == 0 or s.cached_only else noise_subset(archs, s.noise_subset)  # cached: any
            seed = ctx.cfg.seed + k
            ev = train_evaluator(ctx.workspace, space, settings, teacher, seed=seed,
                                 costs=costs, runs=ctx.run.sub(f"ground_truth/{objective}-seed{seed}"), pool=pool,
                                 worker=worker)
            aug_seeds[f"seed{seed}"] = ev.aug_seed
            results = [ev.lookup(a) for a in subset] if s.cached_only else ev.evaluate(subset)
            for arch, result in zip(subset, results):
                if result is not None and (k == 0 or arch.arch_id in per_arch):  # a seed's value after seed 0's
                    per_arch[arch.arch_id].append(result[s.metric])
        truth[f"{objective}{SUFFIX}"] = dict(per_arch)
    return truth, aug_seeds


def proxy_columns(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """One column per reported score; DisWOT as its terms, their raw sum (``diswot_sum``, the paper's fitness) and
    their mean rank-normalised value over the set (``diswot_rank``)."""
    columns = {k: [r["scores"][k] for r in results] for k in results[0]["scores"]}
    if set(DISWOT_TERMS) <= set(columns):
        sem, rel = (np.asarray(columns[t]) for t in DISWOT_TERMS)
        columns.pop("diswot", None)
        columns["diswot_sum"] = list(sem + rel)
        columns["diswot_rank"] = list((rank_normalise(sem) + rank_normalise(rel)) / 2)
    return columns


def _write_tsv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)


def analyse(run: Path, s: CorrelateSettings, archs: list[Arch], columns: dict[str, list[float]],
            params: list[float], truth: Truth) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per ground truth: every proxy's statistics, the seed noise, and a scatter plot."""
    results, noise = {}, {}
    for name, per_arch in truth.items():
        ids = [i for i, a in enumerate(archs) if a.arch_id in per_arch]
        runs = [per_arch[archs[i].arch_id] for i in ids]
        y = [accs[0] for accs in runs]
        cols = {p: [v[i] for i in ids] for p, v in columns.items()}
        results[name] = {p: proxy_stats(c, y, [params[i] for i in ids], top_k=s.top_k, bands=s.bands)
                         for p, c in cols.items()}
        noise[name] = seed_noise(per_arch)
        spread = {j: accs for j, accs in enumerate(runs) if len(accs) > 1}
        scatter(run / f"scatter_{name}.png", cols, y, name, spread, results[name])
    return results, noise


def write_rows(run: Path, space: SearchSpace, archs: list[Arch], columns: dict[str, list[float]],
               params: list[float], truth: Truth) -> None:
    """``correlate.tsv`` (an arch per row: proxies and first-seed truths) and ``ground_truth.tsv`` (an arch and
    seed per row, the format ``correlate.ground_truth`` reads)."""
    decisions = [d.name for d in space.decisions()]
    _write_tsv(run / "correlate.tsv", ["arch_id", *decisions, "params_count", *columns, *truth],
               [[a.arch_id, *(a.decisions[d] for d in decisions), params[i], *(columns[c][i] for c in columns),
                 *(truth[t].get(a.arch_id, [""])[0] for t in truth)] for i, a in enumerate(archs)])
    rows = []
    for a in archs:
        accs = [truth[t].get(a.arch_id, []) for t in truth]
        rows += [[*(a.decisions[d] for d in decisions), k, *(v[k] if k < len(v) else "" for v in accs)]
                 for k in range(max(map(len, accs), default=0))]
    _write_tsv(run / "ground_truth.tsv", [*decisions, "seed", *truth], rows)


def run(ctx: RunContext) -> dict[str, Any]:
    """Score ``correlate.archs`` with every proxy of ``correlate.proxies`` on the search's fixed batch, obtain the
    ground truth (:func:`train_truth`, or ``correlate.ground_truth=FILE``) and write ``correlate.md`` (Spearman,
    Kendall, precision at top-k, partial Spearman given the parameter count, Spearman within parameter bands, seed
    noise), ``correlate.json``, ``correlate.tsv``, ``ground_truth.tsv`` and ``scatter_<truth>.png``."""
    cfg = ctx.cfg
    apply_runtime(to_object(cfg.trainer, TrainerConfig))
    s = CorrelateSettings.from_config(cfg.correlate)
    space = space_from_config(cfg.space)
    aug_seeds: dict[str, int] = {}
    if s.ground_truth:
        archs, truth = read_ground_truth(s.ground_truth, space)
    else:
        archs = arch_set(space, s.archs, cfg.seed)
        costs = CostModel(space, ctx.data.num_classes, ctx.data.input_size)
        search = cfg.search
        with evaluation_pool(search.executor, search.workers, ctx.run.path / "submitit", search.slurm) as pool:
            truth, aug_seeds = train_truth(ctx, space, s, archs, costs, pool)
        if s.cached_only:
            archs = [a for a in archs if all(a.arch_id in t for t in truth.values())]
            if len(archs) < 3:
                raise ConfigError(f"correlate.cached_only=true: {len(archs)} arch(s) have every ground truth "
                                  f"({', '.join(truth)}) cached for this recipe; a correlation needs 3 or more. Run "
                                  "without correlate.cached_only to train them.")
    scored = proxy_evaluator(ctx.workspace, space, proxy_settings(ctx), teacher_settings(ctx),
                             names=s.proxies).evaluate(archs)
    columns, params = proxy_columns(scored), [r["costs"]["params"] for r in scored]
    results, noise = analyse(ctx.run.path, s, archs, columns, params, truth)
    text = markdown(results, noise, s.top_k, len(archs))
    (ctx.run.path / "correlate.md").write_text(text + "\n")
    atomic_write_json(ctx.run.path / "correlate.json", {"schema_version": 1, "archs": len(archs), "results": results,
                                                       "noise": noise})
    write_rows(ctx.run.path, space, archs, columns, params, truth)
    print(text)
    best = {name: max(r, key=lambda p: np.nan_to_num(r[p]["spearman"], nan=-2)) for name, r in results.items()}
    return {"archs": len(archs), "aug_seeds": aug_seeds, "best_proxy": best,
            "spearman": {name: {p: r[p]["spearman"] for p in r} for name, r in results.items()}}
