"""AMP and torch.compile through the engine, on the CPU: the code paths a GPU run takes (autocast, the fp16 grad
scaler and its checkpointed state, fp32 losses under autocast, compiled models in distillation steps), guarded in
CI between GPU runs (tests/test_gpu.py runs the same checks on CUDA)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

import kdnas
from kdnas.api import compose
from kdnas.config import DataConfig, TrainerConfig
from kdnas.context import RunContext, build_model
from kdnas.data import DataModule, build_data
from kdnas.distill.objective import DistillObjective
from kdnas.distill.teachers import Teacher
from kdnas.distill.terms import TERMS, DistillConfig, LossWeights
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from kdnas.engine.trainer import Trainer, autocast_context
from kdnas.errors import ConfigError
from kdnas.models import create_model
from kdnas.runs import RunDir

from .conftest import SMOKE

AMP_MODES = ["bf16", "fp16"]


@pytest.fixture(scope="module")
def data(kdnas_cache: Path) -> DataModule:
    return build_data(DataConfig(max_train_per_class=20, max_test_per_class=10), kdnas_cache, kdnas_cache)


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


@pytest.mark.slow
def test_fp16_grad_scaler_state_is_checkpointed_and_restored(tmp_path: Path) -> None:
    check_grad_scaler_round_trip(tmp_path, "cpu")


def test_bad_amp_value_is_refused_on_any_device() -> None:
    with pytest.raises(ConfigError, match="not one of off, bf16, fp16"):
        autocast_context(torch.device("cpu"), "fp32")


def all_terms_objective(data: DataModule, device: torch.device) -> tuple[DistillObjective, torch.nn.Module]:
    """A student with every registered loss term (single online teacher) on ``device``."""
    torch.manual_seed(0)
    teacher = Teacher([create_model("resnet14", num_classes=10)], ["resnet14"], cache="off")
    student = create_model("resnet8", num_classes=10)
    cfg = DistillConfig(weights=LossWeights(**{name: 1.0 for name in TERMS}))
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
    assert set(out.terms) == set(TERMS)
    return {"loss": out.loss.item(), **{k: v.item() for k, v in out.terms.items()}}


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
