"""How well a proxy ranks architectures: rank correlations with a ground truth, precision at top-k, partial
correlation given the parameter count, correlations within parameter-count bands, and the plots and
Markdown table task=correlate writes. Also the paired comparison of two networks on the same test images
(:func:`test_hits`, :func:`paired_comparison`, :func:`comparison_line`).

Rank statistics skip NaN entries (a proxy that failed on an arch) pairwise; infinities keep their rank.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from kdnas.config import TrainerConfig
from kdnas.data import DataModule
from kdnas.engine.trainer import autocast_context


def _finite_pairs(*cols: Sequence[float]) -> list[np.ndarray]:
    arrays = [np.asarray(c, dtype=float) for c in cols]
    keep = np.logical_and.reduce([~np.isnan(a) for a in arrays])
    return [a[keep] for a in arrays]


def _constant(a: np.ndarray) -> bool:
    return len(a) < 3 or bool(np.all(a == a[0]))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Signed Spearman rho (NaN with fewer than 3 pairs or a constant side)."""
    x, y = _finite_pairs(x, y)
    return math.nan if _constant(x) or _constant(y) else float(stats.spearmanr(x, y)[0])


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Signed Kendall tau-b."""
    x, y = _finite_pairs(x, y)
    return math.nan if _constant(x) or _constant(y) else float(stats.kendalltau(x, y)[0])


def mean_se(x: Sequence[float] | np.ndarray, axis: int = -1) -> tuple[Any, Any]:
    """Mean and standard error (sample s.d. / sqrt(n)) along ``axis``, NaN entries left out; the s.e. is NaN
    where fewer than two values remain. Scalars for a 1-D input."""
    a = np.asarray(x, dtype=float)
    n = np.sum(~np.isnan(a), axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices and n < 2: NaN is the answer
        mean = np.nanmean(a, axis=axis)
        sd = np.nanstd(a, axis=axis, ddof=1) if a.shape[axis] > 1 else np.full(np.shape(mean), np.nan)
    se = np.where(n > 1, sd / np.sqrt(np.maximum(n, 1)), np.nan)
    return mean, (se[()] if se.ndim == 0 else se)


def rank_normalise(x: Sequence[float]) -> np.ndarray:
    """Average ranks scaled to (0, 1]; NaN stays NaN."""
    a = np.asarray(x, dtype=float)
    out = np.full_like(a, np.nan)
    ok = ~np.isnan(a)
    out[ok] = stats.rankdata(a[ok]) / ok.sum()
    return out


def precision_at_k(proxy: Sequence[float], truth: Sequence[float], k: int) -> float:
    """|top-k by proxy & top-k by ground truth| / k (ties broken by order)."""
    p, t = _finite_pairs(proxy, truth)
    k = min(k, len(p))
    if k == 0:
        return math.nan
    top = set(np.argsort(-p, kind="stable")[:k]) & set(np.argsort(-t, kind="stable")[:k])
    return len(top) / k


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Spearman correlation of x and y with z (e.g. the parameter count) partialled out:
    ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))`` on ranks."""
    x, y, z = _finite_pairs(x, y, z)
    r_xy, r_xz, r_yz = spearman(x, y), spearman(x, z), spearman(y, z)
    denom = math.sqrt(max((1 - r_xz**2) * (1 - r_yz**2), 0.0))
    return math.nan if denom == 0 or math.isnan(denom) else (r_xy - r_xz * r_yz) / denom


def band_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float], bands: int) -> list[dict[str, Any]]:
    """Spearman within ``bands`` equal-count bands of z (sorted ascending)."""
    x, y, z = (np.asarray(a, dtype=float) for a in (x, y, z))
    out = []
    for idx in np.array_split(np.argsort(z, kind="stable"), max(bands, 1)):
        if len(idx):
            out.append({"lo": float(z[idx].min()), "hi": float(z[idx].max()), "n": len(idx),
                        "spearman": spearman(x[idx], y[idx])})
    return out


def proxy_stats(proxy: Sequence[float], truth: Sequence[float], params: Sequence[float], *, top_k: int,
                bands: int) -> dict[str, Any]:
    return {"spearman": spearman(proxy, truth), "kendall": kendall(proxy, truth),
            f"precision_at_{top_k}": precision_at_k(proxy, truth, top_k),
            "partial_spearman_given_params": partial_spearman(proxy, truth, params),
            "band_spearman": band_spearman(proxy, truth, params, bands)}


def seed_noise(by_seed: Mapping[str, Sequence[float]]) -> dict[str, Any] | None:
    """Ground-truth seed noise over archs trained with several seeds: mean per-arch std (points) and the
    seed-to-seed Spearman of the first two seeds (a ceiling for any proxy's correlation)."""
    runs = [np.asarray(v, dtype=float) for v in by_seed.values() if len(v) >= 2]
    if not runs:
        return None
    pairs = [v[:2] for v in runs]
    return {"archs": len(runs), "mean_std": float(np.mean([v.std(ddof=1) for v in runs])),
            "seed_spearman": spearman([p[0] for p in pairs], [p[1] for p in pairs])}


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.3f}"


