"""Scale-out and crash safety: sweeps through every launcher, re-run sweeps, data-parallel training under
torchrun, and runs killed at seeded points that resume to bit-identical results."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest
import torch

import kdnas
from kdnas.api import compose
from kdnas.config import DataConfig, TrainerConfig
from kdnas.context import build_model, config_hash, to_object
from kdnas.data import build_data
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from kdnas.engine.objective import Objective
from kdnas.engine.trainer import build_optimizer, lr_at
from kdnas.errors import ConfigError

from .helpers import SMOKE, kdnas_cli, without

TINY = [*SMOKE, "model=resnet8", "trainer.max_steps_per_epoch=3"]
MODELS, SEEDS = ("resnet14", "nope"), (0, 1)  # "nope" is not a model: those jobs fail
GRID = [f"model.name={','.join(MODELS)}", f"seed={','.join(map(str, SEEDS))}"]
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "submitit_local": ["hydra/launcher=submitit_local"]}


def job_folders(sweep: Path) -> dict[str, Path]:
    """Job number -> folder ("<num>-<override dirname>")."""
    return {p.name.split("-", 1)[0]: p for p in sweep.iterdir() if (p / "status.json").is_file()}


def status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_sweep_runs_every_job_and_reports_failures(launcher: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = kdnas_cli("-m", *TINY, *GRID, *LAUNCHERS[launcher], f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    jobs = job_folders(sweep)
    assert len(jobs) == len(MODELS) * len(SEEDS)
    for num, (model, seed) in enumerate(product(MODELS, SEEDS)):
        folder = jobs[str(num)]
        assert f"model.name={model}," in folder.name and f",seed={seed}," in folder.name
        if model == "nope":
            assert status(folder)["status"] == "failed" and "nope" in status(folder)["message"]
            assert str(folder) in proc.stderr
        else:
            assert status(folder)["status"] == "ok", status(folder)
            assert json.loads((folder / "summary.json").read_text())["model"] == model
    assert "kdnas: 2 job(s) failed:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sweep_rerun_skips_finished_jobs_and_resumes_unfinished(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "trainer.epochs=2", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert kdnas_cli(*args, cwd=tmp_path).returncode == 0
    done, killed = job_folders(sweep)["0"], job_folders(sweep)["1"]
    done_summary = (done / "summary.json").read_bytes()
    killed_summary = json.loads((killed / "summary.json").read_text())
    kill_after_first_epoch(killed)

    proc = kdnas_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"already done: {done}" in proc.stdout and (done / "summary.json").read_bytes() == done_summary
    assert "resumed from" in (killed / "kdnas.log").read_text()
    resumed = json.loads((killed / "summary.json").read_text())
    assert resumed["test_top1_last"] == killed_summary["test_top1_last"] and status(killed)["status"] == "ok"


def kill_after_first_epoch(folder: Path) -> None:
    """What a kill in epoch 2 leaves behind: epoch 1's checkpoint, status "running", no summary or weights."""
    shutil.rmtree(folder / "checkpoints" / "epoch_0002")
    (folder / "checkpoints" / "latest").write_text("epoch_0001")
    (folder / "status.json").write_text(json.dumps({"status": "running", "message": None}))
    for name in ("summary.json", "model.safetensors"):
        (folder / name).unlink()


