"""kdnas's distillation training vs RepDistiller's, in one process, interleaved (ratios, not absolute speeds).

Peer: a faithful re-implementation of RepDistiller's ``train_distill`` step (HobbitLong/RepDistiller,
``helper/loops.py``) for ``--distill kd``: student forward with features, teacher forward with features under
``no_grad`` every step (eval mode), ``criterion_cls`` (CE) + ``DistillKL`` (its code, ``reduction="sum"`` for the
deprecated ``size_average=False``) weighted gamma 0.1 / alpha 0.9, top-1/top-5 accuracy and ``loss.item()``
meters every step, ``zero_grad`` / ``backward`` / SGD (lr 0.05, momentum 0.9, weight decay 5e-4); default
(contiguous) memory format. Its CE loop is ``train_vanilla``'s step. Both engines read the same in-memory,
augmented batches (kdnas's loader, converted to contiguous for the peer), so the ratios compare the training
steps, not RepDistiller's DataLoader (which would only slow the peer further on 2 cores).
kdnas: the engine (:class:`~kdnas.engine.trainer.Trainer`, channels_last) with plain CE, and with KD (0.1 CE +
0.9 KL, T 4) reading the teacher's logits from a warm :class:`~kdnas.distill.cache.TeacherLogitCache` entry.

Teachers are random-init (speed only). Each repeat runs the four loops back to back, in a rotating order, for
``--steps`` steps each; the printed ratios are medians over repeats of per-repeat ratios.

    python scripts/bench_repdistiller.py --teacher resnet32x4 --student resnet8x4 --steps 8 --repeats 6 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kdnas.config import DataConfig, TrainerConfig
from kdnas.data import build_data
from kdnas.distill.objective import DistillObjective
from kdnas.distill.terms import DistillConfig, LossWeights
from kdnas.engine.trainer import Trainer
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.teachers import Teacher


class DistillKL(nn.Module):
    """RepDistiller's ``distiller_zoo/KD.py``."""

    def __init__(self, T: float) -> None:
        super().__init__()
        self.T = T

    def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
        p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(p_s, p_t, reduction="sum") * (self.T ** 2) / y_s.shape[0]


def accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """RepDistiller's ``helper/util.py`` accuracy."""
    with torch.no_grad():
        maxk, batch_size = max(topk), target.size(0)
        _, pred = output.topk(maxk, 1, True, True)
        pred = pred.t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum(0, keepdim=True).mul_(100.0 / batch_size) for k in topk]


def peer_step(student: nn.Module, teacher: nn.Module | None, optimizer: torch.optim.Optimizer,
              kl: DistillKL, x: torch.Tensor, y: torch.Tensor) -> float:
    """One step of ``train_distill`` (teacher given) or ``train_vanilla`` (teacher None)."""
    feat_s = student.forward_features(x)  # model_s(input, is_feat=True)
    logit_s = feat_s.logits
    if teacher is not None:
        with torch.no_grad():
            feat_t = teacher.forward_features(x)  # model_t(input, is_feat=True)
            logit_t = feat_t.logits
            _ = [f.detach() for f in feat_t.stages]
        loss = 0.1 * F.cross_entropy(logit_s, y) + 0.9 * kl(logit_s, logit_t)
    else:
        loss = F.cross_entropy(logit_s, y)
    acc1, acc5 = accuracy(logit_s, y, topk=(1, 5))
    value = loss.item()  # losses.update(loss.item(), input.size(0)); top1.update(acc1[0], ...)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8, help="steps per loop per repeat")
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--max-train-per-class", type=int, default=100, help="bounds the cold cache build")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    cache = tempfile.mkdtemp()
    data = build_data(DataConfig(max_train_per_class=args.max_train_per_class), cache, cache)
    cfg = TrainerConfig(epochs=1, batch_size=args.batch_size, max_steps_per_epoch=args.steps, device="cpu",
                        schedule="constant", deterministic=False, num_threads=args.threads)
    torch.manual_seed(0)
    teacher_net = create_model(args.teacher, num_classes=data.num_classes)
    kd = DistillConfig(weights=LossWeights(ce=0.1, kd=0.9), temperature=4.0)

    def kdnas_trainer(teacher: Teacher | None) -> Trainer:
        student = create_model(args.student, num_classes=data.num_classes)
        objective = None
        if teacher is not None:
            objective = DistillObjective(kd, student, teacher, data=data, split=cfg.train_split, seed=0,
                                         student_name=args.student, cache_dir=cache)
        return Trainer(cfg, student, data, RunDir(tempfile.mkdtemp()), seed=0, config_hash="bench",
                       objective=objective, progress=False)

    cached = Teacher([teacher_net], [args.teacher], cache="auto").to(memory_format=torch.channels_last)
    trainers = {"kdnas_ce": kdnas_trainer(None), "kdnas_kd_cached": kdnas_trainer(cached)}
    start = time.perf_counter()
    trainers["kdnas_kd_cached"].objective.on_epoch_start(0)  # cold build: the teacher on every view, once
    cold = time.perf_counter() - start

    peer_teacher = create_model(args.teacher, num_classes=data.num_classes)
    peer_teacher.load_state_dict(teacher_net.state_dict())
    peer_teacher.eval()  # module_list[-1].eval()
    peers = {}
    for name, teacher in (("repdistiller_ce", None), ("repdistiller_kd", peer_teacher)):
        student = create_model(args.student, num_classes=data.num_classes).train()
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        peers[name] = (student, teacher, optimizer)
    kl = DistillKL(4.0)
    source = data.loader(cfg.train_split, args.batch_size, train=True, seed=0, max_batches=args.steps)
    batches = [(b.x.contiguous(), b.y) for b in source.epoch(0)]  # RepDistiller's default memory format

    def run_peer(name: str) -> float:
        student, teacher, optimizer = peers[name]
        start = time.perf_counter()
        for x, y in batches:
            peer_step(student, teacher, optimizer, kl, x, y)
        return len(batches) * args.batch_size / (time.perf_counter() - start)

    loops: dict[str, Callable[[], float]] = {
        "kdnas_ce": lambda: trainers["kdnas_ce"].train_epoch(0)["img_per_s"],
        "kdnas_kd_cached": lambda: trainers["kdnas_kd_cached"].train_epoch(0)["img_per_s"],
        "repdistiller_ce": lambda: run_peer("repdistiller_ce"),
        "repdistiller_kd": lambda: run_peer("repdistiller_kd")}
    for loop in loops.values():  # warm-up
        loop()
    names = list(loops)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            rates[name].append(loops[name]())

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    print(f"{args.teacher} -> {args.student}  batch {args.batch_size}  threads {torch.get_num_threads()}  "
          f"{args.repeats} repeats x {args.steps} steps, interleaved")
    for name in names:
        print(f"  {name:<17} {statistics.median(rates[name]):7.1f} img/s")
    print(f"  kdnas KD (warm cache) / kdnas CE          {ratio('kdnas_kd_cached', 'kdnas_ce'):.2f}x")
    print(f"  kdnas KD (warm cache) / RepDistiller KD   {ratio('kdnas_kd_cached', 'repdistiller_kd'):.2f}x")
    print(f"  kdnas CE / RepDistiller CE                {ratio('kdnas_ce', 'repdistiller_ce'):.2f}x")
    n = data.num_samples(cfg.train_split)
    print(f"  cold cache build: {cold:.1f} s for {n} views ({n / cold:.0f} img/s), once per epoch and search")


if __name__ == "__main__":
    main()
