"""Candidates per hour when N candidate trainings share one device (``search.executor=processes
search.workers=N``): a 1-epoch KD proxy training of small CIFAR students (the resnet_cifar space), as AKD-style
searches run them. Small nets leave a large GPU mostly idle, so packing several at once should multiply throughput.

The teacher is trained (or read from the store) and its logits cached once, in a warm-up search; then, for each N,
the same ``N x --per-worker`` candidates (same seed, so the same archs) are evaluated by a fresh search whose
evaluation cache was emptied, and candidates/hour = evaluated / the search loop's seconds x 3600 (worker start-up
included: a search pays it too). ``--json OUT`` is rewritten after every N.

    python scripts/bench_packing.py --device cuda --workers 1,4,8 --per-worker 2 --json OUT.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

import kdnas
from bench_train import JsonReport, device_info
from kdnas.utils import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,4,8", help="concurrent candidate trainings to compare")
    ap.add_argument("--per-worker", type=int, default=2, help="candidates per worker in each measurement")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--teacher-epochs", type=int, default=1, help="speed only: a barely trained teacher will do")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-train-per-class", type=int, default=None, help="smaller data set (smoke runs)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap the candidates' epoch (smoke runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: cores / N)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="kdnas-packing-"))
    cache = Path(args.cache_dir) if args.cache_dir else root / "cache"
    cores = len(os.sched_getaffinity(0))
    base = ["space=resnet_cifar", "strategy=random", "evaluator=train", "evaluator.objective=kd", "distill=kd",
            f"teacher.model={args.teacher}", f"teacher.trainer.epochs={args.teacher_epochs}",
            f"trainer.device={args.device}", f"teacher.trainer.device={args.device}",
            f"trainer.batch_size={args.batch_size}", "evaluator.trainer.epochs=1", "data.aug_seed=0", "seed=1",
            "logger=none", "progress=false", f"paths.cache_dir={cache}"]
    if args.max_train_per_class:
        base += [f"data.max_train_per_class={args.max_train_per_class}",
                 f"data.max_test_per_class={args.max_train_per_class}"]
    if args.max_steps:
        base += [f"evaluator.trainer.max_steps_per_epoch={args.max_steps}",
                 f"teacher.trainer.max_steps_per_epoch={args.max_steps}"]
    report = JsonReport(args.json, **device_info(resolve_device(args.device)), cores=cores, teacher=args.teacher,
                        space="resnet_cifar", recipe="KD, 1 epoch on mini-train, eval on mini-val and test",
                        per_worker=args.per_worker, batch_size=args.batch_size, runs={})

    start = time.perf_counter()  # warm-up: teacher into the store, its logits into the cache
    kdnas.run("search", [*base, "search.budget=1", "search.batch=1", f"trainer.num_threads={min(cores, 8)}"],
              run_dir=str(root / "warmup"))
    report.update(warmup_s=time.perf_counter() - start)
    print(f"warm-up (teacher + logit cache + 1 candidate in-process): {report.data['warmup_s']:.1f} s")

    for n in [int(w) for w in args.workers.split(",") if w]:
        shutil.rmtree(cache / "evals", ignore_errors=True)  # every candidate is trained again
        budget = n * args.per_worker
        threads = args.threads or max(1, cores // n)
        start = time.perf_counter()
        summary = kdnas.run("search", [*base, f"search.budget={budget}", f"search.batch={budget}",
                                       "search.executor=processes", f"search.workers={n}",
                                       f"trainer.num_threads={threads}"], run_dir=str(root / f"workers_{n}"))
        wall = time.perf_counter() - start
        per_hour = summary["evaluated"] / summary["seconds"] * 3600
        runs = {**report.data["runs"], str(n): {"workers": n, "threads_per_worker": threads,
                                                "evaluated": summary["evaluated"], "search_s": summary["seconds"],
                                                "wall_s": wall, "candidates_per_hour": per_hour}}
        best = max(runs.values(), key=lambda r: r["candidates_per_hour"])
        one = runs.get("1", {}).get("candidates_per_hour")
        report.update(runs=runs, best_workers=best["workers"],
                      speedup_vs_1={k: r["candidates_per_hour"] / one for k, r in runs.items()} if one else {})
        print(f"workers {n}: {summary['evaluated']} candidates in {summary['seconds']:.1f} s -> "
              f"{per_hour:.0f} candidates/hour" + (f" (x{per_hour / one:.2f} vs 1 worker)" if one else ""))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"best: search.workers={report.data['best_workers']}")


if __name__ == "__main__":
    main()