@pytest.mark.slow
def test_sweep_rerun_finds_finished_jobs_by_what_they_compute(tmp_path: Path) -> None:
    """Flags that change no result rename the job folders (teacher.cache: task=train reads no teacher); the rerun
    finds each finished job by its config hash wherever it is in the sweep folder, trains nothing, and leaves one
    folder per configuration (the sweep report listed every job twice)."""
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert kdnas_cli(*args, cwd=tmp_path).returncode == 0
    summaries = {p: (p / "summary.json").read_bytes() for p in job_folders(sweep).values()}

    proc = kdnas_cli(*args, "teacher.cache=off", "report.after_sweep=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all(f"already done: {folder}" in proc.stdout for folder in summaries), proc.stdout
    assert "epoch 1/" not in proc.stdout + proc.stderr  # nothing trained
    assert sorted(p.parent for p in sweep.rglob(".hydra")) == sorted(summaries)
    assert {p: (p / "summary.json").read_bytes() for p in summaries} == summaries
    report = (sweep / "report" / "report.md").read_text()
    assert all(report.count(folder.name) >= 1 for folder in summaries)


def test_default_sweep_folder_is_not_timestamped() -> None:
    """A rerun of the same sweep command lands in the same folder, so it can find its finished jobs."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="kdnas.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True, overrides=["task=train", "name=study"])
    assert "now:" not in str(OmegaConf.to_container(cfg.hydra.sweep)["dir"])
    assert cfg.hydra.sweep.dir == "outputs/train/study-multirun"


@pytest.mark.slow
def test_a_run_from_before_an_upgrade_that_added_keys_resumes(tmp_path: Path) -> None:
    """A folder whose provenance an older kdnas wrote (its config had no data.aug_seed, trainer.sync_bn) resumes
    under a kdnas that has them, at their defaults (every folder was once "another configuration" after an upgrade)."""
    run_dir = tmp_path / "run"
    overrides = [*TINY, "trainer.epochs=2"]
    args = [*overrides, f"hydra.run.dir={run_dir}"]
    assert kdnas_cli(*args, cwd=tmp_path).returncode == 0
    finished = json.loads((run_dir / "summary.json").read_text())
    kill_after_first_epoch(run_dir)
    older = config_hash(without(compose("train", overrides), "data.aug_seed", "trainer.sync_bn"))
    provenance = json.loads((run_dir / "provenance.json").read_text())
    (run_dir / "provenance.json").write_text(json.dumps({**provenance, "config_hash": older}))
    meta_path = run_dir / "checkpoints" / "epoch_0001" / "meta.json"
    meta = json.loads(meta_path.read_text())
    if meta["config_hash"] != older:  # an older kdnas's checkpoint carries its hash too
        meta_path.write_text(json.dumps({**meta, "config_hash": older}))

    proc = kdnas_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in (run_dir / "kdnas.log").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["test_top1_last"] == finished["test_top1_last"]


@pytest.mark.slow
def test_finished_run_is_returned_not_rerun(tmp_path: Path) -> None:
    first = kdnas.run("train", TINY, run_dir=str(tmp_path))
    again = kdnas.run("train", TINY, run_dir=str(tmp_path))
    assert again["wall_seconds"] == first["wall_seconds"]  # read back, not run again
    rerun = kdnas.run("train", [*TINY, "resume=false"], run_dir=str(tmp_path))
    assert rerun["wall_seconds"] != first["wall_seconds"] and rerun["test_top1_last"] == first["test_top1_last"]
    with pytest.raises(ConfigError, match="another configuration"):
        kdnas.run("train", [*TINY, "trainer.lr=0.2"], run_dir=str(tmp_path))


def test_slurm_preset_composes() -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="kdnas.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", return_hydra_config=True,
                            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.max_num_timeout > 0 and launcher.array_parallelism > 0


# -- data-parallel -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accumulated_reference(overrides: list[str], world_size: int) -> tuple[dict[str, torch.Tensor], float]:
    """One process stepping on the sum of the ranks' micro-batch gradients (each rank's shard, same order):
    what DDP's gradient averaging must equal. Returns the parameters and the mean training loss."""
    cfg = compose("train", overrides)
    tcfg = to_object(cfg.trainer, TrainerConfig)
    data = build_data(to_object(cfg.data, DataConfig), cfg.paths.data_dir, cfg.paths.cache_dir)
    model = build_model(cfg.model, data.num_classes, cfg.seed).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(tcfg, list(model.parameters()))
    shards = [data.loader(tcfg.train_split, tcfg.batch_size, train=True, seed=cfg.seed, channels_last=True,
                          max_batches=tcfg.max_steps_per_epoch, rank=rank, world_size=world_size)
              for rank in range(world_size)]
    objective, losses = Objective(), []
    for step, micro_batches in enumerate(zip(*(shard.epoch(0) for shard in shards))):
        optimizer.zero_grad()
        for batch in micro_batches:
            loss = objective(model, batch, 0).loss
            (loss / world_size).backward()
            losses.append(loss.item())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(tcfg, step, len(shards[0]))
        optimizer.step()
    return {k: v.detach() for k, v in model.named_parameters()}, sum(losses) / len(losses)


