"""Engine throughput vs a plain hand-written PyTorch loop (same model, data, batch size), one run.

Both loops read the same in-memory batches; the ratio isolates the engine's overhead (LR schedule,
autocast context, metric accumulation, NaN checks). Runs are interleaved A/B and the median taken.

    python scripts/bench_train.py --model resnet20 --steps 40 --repeats 3 [--device cuda --amp bf16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from kdnas.config import DataConfig, TrainerConfig
from kdnas.data import build_data
from kdnas.engine.trainer import Trainer
from kdnas.models import create_model
from kdnas.runs import RunDir


def hand_loop(model: torch.nn.Module, source, steps: int, device: torch.device, amp: str) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
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
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def engine_epoch(trainer: Trainer, device: torch.device) -> float:
    stats = trainer.train_epoch(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return stats["img_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", default="off")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()

    cache = tempfile.mkdtemp()
    data = build_data(DataConfig(), cache, cache)
    cfg = TrainerConfig(epochs=1, batch_size=args.batch_size, max_steps_per_epoch=args.steps, device=args.device,
                        amp=args.amp, channels_last=args.channels_last, schedule="constant", deterministic=False)
    torch.manual_seed(0)
    trainer = Trainer(cfg, create_model(args.model, num_classes=10), data, RunDir(tempfile.mkdtemp()), seed=0,
                      config_hash="bench", progress=False)
    device = trainer.device
    hand_model = create_model(args.model, num_classes=10).to(
        device, memory_format=torch.channels_last if args.channels_last else torch.preserve_format)
    source = data.loader("train", args.batch_size, train=True, seed=0, device=device,
                         channels_last=args.channels_last)
    engine_epoch(trainer, device), hand_loop(hand_model, source, 5, device, args.amp)  # warm-up
    engine, hand = [], []
    for _ in range(args.repeats):
        engine.append(engine_epoch(trainer, device))
        hand.append(hand_loop(hand_model, source, args.steps, device, args.amp))
    e, h = statistics.median(engine), statistics.median(hand)
    print(f"model={args.model} batch={args.batch_size} device={device} amp={args.amp} "
          f"channels_last={args.channels_last} threads={torch.get_num_threads()}")
    print(f"engine {e:8.1f} img/s   hand-written loop {h:8.1f} img/s   ratio engine/hand = {e / h:.3f}")


if __name__ == "__main__":
    main()
