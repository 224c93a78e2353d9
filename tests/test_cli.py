"""The `kdnas` command end to end in a subprocess: exit codes, run folder contents, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from .helpers import SMOKE, kdnas_cli


@pytest.mark.slow
def test_train_writes_a_complete_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = kdnas_cli("task=train", "model=resnet8", *SMOKE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("provenance.json", "metrics.jsonl", "summary.json", "status.json", "model.safetensors",
                 "model.json", ".hydra/config.yaml", ".hydra/overrides.yaml", "kdnas.log"):
        assert (run_dir / name).exists(), name
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert len(prov["data_fingerprint"]) == 64 and prov["packages"]["torch"]
    assert "commit" in prov["git"] and prov["overrides"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["schema_version"] == 1 and 0 <= summary["test_top1_last"] <= 100
    assert json.loads((run_dir / "status.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_user_errors_are_one_paragraph_without_traceback(tmp_path: Path) -> None:
    bad_model = kdnas_cli("task=train", "model.name=resnet21", *SMOKE, cwd=tmp_path)
    assert bad_model.returncode != 0
    assert "resnet20" in bad_model.stderr and "Traceback" not in bad_model.stderr
    bad_type = kdnas_cli("trainer.epochs=abc", cwd=tmp_path)
    assert bad_type.returncode != 0 and "epochs" in bad_type.stderr and "Traceback" not in bad_type.stderr
    bad_task = kdnas_cli("task=nope", *SMOKE, cwd=tmp_path)
    assert bad_task.returncode != 0 and "train_teacher" in bad_task.stderr
    missing = kdnas_cli("data=imagefolder", f"data.root={tmp_path / 'nowhere'}", *SMOKE, cwd=tmp_path)
    assert missing.returncode != 0 and "data.root" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow  # make test-fast stays under 3 minutes (CI runs it)
def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "kdnas.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("kdnas ")


@pytest.mark.slow
def test_help_is_kdnas_own(tmp_path: Path) -> None:
    """Tasks, five example commands and the groups with the options they accept; no internal *_schema options."""
    from kdnas.tasks import TASKS
    from kdnas.tasks.listing import TASK_HELP

    assert set(TASK_HELP) == set(TASKS)
    proc = kdnas_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("kdnas ") and "_schema" not in out and "powered by Hydra" not in out
    assert all(f"  {task} " in out for task in TASKS)
    examples = out.split("Examples:")[1].split("Config groups")[0]
    assert len([line for line in examples.splitlines() if line.strip().startswith("kdnas ")]) == 5
    assert "  strategy: akd, cream, diswot, kdas, random, zero_cost" in out
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # 3-5 s (make test-fast stays under 3 minutes)
def test_list_writes_no_run_folder_and_shows_each_teacher(tmp_path: Path) -> None:
    """task=list records nothing; it lists values the command line accepts and each stored teacher's recipe, data
    and seed (a fake store entry: the listing only reads its card)."""
    entry = tmp_path / "cache" / "teachers" / "resnet8-0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / "teacher.json").write_text(json.dumps({
        "model": "resnet8", "data": "cifar10_mini", "seed": 3, "test_top1": 41.5,
        "data_identity": {"max_train_per_class": 30, "val_fraction": 0.1},
        "recipe": {"epochs": 7, "lr": 0.05, "batch_size": 64, "schedule": "cosine", "train_split": "train"}}))
    env = {**os.environ, "WANDB_MODE": "disabled", "KDNAS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "kdnas.cli", "task=list"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no outputs/ run folder
    out = proc.stdout
    assert "resnet8" in out and "seed=3" in out and "epochs=7" in out and "max_train_per_class=30" in out
    assert "data=cifar10_mini" in out and "41.50" in out


def test_list_offers_only_what_composes() -> None:
    """Every listed option is a config the group accepts (strategy=evolution was offered and rejected)."""
    import kdnas

    conf = Path(kdnas.__file__).parent / "conf"
    groups = kdnas.run("list")["groups"]
    for group in ("strategy", "space", "evaluator", "distill", "model", "experiment", "teacher"):
        shipped = {p.stem for p in (conf / group).glob("*.yaml")}
        user = {p.stem for p in (Path.cwd() / "conf" / group).glob("*.yaml")}
        assert set(groups[group]) == shipped | user, group
    assert "evolution" not in groups["strategy"]


@pytest.mark.slow
def test_python_api_runs_like_the_cli(tmp_path: Path) -> None:
    """kdnas.run writes .hydra/ and kdnas.log like the CLI and raises KdnasError subclasses for user errors,
    composition errors included."""
    import kdnas
    from kdnas.errors import ConfigError, KdnasError

    run_dir = tmp_path / "run"
    summary = kdnas.run("train", [*SMOKE, "model=resnet8", "trainer.max_steps_per_epoch=2"], run_dir=str(run_dir))
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "kdnas.log", "summary.json"):
        assert (run_dir / name).is_file(), name
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.model.name == "resnet8" and saved.task == "train" and "choices_" not in saved
    assert "model=resnet8" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    log = (run_dir / "kdnas.log").read_text()
    assert "epoch 1/1" in log and f"done: {run_dir}" in log and summary["model"] == "resnet8"
    for bad in (["trainer.nope=1"], ["model=nope"], ["trainer.epochs=abc"], ["trainer.epochs=="]):
        with pytest.raises(ConfigError):
            kdnas.run("train", bad, run_dir=str(tmp_path / "never"))
    with pytest.raises(KdnasError, match="resnet20"):
        kdnas.run("train", [*SMOKE, "model.name=resnet21"], run_dir=str(tmp_path / "bad_model"))
    assert not (tmp_path / "never").exists()
