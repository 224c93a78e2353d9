"""Search throughput: candidates per hour of a training-based search, and the proxy search loop's own overhead.

``train`` (default): a 1-epoch KD proxy training (``evaluator=train``'s path: TrainEvaluator ->
distill_student -> Trainer, val and test evaluation included) of ``--archs`` resnet_cifar archs on the mini split
(``--per-class`` train images per class), one thread, per teacher, three ways, interleaved arch by arch in a
rotating order:

* (a) old: kdnas before one-aug-seed-per-search: every candidate had its own aug seed, so its own teacher-logit
  file per epoch (emulated: one evaluator per candidate, seeded as the old ``derive_seed(seed, "candidate", id)``);
* (b) shared: one aug seed per search: the teacher's logits of the epoch are built once (timed, before the first
  candidate) and read by every candidate;
* (c) naive: the teacher online at every step of every candidate (``teacher.cache=off``).

Teachers are random-init weights in a checkpoint file (speed only). ``--workers`` adds, for the first teacher,
``search.workers=2`` worker processes with one thread each vs one in-process worker with two threads, on a warm
teacher cache, ABBA-interleaved over two halves of the archs, after a warm-up of each (spawned workers import
torch once per search).

``loop``: the search loop's overhead (ask, tell, history lines, checkpoints) for ``--budget`` DisWOT-evolution
candidates in ``space=resnet_cifar_large`` with an instant evaluator, checkpointing after every step (the old
loop) vs every 30 s; and with ``--cli`` the whole ``kdnas task=search strategy=diswot`` run through the CLI
(resnet56 teacher, one thread), wall time measured around the process.

    python scripts/bench_search.py train --teachers resnet56,resnet20,resnet110 --archs 8 --per-class 100 --workers
    python scripts/bench_search.py loop --budget 5000 --cli 5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from kdnas.api import compose
from kdnas.benchmarks.workspace import script_workspace
from kdnas.config import DataConfig
from kdnas.data import build_data
from kdnas.distill.terms import distill_config
from kdnas.engine.trainer import write_model_card
from kdnas.engine.workspace import Workspace
from kdnas.evaluators import TrainEvaluator, TrainSettings, WorkerSpec, evaluation_pool, sample_archs, train_evaluator
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.search import run_search
from kdnas.spaces import Arch, create_space
from kdnas.strategies import create_strategy
from kdnas.tasks.search import train_evaluator_in_worker
from kdnas.teachers import teacher_config
from kdnas.utils import derive_seed

SEED = 0


def shared_data(root: Path) -> Path:
    """The decoded data every cache root of a benchmark run shares."""
    shared = Path(os.environ.get("KDNAS_CACHE_DIR", root.parent / "shared")) / "data"
    shared.mkdir(parents=True, exist_ok=True)
    return shared


def teacher_file(root: Path, model: str) -> Path:
    """Random-init weights with batch-norm statistics calibrated on a few batches (a deep random net's eval-mode
    logits otherwise overflow the cache's fp16)."""
    torch.manual_seed(0)
    net = create_model(model, num_classes=10)
    data = build_data(DataConfig(max_train_per_class=20), shared_data(root), shared_data(root).parent)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the calibration batches
    with torch.no_grad():
        for batch in data.loader("train", 64, train=True, seed=0, max_batches=4).epoch(0):
            net.train()(batch.x)
    path = root / f"teacher-{model}" / "model.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    write_model_card(path.parent / "model.json", model=model, num_classes=10)  # its sha256, verified on load
    return path


Run = tuple[DictConfig, Workspace]  # a search run's composed config and its workspace


def context(root: Path, teacher: str, ckpt: Path, cache: str, threads: int, per_class: int, tag: str) -> Run:
    """A search run on the mini split; the decoded data is shared by every cache root (a symlink)."""
    root.mkdir(parents=True, exist_ok=True)
    shared = shared_data(root)
    if not (root / "data").exists():
        (root / "data").symlink_to(shared)
    cfg = compose("search", [
        "logger=none", "progress=false", f"trainer.num_threads={threads}", "trainer.epochs=1",
        f"data.max_train_per_class={per_class}", f"data.max_test_per_class={max(per_class // 4, 10)}",
        "teacher=checkpoint", f"teacher.model={teacher}", f"teacher.checkpoint={ckpt}", f"teacher.cache={cache}",
        f"paths.cache_dir={root}", f"paths.data_dir={shared}"])
    return cfg, script_workspace(cfg, root / f"run-{tag}")


def evaluator(run: Run, seed: int, tag: str, pool: Any = None) -> TrainEvaluator:
    """The KD train evaluator of ``run`` (evaluator=train's, with the run's recipe); a pool's workers rebuild it
    with task=search's worker function from the run's resolved config."""
    cfg, ws = run
    settings = TrainSettings(objective="kd", trainer=ws.trainer_config, distill=distill_config(cfg.distill),
                             aug_seed=cfg.data.aug_seed)
    worker = WorkerSpec(key="", build=train_evaluator_in_worker,
                        kwargs={"config": OmegaConf.to_container(cfg, resolve=True), "run_dir": str(ws.run.path)})
    return train_evaluator(ws, create_space("resnet_cifar"), settings, teacher_config(cfg.teacher), seed=seed,
                           runs=ws.run.sub(tag), pool=pool, worker=worker)


def timed(ev: TrainEvaluator, archs: list[Arch]) -> float:
    start = time.perf_counter()
    ev.evaluate(archs)
    return time.perf_counter() - start


def per_hour(n: int, seconds: float) -> float:
    return 3600 * n / seconds


def bench_teacher(work: Path, teacher: str, archs: list[Arch], per_class: int) -> dict[str, float]:
    ckpt = teacher_file(work, teacher)
    root = work / teacher
    auto = context(root, teacher, ckpt, "auto", 1, per_class, "auto")
    off = context(root, teacher, ckpt, "off", 1, per_class, "off")
    shared = evaluator(auto, SEED, "shared")
    naive = evaluator(off, SEED, "naive")
    old = {a.arch_id: evaluator(auto, derive_seed(SEED, "candidate", a.arch_id), f"old-{a.arch_id}") for a in archs}
    seconds = {"old": 0.0, "shared": 0.0, "naive": 0.0}
    modes = list(seconds)
    for i, arch in enumerate(archs):
        for mode in modes[i % 3:] + modes[:i % 3]:
            ev = {"old": old[arch.arch_id], "shared": shared, "naive": naive}[mode]
            seconds[mode] += timed(ev, [arch])  # shared: its first call prebuilds the epoch (counted)
    rates = {m: per_hour(len(archs), s) for m, s in seconds.items()}
    print(f"teacher {teacher}: {len(archs)} candidates, 1 epoch, {auto[1].data.num_samples('train')} train images, "
          f"threads {torch.get_num_threads()}")
    for m in modes:
        print(f"  ({'abc'[modes.index(m)]}) {m:<7} {rates[m]:8.0f} candidates/h  ({seconds[m]:.1f} s)")
    print(f"  shared / naive {rates['shared'] / rates['naive']:.2f}x   shared / old "
          f"{rates['shared'] / rates['old']:.2f}x   old / naive {rates['old'] / rates['naive']:.2f}x")
    return rates


def bench_workers(work: Path, teacher: str, archs: list[Arch], warm: list[Arch], per_class: int) -> None:
    """search.workers=2 (processes, one thread each) vs one in-process worker with two threads; warm teacher cache."""
    ckpt = teacher_file(work, teacher)
    one = context(work / "workers-1x2", teacher, ckpt, "auto", 2, per_class, "t")
    two = context(work / "workers-2x1", teacher, ckpt, "auto", 1, per_class, "w")
    with evaluation_pool("processes", 2, work / "pool", None) as pool:
        ev_two, ev_one = evaluator(two, SEED, "w", pool), evaluator(one, SEED, "t")
        start = time.perf_counter()
        ev_two.evaluate(warm[:2])  # spawns both workers (torch import, evaluator rebuilt) and prebuilds the epoch
        startup = time.perf_counter() - start
        ev_one.evaluate(warm[2:3])  # prebuilds its epoch
        half = len(archs) // 2
        s_two = timed(ev_two, archs[:half])
        s_one = timed(ev_one, archs[:half])
        s_one += timed(ev_one, archs[half:])
        s_two += timed(ev_two, archs[half:])
    r_two, r_one = per_hour(len(archs), s_two), per_hour(len(archs), s_one)
    print(f"workers ({teacher} teacher, warm cache, {len(archs)} candidates, ABBA):")
    print(f"  search.workers=2 x 1 thread   {r_two:8.0f} candidates/h  (+{startup:.0f} s to start the workers with "
          "their first 2 candidates)")
    print(f"  1 worker x 2 threads          {r_one:8.0f} candidates/h")
    print(f"  workers=2 / threads=2 {r_two / r_one:.2f}x")


def bench_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    space = create_space("resnet_cifar")
    pool = sample_archs(space, args.archs + 3, derive_seed(SEED, "bench-archs"))
    archs, warm = pool[:args.archs], pool[args.archs:]
    print(f"{time.strftime('%Y-%m-%d')}  {os.cpu_count()} CPUs  mini split, {args.per_class} train images per class")
    for teacher in args.teachers.split(","):
        bench_teacher(work, teacher, archs, args.per_class)
    if args.workers:
        bench_workers(work, args.workers_teacher, archs, warm, args.per_class)


class Instant:
    """An evaluator that costs nothing: a deterministic reward per arch (the loop's overhead alone)."""

    fingerprint = "instant"

    def evaluate(self, archs: list[Arch]) -> list[dict[str, Any]]:
        return [{"reward": (int(a.arch_id[:8], 16) % 10_000) / 10_000, "costs": {"params": 1, "flops": 1},
                 "scores": {"diswot": 0.0}} for a in archs]


def bench_loop(args: argparse.Namespace) -> None:
    space = create_space("resnet_cifar_large")
    cfg = dict(compose("search", ["strategy=diswot"]).strategy)
    work = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    print(f"{time.strftime('%Y-%m-%d')}  loop overhead: {args.budget} DisWOT-evolution candidates, resnet_cifar_large, "
          "instant evaluator")
    for every in [30.0, 0.0] * args.repeats:  # interleaved
        strategy = create_strategy(cfg, space, seed=SEED)
        start = time.perf_counter()
        summary = run_search(strategy, Instant(), RunDir(work / f"every-{every}-{time.time()}"), budget=args.budget,
                             batch=8, config_hash="bench", checkpoint_every_s=every)
        label = "a checkpoint per step" if every == 0 else f"a checkpoint every {every:.0f} s"
        print(f"  {label:<26} {time.perf_counter() - start:7.1f} s for {summary['evaluated']} candidates")
    if args.cli:
        run = work / "cli"
        cmd = [str(Path(sys.executable).with_name("kdnas")), "task=search", "strategy=diswot",
               "space=resnet_cifar_large", f"search.budget={args.cli}", "teacher.model=resnet56",
               "trainer.num_threads=1", "logger=none", "progress=false", f"hydra.run.dir={run}"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        summary = json.loads((run / "summary.json").read_text())
        scoring = sum(json.loads(line).get("seconds", 0.0) for line in (run / "history.jsonl").open())
        print(f"  CLI: {' '.join(cmd[1:-1])}")
        print(f"  {summary.get('evaluated')} candidates in {wall:.0f} s wall ({summary.get('seconds', 0):.0f} s in the "
              f"loop, {scoring:.0f} s scoring candidates; {summary.get('evaluated', 0) / wall:.2f} candidates/s "
              "overall)")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train")
    train.add_argument("--teachers", default="resnet56,resnet20,resnet110")
    train.add_argument("--archs", type=int, default=8)
    train.add_argument("--per-class", type=int, default=200, help="mini-split train images per class")
    train.add_argument("--workers", action="store_true")
    train.add_argument("--workers-teacher", default="resnet56")
    loop = sub.add_parser("loop")
    loop.add_argument("--budget", type=int, default=5000)
    loop.add_argument("--repeats", type=int, default=1)
    loop.add_argument("--cli", type=int, default=0, help="also run task=search with this budget through the CLI")
    args = ap.parse_args()
    bench_train(args) if args.what == "train" else bench_loop(args)


if __name__ == "__main__":
    main()
