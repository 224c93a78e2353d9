"""AMP and compile helpers shared by the CPU tests (test_engine_amp.py) and their CUDA twins (test_gpu.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kdnas
from kdnas.api import compose
from kdnas.context import RunContext, build_model
from kdnas.data import DataModule
from kdnas.distill.objective import DistillObjective
from kdnas.distill.terms import LOSS_TERMS, DistillConfig, LossWeights
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from kdnas.engine.trainer import Trainer, autocast_context
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.teachers import Teacher

from . import SMOKE

AMP_MODES = ["bf16", "fp16"]


def metrics(run_dir: Path) -> list[dict]:
    keep = ("epoch", "split", "loss", "top1", "top5")
    return [{k: r[k] for k in keep if k in r} for r in map(json.loads, (run_dir / "metrics.jsonl").open())]


def crash_then_resume(overrides: list[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch, crash_epoch: int = 1
                      ) -> dict:
    """``task=train`` killed at the start of ``crash_epoch``, then run again in the same folder."""
    original = Trainer.train_epoch

    def crash(self: Trainer, epoch: int) -> dict:
        if epoch == crash_epoch:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_epoch", crash)
        with pytest.raises(KeyboardInterrupt):
            kdnas.run("train", overrides, run_dir=str(run_dir))
    return kdnas.run("train", overrides, run_dir=str(run_dir))


def assert_same_run(a: Path, b: Path, rtol: float = 0.0, atol: float = 0.0, acc_atol: float = 0.0) -> None:
    """Same metrics and final weights (exactly by default; within a tolerance for AMP on a GPU, where accuracies
    may also differ by ``acc_atol`` points: one flipped image of a 100-image split is 1 point)."""
    ma, mb = metrics(a), metrics(b)
    assert [(r["epoch"], r["split"]) for r in ma] == [(r["epoch"], r["split"]) for r in mb]
    for ra, rb in zip(ma, mb):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=rtol, abs=atol), ra
        for k in ("top1", "top5"):
            assert ra.get(k) == pytest.approx(rb.get(k), abs=acc_atol), ra
    wa, wb = load_weights(a / "model.safetensors"), load_weights(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=k)


def amp_overrides(amp: str, device: str = "cpu") -> list[str]:
    return [*SMOKE, "model=resnet8", f"trainer.amp={amp}", f"trainer.device={device}", "trainer.epochs=2",
            "trainer.max_steps_per_epoch=3"]


def check_grad_scaler_round_trip(run_dir: Path, device: str) -> None:
    """fp16 on ``device``: the scaler steps, its state goes into the checkpoint and comes back on restore."""
    cfg = compose("train", [*SMOKE, "model=resnet8", "trainer.amp=fp16", f"trainer.device={device}",
                            "trainer.max_steps_per_epoch=2"])
    ctx = RunContext(cfg, RunDir(run_dir))
    trainer = ctx.trainer(build_model(cfg.model, ctx.data.num_classes, 0))
    assert trainer.scaler.is_enabled()
    trainer.train_epoch(0)
    stepped = trainer.scaler.state_dict()
    assert stepped["_growth_tracker"] == 2 or stepped["scale"] < 65536.0  # two steps counted, or an overflow backed off
    trainer.scaler.update(1024.0)  # a scale no fresh scaler has
    trainer.save(0)
    saved = trainer.scaler.state_dict()
    _, state, _ = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert state["scaler"] == saved and saved["scale"] == 1024.0

    fresh = ctx.trainer(build_model(cfg.model, ctx.data.num_classes, 0))
    assert fresh.scaler.state_dict() != saved
    assert fresh.restore(latest_checkpoint(run_dir / "checkpoints")) == 1
    assert fresh.scaler.state_dict() == saved
    fresh.train_epoch(1)
    assert fresh.scaler.get_scale() == 1024.0  # resumed from the restored scale, not 65536


def all_terms_objective(data: DataModule, device: torch.device) -> tuple[DistillObjective, torch.nn.Module]:
    """A student with every registered loss term (single online teacher) on ``device``."""
    torch.manual_seed(0)
    teacher = Teacher([create_model("resnet14", num_classes=10)], ["resnet14"], cache="off")
    student = create_model("resnet8", num_classes=10)
    cfg = DistillConfig(weights=LossWeights(**{name: 1.0 for name in LOSS_TERMS.names()}))
    objective = DistillObjective(cfg, student, teacher, data=data, split="train", seed=0, student_name="resnet8")
    student.to(device, memory_format=torch.channels_last)
    objective.to(device)
    teacher.to(memory_format=torch.channels_last)
    objective.on_epoch_start(0)
    return objective, student


def distill_step_every_term(data: DataModule, device: torch.device, amp: str) -> dict[str, float]:
    """One distillation step with every loss term under ``amp``: the loss and each term, as floats."""
    objective, student = all_terms_objective(data, device)
    batch = next(iter(data.loader("train", 16, train=True, seed=0, device=device, channels_last=True,
                                  max_batches=1).epoch(0)))
    with autocast_context(device, amp):
        out = objective(student, batch, 0)
    out.loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert set(out.terms) == set(LOSS_TERMS.names())
    return {"loss": out.loss.item(), **{k: v.item() for k, v in out.terms.items()}}
