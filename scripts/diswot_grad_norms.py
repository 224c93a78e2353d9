"""Gradient norm of each DisWOT-dagger term w.r.t. the student's parameters on a real batch (issue 14, item 5).

resnet8 student at init (train mode, as in training) against a resnet20 teacher at init and after one epoch of
plain SGD on the bundled mini CIFAR-10 (eval mode, as a distillation teacher); one batch of 64 training images.
Prints ||d(w_sem * semantic)/d theta||, ||d(w_rel * relational)/d theta|| and, for scale, ||d CE/d theta||, for
both semantic forms. With ``--train-w-sem 1 10``: then trains a resnet8 for one epoch with CE + DisWOT-dagger
(``--train-form``, default official: the form the proxy uses for this equal-width pair) from the one-epoch teacher,
per semantic weight, and prints the CE of the last 20 steps and the test top-1 (does the weight train stably?).
Usage: python scripts/diswot_grad_norms.py [--w-sem 1] [--w-rel 3000] [--seed 0] [--train-w-sem 1 10]
[--train-form official|class]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn.functional as F

from kdnas.config import DataConfig
from kdnas.data import build_data
from kdnas.distill import functional as kdf
from kdnas.models import create_model


def grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.sqrt(sum((g.pow(2).sum() for g in grads if g is not None), torch.zeros(()))).item()


def train_one_epoch(net: torch.nn.Module, data, seed: int) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    net.train()
    for batch in data.loader("train", 64, train=True, seed=seed).epoch(0):
        opt.zero_grad()
        F.cross_entropy(net(batch.x), batch.y).backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--w-sem", type=float, default=1.0)
    parser.add_argument("--w-rel", type=float, default=3000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-w-sem", type=float, nargs="*", default=[])
    parser.add_argument("--train-form", choices=["official", "class"], default="official")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = os.environ.get("KDNAS_CACHE_DIR") or tempfile.mkdtemp()
    data = build_data(DataConfig(), cache, cache)
    batch = next(iter(data.loader("train", 64, train=True, seed=args.seed + 1).epoch(0)))
    torch.manual_seed(args.seed)
    teacher = create_model("resnet20", num_classes=data.num_classes)
    for state in ("init", "1 epoch"):
        if state == "1 epoch":
            train_one_epoch(teacher, data, args.seed)
        teacher.eval()
        with torch.no_grad():
            ft = teacher.forward_features(batch.x)
            top1 = (ft.logits.argmax(1) == batch.y).float().mean().item()
        torch.manual_seed(args.seed + 2)
        student = create_model("resnet8", num_classes=data.num_classes).train()
        params = [p for p in student.parameters() if p.requires_grad]
        fs = student.forward_features(batch.x)
        g_s, g_t = kdf.fc_grad(fs.embedding, fs.logits, batch.y), kdf.fc_grad(ft.embedding, ft.logits, batch.y)
        rel = kdf.sp(fs.feature_map, ft.feature_map)
        ce = F.cross_entropy(fs.logits, batch.y)
        print(f"teacher resnet20 at {state} (batch top-1 {100 * top1:.0f}%), student resnet8 at init, batch 64:")
        print(f"  CE                       value {ce.item():10.4g}  grad norm {grad_norm(ce, params):10.4g}")
        print(f"  w_rel * relational (SP)  value {args.w_rel * rel.item():10.4g}  grad norm "
              f"{grad_norm(args.w_rel * rel, params):10.4g}")
        for form, fn in (("official", kdf.semantic_official), ("class", kdf.semantic_class)):
            sem = -args.w_sem * fn(g_s, g_t)
            print(f"  w_sem * semantic {form:8s} value {sem.item():10.4g}  grad norm {grad_norm(sem, params):10.4g}")
    for w_sem in args.train_w_sem:
        print(f"one epoch CE + DisWOT-dagger (w_sem {w_sem:g}, w_rel {args.w_rel:g}, {args.train_form} form): "
              + distill_one_epoch(teacher, data, w_sem, args.w_rel, args.seed, args.train_form))


def distill_one_epoch(teacher: torch.nn.Module, data, w_sem: float, w_rel: float, seed: int, form: str) -> str:
    torch.manual_seed(seed + 2)
    student = create_model("resnet8", num_classes=data.num_classes).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ces = []
    for batch in data.loader("train", 64, train=True, seed=seed + 3).epoch(0):
        with torch.no_grad():
            ft = teacher.forward_features(batch.x)
        fs = student.forward_features(batch.x)
        ce = F.cross_entropy(fs.logits, batch.y)
        loss = ce + kdf.diswot_loss(fs.embedding, fs.logits, fs.feature_map, ft.embedding, ft.logits, ft.feature_map,
                                    batch.y, w_sem, w_rel, form)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ces.append(ce.item())
    student.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in data.loader("test", 500, train=False, seed=0).epoch(0):
            correct += (student(batch.x).argmax(1) == batch.y).sum().item()
            total += len(batch.y)
    return (f"CE of the last 20 steps {sum(ces[-20:]) / 20:.3f}, max CE {max(ces):.3g}, "
            f"test top-1 {100 * correct / total:.1f}%")


if __name__ == "__main__":
    main()
