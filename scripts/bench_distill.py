"""Distillation throughput, one run: student CE vs KD with the teacher online vs KD from a warm logit cache.

Per teacher/student pair, three engines train the same student at the same batch size on the same in-memory
batches: plain CE; KD (0.1 CE + 0.9 KL, T 4) with the teacher online (eval mode, no_grad, channels_last);
KD with the teacher's logits read from a warm :class:`~kdnas.distill.cache.TeacherLogitCache`. Runs are
interleaved; the ratios are medians over back-to-back repeats. Teachers are random-init (speed only).
Goal: cached KD >= 0.9x CE. ``--json OUT`` writes the figures per pair (rewritten after each pair).

    python scripts/bench_distill.py --pairs resnet32x4:resnet8x4,resnet20:resnet8 --steps 5 --repeats 10
    python scripts/bench_distill.py --device cuda --amp bf16 --batch-size 128 --steps 20 --json OUT.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

from bench_train import JsonReport, device_info
from kdnas.config import DataConfig, TrainerConfig
from kdnas.data import build_data
from kdnas.distill.objective import DistillObjective
from kdnas.distill.terms import DistillConfig, LossWeights
from kdnas.engine.trainer import Trainer
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.teachers import Teacher
from kdnas.utils import resolve_device


def img_per_s(trainer: Trainer) -> float:
    stats = trainer.train_epoch(0)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return stats["img_per_s"]


def bench_pair(teacher_name: str, student_name: str, data, cache_dir: str, cfg: TrainerConfig, repeats: int
               ) -> dict[str, Any]:
    torch.manual_seed(0)
    kd = DistillConfig(weights=LossWeights(ce=0.1, kd=0.9))
    trainers = {}
    for mode in ("ce", "kd_online", "kd_cached"):
        student = create_model(student_name, num_classes=data.num_classes)
        objective = None
        if mode != "ce":
            teacher = Teacher([create_model(teacher_name, num_classes=data.num_classes)], [teacher_name],
                              cache="off" if mode == "kd_online" else "auto")
            teacher.to(memory_format=torch.channels_last)  # the trainer moves it to its device with the objective
            objective = DistillObjective(kd, student, teacher, data=data, split=cfg.train_split, seed=0,
                                         student_name=student_name, cache_dir=cache_dir)
        trainers[mode] = Trainer(cfg, student, data, RunDir(tempfile.mkdtemp()), seed=0, config_hash="bench",
                                 objective=objective, progress=False)
    start = time.perf_counter()
    trainers["kd_cached"].objective.on_epoch_start(0)  # cold: the teacher on every view of epoch 0
    cold = time.perf_counter() - start
    start = time.perf_counter()
    trainers["kd_cached"].objective.on_epoch_start(0)  # warm: read + verify
    warm = time.perf_counter() - start
    for trainer in trainers.values():  # warm-up
        img_per_s(trainer)
    runs: dict[str, list[float]] = {mode: [] for mode in trainers}
    for _ in range(repeats):
        for mode, trainer in trainers.items():
            runs[mode].append(img_per_s(trainer))
    n = data.num_samples(cfg.train_split)
    print(f"{teacher_name} -> {student_name}  batch {cfg.batch_size}  device {trainers['ce'].device}  "
          f"threads {torch.get_num_threads()}  {repeats} x {cfg.max_steps_per_epoch} steps")
    print(f"  student CE        {statistics.median(runs['ce']):8.1f} img/s")
    figures: dict[str, Any] = {"ce_img_s": statistics.median(runs["ce"])}
    for mode, label in (("kd_online", "KD teacher online"), ("kd_cached", "KD warm cache    ")):
        # Ratios of back-to-back runs: on a shared machine the load drifts between repeats.
        ratio = statistics.median(k / c for k, c in zip(runs[mode], runs["ce"]))
        print(f"  {label} {statistics.median(runs[mode]):8.1f} img/s   ratio to CE {ratio:.3f}")
        figures.update({f"{mode}_img_s": statistics.median(runs[mode]), f"{mode}_vs_ce": ratio})
    print(f"  cache per epoch: cold build {cold:.1f} s ({n / cold:.0f} img/s, {n} views), warm load {warm:.3f} s")
    return {**figures, "cache_cold_build_s": cold, "cache_warm_load_s": warm, "cache_views": n}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", default="resnet32x4:resnet8x4,resnet20:resnet8", help="teacher:student,...")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--max-train-per-class", type=int, default=100, help="bounds the cold cache build")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--amp", default="off", help="off | bf16 | fp16 (every engine)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()

    cache = tempfile.mkdtemp()
    data = build_data(DataConfig(max_train_per_class=args.max_train_per_class), cache, cache)
    cfg = TrainerConfig(epochs=1, batch_size=args.batch_size, max_steps_per_epoch=args.steps, device=args.device,
                        schedule="constant", deterministic=False, num_threads=args.threads, amp=args.amp,
                        channels_last=args.channels_last)
    report = JsonReport(args.json, **device_info(resolve_device(args.device)), batch_size=args.batch_size,
                        steps=args.steps, repeats=args.repeats, amp=args.amp, channels_last=args.channels_last,
                        pairs={})
    for pair in args.pairs.split(","):
        teacher, student = pair.split(":")
        report.update(pairs={**report.data["pairs"], pair: bench_pair(teacher, student, data, cache, cfg,
                                                                        args.repeats)})


if __name__ == "__main__":
    main()
