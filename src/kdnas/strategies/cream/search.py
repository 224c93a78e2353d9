"""The Cream search loop (Peng et al., NeurIPS 2020, Alg. 1; official ``lib/core/train.py``): train the supernet
one uniformly drawn path per step, distil each path from its best-matching board entry after the warm-up,
admit paths to the prioritized board, and report the board's best paths with inherited, BN-recalibrated weights.

Invariants: a rerun of the same command resumes from the last per-epoch checkpoint; at least one step runs, so
the board is never empty without a warm-up. Departures from the official code: docs/decisions.md, Cream.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from kdnas import teachers
from kdnas.config import TeacherConfig, TrainerConfig, dataclass_from_node
from kdnas.data import Batch
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from kdnas.engine.trainer import accuracy_counts, lr_at
from kdnas.engine.workspace import Workspace
from kdnas.errors import CheckpointError, ConfigError, NonFiniteLossError
from kdnas.progress import Progress, duration
from kdnas.runs import RunDir
from kdnas.spaces.base import Arch, space_from_config
from kdnas.spaces.costs import count_flops, count_params
from kdnas.spaces.mbconv import MBConvSpace
from kdnas.strategies.base import register_strategy
from kdnas.strategies.cream.board import BoardEntry, CreamStrategy
from kdnas.strategies.cream.meta import MetaMatching, cream_loss, lookahead_hypergradient
from kdnas.strategies.cream.supernet import MacsTable, Supernet, recalibrate_bn
from kdnas.utils import atomic_write_json, derive_seed, read_jsonl

if TYPE_CHECKING:
    from kdnas.strategies.base import SearchInputs

log = logging.getLogger("kdnas")
SCHEMA_VERSION = 1


@dataclass
class CreamConfig:
    """``strategy=cream`` keys (official ``train.yaml`` values as defaults)."""

    name: str = "cream"
    board_size: int = 10  # POOL_SIZE
    gap: float = 5.0  # top-1 points by which a path must beat the worst entry (acc_gap)
    flops_max: float | None = None  # admission gate, FLOPs = 2 x MACs (paper "600M FLOPs" = 600M MACs = 1.2e9)
    admission: str = "batch"  # batch (official) | minival
    warmup_fraction: float = 21 / 120  # official: CE only while epoch <= META_STA_EPOCH = 20, i.e. 21 of 120 epochs
    warmup_epochs: int | None = None  # overrides warmup_fraction (a count of epochs)
    distill: bool = True  # path distillation (false: SPOS training with a board)
    meta_every: int = 200  # UPDATE_ITER (see meta_update_due)
    meta_lr: float = 1e-4  # META_LR
    slice_size: int = 4  # SLICE: images stored per entry, and the look-ahead's train / validation images
    bn_batches: int = 10  # training batches for BN recalibration before a path is evaluated
    external_teacher: bool = False  # the `teacher` group's network joins the board as a fixed mentor
    flops_bounds: list[float] = field(default_factory=list)  # report the best board path under each

    def __post_init__(self) -> None:
        if self.name != "cream":
            raise ConfigError(f"task=cream_search runs strategy=cream, not strategy.name={self.name!r}.")
        if self.admission not in ("batch", "minival"):
            raise ConfigError(f"strategy.admission={self.admission!r} is not one of batch, minival.")
        if self.board_size < 1 or self.slice_size < 1 or self.meta_every < 1 or self.bn_batches < 1:
            raise ConfigError("strategy.board_size, slice_size, meta_every and bn_batches must be positive.")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"strategy.warmup_fraction={self.warmup_fraction} must be in [0, 1).")


def cream_config(node: DictConfig | dict[str, Any] | None) -> CreamConfig:
    return dataclass_from_node(CreamConfig, node, "strategy", " for strategy cream")


def warmup_epochs(cfg: CreamConfig, epochs: int) -> int:
    """Epochs of CE-only training without a board: ``warmup_epochs``, else ``round(warmup_fraction * epochs)``."""
    return cfg.warmup_epochs if cfg.warmup_epochs is not None else round(cfg.warmup_fraction * epochs)


def meta_update_due(i: int, n: int, epochs_after_warmup: int, meta_every: int) -> bool:
    """Whether step ``i`` (of ``n``) of the ``epochs_after_warmup``-th epoch after the warm-up updates the matching
    network. Official ``MetaMatchingNetwork.isUpdate``: ``batch_idx > 0 and batch_idx % UPDATE_ITER == 0`` within
    each epoch. An epoch of at most ``meta_every`` steps (the bundled data: 156 at batch 64) would then never
    update, so there the steps are counted from the end of the warm-up instead (its first step excluded)."""
    if n > meta_every:
        return i > 0 and i % meta_every == 0
    since = epochs_after_warmup * n + i
    return since > 0 and since % meta_every == 0


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * accuracy_counts(logits, y, 1)[0].item() / len(y)


class CreamSearch:
    """The search of ``settings`` in ``run`` (default: the workspace's run folder) with the supernet recipe
    ``trainer`` (default: the workspace's; task=search and task=pipeline pass the candidates' recipe, one rule for
    both); ``space`` (default: mbconv_cream) may be any MBConv space object, e.g. a reduced one built in a script.
    ``teacher``: the run's teacher settings, read with ``external_teacher=true`` only; ``time_budget_s``: the search's
    wall-clock cap (``search.time_budget_s``)."""

    def __init__(self, ws: Workspace, settings: CreamConfig, space: MBConvSpace | None = None, *,
                 run: RunDir | None = None, trainer: TrainerConfig | None = None,
                 teacher: TeacherConfig | None = None, time_budget_s: float | None = None) -> None:
        self.ws, self.cfg, self.run_dir = ws, settings, run or ws.run
        self.tcfg = trainer or ws.trainer_config
        self.time_budget = time_budget_s
        self.teacher_settings = teacher
        if self.tcfg.amp != "off":
            raise ConfigError("strategy=cream trains in full precision; set trainer.amp=off.")
        if self.tcfg.batch_size < 2 * self.cfg.slice_size:
            raise ConfigError(f"trainer.batch_size={self.tcfg.batch_size} must be at least 2 x strategy.slice_size "
                              f"({2 * self.cfg.slice_size}): the look-ahead trains and validates on two slices.")
        space = space or space_from_config({"name": "mbconv_cream"})
        torch.manual_seed(derive_seed(ws.seed, "init", "cream"))
        self.supernet = Supernet(space, ws.data.num_classes, ws.data.input_size)
        self.meta = MetaMatching(ws.data.num_classes, self.cfg.slice_size)
        self.trainer = ws.trainer(self.supernet, trainer_cfg=self.tcfg, run=self.run_dir, label="cream supernet")
        self.device = self.trainer.device
        self.meta.to(self.device)
        self.meta_optimizer = torch.optim.SGD(self.meta.parameters(), lr=self.cfg.meta_lr, momentum=0.9)
        self.strategy = CreamStrategy(space, seed=ws.seed, board_size=self.cfg.board_size, gap=self.cfg.gap,
                                      flops_max=self.cfg.flops_max)
        self.macs = MacsTable(self.supernet)
        self.warmup = warmup_epochs(self.cfg, self.tcfg.epochs)
        self.selection_split = self.trainer.eval_splits[0]
        self.minival = self._minival() if self.cfg.admission == "minival" else []
        self.mentor_net, self.mentor = self._mentor() if self.cfg.external_teacher else (None, None)
        self.history_path = self.run_dir.path / "history.jsonl"
        self.log_fn = ws.log_fn(self.run_dir)
        self.seconds_before = 0.0  # search wall clock of earlier sessions (from the checkpoint)
        self.session_start = time.perf_counter()
        self.stopped_by: str | None = None

    def _minival(self) -> list[Batch]:
        """Mini-val batches of the training batch size, scored in turn (train-mode BN, as the batch score)."""
        if self.ws.data.num_samples("val") == 0:
            raise ConfigError("strategy.admission=minival needs a mini-val split: set data.val_fraction > 0.")
        source = self.ws.data.loader("val", self.tcfg.batch_size, train=False, seed=self.ws.seed,
                                      device=self.device, channels_last=self.tcfg.channels_last)
        return list(source.epoch(0))

    def _mentor(self) -> tuple[nn.Module, BoardEntry]:
        """The external teacher as a fixed board entry, matched on the first training images (its score: its top-1
        on the first training batch, for the record only)."""
        if self.teacher_settings is None:
            raise ConfigError("strategy.external_teacher=true needs the run's teacher (teacher=store|checkpoint).")
        net = teachers.load(self.ws, self.teacher_settings).to(self.device, memory_format=self.trainer.memory_format)
        batch = next(iter(self.trainer.train_source.epoch(0)))
        with torch.no_grad():
            logits = net(batch.x)
        flops = count_flops(net, self.ws.data.input_size)["flops"]
        images = batch.x[: self.cfg.slice_size]
        return net, BoardEntry(None, top1(logits, batch.y), flops, images,
                               F.softmax(logits[: self.cfg.slice_size], 1), -1)

    # -- one step ------------------------------------------------------------------------------------
    def candidates(self) -> list[BoardEntry]:
        return self.strategy.board.entries + ([self.mentor] if self.mentor is not None else [])

    def match(self, path: Arch, teachers: list[BoardEntry]) -> tuple[int, torch.Tensor]:
        """The best-matching entry for ``path`` and its rho (differentiable in the matching network)."""
        with torch.no_grad():
            logits = self.supernet(torch.cat([e.images for e in teachers]), path)
        current = F.softmax(logits, 1).view(len(teachers), self.cfg.slice_size, -1)
        return self.meta.select(current, torch.stack([e.probs for e in teachers]))

    @torch.no_grad()
    def teacher_logits(self, entry: BoardEntry, x: torch.Tensor) -> torch.Tensor:
        return self.mentor_net(x) if entry.path is None else self.supernet(x, entry.path)

    def update_meta(self, batch: Batch, path: Arch, teachers: list[BoardEntry], lr: float) -> None:
        """One step of the matching network on the look-ahead hypergradient (train on the first ``slice_size``
        images of the batch, validate on the next ``slice_size``)."""
        s = self.cfg.slice_size
        x_tr, y_tr, x_val, y_val = batch.x[:s], batch.y[:s], batch.x[s:2 * s], batch.y[s:2 * s]
        index, rho = self.match(path, teachers)
        target = self.teacher_logits(teachers[index], x_tr)
        grads = lookahead_hypergradient(
            self.supernet, self.supernet.path_parameters(path),
            inner=lambda f: cream_loss(f(x_tr, path), target, y_tr, rho),
            outer=lambda f: F.cross_entropy(f(x_val, path), y_val), lr=lr, wrt=list(self.meta.parameters()))
        self.meta_optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.meta.parameters(), grads):
            p.grad = g
        nn.utils.clip_grad_norm_(self.meta.parameters(), 1.0)
        self.meta_optimizer.step()

    def admission_score(self, logits: torch.Tensor, batch: Batch, path: Arch, step: int) -> float:
        """The path's score offered to the board: ``admission=batch`` (official) its top-1 on the current training
        batch before the step, ``admission=minival`` its top-1 on the next mini-val batch after the step (a held-out
        estimate: better founded than the training batch, one extra forward pass per step)."""
        if self.cfg.admission == "batch":
            return top1(logits, batch.y)
        held_out = self.minival[step % len(self.minival)]
        with torch.no_grad():
            return top1(self.supernet(held_out.x, path), held_out.y)

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.session_start

    def out_of_time(self) -> bool:
        return self.time_budget is not None and self.seconds() >= self.time_budget

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch of path training; ends early (``self.stopped_by = "time"``) after the step that spends the
        time budget (earlier sessions included). Per step: draw a path (``strategy.ask``); every ``meta_every`` steps
        update the matching network by the look-ahead hypergradient (:mod:`.meta`); pick the teacher among the board
        entries (plus the external teacher with ``external_teacher=true``) and train on ``(rho * KD + (2 - rho) * CE)
        / 2`` (CE alone during the warm-up, on an empty board, or with ``distill=false``); then offer the path to the
        board (``strategy.tell``) with its :meth:`admission_score`."""
        source, opt = self.trainer.train_source, self.trainer.optimizer
        n, warm = len(source), epoch < self.warmup
        self.supernet.train()
        sums = {"loss": 0.0, "top1": 0.0, "distilled": 0, "rho": 0.0, "mentor": 0, "admitted": 0, "meta_updates": 0}
        start = time.perf_counter()
        steps = Progress(f"cream supernet epoch {epoch + 1}/{self.tcfg.epochs}{' (warm-up)' if warm else ''}", n,
                         bar=self.trainer.progress)  # an epoch can take minutes: a status line every 30 s
        for i, batch in enumerate(source.epoch(epoch)):
            step = epoch * n + i
            lr = lr_at(self.tcfg, step, n)
            for group in opt.param_groups:
                group["lr"] = lr
            path = self.strategy.ask(1)[0]
            teachers = self.candidates() if self.cfg.distill and not warm else []
            if teachers and meta_update_due(i, n, epoch - self.warmup, self.cfg.meta_every):
                self.update_meta(batch, path, teachers, lr)
                sums["meta_updates"] += 1
            logits = self.supernet(batch.x, path)
            if teachers:
                index, rho = self.match(path, teachers)
                loss = cream_loss(logits, self.teacher_logits(teachers[index], batch.x), batch.y, rho.detach())
                sums["distilled"] += 1
                sums["rho"] += rho.item()
                sums["mentor"] += teachers[index].path is None
            else:
                loss = F.cross_entropy(logits, batch.y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"The supernet loss became NaN/inf at epoch {epoch + 1}, step {i + 1}. "
                                         "Lower trainer.lr or set trainer.grad_clip, then rerun (it resumes from the "
                                         "last epoch).")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.tcfg.grad_clip:
                nn.utils.clip_grad_norm_(self.supernet.parameters(), self.tcfg.grad_clip)
            opt.step()
            sums["loss"] += loss.item()
            sums["top1"] += top1(logits, batch.y)
            if not warm:
                s = self.cfg.slice_size
                self.strategy.tell([path], [{
                    "reward": self.admission_score(logits.detach(), batch, path, step),
                    "flops": 2 * self.macs(path), "images": batch.x[:s].clone(),
                    "probs": F.softmax(logits[:s].detach(), 1), "step": step}])
                sums["admitted"] += any(e.step == step for e in self.strategy.board.entries)
            steps.update(extra=f"board {len(self.strategy.board.entries)}")
            if self.out_of_time():
                self.stopped_by = "time"
                break
        steps.close()
        steps, distilled = i + 1, max(sums["distilled"], 1)
        return {"loss": sums["loss"] / steps, "top1": sums["top1"] / steps, "steps": steps, "lr": lr, "warmup": warm,
                "distilled_steps": sums["distilled"], "rho_mean": sums["rho"] / distilled,
                "mentor_share": sums["mentor"] / distilled, "admitted": sums["admitted"],
                "meta_updates": sums["meta_updates"], "seconds": time.perf_counter() - start}

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate_path(self, path: Arch, splits: list[str]) -> dict[str, float]:
        """Top-1 of ``path``'s stand-alone copy with inherited weights, BN recalibrated on training batches."""
        net = self.supernet.extract(path).to(memory_format=self.trainer.memory_format)
        recalibrate_bn(net, (b.x for b in islice(self.trainer.train_source.epoch(0), self.cfg.bn_batches)))
        out = {f"{split}_top1": self.trainer.evaluate(split, net)["top1"] for split in splits}
        return {**out, "params": count_params(net)}

    def board_row(self, rank: int, entry: BoardEntry, splits: list[str]) -> dict[str, Any]:
        """An arch JSON (loadable by ``kdnas.spaces.load_arch``) with the entry's board figures and evaluation."""
        return {**entry.path.to_json(), "result": {
            "rank": rank, "board_score": entry.score, "admitted_step": entry.step, "flops": entry.flops,
            "macs": entry.flops // 2, **self.evaluate_path(entry.path, splits)}}

    def epoch_record(self, epoch: int, stats: dict[str, Any]) -> dict[str, Any]:
        board = self.strategy.board.entries
        record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "epoch": epoch, **stats,
                                  "board": [e.summary() for e in board]}
        if board:
            scores = [e.score for e in board]
            record.update(board_best=max(scores), board_mean=sum(scores) / len(scores), board_worst=min(scores))
            last = epoch == self.tcfg.epochs - 1 or self.stopped_by is not None
            if last or (epoch + 1) % self.tcfg.eval_every == 0:
                top = self.evaluate_path(board[0].path, [self.selection_split])
                record.update(top_path=board[0].path.arch_id, top_path_top1=top[f"{self.selection_split}_top1"])
        return record

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self, epoch: int) -> None:
        state = {"epoch": epoch, "optimizer": self.trainer.optimizer.state_dict(), "meta": self.meta.state_dict(),
                 "meta_optimizer": self.meta_optimizer.state_dict(), "strategy": self.strategy.state_dict(),
                 "rng": torch.get_rng_state(), "seconds": self.seconds(), "stopped_by": self.stopped_by}
        save_checkpoint(self.run_dir.checkpoint_dir, f"epoch_{epoch + 1:04d}", model_state=self.supernet.state_dict(),
                        state=state, meta={"epoch": epoch, "config_hash": self.ws.config_hash})

    def restore(self, path: Path) -> int:
        """Load a checkpoint folder; return the next epoch to run."""
        model_state, state, meta = load_checkpoint(path)
        if meta.get("config_hash") != self.ws.config_hash:
            raise CheckpointError(f"The checkpoint in {str(path)!r} was written by a different configuration. Resume "
                                  "with the same overrides, start a new run folder, or pass resume=false.")
        self.supernet.load_state_dict(model_state)
        self.trainer.optimizer.load_state_dict(state["optimizer"])
        self.meta.load_state_dict(state["meta"])
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        self.strategy.board.to(self.device)
        torch.set_rng_state(state["rng"])
        # Checkpoints written before the time budget existed carry no clock: they count from zero.
        self.seconds_before, self.stopped_by = state.get("seconds", 0.0), state.get("stopped_by")
        self.session_start = time.perf_counter()
        self.run_dir.truncate_metrics(state["epoch"])
        kept = [r for r in read_jsonl(self.history_path) if r["epoch"] <= state["epoch"]]
        self.history_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return state["epoch"] + 1

    # -- the loop and its results --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or resume) until ``epochs`` or the time budget, then :meth:`finish`. Writes ``history.jsonl`` (one
        record per epoch: training figures, the board, the board's top path re-evaluated) and per-epoch checkpoints
        (supernet, optimizers, matching network, board, RNG). The summary's ``seconds`` (search wall clock, the board
        evaluation included) and ``stopped_by`` (``time`` | ``epochs``) say which limit ended it."""
        ckpt = latest_checkpoint(self.run_dir.checkpoint_dir) if self.ws.resume else None
        start = self.restore(ckpt) if ckpt is not None else 0
        if start == 0:
            self.history_path.unlink(missing_ok=True)
        epochs = Progress("cream supernet", self.tcfg.epochs, unit="epoch", done=start, bar=False, lines=False)
        for epoch in range(start, self.tcfg.epochs):
            if self.stopped_by is not None:
                break
            record = self.epoch_record(epoch, self.train_epoch(epoch))
            with open(self.history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.log_fn({"epoch": epoch, "split": "train", **{k: v for k, v in record.items() if k != "board"}})
            epochs.update()
            log.info("cream supernet: epoch %d/%d  loss %.4f  path top-1 %.2f%%  board %d (best %.1f%%)  admitted %d"
                     "  (ETA %s)", epoch + 1, self.tcfg.epochs, record["loss"], record["top1"], len(record["board"]),
                     record.get("board_best", math.nan), record["admitted"], duration(epochs.eta()))
            self.save(epoch)
        self.stopped_by = self.stopped_by or "epochs"
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate every board path (inherited weights, BN recalibrated); write ``board.json`` (every path, and the
        best under each ``flops_bounds`` value), ``best_arch.json`` (the best: an arch JSON for task=distill) and
        ``board_accuracy.png``."""
        run, sel, space = self.run_dir, f"{self.selection_split}_top1", self.supernet.space
        rows = [self.board_row(rank, e, list(self.trainer.eval_splits))
                for rank, e in enumerate(self.strategy.board.entries)]
        best = []
        for bound in [*sorted(self.cfg.flops_bounds), None]:
            fits = [row for row in rows if bound is None or row["result"]["flops"] <= bound]
            top = max(fits, key=lambda row: row["result"][sel], default=None)
            best.append({"flops_max": bound, "arch_id": top["arch_id"] if top else None})
        mentor = {k: v for k, v in self.mentor.summary().items() if k != "arch_id"} if self.mentor else None
        atomic_write_json(run.path / "board.json", {
            "schema_version": SCHEMA_VERSION, "selection_split": self.selection_split,
            "space": {"name": space.name, "version": space.version, **space.fixed}, "entries": rows,
            "best_under_flops": best, "mentor": mentor})
        plot_history(read_jsonl(self.history_path), run.path / "board_accuracy.png")
        summary: dict[str, Any] = {"strategy": "cream", "space": space.name, "board_size": len(rows),
                                   "selection_split": self.selection_split, "time_budget_s": self.time_budget,
                                   "stopped_by": self.stopped_by, "seconds": self.seconds()}
        if top is not None:  # the best with no FLOPs bound (the last one)
            atomic_write_json(run.path / "best_arch.json", top)
            log.info("cream search done: best arch %s, %s top-1 %.2f%% (inherited weights), board of %d, %s -> %s",
                     top["arch_id"], self.selection_split, top["result"][sel], len(rows), duration(self.seconds()),
                     run.path / "best_arch.json")
            summary.update(best_arch_id=top["arch_id"], best_arch=top["decisions"], best_reward=top["result"][sel],
                           best_arch_path=str(run.path / "best_arch.json"),
                           **{f"best_{k}": v for k, v in top["result"].items()})
        return summary


