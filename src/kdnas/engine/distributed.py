"""Data-parallel training under ``torchrun``: process group, DDP wrapping and rank-0-only side effects.

One run is one folder: every rank trains, only rank 0 writes (metrics, checkpoints, weights, summary,
status) and evaluates. Under torchrun ``hydra.run.dir=DIR`` must be given (each rank's Hydra would otherwise
stamp its own start time into the name); ranks compare their folders and all refuse a mismatch.

Batches: ``trainer.batch_size`` is per process, so the global batch is ``batch_size x world_size``;
``trainer.lr`` is used as given (scale it yourself: see docs/cluster.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kdnas.errors import ConfigError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's rank and the number of processes (0 and 1 outside torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment) for the body; a no-op
    in one process or when the caller already holds a group.

    gloo on CPU, nccl on CUDA with one GPU per local rank. Ranks > 0 log warnings only, so the console
    shows one copy of each message.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield world()
        return
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not world().is_main:
        logging.getLogger("kdnas").setLevel(logging.WARNING)
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def gather(value: str) -> list[str]:
    """Every rank's ``value``, on every rank (so that all ranks can refuse a disagreement together)."""
    if world().size == 1:
        return [value]
    values: list[str] = [""] * world().size
    dist.all_gather_object(values, value)
    return values


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (the value itself in one process): epoch statistics of all shards."""
    if world().size == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value


class TrainStep(nn.Module):
    """A training step's forward as one module: the model and the objective together, so that DDP averages
    the gradients of both (distillation connectors, embeddings) whatever the objective calls on the model."""

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: Any, epoch: int) -> Any:
        return self.objective(self.model, batch, epoch)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``trainer.sync_bn``: BatchNorm statistics over the global batch (CUDA only; one process: unchanged)."""
    if device.type != "cuda":
        raise ConfigError(f"trainer.sync_bn=true needs CUDA (this run uses {device}): set trainer.sync_bn=false.")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if world().size > 1 else model


def train_step(model: nn.Module, objective: nn.Module, device: torch.device) -> nn.Module:
    """``step(batch, epoch) -> StepOutput``; DDP-wrapped under torchrun. Parameters and buffers stay shared
    with ``model``, which evaluation and checkpoints keep using."""
    step = TrainStep(model, objective)
    if world().size == 1:
        return step
    return DistributedDataParallel(step, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None)