def torchrun_kdnas(*overrides: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`kdnas OVERRIDES` as 2 gloo ranks under torchrun; a hang fails the test at the timeout."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
                "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
    proc = subprocess.run([*torchrun, "-m", "kdnas.cli", *overrides], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_ddp_two_ranks_match_one_process_accumulating(tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    overrides = [*TINY, "trainer.batch_size=8"]
    proc = torchrun_kdnas(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (OMP_NUM_THREADS=1): CPU float sums depend on the thread count
    try:
        params, loss = accumulated_reference(overrides, world_size=2)
    finally:
        torch.set_num_threads(threads)
    trained = load_weights(run_dir / "model.safetensors")
    initial = build_model(compose("train", overrides).model, 10, 0).state_dict()
    assert any(not torch.allclose(initial[k], p, atol=1e-4) for k, p in params.items())  # the steps moved them
    for name, p in params.items():  # not BN running stats: DDP broadcasts rank 0's
        torch.testing.assert_close(trained[name], p, rtol=1e-4, atol=1e-5, msg=name)
    train = next(r for r in map(json.loads, (run_dir / "metrics.jsonl").open()) if r["split"] == "train")
    assert train["loss"] == pytest.approx(loss, rel=1e-5)
    assert json.loads((run_dir / "provenance.json").read_text())["world_size"] == 2
    assert proc.stdout.count("done:") == 1  # rank 0 alone logs


@pytest.mark.slow
def test_ddp_ranks_train_a_missing_teacher_together(tmp_path: Path) -> None:
    """Rank 0 holds the teacher store's lock for the group (a rank blocked on it deadlocked the others)."""
    cache = tmp_path / "cache"
    torchrun_kdnas(*TINY, "task=distill", "teacher.model=resnet8", "teacher.trainer.max_steps_per_epoch=3",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, KDNAS_CACHE_DIR=str(cache))
    entries = [p for p in (cache / "teachers").iterdir() if p.is_dir()]
    assert [p.name.split("-")[0] for p in entries] == ["resnet8"]
    assert json.loads((entries[0] / "teacher.json").read_text())["model"] == "resnet8"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["teacher_test_top1"] is not None


# -- crash safety ----------------------------------------------------------------------------------------

EPOCHS, STEPS = 3, 3
CRASH_RUN = [*SMOKE, "model=resnet8", f"trainer.epochs={EPOCHS}", f"trainer.max_steps_per_epoch={STEPS}"]
# Runs `kdnas ARGS` after arranging a SIGKILL at the N-th call of MODULE.FUNCTION (argv: MODULE FUNCTION N ARGS).
KILLER = """
import importlib, os, signal, sys
module, name, n = importlib.import_module(sys.argv[1]), sys.argv[2], int(sys.argv[3])
original, calls = getattr(module, name), []
def kill_at_nth_call(*args, **kwargs):
    calls.append(1)
    if len(calls) == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(module, name, kill_at_nth_call)
sys.argv = ["kdnas", *sys.argv[4:]]
from kdnas.cli import main
main()
"""
_rng = random.Random(1234)
KILL_POINTS = {  # seeded: where the run dies
    "before training step": ("kdnas.engine.trainer", "lr_at", _rng.randint(2, EPOCHS * STEPS)),
    # write_safetensors writes a checkpoint's model.safetensors, then its state.safetensors: even calls fall between
    "between checkpoint files": ("kdnas.engine.checkpoint", "write_safetensors", 2 * _rng.randint(2, EPOCHS)),
    # atomic_write_bytes writes those two files, then the latest pointer: every third call is the pointer's
    "before the latest pointer moves": ("kdnas.engine.checkpoint", "atomic_write_bytes", 3 * _rng.randint(1, EPOCHS)),
}


def comparable(run_dir: Path) -> tuple[dict, list[dict], bytes]:
    """Summary and metrics without timings, and the final weights' bytes."""
    timing = {"wall_seconds", "session_wall_seconds", "train_seconds_this_session", "run_dir", "img_per_s", "seconds"}
    summary = {k: v for k, v in json.loads((run_dir / "summary.json").read_text()).items() if k not in timing}
    metrics = [{k: v for k, v in json.loads(line).items() if k not in timing}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, metrics, (run_dir / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], bytes]:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = kdnas_cli(*CRASH_RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    return comparable(run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_run_resumes_to_identical_result(point: str, uninterrupted: tuple, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*CRASH_RUN, f"hydra.run.dir={run_dir}"]
    module, function, n = KILL_POINTS[point]
    killed = subprocess.run([sys.executable, "-c", KILLER, module, function, str(n), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert not (run_dir / "summary.json").exists() and status(run_dir)["status"] == "running"
    latest = latest_checkpoint(run_dir / "checkpoints")
    if latest is not None:
        load_checkpoint(latest)  # complete: every file matches its recorded sha256

    assert kdnas_cli(*args, cwd=tmp_path).returncode == 0
    assert comparable(run_dir) == uninterrupted