def plot_history(records: list[dict[str, Any]], path: Path) -> None:
    """Board accuracy over the epochs (admission scores; re-evaluated top path) from history.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] + 1 for r in records]
    ax.plot(epochs, [r["top1"] for r in records], label="sampled paths (train batch)", color="0.6")
    for key, style in (("board_best", "-"), ("board_mean", "--"), ("board_worst", ":")):
        pts = [(r["epoch"] + 1, r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), style, color="C0", label=key.replace("_", " ") + " (admission score)")
    pts = [(r["epoch"] + 1, r["top_path_top1"]) for r in records if "top_path_top1" in r]
    if pts:
        ax.plot(*zip(*pts), "o-", color="C1", label="top path, BN-recalibrated")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Cream prioritized board")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@register_strategy("cream", settings=CreamConfig)
class Cream(CreamStrategy):
    """``strategy=cream``: :class:`CreamStrategy`'s ask/tell driven by its own supernet loop (:class:`CreamSearch`),
    not by the shared loop; the supernet itself is the evaluator, trained with the candidates' recipe (the training
    evaluator's ``trainer``, hence that evaluator by default)."""

    own_loop = True
    default_evaluator = "train"

    @classmethod
    def search(cls, ws: Workspace, run: RunDir, job: SearchInputs, loop: Any = None) -> dict[str, Any]:
        """The supernet search in ``run`` (``loop``, the shared one, is not used)."""
        recipe = job.recipe
        if recipe is None:
            raise ConfigError("strategy=cream trains its supernet with the candidates' training recipe: it runs with "
                              "evaluator=train (its default), not a proxy: drop evaluator=proxy.")
        found = CreamSearch(ws, cream_config(job.strategy), job.space, run=run, trainer=recipe, teacher=job.teacher,
                            time_budget_s=job.settings.time_budget_s).run()
        if "best_arch_path" not in found:
            raise ConfigError("strategy=cream ended with an empty board: its search stopped during the warm-up (no "
                              "path is admitted before). Set strategy.warmup_epochs=0 or a shorter warm-up, or raise "
                              "search.time_budget_s / evaluator.trainer.epochs.")
        return found