def markdown(results: Mapping[str, Mapping[str, Mapping[str, Any]]], noise: Mapping[str, Any], top_k: int,
             n: int) -> str:
    """One table per ground truth: a row per proxy, best Spearman first."""
    out = [f"# Proxy correlations ({n} archs)", ""]
    for truth, per_proxy in results.items():
        out += [f"## vs {truth}", "", f"| proxy | Spearman | Kendall | P@{top_k} | partial (params) | in param bands |",
                "|---|---|---|---|---|---|"]
        order = sorted(per_proxy, key=lambda p: -np.nan_to_num(per_proxy[p]["spearman"], nan=-2))
        for p in order:
            s = per_proxy[p]
            bands = " / ".join(_fmt(b["spearman"]) for b in s["band_spearman"])
            out.append(f"| {p} | {_fmt(s['spearman'])} | {_fmt(s['kendall'])} | {s[f'precision_at_{top_k}']:.2f} | "
                       f"{_fmt(s['partial_spearman_given_params'])} | {bands} |")
        nz = noise.get(truth)
        out += ["", f"Seed noise of {truth}: " + (
            f"mean std {nz['mean_std']:.2f} points over {nz['archs']} archs trained with 2+ seeds; seed-to-seed "
            f"Spearman {_fmt(nz['seed_spearman'])}." if nz
            else "not measured (no arch has a second seed: correlate.noise_seeds)."), ""]
    return "\n".join(out)


def scatter(path: Path, columns: Mapping[str, Sequence[float]], truth: Sequence[float], truth_name: str,
            spread: Mapping[int, Sequence[float]], results: Mapping[str, Mapping[str, Any]]) -> None:
    """One panel per proxy: ground truth vs the proxy's normalised rank; archs trained with several seeds
    get a vertical band spanning their seeds' accuracies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    y = np.asarray(truth, dtype=float)
    for ax, name in zip(axes.flat, names):
        x = rank_normalise(columns[name])
        ax.scatter(x, y, s=12)
        for i, accs in spread.items():
            ax.vlines(x[i], min(accs), max(accs), color="tab:orange", alpha=0.6, linewidth=3)
        ax.set_title(f"{name}  rho={_fmt(results[name]['spearman'])}", fontsize=9)
        ax.set_xlabel("proxy rank (normalised)", fontsize=8)
        ax.set_ylabel(truth_name, fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def test_hits(data: DataModule, model: nn.Module, trainer_cfg: TrainerConfig) -> torch.Tensor:
    """Per test image, whether ``model``'s top-1 prediction is right (bool, in the test split's order), evaluated
    with ``trainer_cfg``'s batch size, memory format and AMP: what a paired comparison of two networks needs."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = []
    for batch in data.loader("test", trainer_cfg.eval_batch_size, train=False, seed=0, device=device,
                             channels_last=trainer_cfg.channels_last).epoch(0):
        with autocast_context(device, trainer_cfg.amp):
            hits.append(model(batch.x).argmax(1).eq(batch.y).cpu())
    model.train(was_training)
    return torch.cat(hits)


def paired_comparison(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Top-1 of ``a`` minus top-1 of ``b`` (points) on the same images, with the paired standard error: the s.d. of
    the per-image differences over sqrt(n). Images both get right or both get wrong cancel out, so this is much
    tighter than two independent binomial errors."""
    if a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"paired comparison needs two equal-length hit vectors of >= 2 images, got {a.shape}, "
                         f"{b.shape}")
    d = a.double() - b.double()
    n = d.numel()
    se = 100.0 * d.std(unbiased=True).item() / math.sqrt(n)
    diff = 100.0 * d.mean().item()
    return {"a_top1": 100.0 * a.double().mean().item(), "b_top1": 100.0 * b.double().mean().item(), "diff": diff,
            "se": se, "z": diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff)),
            "n": n, "a_only": int((d > 0).sum()), "b_only": int((d < 0).sum())}


def comparison_line(cmp: dict[str, float], a: str, b: str = "CE") -> str:
    """One line a newcomer can read: both top-1s, the difference, its paired s.e. and whether it clears the noise
    (|difference| > 2 s.e., about 95 %)."""
    verdict = (f"{a if cmp['diff'] > 0 else b} is better beyond the noise" if abs(cmp["z"]) > 2
               else "inside the noise (|difference| <= 2 s.e.)")
    return (f"{a} vs {b} on {cmp['n']} test images: {cmp['a_top1']:.2f} vs {cmp['b_top1']:.2f} top-1, difference "
            f"{cmp['diff']:+.2f} points, paired s.e. {cmp['se']:.2f} (z = {cmp['z']:+.1f}): {verdict}")
