"""The engine where users run it: on a CUDA GPU (``pytest -m gpu``; skipped without CUDA).

AMP (fp16 with the grad scaler, bf16), channels_last, ``trainer.compile`` on a zoo model and on a searched
candidate, the teacher-logit cache built on the device, every loss term under AMP, ``torchrun`` with nccl and
pool workers pinned to their GPU. scripts/gpu_check.sh runs these first; tests/test_engine_amp.py guards the
same code paths on the CPU between GPU runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import kdnas
from kdnas.api import compose, execute
from kdnas.config import DataConfig, TrainerConfig
from kdnas.data import DataModule, build_data
from kdnas.distill.cache import TeacherLogitCache
from kdnas.distill.objective import DistillObjective
from kdnas.distill.terms import DistillConfig, LossWeights
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from kdnas.engine.trainer import Trainer
from kdnas.evaluators import evaluation_pool, visible_gpus
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.spaces import create_space
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

# KDNAS_GPU_TEST_DEVICE=cpu runs the device-generic tests on the CPU (checks the tests themselves, not the GPU).
DEVICE = os.environ.get("KDNAS_GPU_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU")]
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="CUDA itself (nccl, CUDA_VISIBLE_DEVICES, TF32)")
CUDA = torch.device(DEVICE)
GPU = [*SMOKE, f"trainer.device={DEVICE}", f"teacher.trainer.device={DEVICE}"]


@pytest.fixture(scope="module")
def data(kdnas_cache: Path) -> DataModule:
    return build_data(DataConfig(max_train_per_class=20, max_test_per_class=10), kdnas_cache, kdnas_cache)


@pytest.fixture
def exact_math() -> Iterator[None]:
    """No TF32: a comparison of two computations of the same logits then differs by fp16 rounding alone."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# -- AMP, resume, channels_last ---------------------------------------------------------------------------------


