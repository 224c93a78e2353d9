"""Engine throughput vs a plain hand-written PyTorch loop (same model, data, batch size), one run; optionally the
engine under other precision/layout/compile settings against fp32.

Both loops read the same in-memory batches; the ratio isolates the engine's overhead (LR schedule,
autocast context, metric accumulation, NaN checks). Runs are interleaved A/B and the median taken.
``--configs`` also times the engine alone under each named setting (``fp32``: amp off, NCHW; ``bf16_cl``: bf16
autocast + channels_last; a ``_compile`` suffix adds ``torch.compile``; ``fp16`` uses the grad scaler) and reports
each one's speed-up over ``fp32``. ``--json OUT`` writes the figures (rewritten after every measurement, so a run
cut short still leaves what it measured).

    python scripts/bench_train.py --model resnet20 --steps 40 --repeats 3
    python scripts/bench_train.py --device cuda --model resnet56 --batch-size 128 --configs fp32,bf16_cl,bf16_cl_compile
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kdnas.config import DataConfig, TrainerConfig
from kdnas.data import build_data
from kdnas.engine.trainer import Trainer
from kdnas.models import create_model
from kdnas.runs import RunDir


def device_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
    return info


class JsonReport:
    """A dict written to ``path`` (when given) after every update."""

    def __init__(self, path: str | None, **fields: Any) -> None:
        self.path, self.data = (Path(path) if path else None), dict(fields)
        self.write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_loop(model: torch.nn.Module, source, steps: int, device: torch.device, amp: str) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    sync(device)
    start, seen = time.perf_counter(), 0
    for i, batch in enumerate(source.epoch(0)):
        if i == steps:
            break
        with torch.autocast(device.type, dtype=dtype, enabled=amp != "off"):
            loss = F.cross_entropy(model(batch.x), batch.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += batch.y.shape[0]
    sync(device)
    return seen / (time.perf_counter() - start)


def engine_epoch(trainer: Trainer) -> float:
    sync(trainer.device)
    stats = trainer.train_epoch(0)
    sync(trainer.device)
    return stats["img_per_s"]


def parse_config(name: str) -> dict[str, Any]:
    """``fp32`` | ``bf16`` | ``fp16``, then optional ``_cl`` (channels_last) and ``_compile``."""
    parts = name.split("_")
    amp = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}.get(parts[0])
    if amp is None or set(parts[1:]) - {"cl", "compile"}:
        raise SystemExit(f"--configs: {name!r} is not fp32|bf16|fp16 with optional _cl and _compile suffixes")
    return {"amp": amp, "channels_last": "cl" in parts[1:], "compile": "compile" in parts[1:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="off", help="engine vs hand loop: off | bf16 | fp16")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--configs", default="", help="also time the engine under these settings, e.g. "
                                                   "fp32,bf16_cl,bf16_cl_compile (ratios over fp32)")
    ap.add_argument("--max-train-per-class", type=int, default=None, help="smaller data set (smoke runs)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()

    cache = tempfile.mkdtemp()
    data = build_data(DataConfig(max_train_per_class=args.max_train_per_class), cache, cache)

    def trainer(amp: str, channels_last: bool, compile: bool = False) -> Trainer:
        cfg = TrainerConfig(epochs=1, batch_size=args.batch_size, max_steps_per_epoch=args.steps, device=args.device,
                            amp=amp, channels_last=channels_last, compile=compile, schedule="constant",
                            deterministic=False)
        torch.manual_seed(0)
        return Trainer(cfg, create_model(args.model, num_classes=data.num_classes), data, RunDir(tempfile.mkdtemp()),
                       seed=0, config_hash="bench", progress=False)

    engine_trainer = trainer(args.amp, args.channels_last)
    device = engine_trainer.device
    report = JsonReport(args.json, **device_info(device), model=args.model, batch_size=args.batch_size,
                        steps=args.steps, repeats=args.repeats, amp=args.amp, channels_last=args.channels_last)
    hand_model = create_model(args.model, num_classes=data.num_classes).to(
        device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    source = data.loader("train", args.batch_size, train=True, seed=0, device=device,
                         channels_last=args.channels_last)
    engine_epoch(engine_trainer), hand_loop(hand_model, source, 5, device, args.amp)  # warm-up
    engine, hand = [], []
    for _ in range(args.repeats):
        engine.append(engine_epoch(engine_trainer))
        hand.append(hand_loop(hand_model, source, args.steps, device, args.amp))
    e, h = statistics.median(engine), statistics.median(hand)
    print(f"model={args.model} batch={args.batch_size} device={device} amp={args.amp} "
          f"channels_last={args.channels_last} threads={torch.get_num_threads()}")
    print(f"engine {e:8.1f} img/s   hand-written loop {h:8.1f} img/s   ratio engine/hand = {e / h:.3f}")
    report.update(engine_img_s=e, hand_img_s=h, engine_vs_hand=e / h)
    del engine_trainer, hand_model

    names = [n for n in args.configs.split(",") if n]
    if not names:
        return
    report.update(fp32_means="amp off, float32 weights; on CUDA the engine allows TF32 matmul/cuDNN (apply_runtime)")
    speeds: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    for name in names:  # one at a time (a compiled resnet56 holds its own graphs), each warmed up first
        settings = parse_config(name)
        t = trainer(settings["amp"], settings["channels_last"], settings["compile"])
        start = time.perf_counter()
        engine_epoch(t)  # warm-up: cuDNN autotuning, and compilation for _compile
        compile_s[name] = time.perf_counter() - start
        speeds[name] = statistics.median(engine_epoch(t) for _ in range(args.repeats))
        base = speeds.get("fp32")
        print(f"  {name:18s} {speeds[name]:9.1f} img/s   first epoch {compile_s[name]:6.1f} s"
              + (f"   x{speeds[name] / base:.2f} vs fp32" if base else ""))
        report.update(configs=speeds, first_epoch_s=compile_s,
                      speedup_vs_fp32={k: v / base for k, v in speeds.items()} if base else {})
        del t
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
