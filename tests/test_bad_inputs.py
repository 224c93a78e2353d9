"""Bad inputs: each gives one clear paragraph naming the key or the fix (no traceback), a non-zero exit, and
leaves nothing half-written."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

import kdnas
from kdnas import utils
from kdnas.api import compose
from kdnas.context import RunContext
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint
from kdnas.errors import CheckpointError, ConfigError, KdnasError
from kdnas.runs import RunDir
from kdnas.teachers import load

from .helpers import SMOKE, kdnas_cli

TINY = [*SMOKE, "model=resnet8", "trainer.max_steps_per_epoch=3"]
RESULTS = ("summary.json", "model.safetensors")


def fails_cleanly(proc, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def run_failed(run_dir: Path) -> None:
    """The run folder says failed and holds no results."""
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not any((run_dir / name).exists() for name in RESULTS)


class MakesMarker:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


# -- config and data ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "needles"), [
    ("data=nope", ("data/nope", "cifar10_mini")),  # unknown group option: the message lists the options
    ("trainer.batch_size=many", ("batch_size", "many")),  # wrong type
])
@pytest.mark.slow  # make test-fast stays under 3 minutes (CI runs it)
def test_config_errors_stop_before_any_folder(override: str, needles: tuple[str, ...], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fails_cleanly(kdnas_cli(*TINY, override, f"hydra.run.dir={run_dir}", cwd=tmp_path), *needles)
    assert not run_dir.exists()


def missing_folder(tmp: Path) -> Path:
    return tmp / "nowhere"


def empty_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def corrupt_image_folder(tmp: Path) -> Path:
    """train/{a,b}/ and test/{a,b}/ with tiny PNGs, and one .jpg that is not an image."""
    root = tmp / "images"
    for split, cls in ((s, c) for s in ("train", "test") for c in ("a", "b")):
        (root / split / cls).mkdir(parents=True)
        write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(root / split / cls / "0.png"))
    (root / "train" / "b" / "broken.jpg").write_text("not a jpeg")
    return root


@pytest.mark.parametrize(("data_root", "needles"), [
    (missing_folder, ("data.root", "does not exist")),
    (empty_folder, ("train/<class>",)),
    pytest.param(corrupt_image_folder, ("broken.jpg", "Replace or delete")),
], ids=["missing root", "empty folder", "corrupt image"])
@pytest.mark.slow  # 3-5 s each (make test-fast stays under 3 minutes)
def test_bad_data(data_root, needles: tuple[str, ...], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = kdnas_cli(*TINY, "data=imagefolder", f"data.root={data_root(tmp_path)}", f"hydra.run.dir={run_dir}",
                     cwd=tmp_path)
    fails_cleanly(proc, *needles)
    run_failed(run_dir)


# -- checkpoints ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished")
    kdnas.run("train", [*TINY, "trainer.epochs=2"], run_dir=str(run_dir))
    return run_dir


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truncate(ckpt: Path, marker: Path) -> None:
    blob = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(blob[: len(blob) // 2])


def tamper(ckpt: Path, marker: Path) -> None:
    blob = bytearray((ckpt / "state.safetensors").read_bytes())
    blob[-1] ^= 0xFF  # same size, one byte changed
    (ckpt / "state.safetensors").write_bytes(bytes(blob))


def swap_in_pickle(ckpt: Path, marker: Path) -> None:
    """A pickle in place of the weights, with meta.json's sha256 updated: only the format check is left."""
    (ckpt / "model.safetensors").write_bytes(pickle.dumps(MakesMarker(marker)))
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["sha256"]["model.safetensors"] = sha256(ckpt / "model.safetensors")
    (ckpt / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "needles"), [
    (truncate, ("sha256", "truncated or tampered")),
    (tamper, ("sha256", "truncated or tampered")),
    (swap_in_pickle, ("never unpickles", "save_file")),
], ids=["truncated", "tampered", "pickle"])
def test_damaged_checkpoint_is_refused(damage, needles: tuple[str, ...], finished_run: Path, tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "unpickled"
    shutil.copytree(finished_run, run_dir)
    for name in ("summary.json", "status.json", "model.safetensors"):  # as if killed before the end
        (run_dir / name).unlink()
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    damage(ckpt, marker)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}

    fails_cleanly(kdnas_cli(*TINY, "trainer.epochs=2", f"resume={run_dir}", cwd=tmp_path), *needles)
    run_failed(run_dir)
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before and not marker.exists()


