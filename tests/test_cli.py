"""The `kdnas` command end to end in a subprocess: exit codes, run folder contents, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import SMOKE


def kdnas_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "kdnas.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


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


def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "kdnas.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("kdnas ")
