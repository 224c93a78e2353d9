"""The training engine: schedules, checkpoints (atomic, verified, never unpickled), resume to identical
results, NaN handling."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

import kdnas
from kdnas.config import TrainerConfig
from kdnas.engine.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    pack,
    save_checkpoint,
    unpack,
)
from kdnas.engine.objective import Objective, StepOutput
from kdnas.engine.trainer import Trainer, lr_at
from kdnas.errors import CheckpointError, ConfigError, NonFiniteLossError

from .helpers import SMOKE


def test_lr_schedules() -> None:
    cfg = TrainerConfig(epochs=240, lr=0.05, schedule="multistep", milestones=[150, 180, 210])
    assert lr_at(cfg, 149 * 10, 10) == pytest.approx(0.05)
    assert lr_at(cfg, 150 * 10, 10) == pytest.approx(0.005)
    assert lr_at(cfg, 239 * 10, 10) == pytest.approx(0.05e-3)
    cos = TrainerConfig(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=1)
    assert lr_at(cos, 0, 100) == pytest.approx(0.1 * 0.5 * (1 + 1.0) / 100, rel=1e-3)
    assert lr_at(cos, 500, 100) == pytest.approx(0.05)


def test_pack_round_trip() -> None:
    state = {"a": torch.arange(3), "b": {0: {"m": torch.ones(2)}, 1: {"m": None}}, "c": [1.5, "x", True]}
    tensors, skeleton = pack(state)
    back = unpack(json.loads(json.dumps(skeleton)), tensors)
    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"][0]["m"], torch.ones(2))
    assert back["b"][1]["m"] is None and back["c"] == [1.5, "x", True]


def test_checkpoint_verified_and_pickles_refused(tmp_path: Path) -> None:
    model_state = {"w": torch.randn(4, 4).t()}  # non-contiguous on purpose
    save_checkpoint(tmp_path, "epoch_0001", model_state=model_state, state={"epoch": 0}, meta={})
    save_checkpoint(tmp_path, "epoch_0002", model_state=model_state, state={"epoch": 1}, meta={})
    save_checkpoint(tmp_path, "epoch_0003", model_state=model_state, state={"epoch": 2}, meta={})
    latest = latest_checkpoint(tmp_path)
    assert latest is not None and latest.name == "epoch_0003"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch_0002", "epoch_0003"]
    weights, state, _ = load_checkpoint(latest)
    assert torch.equal(weights["w"], model_state["w"]) and state["epoch"] == 2
    blob = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(blob[: len(blob) // 2])  # truncated
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(latest)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_weights(evil)


def _metrics(run_dir: Path) -> list[dict]:
    keep = ("epoch", "split", "loss", "top1", "top5")
    return [{k: r[k] for k in keep if k in r} for r in map(json.loads, (run_dir / "metrics.jsonl").open())]


@pytest.mark.slow
def test_resume_after_crash_gives_identical_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = [*SMOKE, "model=resnet8", "trainer.epochs=3", "trainer.max_steps_per_epoch=6"]
    full = tmp_path / "full"
    kdnas.run("train", overrides, run_dir=str(full))

    crashed = tmp_path / "crashed"
    original = Trainer.train_epoch

    def crash_in_epoch_two(self: Trainer, epoch: int) -> dict:
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        kdnas.run("train", overrides, run_dir=str(crashed))
    assert not (crashed / "summary.json").exists()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    summary = kdnas.run("train", overrides, run_dir=str(crashed))

    assert _metrics(crashed) == _metrics(full)
    assert summary["test_top1_last"] == json.loads((full / "summary.json").read_text())["test_top1_last"]
    a, b = load_weights(full / "model.safetensors"), load_weights(crashed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    base = [*SMOKE, "model=resnet8", "trainer.max_steps_per_epoch=2"]
    kdnas.run("train", base, run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="another configuration"):
        kdnas.run("train", [*base, "trainer.lr=0.2"], run_dir=str(tmp_path))


class NanAfter(Objective):
    """CE that turns NaN from the given global step on."""

    def __init__(self, step: int):
        super().__init__()
        self.nan_step, self.calls = step, 0

    def forward(self, model, batch, epoch) -> StepOutput:  # type: ignore[override]
        out = super().forward(model, batch, epoch)
        self.calls += 1
        return StepOutput(out.loss * (float("nan") if self.calls > self.nan_step else 1.0), out.logits)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    from kdnas.api import compose
    from kdnas.context import RunContext, build_model
    from kdnas.runs import RunDir

    cfg = compose("train", [*SMOKE, "model=resnet8", "trainer.epochs=3", "trainer.max_steps_per_epoch=4",
                            "trainer.log_every=2"])
    ctx = RunContext(cfg, RunDir(tmp_path))
    trainer = ctx.trainer(build_model(cfg.model, ctx.data.num_classes, 0), objective=NanAfter(5))
    with pytest.raises(NonFiniteLossError, match="grad_clip"):
        trainer.fit()
    latest = latest_checkpoint(tmp_path / "checkpoints")
    assert latest is not None and latest.name == "epoch_0001"
    weights, _, _ = load_checkpoint(latest)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_respect_the_umask(umask: int, mode: int, tmp_path: Path) -> None:
    """Results on a shared machine: every atomic writer (JSON, weights, checkpoints) gives 0o666 & ~umask, not
    mkstemp's 0600."""
    from kdnas.engine.checkpoint import save_weights
    from kdnas.utils import atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "summary.json", {"top1": 1.0})
        save_weights(tmp_path / "model.safetensors", {"w": torch.zeros(2)})
        save_checkpoint(tmp_path / "checkpoints", "epoch_0001", model_state={"w": torch.zeros(2)}, state={}, meta={})
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 7 and {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}


@pytest.mark.parametrize(("nan_step", "kept"), [(1, None), (5, "epoch_0001")], ids=["before any", "after one"])
def test_nan_message_names_the_checkpoint_that_exists(nan_step: int, kept: str | None, tmp_path: Path) -> None:
    """The message named the checkpoints folder even when no checkpoint had been written."""
    from kdnas.api import compose
    from kdnas.context import RunContext, build_model
    from kdnas.runs import RunDir

    cfg = compose("train", [*SMOKE, "model=resnet8", "trainer.epochs=3", "trainer.max_steps_per_epoch=4",
                            "trainer.log_every=2"])
    ctx = RunContext(cfg, RunDir(tmp_path))
    trainer = ctx.trainer(build_model(cfg.model, ctx.data.num_classes, 0), objective=NanAfter(nan_step))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit()
    message = str(info.value)
    if kept is None:
        assert "No checkpoint" in message and str(tmp_path / "checkpoints") not in message
    else:
        assert str(tmp_path / "checkpoints" / kept) in message and (tmp_path / "checkpoints" / kept).is_dir()
