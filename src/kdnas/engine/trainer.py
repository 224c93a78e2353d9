"""The one training engine every task uses (teachers, CE baselines, distillation, search candidates, schemes).

Invariants: data order, augmentation and learning rate are pure functions of (seed, epoch, step), and the optimiser,
objective and RNG states are checkpointed each epoch, so a killed run resumed from its last checkpoint ends with the
same weights and metrics as an uninterrupted one (on CPU). Under torchrun every rank trains on its shard of each batch
(DDP, :mod:`kdnas.engine.distributed`); rank 0 alone evaluates and writes metrics, checkpoints and weights.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdnas.config import TrainerConfig
from kdnas.data import DataModule
from kdnas.engine import distributed
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_weights, weights_record
from kdnas.engine.objective import Objective
from kdnas.errors import CheckpointError, ConfigError, NonFiniteLossError
from kdnas.progress import Progress, duration
from kdnas.runs import RunDir
from kdnas.utils import atomic_write_json, resolve_device

log = logging.getLogger("kdnas")


def apply_runtime(cfg: TrainerConfig) -> None:
    """Thread count and determinism are applied at every job start: worker processes otherwise inherit
    different defaults and produce different weights."""
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def lr_at(cfg: TrainerConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at a global step: linear warm-up, then multistep (per epoch, as RepDistiller) or
    per-step cosine."""
    t = step / steps_per_epoch
    if cfg.schedule == "multistep":
        lr = cfg.lr * cfg.gamma ** sum(int(t) >= m for m in cfg.milestones)
    elif cfg.schedule == "cosine":
        lr = 0.5 * cfg.lr * (1 + math.cos(math.pi * min(t / cfg.epochs, 1.0)))
    elif cfg.schedule == "constant":
        lr = cfg.lr
    else:
        raise ConfigError(f"trainer.schedule={cfg.schedule!r} is not one of multistep, cosine, constant.")
    if cfg.warmup_epochs > 0:
        lr *= min(1.0, (step + 1) / (cfg.warmup_epochs * steps_per_epoch))
    return lr


def build_optimizer(cfg: TrainerConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"trainer.optimizer={cfg.optimizer!r} is not one of sgd, adamw.")


def autocast_context(device: torch.device, amp: str):
    """``trainer.amp`` on the run's device. CPU autocast runs too (bf16 pays off on CPUs with AMX/AVX512-BF16),
    so CI exercises the same AMP path, grad scaler included, as a GPU run."""
    if amp not in ("off", "bf16", "fp16"):
        raise ConfigError(f"trainer.amp={amp!r} is not one of off, bf16, fp16.")
    if amp == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def compile_model(model: nn.Module) -> nn.Module:
    """``torch.compile`` of both entry points objectives call: ``model(x)`` and ``model.forward_features(x)``
    (the compiled wrapper hands attribute lookups such as ``forward_features`` to the eager module, so a
    distillation step would otherwise run uncompiled). Weights stay shared with ``model``."""
    compiled = torch.compile(model)
    if callable(getattr(model, "forward_features", None)):
        compiled.forward_features = torch.compile(model.forward_features)
    return compiled


