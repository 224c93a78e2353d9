"""The report's figures, each drawn from records already in the run folders and returned as PNG bytes (the
report writes them under plots/ and embeds them in the HTML). matplotlib is imported inside each function, with
the Agg backend, so that `kdnas --help` stays fast and no display is needed."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kdnas.utils import canonical_json

# History ``costs`` a Pareto front is drawn against (MACs only where FLOPs, their double, are missing).
PARETO_COSTS = ("params", "flops", "latency_ms")
SPLIT_STYLE = {"train": ":", "val": "--", "test": "-"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return buf.getvalue()


def _grid(n: int, width: float = 3.4, height: float = 2.8, cols: int = 4) -> tuple[Any, list[Any]]:
    """``n`` panels in rows of ``cols``; the unused ones hidden."""
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    fig, axes = _pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def training_curves(series: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes | None:
    """Train loss and train/val/test top-1 per epoch, one colour per run folder (``series``: label -> metrics)."""
    series = {k: v for k, v in series.items() if any("epoch" in r for r in v)}
    if not series:
        return None
    fig, (loss_ax, top1_ax) = _grid(2, width=5, height=3.4)
    for i, (label, records) in enumerate(series.items()):
        colour = f"C{i % 10}"
        for split, style in SPLIT_STYLE.items():
            rows = [r for r in records if r.get("split") == split and "epoch" in r]
            epochs = [r["epoch"] + 1 for r in rows]
            if split == "train" and any("loss" in r for r in rows):
                loss_ax.plot(epochs, [r.get("loss", np.nan) for r in rows], color=colour, marker=".", label=label)
            if any("top1" in r for r in rows):
                top1_ax.plot(epochs, [r.get("top1", np.nan) for r in rows], style, color=colour, marker=".",
                             label=f"{label} {split}")
    loss_ax.set(title="train loss", xlabel="epoch")
    top1_ax.set(title="top-1 (dotted train, dashed val, solid test)", xlabel="epoch", ylabel="%")
    for ax in (loss_ax, top1_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


def _rewards(history: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return np.asarray([r.get("reward", np.nan) for r in history], dtype=float)


def search_trajectory(history: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Reward of every evaluated arch in order, and the best so far."""
    rewards = _rewards(history)
    if not np.isfinite(rewards).any():
        return None
    fig, (ax,) = _grid(1, width=6, height=3.4)
    x = np.arange(1, len(rewards) + 1)
    ax.scatter(x, rewards, s=10, alpha=0.6, label="evaluated")
    ax.step(x, np.fmax.accumulate(np.where(np.isfinite(rewards), rewards, np.nan)), where="post", color="C3",
            label="best so far")
    ax.set(xlabel="evaluation", ylabel="reward", title="search trajectory")
    ax.legend(fontsize=7)
    return _png(fig)


def json_key(value: Any) -> Any:
    """A hashable stand-in for a decision value (lists and dicts become their canonical JSON)."""
    return canonical_json(value) if isinstance(value, (list, dict)) else value


def _sort_options(options: set[Any]) -> list[Any]:
    numeric = all(isinstance(o, (int, float)) and not isinstance(o, bool) for o in options)
    return sorted(options) if numeric else sorted(options, key=str)


def decision_histograms(history: Sequence[Mapping[str, Any]]) -> bytes | None:
    """How often each option of each varying decision was sampled in the first vs the last half of the search:
    where a controller or population concentrates."""
    archs = [r["arch"] for r in history if isinstance(r.get("arch"), dict)]
    names = [k for k in archs[0] if len({json_key(a.get(k)) for a in archs}) > 1] if len(archs) >= 2 else []
    if not names:
        return None
    half = len(archs) // 2
    fig, axes = _grid(len(names), width=3, height=2.4)
    for ax, name in zip(axes, names):
        options = _sort_options({json_key(a.get(name)) for a in archs})
        x = np.arange(len(options))
        for offset, (label, part) in zip((-0.2, 0.2), (("first half", archs[:half]), ("last half", archs[half:]))):
            counts = [sum(json_key(a.get(name)) == o for a in part) / len(part) for o in options]
            ax.bar(x + offset, counts, width=0.4, label=label)
        labels = [str(o) if len(str(o)) <= 16 else str(o)[:15] + "~" for o in options]
        ax.set_xticks(x, labels, fontsize=7, rotation=45 if len(options) > 4 or max(map(len, labels)) > 6 else 0)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("fraction of the half", fontsize=7)
    axes[0].legend(fontsize=7)
    return _png(fig)


