"""Assembling a report: a run folder gets its tables and plots; a sweep folder gets a jobs table, its failed
jobs, the equal-budget strategy comparison of its task=pipeline jobs, then one section per job."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from kdnas.report import plots
from kdnas.report.collect import Run, first, load_target, pipeline_row, read_json_or, stage_seconds
from kdnas.report.kdas import kdas_blocks
from kdnas.report.render import Block, Figure, Section, Table, Text, drop_empty_columns, figures, to_html, to_markdown
from kdnas.runs import safe_dirname
from kdnas.spaces.constraints import LIMITS
from kdnas.utils import atomic_write_bytes

TOP_K = 5
# summary.json entries that identify rather than measure: left out of the summary table.
NOT_FIGURES = ("schema_version", "run_dir", "config_hash", "best_arch_path")


def fmt(value: Any, spec: str = ".2f") -> str:
    """A table cell: ``-`` for missing, ``spec`` for floats, str otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


def millions(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value / 1e6:.{digits}f}M"


def _last(records: list[dict[str, Any]], split: str, key: str) -> Any:
    return next((r[key] for r in reversed(records) if r.get("split") == split and key in r), None)


def _figure(name: str, png: bytes | None, caption: str) -> list[Block]:
    return [Figure(name, png, caption)] if png is not None else []


def _stages(run: Run) -> list[tuple[str, Run]]:
    return [(".", run), *((c.path.name, c) for c in run.children)]


def overview(run: Run) -> Table:
    """A row per folder (the run and its stages): status, epochs and the last logged figures."""
    rows = []
    for label, r in _stages(run):
        epochs = max((m["epoch"] + 1 for m in r.metrics if "epoch" in m), default=None)
        rows.append([label, r.task if r is run else "-", r.state if r is run or r.status else "-", fmt(epochs),
                     fmt(_last(r.metrics, "train", "loss"), ".4f"),
                     *(fmt(_last(r.metrics, split, "top1")) for split in ("train", "val", "test")),
                     fmt(len(r.history) if r.history else None), fmt(stage_seconds(r), ".1f")])
    return Table(["folder", "task", "status", "epochs", "train loss", "train top-1", "val top-1", "test top-1",
                  "history records", "seconds"], rows)


def summary_table(summary: dict[str, Any]) -> Table:
    """The scalar entries of summary.json (nested ones, e.g. a pipeline's search, are reported elsewhere)."""
    rows = [[k, fmt(v, ".4g")] for k, v in sorted(summary.items())
            if k not in NOT_FIGURES and isinstance(v, (int, float, str, bool))]
    return Table(["summary.json", "value"], rows)


def _reward_kinds(history: list[dict[str, Any]]) -> str:
    """What "reward" measured in this history (``reward_kind``, plus DisWOT's semantic form where recorded), so a
    reader never compares a proxy score with a trained accuracy; several kinds are named as such."""
    kinds = sorted({str(r.get("reward_kind", "unlabelled")) + (f", semantic form {r['semantic_form']}"
                                                              if r.get("semantic_form") else "") for r in history})
    return f"reward = {kinds[0]}" if len(kinds) == 1 else f"MIXED reward kinds: {'; '.join(kinds)}"


def _decisions(arch: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in arch.items()) if isinstance(arch, dict) else "-"


def constraint_targets(config: dict[str, Any]) -> dict[str, float]:
    """The cost keys a run's ``constraint:`` group bounds (``params_max`` -> ``params``, ...) and their targets."""
    node = config.get("constraint") if isinstance(config, dict) else None
    if not isinstance(node, dict):
        return {}
    return {cost: float(node[limit]) for limit, cost in LIMITS.items() if isinstance(node.get(limit), (int, float))}


def target_text(value: float) -> str:
    """A constraint target a reader can take in: 272,474 or 21.94M (not 2.19388e+07)."""
    return f"{value / 1e6:,.2f}M" if abs(value) >= 1e6 else f"{value:,.6g}"