def accuracy_counts(logits: torch.Tensor, y: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct top-1 and top-k counts (k clipped to the number of classes)."""
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hit = topk.eq(y[:, None])
    return hit[:, 0].sum(), hit.any(dim=1).sum()


class Trainer:
    """Fits ``model`` under ``objective`` on ``data``; writes metrics, checkpoints and weights to ``run``."""

    def __init__(self, cfg: TrainerConfig, model: nn.Module, data: DataModule, run: RunDir, *, seed: int,
                 config_hash: str, objective: Objective | None = None, progress: bool = True,
                 log_fn: Callable[[dict[str, Any]], None] | None = None,
                 eval_splits: Sequence[str] | None = None, label: str = "training"):
        apply_runtime(cfg)
        self.label = label  # what is trained, in every epoch and status line ("teacher resnet20", "CE baseline ...")
        self.cfg, self.data, self.run, self.seed, self.config_hash = cfg, data, run, seed, config_hash
        self.device = resolve_device(cfg.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.world = distributed.world()
        model = distributed.sync_batchnorm(model, self.device) if cfg.sync_bn else model
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.objective = (objective or Objective(cfg.label_smoothing)).to(self.device)
        self.forward_model = compile_model(self.model) if cfg.compile else self.model
        self.step = distributed.train_step(self.forward_model, self.objective, self.device)
        params = [p for p in [*self.model.parameters(), *self.objective.parameters()] if p.requires_grad]
        self.optimizer = build_optimizer(cfg, params)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.progress = progress and sys.stderr.isatty() and self.world.is_main
        self.log_fn = (log_fn or run.log) if self.world.is_main else lambda record: None
        self.train_source = data.loader(cfg.train_split, cfg.batch_size, train=True, seed=seed, device=self.device,
                                        channels_last=cfg.channels_last, max_batches=cfg.max_steps_per_epoch,
                                        rank=self.world.rank, world_size=self.world.size)
        if len(self.train_source) == 0:
            raise ConfigError(f"trainer.batch_size={cfg.batch_size} leaves no full batch in split "
                              f"{cfg.train_split!r} ({self.train_source.num_samples} images). Lower the batch size.")
        if eval_splits is None:
            eval_splits = ["test"] if cfg.train_split == "train_full" or data.num_samples("val") == 0 else ["val",
                                                                                                             "test"]
        self.eval_splits = list(eval_splits)
        self.best: dict[str, Any] = {}
        self.last: dict[str, Any] = {}

    # -- one epoch ---------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.objective.train()
        self.objective.on_epoch_start(epoch)
        n = len(self.train_source)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        terms: dict[str, torch.Tensor] = {}
        count = 0
        start = time.perf_counter()
        steps = Progress(f"{self.label} epoch {epoch + 1}/{self.cfg.epochs}", n, bar=self.progress,
                         lines=self.world.is_main)
        for i, batch in enumerate(self.train_source.epoch(epoch)):
            lr = lr_at(self.cfg, epoch * n + i, n)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with autocast_context(self.device, self.cfg.amp):
                out = self.step(batch, epoch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.loss).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            bs = batch.y.shape[0]
            count += bs
            loss_sum += out.loss.detach().float() * bs
            correct += out.logits.argmax(1).eq(batch.y).sum()
            for k, v in out.terms.items():
                terms[k] = terms.get(k, 0) + v.detach().float() * bs
            if (i + 1) % self.cfg.log_every == 0 or i == n - 1:
                self._check_finite(loss_sum, epoch, i)
            steps.update()
        steps.close()
        elapsed = time.perf_counter() - start
        sums = {"loss": loss_sum, "correct": correct, "count": torch.tensor(count, device=self.device),
                **{f"loss_{k}": v for k, v in terms.items()}}
        sums = {k: distributed.all_sum(v).item() for k, v in sums.items()}  # over all ranks' shards
        count = sums.pop("count")
        stats = {"loss": sums.pop("loss") / count, "top1": 100.0 * sums.pop("correct") / count, "lr": lr,
                 "img_per_s": count / elapsed, "seconds": elapsed}
        stats.update({k: v / count for k, v in sums.items()})
        return stats

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        """Checked on the sum over ranks, so that every rank stops at the same step."""
        if not torch.isfinite(distributed.all_sum(loss_sum)):
            kept = latest_checkpoint(self.run.checkpoint_dir)  # the folder that exists, or none yet
            where = f"The last good checkpoint is kept in {kept}." if kept is not None else (
                "No checkpoint was written before it (nothing to resume from).")
            raise NonFiniteLossError(
                f"The training loss became NaN/inf in epoch {epoch + 1}, by step {step + 1}. {where} Lower trainer.lr, "
                "set trainer.grad_clip (e.g. 5.0), or turn trainer.amp off, and run again in a new folder or with "
                "resume=false (a changed config does not resume this run's checkpoints).")

    @torch.no_grad()
    def evaluate(self, split: str, model: nn.Module | None = None) -> dict[str, float]:
        """Top-1/top-5 and CE loss of ``model`` (default: the trained one) on a split."""
        model = model or self.forward_model
        was_training = model.training
        model.eval()
        source = self.data.loader(split, self.cfg.eval_batch_size, train=False, seed=self.seed, device=self.device,
                                  channels_last=self.cfg.channels_last)
        loss = torch.zeros((), device=self.device)
        top1 = torch.zeros((), device=self.device, dtype=torch.long)
        top5 = torch.zeros((), device=self.device, dtype=torch.long)
        count = 0
        for batch in source.epoch(0):
            with autocast_context(self.device, self.cfg.amp):
                logits = model(batch.x)
            loss += nn.functional.cross_entropy(logits.float(), batch.y, reduction="sum")
            c1, c5 = accuracy_counts(logits, batch.y)
            top1 += c1
            top5 += c5
            count += batch.y.shape[0]
        model.train(was_training)
        return {"loss": loss.item() / count, "top1": 100.0 * top1.item() / count, "top5": 100.0 * top5.item() / count}

    # -- checkpoints -------------------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":  # the training device's generator alone: resumable with other GPUs visible
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"epoch": epoch, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "objective": self.objective.state_dict(), "objective_extra": self.objective.extra_state(),
                "rng": rng, "best": self.best, "last": self.last}

    def save(self, epoch: int) -> None:
        if not self.world.is_main:
            return
        save_checkpoint(self.run.checkpoint_dir, f"epoch_{epoch + 1:04d}", model_state=self.model.state_dict(),
                        state=self.state(epoch), meta={"epoch": epoch, "config_hash": self.config_hash})

    def restore(self, path: Path) -> int:
        """Load a checkpoint folder; return the next epoch to run."""
        model_state, state, meta = load_checkpoint(path)
        if meta.get("config_hash") != self.config_hash:
            raise CheckpointError(
                f"The checkpoint in {str(path)!r} was written by a different configuration (config hash "
                f"{meta.get('config_hash')} vs {self.config_hash}). Resume with the same overrides, start a new run "
                "folder, or pass resume=false to start this folder over.")
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state["objective"])
        self.objective.load_extra_state(state["objective_extra"])
        torch.set_rng_state(state["rng"]["torch"])
        cuda_rng = state["rng"].get("cuda")
        if cuda_rng is not None and self.device.type == "cuda":
            # a list: every visible GPU's generator (older checkpoints); the training device's is the one it used
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            own = cuda_rng[min(index, len(cuda_rng) - 1)] if isinstance(cuda_rng, list) else cuda_rng
            torch.cuda.set_rng_state(own, self.device)
        self.best, self.last = state["best"], state["last"]
        return state["epoch"] + 1

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict[str, Any]:
        """Train to ``cfg.epochs`` (resuming from the run's latest checkpoint when asked); return the summary."""
        start = 0
        ckpt = latest_checkpoint(self.run.checkpoint_dir) if resume else None
        if ckpt is not None:
            start = self.restore(ckpt)
            log.info("resumed from %s (epoch %d of %d)", ckpt, start, self.cfg.epochs)
        if self.world.is_main:  # records of epochs after the checkpoint (all, without one) are logged again
            self.run.truncate_metrics(start - 1)
        wall = time.perf_counter()
        # its ETA, in each epoch line
        epochs = Progress(self.label, self.cfg.epochs, unit="epoch", done=start, bar=False, lines=False)
        for epoch in range(start, self.cfg.epochs):
            train_stats = self.train_epoch(epoch)
            self.log_fn({"epoch": epoch, "split": "train", **train_stats})
            last_epoch = epoch == self.cfg.epochs - 1
            if self.world.is_main and (last_epoch or (epoch + 1) % self.cfg.eval_every == 0):
                self._evaluate_all(epoch)
            epochs.update()
            log.info("%s: epoch %d/%d  loss %.4f  train %.2f%%  %s  (%.0f img/s, ETA %s)", self.label, epoch + 1,
                     self.cfg.epochs, train_stats["loss"], train_stats["top1"],
                     "  ".join(f"{s} {self.last.get(f'{s}_top1', float('nan')):.2f}%" for s in self.eval_splits),
                     train_stats["img_per_s"], duration(epochs.eta()))
            if last_epoch or (epoch + 1) % self.cfg.checkpoint_every == 0:
                self.save(epoch)
        if self.world.is_main:
            save_weights(self.run.path / "model.safetensors", self.model.state_dict())
            write_model_card(self.run.path / "model.json")  # the sha256; tasks add what network it is
        return self.summary(time.perf_counter() - wall)

    def _evaluate_all(self, epoch: int) -> None:
        for split in self.eval_splits:
            stats = self.evaluate(split)
            self.log_fn({"epoch": epoch, "split": split, **stats})
            self.last.update({f"{split}_top1": stats["top1"], f"{split}_top5": stats["top5"], "epoch": epoch})
            if stats["top1"] > self.best.get(f"{split}_top1", -1.0):
                self.best[f"{split}_top1"] = stats["top1"]
                self.best[f"{split}_epoch"] = epoch
                if split == self.eval_splits[0]:
                    # the model-selection split: record the other splits' figures at this epoch
                    self.best["selected_epoch"] = epoch
                    self.best["selected"] = {}
            if self.best.get("selected_epoch") == epoch:
                self.best["selected"][f"{split}_top1"] = stats["top1"]

    def summary(self, seconds: float) -> dict[str, Any]:
        """Best and last, never mixed up: `best_*` is the max over epochs (what papers often report),
        `selected_*` the figures at the epoch with the best model-selection split (val when there is one)."""
        out: dict[str, Any] = {"epochs": self.cfg.epochs, "train_seconds_this_session": seconds}
        for split in self.eval_splits:
            out[f"{split}_top1_last"] = self.last.get(f"{split}_top1")
            out[f"{split}_top5_last"] = self.last.get(f"{split}_top5")
            out[f"{split}_top1_best"] = self.best.get(f"{split}_top1")
            out[f"{split}_best_epoch"] = self.best.get(f"{split}_epoch")
        out["selection_split"] = self.eval_splits[0]
        out["selected_epoch"] = self.best.get("selected_epoch")
        out.update({f"selected_{k}": v for k, v in self.best.get("selected", {}).items()})
        return out


def write_model_card(path: Path, **fields: Any) -> None:
    """``model.json`` beside ``model.safetensors``: what network the weights belong to, and their sha256
    (verified on every load)."""
    atomic_write_json(path, {"schema_version": 1, **fields, **weights_record(path.parent)})