def test_removing_a_corrupt_checkpoint_resumes_from_the_previous_one(finished_run: Path, tmp_path: Path) -> None:
    """As the error says: delete the damaged folder and rerun; the run continues from epoch 1's checkpoint (it used
    to start over, since the `latest` pointer named the deleted folder)."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    for name in ("summary.json", "status.json", "model.safetensors"):  # as if killed before the end
        (run_dir / name).unlink()
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None and ckpt.name == "epoch_0002"
    tamper(ckpt, tmp_path / "unused")
    with pytest.raises(CheckpointError, match="epoch_0002") as info:
        kdnas.run("train", [*TINY, "trainer.epochs=2"], run_dir=str(run_dir))
    assert "previous checkpoint" in str(info.value)
    shutil.rmtree(ckpt)
    first_epoch = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    kdnas.run("train", [*TINY, "trainer.epochs=2"], run_dir=str(run_dir))
    # epoch 1 was not trained again: its record (wall-clock seconds included) is the original one
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0]) == first_epoch
    assert (run_dir / "summary.json").is_file() and latest_checkpoint(run_dir / "checkpoints").name == "epoch_0002"


def test_a_resumed_run_reports_the_wall_time_of_every_part(finished_run: Path, tmp_path: Path) -> None:
    """wall_seconds counted only the last session of a run resumed after a kill."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    first = json.loads((run_dir / "sessions.json").read_text())["sessions"]
    assert len(first) == 1 and first[0][1] > first[0][0]
    for name in ("summary.json", "status.json", "model.safetensors"):  # killed during epoch 2
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "checkpoints" / "epoch_0002")
    summary = kdnas.run("train", [*TINY, "trainer.epochs=2"], run_dir=str(run_dir))
    sessions = json.loads((run_dir / "sessions.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[0] == first[0]
    assert summary["wall_seconds"] == pytest.approx(sum(end - start for start, end in sessions))
    assert summary["wall_seconds"] > summary["session_wall_seconds"] + 0.9 * (first[0][1] - first[0][0])


@pytest.mark.parametrize(("damage", "needles"), [
    (lambda path, marker: path.write_bytes(pickle.dumps(MakesMarker(marker))), ("never unpickles",)),
    (lambda path, marker: path.write_bytes(path.read_bytes()[:200]), ("corrupt or truncated",)),
], ids=["pickle", "truncated"])
def test_bad_teacher_checkpoint_is_refused(damage, needles: tuple[str, ...], finished_run: Path,
                                           tmp_path: Path) -> None:
    weights, marker = tmp_path / "teacher.safetensors", tmp_path / "unpickled"
    shutil.copyfile(finished_run / "model.safetensors", weights)
    damage(weights, marker)
    cfg = compose("train", [*TINY, "teacher=checkpoint", "teacher.model=resnet8", f"teacher.checkpoint={weights}"])
    with pytest.raises(CheckpointError) as info:
        load(RunContext(cfg, RunDir(tmp_path / "run")).workspace, cfg.teacher)
    assert all(needle in str(info.value) for needle in needles) and str(weights) in str(info.value)
    assert not marker.exists()


def zero_64_bytes(path: Path) -> None:
    """The issue's damage: 64 bytes of tensor data zeroed in place (the file still parses)."""
    blob = bytearray(path.read_bytes())
    mid = len(blob) // 2
    before = bytes(blob)
    blob[mid : mid + 64] = bytes(64)
    assert bytes(blob) != before
    path.write_bytes(bytes(blob))


@pytest.mark.slow  # 3-5 s (make test-fast stays under 3 minutes)
def test_corrupted_teacher_weights_fail_the_run(finished_run: Path, tmp_path: Path) -> None:
    """teacher=checkpoint on a run folder whose model.safetensors was damaged after kdnas wrote it: exit 1."""
    teacher = tmp_path / "teacher"
    shutil.copytree(finished_run, teacher)
    zero_64_bytes(teacher / "model.safetensors")
    proc = kdnas_cli(*TINY, "task=distill", "teacher=checkpoint", "teacher.model=resnet8",
                     f"teacher.checkpoint={teacher}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    fails_cleanly(proc, "sha256", str(teacher / "model.safetensors"))


def test_weights_carry_their_sha256_and_a_bare_file_loads_with_a_warning(finished_run: Path, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    card = json.loads((finished_run / "model.json").read_text())
    assert card["weights_sha256"] == sha256(finished_run / "model.safetensors") and card["model"] == "resnet8"
    damaged = tmp_path / "damaged"
    shutil.copytree(finished_run, damaged)
    zero_64_bytes(damaged / "model.safetensors")
    bare = tmp_path / "bare.safetensors"  # a user's file: no card beside it
    shutil.copyfile(damaged / "model.safetensors", bare)
    for weights in (damaged / "model.safetensors", bare):
        cfg = compose("train", [*TINY, "teacher=checkpoint", "teacher.model=resnet8", f"teacher.checkpoint={weights}"])
        ctx = RunContext(cfg, RunDir(tmp_path / "run"))
        if weights == bare:
            with caplog.at_level("WARNING", logger="kdnas"):
                load(ctx.workspace, cfg.teacher)
            assert "cannot be verified" in caplog.text and str(bare) in caplog.text
        else:
            with pytest.raises(CheckpointError, match="sha256"):
                load(ctx.workspace, cfg.teacher)


@pytest.mark.slow
def test_a_damaged_teacher_store_entry_is_refused(tmp_path: Path) -> None:
    """Store entries carry their sha256 in teacher.json too; a damaged one is not distilled from."""
    tiny = [*TINY, "teacher.model=resnet8", "teacher.trainer.max_steps_per_epoch=2", "data.max_train_per_class=12"]
    entry = Path(kdnas.run("train_teacher", tiny, run_dir=tmp_path / "teacher")["store_path"])
    card = json.loads((entry / "teacher.json").read_text())
    assert card["weights_sha256"] == sha256(entry / "model.safetensors")
    zero_64_bytes(entry / "model.safetensors")
    with pytest.raises(CheckpointError, match="teacher.retrain=true"):
        cfg = compose("distill", tiny)
        load(RunContext(cfg, RunDir(tmp_path / "run")).workspace, cfg.teacher)


@pytest.mark.parametrize(("overrides", "needles"), [
    (["teacher.checkpoint=/nowhere/teacher.safetensors"], ("not read by teacher=store", "teacher=checkpoint")),
    (["teacher=checkpoint", "teacher.checkpoint=/nowhere", "teacher.seed=3"], ("teacher.seed=3", "teacher=store")),
    (["teacher.combine=oracle"], ("not read by teacher=store", "teacher=ensemble")),
    (["teacher=ensemble", "teacher.retrain=true"], ("teacher.retrain=True", "teacher=store")),
], ids=["checkpoint without its kind", "seed of a checkpoint", "combine of one teacher", "retrain an ensemble"])
def test_a_teacher_key_its_kind_does_not_read_is_refused(overrides: list[str], needles: tuple[str, ...],
                                                         tmp_path: Path) -> None:
    """`teacher.checkpoint=PATH` alone used to distil silently from the store's teacher instead."""
    cfg = compose("distill", [*TINY, "teacher.train_if_missing=false", *overrides])
    with pytest.raises(ConfigError) as info:
        load(RunContext(cfg, RunDir(tmp_path / "run")).workspace, cfg.teacher)
    assert all(needle in str(info.value) for needle in needles), str(info.value)


# -- training and the output folder ----------------------------------------------------------------------

@pytest.mark.slow
def test_nan_loss_names_grad_clip_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    diverge = ["trainer.epochs=2", "trainer.schedule=multistep", "trainer.milestones=[1]", "trainer.gamma=1e30"]
    fails_cleanly(kdnas_cli(*TINY, *diverge, f"hydra.run.dir={run_dir}", cwd=tmp_path), "grad_clip", "NaN")
    run_failed(run_dir)
    latest = latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None and latest.name == "epoch_0001"
    weights, _, _ = load_checkpoint(latest)
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())


@pytest.mark.slow
def test_unwritable_output_folder(tmp_path: Path) -> None:
    """A parent that is a regular file: unwritable even for root, which ignores permission bits."""
    (tmp_path / "file").write_text("")
    for mode in ([], ["-m", "seed=0,1"]):
        folder = "hydra.sweep.dir" if mode else "hydra.run.dir"
        proc = kdnas_cli(*mode, *TINY, f"{folder}={tmp_path / 'file' / 'run'}", cwd=tmp_path)
        fails_cleanly(proc, str(tmp_path / "file" / "run"), "hydra.run.dir=DIR")


def test_disk_full_keeps_the_previous_file_and_says_so(finished_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    summary = (run_dir / "summary.json").read_bytes()
    real_write = utils.atomic_write_bytes

    def full_disk(path: str | Path, data: bytes) -> None:
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, data)

    monkeypatch.setattr(utils, "atomic_write_bytes", full_disk)
    with pytest.raises(KdnasError, match="No space left on device") as info:
        kdnas.run("train", [*TINY, "trainer.epochs=2", "resume=false"], run_dir=str(run_dir))
    assert str(run_dir) in str(info.value) and "hydra.run.dir" in str(info.value)
    assert (run_dir / "summary.json").read_bytes() == summary
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not list(run_dir.glob(".*.tmp"))


def test_disk_full_while_writing_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC surfacing at fsync of the second epoch's checkpoint tensors (safetensors' own writer would drop
    it and leave a truncated file): a clear error, and the first epoch's checkpoint stays the latest, intact."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if "epoch_0002" in target and ".safetensors" in target:  # the tensors in the .tmp-epoch_0002 folder
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(utils.os, "fsync", fsync)
    run_dir = tmp_path / "run"
    with pytest.raises(KdnasError, match="No space left on device"):
        kdnas.run("train", [*TINY, "trainer.epochs=2"], run_dir=str(run_dir))
    latest = latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None and latest.name == "epoch_0001"
    load_checkpoint(latest)  # every file verified against its sha256
    assert json.loads((run_dir / "status.json").read_text())["status"] == "failed"
    assert not (run_dir / "summary.json").exists()


def test_folder_of_another_configuration_is_refused_untouched(finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = {name: (run_dir / name).read_bytes() for name in ("status.json", "summary.json", "provenance.json")}
    with pytest.raises(KdnasError, match="another configuration") as info:
        kdnas.run("train", [*TINY, "trainer.epochs=3"], run_dir=str(run_dir))
    assert "resume=false" in str(info.value) and "hydra.run.dir" in str(info.value)
    assert {name: (run_dir / name).read_bytes() for name in before} == before