def with_macs_and_flops(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with MACs from FLOPs (or FLOPs from MACs) added to its costs when only one is recorded (FLOPs =
    2 x MACs), as a new dict: a MACs constraint is checked and plotted on a history that stores FLOPs."""
    costs = dict(record.get("costs") or {})
    if "flops" in costs and "macs" not in costs:
        costs["macs"] = costs["flops"] / 2
    elif "macs" in costs and "flops" not in costs:
        costs["flops"] = 2 * costs["macs"]
    return {**record, "costs": costs} if costs else record


def search_blocks(run: Run, slug: str, config: dict[str, Any] | None = None) -> list[Block]:
    """Top archs, trajectory, decision histograms and Pareto fronts of one search's history.jsonl; under a
    constraint (``config``: the run's composed config) its columns, each arch's verdict and reward vs the
    constrained cost with the target."""
    history = [r for r in run.history if "reward" in r]
    if not history:
        return []
    rewards = np.nan_to_num(np.asarray([r["reward"] for r in history], dtype=float), nan=-np.inf)
    order = sorted(range(len(history)), key=lambda i: (-rewards[i], i))
    targets = constraint_targets(config or run.config)
    if targets:
        history = [with_macs_and_flops(r) for r in history]
    costs = plots.pareto_costs(history)
    costs += [k for k in targets if k not in costs and any(k in (r.get("costs") or {}) for r in history)]

    def verdict(r: dict[str, Any]) -> str:
        c = r.get("costs") or {}
        if not targets or any(c.get(k) is None for k in targets):
            return "-"
        return "yes" if all(c[k] <= t for k, t in targets.items()) else "no"

    limits = ", ".join(f"{k} <= {target_text(t)}" for k, t in targets.items())
    mode = str(((config or run.config).get("constraint") or {}).get("mode", "hard")) if targets else ""
    over = sum(verdict(r) == "no" for r in history)
    # a verdict column only where it tells something: all "yes" (a hard constraint rejects archs before scoring)
    verdicts = bool(targets) and any(verdict(r) != "yes" for r in history)
    top = [[str(rank + 1), str(history[i].get("arch_id", "-")), fmt(history[i]["reward"], ".4g"),
            *(fmt((history[i].get("costs") or {}).get(k), ".4g") for k in costs),
            *([verdict(history[i])] if verdicts else []), _decisions(history[i].get("arch"))]
           for rank, i in enumerate(order[:TOP_K])]
    said = {"hard": "archs over it are rejected before they are scored",
            "soft": "archs over it are scored with a penalty"}.get(mode, mode)
    blocks: list[Block] = [
        Text(f"{len(history)} archs evaluated ({_reward_kinds(history)}); best reward "
             f"{fmt(history[order[0]]['reward'], '.4g')} ({history[order[0]].get('arch_id', '-')})."
             + (f" Constraint ({mode}: {said}): {limits}; {len(history) - over} of {len(history)} evaluated archs "
                "within it." if targets else "")),
        Table(["rank", "arch_id", "reward", *costs, *([f"within {limits}"] if verdicts else []), "decisions"], top),
        *_figure(f"{slug}-trajectory", plots.search_trajectory(history), "Reward per evaluation and best so far"),
        *_figure(f"{slug}-decisions", plots.decision_histograms(history),
                 "Decision options sampled in the first vs the last half of the search"),
    ]
    if costs:
        cost = [r["costs"][costs[0]] for r in history]
        front = sorted(np.flatnonzero(plots.pareto_mask(cost, rewards)), key=lambda i: cost[i])
        blocks += [*_figure(f"{slug}-pareto", plots.pareto_fronts(history),
                            f"Reward vs {', '.join(costs)}; the line joins the non-dominated archs"),
                   Text(f"Pareto front (reward vs {costs[0]}): {len(front)} arch(s)."),
                   Table(["arch_id", "reward", *costs],
                         [[str(history[i].get("arch_id", "-")), fmt(history[i]["reward"], ".4g"),
                           *(fmt(history[i]["costs"].get(k), ".4g") for k in costs)] for i in front])]
    for key, target in targets.items():
        blocks += _figure(f"{slug}-constraint-{key}", plots.cost_vs_reward(history, key, target, mode),
                          f"Reward vs {key}: the dashed line is the target {key} <= {target_text(target)} ({mode})"
                          + ("; crosses are archs over it" if over else ""))
        if not any(key in (r.get("costs") or {}) for r in history):
            blocks.append(Text(f"The history records no {key} cost: the {key} constraint cannot be plotted.",
                               note=True))
    return blocks


def correlate_blocks(run: Run) -> list[Block]:
    """task=correlate: a table per ground truth (a row per proxy, best Spearman first)."""
    data = read_json_or(run.path / "correlate.json")
    if not isinstance(data, dict) or not data.get("results"):
        return []
    blocks: list[Block] = [Text(f"{data.get('archs', '?')} archs; ground truths and proxies from correlate.json, "
                                "one row per arch in correlate.tsv.")]
    for truth, per_proxy in data["results"].items():
        some = next(iter(per_proxy.values()), {})
        p_at = next((k for k in some if k.startswith("precision_at_")), None)
        order = sorted(per_proxy, key=lambda p: -np.nan_to_num(per_proxy[p].get("spearman", np.nan), nan=-2.0))
        blocks.append(Section(f"Proxies vs {truth}", [Table(
            ["proxy", "Spearman", "Kendall", f"P@{p_at.rsplit('_', 1)[-1]}" if p_at else "P@k", "partial (params)"],
            [[p, *(fmt(per_proxy[p].get(k), "+.3f") for k in ("spearman", "kendall")),
              fmt(per_proxy[p].get(p_at) if p_at else None), fmt(per_proxy[p].get("partial_spearman_given_params"),
                                                                  "+.3f")] for p in order])]))
    return blocks


def run_blocks(run: Run, slug: str) -> list[Block]:
    """Everything one run folder (with its stage folders) can show."""
    blocks: list[Block] = []
    if run.state != "ok":
        blocks.append(Text(f"status {run.state}: {run.message}", note=True))
    blocks += [overview(run)]
    if run.summary:
        blocks.append(summary_table(run.summary))
    series = {label if label != "." else run.name: r.metrics for label, r in _stages(run) if r.metrics}
    blocks += _figure(f"{slug}-curves", plots.training_curves(series),
                      "Train loss and top-1 per epoch (" + ", ".join(series) + ")" + (
                          "; the losses of different objectives (KD's includes the T²-scaled KL term) are not "
                          "comparable, the top-1 curves are" if len(series) > 1 else ""))
    for label, r in _stages(run):
        found = search_blocks(r, slug if r is run else f"{slug}-{safe_dirname(label)}", run.config)
        if found:
            blocks.append(Section(f"Search ({r.path.name if r is not run else run.name})", found))
    blocks += correlate_blocks(run)
    pngs = sorted(run.path.glob("*.png"))  # figures the run drew itself (correlate scatters, Cream's board)
    blocks += [Figure(f"{slug}-{safe_dirname(p.stem)}", p.read_bytes(), f"{p.name}, as written by the run")
               for p in pngs]
    if not any(r.metrics or r.history or r.summary for _, r in _stages(run)):
        blocks.append(Text("No metrics.jsonl, history.jsonl or summary.json here: nothing to plot.", note=True))
    return blocks


def comparison_blocks(jobs: list[Run]) -> list[Block]:
    """Equal-budget comparison of the finished task=pipeline jobs: a row per job and accuracy vs seconds."""
    rows = [pipeline_row(j) for j in jobs if j.task == "pipeline" and j.state == "ok" and j.summary]
    if not rows:
        return []
    table = Table(["name", "strategy", "space", "evaluated", "search s", "retrain s", "total s", "params", "MACs",
                   "FLOPs", "KD top-1", "CE top-1", "teacher top-1"],
                  [[r["name"], fmt(r["strategy"]), fmt(r["space"]), fmt(r["evaluated"]), fmt(r["search_s"], ".1f"),
                    fmt(r["retrain_s"], ".1f"), fmt(r["total_s"], ".1f"), millions(r["params"]),
                    millions(r["macs"], 1), millions(r["flops"], 1), fmt(r["kd_top1"]), fmt(r["ce_top1"]),
                    fmt(r["teacher_top1"])] for r in rows])
    return [Section("Strategies at equal budget", [
        Text("One row per task=pipeline job: the search's candidates and seconds, the retraining (KD and CE) "
             "seconds, the winner's size and its test top-1 after retraining."),
        table, *_figure("comparison", plots.comparison(rows), "Test top-1 of the retrained winner vs total seconds")])]


SEED_FIGURES = (("test top-1", lambda s: first(s.get("kd_test_top1_last"), s.get("test_top1_last")), ".2f"),
                ("CE top-1", lambda s: s.get("ce_test_top1_last"), ".2f"),
                ("KD - CE", lambda s: s.get("gain_test_top1_last"), "+.2f"),
                ("best reward", lambda s: s.get("best_reward"), ".4g"),
                ("seconds", lambda s: s.get("wall_seconds"), ".1f"))


def _seed(job: Run) -> Any:
    return job.config.get("seed", next((o.split("=", 1)[1] for o in job.overrides if o.startswith("seed=")), None))


def mean_std(values: list[float], spec: str) -> str:
    """``mean ± std`` (sample std, n - 1) of the values present; the mean alone for one value; ``-`` for none."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(float(np.mean(values)), spec)} ± {float(np.std(values, ddof=1)):{spec.lstrip('+')}}"


def seed_blocks(jobs: list[Run]) -> list[Block]:
    """One row per configuration (the job's overrides without ``seed=``) with mean ± std and n over its finished
    seeds: shown when some configuration ran with several seeds."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for j in jobs:
        if j.state == "ok" and j.summary:
            groups.setdefault(tuple(o for o in j.overrides if not o.startswith("seed=")), []).append(j)
    if not any(len({str(_seed(j)) for j in g}) > 1 for g in groups.values()):
        return []
    rows = [[" ".join(config) or "(no overrides)", str(len(g)), ",".join(str(_seed(j)) for j in g),
             *(mean_std([get(j.summary) for j in g], spec) for _, get, spec in SEED_FIGURES)]
            for config, g in groups.items()]
    return [Section("Per configuration, over seeds", [
        Text("Finished jobs grouped by their overrides without seed=: mean ± standard deviation over the seeds "
             "(n - 1 in the denominator); n is the number of finished seeds. The per-job table is above."),
        Table(["configuration", "n", "seeds", *(name + " (mean ± std)" for name, _, _ in SEED_FIGURES)], rows)])]


def sweep_blocks(jobs: list[Run]) -> list[Block]:
    rows = [[j.path.name, j.name, j.task, j.state, " ".join(j.overrides) or "-",
             fmt(first(j.summary.get("kd_test_top1_last"), j.summary.get("test_top1_last"))),
             fmt(j.summary.get("best_reward"), ".4g"), fmt(j.summary.get("wall_seconds"), ".1f")] for j in jobs]
    failed = [j for j in jobs if j.state != "ok"]
    blocks: list[Block] = [Section("Jobs", [Table(["folder", "name", "task", "status", "overrides", "test top-1",
                                                   "best reward", "seconds"], rows)])]
    blocks += seed_blocks(jobs)
    if failed:
        blocks.append(Section("Failed or unfinished jobs", [Table(["folder", "status", "message"], [
            [j.path.name, j.state, j.message.splitlines()[0][:300] if j.message else "-"] for j in failed])]))
    blocks += comparison_blocks(jobs)
    blocks += kdas_blocks(jobs)
    blocks += [Section(f"Job {j.path.name}", run_blocks(j, safe_dirname(j.path.name))) for j in jobs]
    return blocks


def build_report(target: Path, out: Path) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` in ``out`` for the run or sweep folder ``target``;
    return their paths and what was reported."""
    kind, runs = load_target(target)
    doc = Section(f"kdnas report: {target.resolve().name}", [
        Text(f"{kind} folder {target.resolve()} ({len(runs)} run(s)); generated {time.strftime('%Y-%m-%d %H:%M')}.")])
    doc.blocks += sweep_blocks(runs) if kind == "sweep" else run_blocks(runs[0], "run")
    drop_empty_columns(doc)
    written = []
    for figure in figures(doc):
        atomic_write_bytes(out / "plots" / f"{figure.name}.png", figure.png)
        written.append(str(out / "plots" / f"{figure.name}.png"))
    atomic_write_bytes(out / "report.md", to_markdown(doc).encode())
    atomic_write_bytes(out / "report.html", to_html(doc).encode())
    return {"kind": kind, "target": str(target.resolve()), "runs": len(runs), "report_md": str(out / "report.md"),
            "report_html": str(out / "report.html"), "plots": written,
            "failed": [r.path.name for r in runs if r.state != "ok"]}