def pareto_mask(cost: Sequence[float], reward: Sequence[float]) -> np.ndarray:
    """True where no other point has a cost as low and a reward as high, and one of them strictly better;
    points with a non-finite value are never on the front."""
    c, r = np.asarray(cost, dtype=float), np.asarray(reward, dtype=float)
    ok = np.isfinite(c) & np.isfinite(r)
    le, ge = c[None, :] <= c[:, None], r[None, :] >= r[:, None]
    strict = (c[None, :] < c[:, None]) | (r[None, :] > r[:, None])
    dominated = (le & ge & strict & ok[None, :]).any(axis=1)
    return ok & ~dominated


def pareto_costs(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cost keys every record of ``history`` carries, among ``PARETO_COSTS`` (MACs if FLOPs are missing)."""
    keys = set.intersection(*(set(r.get("costs") or {}) for r in history)) if history else set()
    wanted = PARETO_COSTS if "flops" in keys else ("params", "macs", "latency_ms")
    return [k for k in wanted if k in keys]


def pareto_fronts(history: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Reward against each recorded cost, the non-dominated archs (lowest cost for their reward) marked."""
    keys = pareto_costs(history)
    if not keys:
        return None
    rewards = _rewards(history)
    fig, axes = _grid(len(keys), width=3.6, height=3)
    for ax, key in zip(axes, keys):
        cost = np.asarray([r["costs"][key] for r in history], dtype=float)
        front = pareto_mask(cost, rewards)
        ax.scatter(cost, rewards, s=10, alpha=0.5, label="evaluated")
        order = np.argsort(cost[front])
        ax.plot(cost[front][order], rewards[front][order], "o-", color="C3", markersize=4, label="Pareto front")
        ax.set(xlabel=key, ylabel="reward")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.legend(fontsize=7)
    return _png(fig)


def comparison(rows: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Test top-1 of each strategy's retrained winner (KD and CE) against the job's total seconds."""
    rows = [r for r in rows if r.get("total_s") is not None and r.get("kd_top1") is not None]
    if not rows:
        return None
    fig, (ax,) = _grid(1, width=6.5, height=4)
    for key, marker, label in (("kd_top1", "o", "KD"), ("ce_top1", "x", "CE")):
        points = [(r["total_s"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.scatter(*zip(*points), marker=marker, s=40, label=f"winner, {label}")
    for r in rows:  # the compare row's name (cmp_diswot, ...): two rows may share a strategy
        ax.annotate(str(r.get("name") or r.get("strategy")), (r["total_s"], r["kd_top1"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    teachers = {r["teacher_top1"] for r in rows if r.get("teacher_top1") is not None}
    for t in sorted(teachers):
        ax.axhline(t, color="grey", linestyle="--", linewidth=1)
    ax.set(xlabel="total seconds (search + retraining)", ylabel="test top-1 (%)",
           title="strategies at equal budget" + (" (dashed: teacher)" if teachers else ""))
    ax.legend(fontsize=7)
    return _png(fig)


def cost_vs_reward(history: Sequence[Mapping[str, Any]], key: str, target: float, mode: str = "hard"
                   ) -> bytes | None:
    """Reward against the constrained cost ``key``, with the target as a vertical line: which archs the constraint
    admitted, and what the best one gave up. Archs over the target are drawn apart."""
    rows = [r for r in history if isinstance((r.get("costs") or {}).get(key), (int, float))]
    if not rows:
        return None
    cost = np.asarray([r["costs"][key] for r in rows], dtype=float)
    rewards = _rewards(rows)
    over = cost > target
    fig, (ax,) = _grid(1, width=6.5, height=4)
    ax.scatter(cost[~over], rewards[~over], s=14, alpha=0.7, color="C0", label=f"{key} <= target")
    if over.any():
        ax.scatter(cost[over], rewards[over], s=14, alpha=0.7, color="C1", marker="x", label=f"{key} > target")
    ok = np.isfinite(rewards) & ~over
    if ok.any():
        best = int(np.flatnonzero(ok)[np.argmax(rewards[ok])])
        ax.scatter([cost[best]], [rewards[best]], s=90, facecolors="none", edgecolors="C3", linewidths=1.5,
                   label="best within target")
    ax.axvline(target, color="C3", linestyle="--", linewidth=1.2, label=f"target {key} = {target:g} ({mode})")
    ax.set(xlabel=key, ylabel="reward", title=f"reward vs {key} under the constraint")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    ax.legend(fontsize=7)
    return _png(fig)
