"""AMP and torch.compile through the engine, on the CPU: the code paths a GPU run takes (autocast, the fp16 grad
scaler and its checkpointed state, fp32 losses under autocast, compiled models in distillation steps), guarded in
CI between GPU runs (tests/test_gpu.py runs the same checks on CUDA)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import kdnas
from kdnas.config import DataConfig, TrainerConfig
from kdnas.data import DataModule, build_data
from kdnas.distill.objective import DistillObjective
from kdnas.distill.terms import DistillConfig, LossWeights
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from kdnas.engine.trainer import Trainer, autocast_context
from kdnas.errors import ConfigError
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.teachers import Teacher

from .helpers import SMOKE
from .helpers.amp import (
    AMP_MODES,
    amp_overrides,
    assert_same_run,
    check_grad_scaler_round_trip,
    crash_then_resume,
    distill_step_every_term,
    metrics,
)


@pytest.fixture(scope="module")
def data(kdnas_cache: Path) -> DataModule:
    return build_data(DataConfig(max_train_per_class=20, max_test_per_class=10), kdnas_cache, kdnas_cache)


@pytest.mark.slow
@pytest.mark.parametrize("amp", AMP_MODES)
def test_amp_trains_and_resumes_identically_on_cpu(amp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    overrides = amp_overrides(amp)
    full = kdnas.run("train", overrides, run_dir=str(tmp_path / "full"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(tmp_path / "full"))
    resumed = crash_then_resume(overrides, tmp_path / "resumed", monkeypatch)
    assert resumed["test_top1_last"] == full["test_top1_last"]
    assert_same_run(tmp_path / "full", tmp_path / "resumed")


@pytest.mark.slow
def test_fp16_grad_scaler_state_is_checkpointed_and_restored(tmp_path: Path) -> None:
    check_grad_scaler_round_trip(tmp_path, "cpu")


def test_bad_amp_value_is_refused_on_any_device() -> None:
    with pytest.raises(ConfigError, match="not one of off, bf16, fp16"):
        autocast_context(torch.device("cpu"), "fp32")


@pytest.mark.parametrize("amp", AMP_MODES)
def test_distill_step_with_every_term_is_finite_under_amp(amp: str, data: DataModule) -> None:
    """The losses run in fp32 under autocast (fp16 made RKD's angle term NaN), close to the fp32 step."""
    device = torch.device("cpu")
    full = distill_step_every_term(data, device, "off")
    mixed = distill_step_every_term(data, device, amp)
    assert all(torch.isfinite(torch.tensor(v)) for v in mixed.values()), mixed
    assert mixed["loss"] == pytest.approx(full["loss"], rel=0.1)


def dynamo_frames() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_compile_covers_the_distillation_step(data: DataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """trainer.compile=true compiles ``forward_features`` too: distillation objectives call it, and the compiled
    wrapper passes it to the eager module otherwise. The eager backend traces with dynamo (what is compiled is what
    counts here) without inductor's minute of code generation."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10)
    teacher = Teacher([create_model("resnet8", num_classes=10)], ["resnet8"], cache="off")
    objective = DistillObjective(DistillConfig(weights=LossWeights(ce=0.1, kd=0.9)), student, teacher, data=data,
                                 split="train", seed=0, student_name="resnet8")
    cfg = TrainerConfig(epochs=1, batch_size=16, max_steps_per_epoch=2, device="cpu", compile=True, num_threads=1)
    trainer = Trainer(cfg, student, data, RunDir(tmp_path), seed=0, config_hash="compile", objective=objective,
                      progress=False)
    stats = trainer.train_epoch(0)
    assert dynamo_frames() >= 1 and torch.isfinite(torch.tensor(stats["loss"]))
    trainer.save(0)  # the eager module's weights: no `_orig_mod.` prefix
    weights, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert weights.keys() == student.state_dict().keys()


@pytest.mark.slow
def test_compiled_training_with_inductor_on_cpu(tmp_path: Path) -> None:
    """The real backend, smallest zoo model, two steps: runs, stays finite, saves plain weights."""
    torch._dynamo.reset()
    summary = kdnas.run("train", [*SMOKE, "model=resnet8", "trainer.compile=true", "trainer.device=cpu",
                                  "trainer.max_steps_per_epoch=2", "trainer.amp=bf16"], run_dir=str(tmp_path))
    assert isinstance(summary["test_top1_last"], float)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(tmp_path))
    assert not any(k.startswith("_orig_mod.") for k in load_weights(tmp_path / "model.safetensors"))