@pytest.mark.parametrize("amp", AMP_MODES)
def test_amp_train_step_and_resume_on_gpu(amp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = amp_overrides(amp, DEVICE)
    kdnas.run("train", overrides, run_dir=str(tmp_path / "full"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(tmp_path / "full"))
    crash_then_resume(overrides, tmp_path / "resumed", monkeypatch)
    assert_same_run(tmp_path / "full", tmp_path / "resumed", rtol=1e-3, atol=1e-3, acc_atol=1.0)  # AMP's tolerance
    _, state, _ = load_checkpoint(latest_checkpoint(tmp_path / "resumed" / "checkpoints"))
    if ON_CUDA:  # the training GPU's generator, not every visible one's
        assert isinstance(state["rng"]["cuda"], torch.Tensor)
    assert (state["scaler"] != {}) == (amp == "fp16")


def test_fp16_grad_scaler_state_restored_on_gpu(tmp_path: Path) -> None:
    check_grad_scaler_round_trip(tmp_path, DEVICE)


def test_channels_last_on_gpu(data: DataModule, tmp_path: Path) -> None:
    losses = {}
    for channels_last in (True, False):
        torch.manual_seed(0)
        cfg = TrainerConfig(epochs=1, batch_size=16, max_steps_per_epoch=3, device=DEVICE, schedule="constant",
                            channels_last=channels_last)
        trainer = Trainer(cfg, create_model("resnet8", num_classes=10), data, RunDir(tmp_path / str(channels_last)),
                          seed=0, config_hash="cl", progress=False)
        conv = next(p for p in trainer.model.parameters() if p.dim() == 4)
        batch = next(iter(trainer.train_source.epoch(0)))
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert conv.device.type == CUDA.type and conv.is_contiguous(memory_format=fmt)
        assert batch.x.is_contiguous(memory_format=fmt)
        losses[channels_last] = trainer.train_epoch(0)["loss"]
        assert conv.is_contiguous(memory_format=fmt)  # the optimiser kept the layout
    assert losses[True] == pytest.approx(losses[False], rel=1e-2)


@cuda_only
def test_cudnn_benchmark_follows_determinism(data: DataModule, tmp_path: Path) -> None:
    """trainer.deterministic=false turns cuDNN autotuning on (the fast setting the benchmarks use), true turns it
    off for reproducible resumes; either way a step trains."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:
        for deterministic in (False, True):
            cfg = TrainerConfig(epochs=1, batch_size=16, max_steps_per_epoch=2, device=DEVICE,
                                deterministic=deterministic)
            trainer = Trainer(cfg, create_model("resnet8", num_classes=10), data, RunDir(tmp_path / str(deterministic)),
                              seed=0, config_hash="cudnn", progress=False)
            assert torch.backends.cudnn.benchmark is not deterministic
            assert torch.backends.cudnn.deterministic is deterministic
            assert torch.isfinite(torch.tensor(trainer.train_epoch(0)["loss"]))
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


# -- distillation on the device ---------------------------------------------------------------------------------


def test_teacher_logit_cache_built_on_gpu_equals_online_teacher(data: DataModule, tmp_path: Path,
                                                                 exact_math: None) -> None:
    torch.manual_seed(0)
    teacher = Teacher([create_model("resnet14", num_classes=10)], ["resnet14"], cache="auto")
    teacher.to(CUDA, memory_format=torch.channels_last)
    cache = TeacherLogitCache(tmp_path, data, "train", seed=0)
    cached = cache.get(teacher.members[0], teacher.hashes[0], 0)  # built by the net on its device (the GPU)
    assert cached.dtype == torch.float16 and cached.device.type == "cpu"
    for batch in data.loader("train", 64, train=True, seed=0, device=CUDA, channels_last=True).epoch(0):
        online = teacher(batch.x).half().cpu()  # other batch size and order than the 500-image build
        # equal after fp16 rounding: at most one fp16 step apart where cuDNN picked another algorithm
        torch.testing.assert_close(cached[cache.rows[batch.index.cpu()]], online, rtol=1e-3, atol=1e-3)

    kd = DistillConfig(weights=LossWeights(ce=0.1, kd=0.9))
    losses = []
    for mode in ("auto", "off"):  # KD from the cache vs KD with the teacher online: the same loss
        teacher.cache = mode
        torch.manual_seed(1)  # the same student both times
        student = create_model("resnet8", num_classes=10).to(CUDA, memory_format=torch.channels_last)
        objective = DistillObjective(kd, student, teacher, data=data, split="train", seed=0, student_name="resnet8",
                                     cache_dir=tmp_path).to(CUDA)
        assert (objective.cache is not None) == (mode == "auto")
        objective.on_epoch_start(0)
        batch = next(iter(data.loader("train", 16, train=True, seed=0, device=CUDA, channels_last=True).epoch(0)))
        losses.append(objective(student, batch, 0).loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


@pytest.mark.parametrize("amp", ["off", *AMP_MODES])
def test_distill_step_with_every_term_on_gpu(amp: str, data: DataModule) -> None:
    full = distill_step_every_term(data, CUDA, "off")
    step = distill_step_every_term(data, CUDA, amp)
    assert all(torch.isfinite(torch.tensor(v)) for v in step.values()), step
    assert step["loss"] == pytest.approx(full["loss"], rel=0.1)


# -- torchrun and pool workers ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=1",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


NCCL_STEP = """
import os, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from kdnas.config import DataConfig
from kdnas.data import build_data
from kdnas.engine.distributed import TrainStep
from kdnas.engine.objective import Objective
from kdnas.models import create_model

torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
x = torch.full((3,), 2.0, device="cuda")
dist.all_reduce(x)
model = create_model("resnet8", num_classes=10).cuda().to(memory_format=torch.channels_last)
step = DistributedDataParallel(TrainStep(model, Objective()), device_ids=[torch.cuda.current_device()])
cache = os.environ["KDNAS_CACHE_DIR"]
data = build_data(DataConfig(max_train_per_class=20), cache, cache)
batch = next(iter(data.loader("train", 16, train=True, seed=0, device=torch.device("cuda"), channels_last=True,
                              max_batches=1).epoch(0)))
with torch.autocast("cuda", dtype=torch.bfloat16):
    out = step(batch, 0)
out.loss.backward()
ok = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
print("NCCL", dist.get_backend(), dist.get_world_size(), x.tolist(), bool(ok))
dist.destroy_process_group()
"""


@cuda_only
def test_torchrun_one_process_nccl_on_gpu(tmp_path: Path) -> None:
    """kdnas under torchrun on the GPU, and nccl + DDP over the engine's train step (more than one rank needs more
    than one GPU: nccl refuses two ranks on one device)."""
    run_dir = tmp_path / "run"
    torchrun("-m", "kdnas.cli", "task=train", *GPU, "model=resnet8", "trainer.max_steps_per_epoch=3",
             f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["test_top1_last"] is not None
    assert json.loads((run_dir / "provenance.json").read_text())["world_size"] == 1
    script = tmp_path / "nccl_step.py"
    script.write_text(NCCL_STEP)
    proc = torchrun(str(script), cwd=tmp_path)
    assert "NCCL nccl 1 [2.0, 2.0, 2.0] True" in proc.stdout, proc.stdout[-2000:]


def worker_gpu() -> dict:
    """Run inside a pool worker: what CUDA it sees."""
    return {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "count": torch.cuda.device_count(),
            "sum": torch.ones(4, device="cuda").sum().item()}


@cuda_only
def test_pool_workers_pinned_to_their_gpu(tmp_path: Path) -> None:
    with evaluation_pool("processes", 2, tmp_path, None) as pool:
        assert pool is not None and pool.gpus == visible_gpus() and pool.gpus
        futures = [pool.process_pool().submit(worker_gpu) for _ in range(4)]
        seen = [f.result(timeout=300) for f in futures]
    assert all(s["visible"] in pool.gpus and s["count"] == 1 and s["sum"] == 4.0 for s in seen), seen


# -- torch.compile (last: compilation is the slowest part) -------------------------------------------------------


def test_compile_zoo_model_on_gpu(tmp_path: Path) -> None:
    summary = kdnas.run("train", [*GPU, "model=resnet8", "trainer.compile=true", "trainer.max_steps_per_epoch=3"],
                        run_dir=str(tmp_path))
    assert isinstance(summary["test_top1_last"], float)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(tmp_path))
    assert not any(k.startswith("_orig_mod.") for k in load_weights(tmp_path / "model.safetensors"))


def test_compile_searched_candidate_distilled_on_gpu(tmp_path: Path) -> None:
    arch = create_space("resnet_cifar").make({"depth1": 1, "depth2": 1, "depth3": 1})
    (tmp_path / "best_arch.json").write_text(json.dumps(arch.to_json()))
    cfg = compose("distill", [*GPU, "teacher.model=resnet8", "distill=kd", "trainer.compile=true", "trainer.amp=bf16",
                              "trainer.max_steps_per_epoch=3", f"student.arch={tmp_path / 'best_arch.json'}"])
    summary = execute(cfg, tmp_path / "run", raise_errors=True)
    assert summary is not None and summary["student"] == f"arch:{arch.arch_id}"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in metrics(tmp_path / "run"))
