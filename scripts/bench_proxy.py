"""DisWOT candidates per second: kdnas's search path vs a faithful re-implementation of the official loop.

Official (lliai/DisWOT-CVPR2023 README, ``relation_similarity_metric`` + ``semantic_similarity_metric``), per
candidate: teacher and student forward for the relational term, forward again plus a CE backward of both
for the semantic term, ``fc.weight.grad`` read after it (zeroed here first: the official code never does,
so its gradients pile up across candidates), the [K, C, C] per-class channel tensor built.
kdnas: the teacher's statistics once per search, then one forward pass per candidate (closed-form
``fc_grad``, the O(KC) ``semantic_official``), no backward.

Same archs (seeded inits), same batch, one timed run each; prints both rates, the ratio, and the largest
score difference between the two paths (they compute the same numbers).

    python scripts/bench_proxy.py --teacher resnet56 --archs 16 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdnas.config import DataConfig
from kdnas.data import build_data
from kdnas.evaluators import ProxySettings, build_candidate, proxy_batches, sample_archs
from kdnas.models import FeatureNet, create_model
from kdnas.proxies import compute_proxies, teacher_stats
from kdnas.spaces import create_space


def batch_similarity(f_t: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
    """Official ``batch_similarity`` (README), verbatim up to names and ``reshape`` for ``view`` (which
    channels_last maps refuse)."""
    bsz = f_s.shape[0]
    f_s, f_t = f_s.reshape(bsz, -1), f_t.reshape(bsz, -1)
    g_s, g_t = F.normalize(torch.mm(f_s, f_s.t())), F.normalize(torch.mm(f_t, f_t.t()))
    return ((g_t - g_s) * (g_t - g_s)).view(-1, 1).sum() / (bsz * bsz)


def channel_similarity(f_t: torch.Tensor, f_s: torch.Tensor) -> torch.Tensor:
    """Official ``channel_similarity`` (README): per-class C x C correlations of the fc gradient."""
    bsz, ch = f_s.shape[0], f_s.shape[1]
    f_s, f_t = f_s.view(bsz, ch, -1), f_t.view(bsz, ch, -1)
    emd_s = F.normalize(torch.bmm(f_s, f_s.permute(0, 2, 1)), dim=2)
    emd_t = F.normalize(torch.bmm(f_t, f_t.permute(0, 2, 1)), dim=2)
    return ((emd_s - emd_t) * (emd_s - emd_t)).view(bsz, -1).sum() / (ch * bsz)


def official_scores(teacher: FeatureNet, student: FeatureNet, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(semantic, relational) as the official per-candidate code computes them."""
    relational = -batch_similarity(teacher.forward_features(x).feature_map, student.forward_features(x).feature_map)
    teacher.zero_grad()
    student.zero_grad()
    F.cross_entropy(teacher(x), y).backward()
    F.cross_entropy(student(x), y).backward()
    semantic = -channel_similarity(teacher.classifier.weight.grad, student.classifier.weight.grad)
    return semantic.item(), relational.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="resnet56")
    ap.add_argument("--space", default="resnet_cifar")
    ap.add_argument("--archs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("KDNAS_CACHE_DIR", Path.home() / ".cache" / "kdnas")).expanduser()
    data = build_data(DataConfig(), cache / "data", cache)
    channels_last = args.memory_format == "channels_last"  # both paths alike
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batch = proxy_batches(data, ProxySettings(batch_size=args.batch_size), args.seed, torch.device("cpu"),
                          channels_last)[0]
    space = create_space(args.space)
    archs = sample_archs(space, args.archs, args.seed)
    students = [build_candidate(space, a, data.num_classes, data.input_size, args.seed).train().to(memory_format=fmt)
                for a in archs]
    torch.manual_seed(args.seed)  # a random teacher, as DisWOT's default
    teacher = create_model(args.teacher, num_classes=data.num_classes).train().to(memory_format=fmt)

    official_scores(teacher, students[0], batch.x, batch.y)  # warm-up (allocator, kernels) for both paths
    compute_proxies(students[0], batch, ["diswot"], teacher_stats(teacher, batch))

    start = time.perf_counter()
    slow = [official_scores(teacher, s, batch.x, batch.y) for s in students]
    t_official = time.perf_counter() - start
    start = time.perf_counter()
    stats = teacher_stats(teacher, batch)  # once per search, counted in kdnas's time
    fast = [compute_proxies(s, batch, ["diswot"], stats) for s in students]
    t_kdnas = time.perf_counter() - start

    diff = max(max(abs(f["diswot_semantic"] - sem), abs(f["diswot_relational"] - rel)) / max(abs(sem), abs(rel))
               for f, (sem, rel) in zip(fast, slow))
    print(f"teacher {args.teacher}, {len(archs)} archs of {args.space}, batch {args.batch_size}, {args.memory_format}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"official per-candidate loop: {len(archs) / t_official:7.2f} candidates/s ({t_official:.2f} s)")
    print(f"kdnas cached teacher stats : {len(archs) / t_kdnas:7.2f} candidates/s ({t_kdnas:.2f} s)")
    print(f"speed-up: {t_official / t_kdnas:.1f}x   largest relative score difference: {diff:.2e}")


if __name__ == "__main__":
    main()
