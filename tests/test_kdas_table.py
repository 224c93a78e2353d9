"""The KDAS table: kdnas.report.kdas over hand-made sweep folders, the teacher-ensemble figures of
scripts/kdas_table.py on hand-made members, and experiment=kdas_table end to end through the `kdnas` command."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from kdnas.api import compose
from kdnas.engine.checkpoint import save_checkpoint
from kdnas.report import build_report
from kdnas.report.collect import load_target
from kdnas.report.kdas import disagreement_per_epoch, kdas_blocks, mean_se_text
from kdnas.report.render import Section, to_markdown
from kdnas.teachers import Teacher

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kdas_table.py"
TEACHER = {"kind": "ensemble", "model": "resnet8", "combine": "oracle", "trainer": {"epochs": 5},
           "members": [{"model": "resnet8", "seed": 0}, {"model": "resnet8", "seed": 1}]}


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("kdas_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def train_records(disagreement: list[float]) -> list[dict[str, Any]]:
    return [{"epoch": e, "split": "train", "loss": 1.0, "loss_oracle_disagreement": d}
            for e, d in enumerate(disagreement)]


def job(sweep: Path, folder: str, row: str | None, seed: int, task: str, summary: dict[str, Any],
        metrics: list[dict[str, Any]] = ()) -> Path:
    """A finished job folder as a sweep leaves it: Hydra's config and overrides, status, summary, metrics."""
    path = sweep / folder
    (path / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"task": task, "seed": seed, "teacher": TEACHER, "trainer": {"epochs": 5}}),
                   path / ".hydra" / "config.yaml")
    overrides = [f"seed={seed}", *([f"experiment/kdas_table={row}"] if row else []), "experiment=kdas_table"]
    OmegaConf.save(OmegaConf.create(overrides), path / ".hydra" / "overrides.yaml")
    (path / "status.json").write_text(json.dumps({"status": "ok"}))
    (path / "summary.json").write_text(json.dumps({"task": task, "wall_seconds": 60.0, **summary}))
    (path / "model.json").write_text(json.dumps({"num_classes": 10}))
    write_jsonl(path / "metrics.jsonl", list(metrics))
    return path


def make_sweep(sweep: Path, *, teachers: bool = True) -> None:
    oracle = {"student": "resnet8", "losses": {"oracle": 1.0}, "teacher_test_top1": 64.0}
    job(sweep, "0-a", "base_oracle", 0, "distill", {**oracle, "test_top1_last": 62.0},
        [*train_records([0.5, 0.4]), {"epoch": 0, "split": "test", "top1": 10.0}, *train_records([0.31, 0.25])])
    job(sweep, "1-b", "base_oracle", 1, "distill", {**oracle, "test_top1_last": 63.0}, train_records([0.3, 0.24]))
    job(sweep, "2-c", "base_ce", 0, "distill", {"student": "resnet8", "losses": {"ce": 1.0}, "test_top1_last": 55.0},
        train_records([0.9]))
    kdas = job(sweep, "3-d", "kdas", 0, "pipeline", {
        "params": 90000, "losses": "oracle", "kd_test_top1_last": 61.0, "ce_test_top1_last": 58.0,
        "search": {"reward_kind": "kd", "best_arch_id": "abc", "best_reward": 55.0, "evaluated": 3}})
    write_jsonl(kdas / "search" / "history.jsonl", [{"reward": 50.0, "kdas_round": 0},
                                                    {"reward": 52.0, "kdas_round": 0},
                                                    {"reward": 55.0, "kdas_round": 0}])
    save_checkpoint(kdas / "search" / "search_checkpoints", "step_00002", model_state={}, meta={}, state={
        "strategy": {"updates": [{"reward_mean": 0.52, "baseline": 0.5}], "kdas": {"rounds": [
            {"round": 0, "backbone_reward": 50.0, "gain": 5.0, "params": 90000, "stopped": "max rounds"}]}}})
    write_jsonl(kdas / "distill" / "metrics.jsonl", train_records([0.2]))
    write_jsonl(kdas / "ce" / "metrics.jsonl", train_records([]))
    job(sweep, "4-e", None, 0, "distill", {"student": "resnet8", "losses": {"ce": 1.0}, "test_top1_last": 99.0})
    if teachers:
        (sweep / "teachers.json").write_text(json.dumps({
            "members": ["resnet8", "resnet8"], "params_each": 78042, "test_member_top1": [60.0, 61.0],
            "test_mean_top1": 64.0, "test_oracle_top1": 70.0, "test_disagreement": 0.2,
            "train_full_disagreement": 0.15, "seconds": 60.0}))


def test_disagreement_takes_the_last_train_record_of_each_epoch_and_mean_se_text() -> None:
    records = [*train_records([0.5, 0.4]), {"epoch": 0, "split": "test", "top1": 10.0},
               {"epoch": 1, "split": "train", "loss_oracle_disagreement": 0.3}]  # a resume rewrote epoch 1
    assert disagreement_per_epoch(records) == [0.5, 0.3]
    assert disagreement_per_epoch([]) == []
    assert mean_se_text([]) == "—" and mean_se_text([50.0]) == "50.00" and mean_se_text([50.0, 52.0]) == "51.00 ± 1.00"


def test_kdas_section_lists_teachers_rows_over_seeds_and_reward_trend(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    text = to_markdown(Section("t", kdas_blocks(load_target(tmp_path)[1])))
    assert "| teacher member 1 (resnet8, seed 1) | 78,042 | CE | 61.00 |" in text
    assert "| oracle ensemble (any member right) |  |  | 70.00 |  | some member wrong: test 0.200" in text
    assert "| resnet8 oracle | 78,042 | oracle | 62.50 ± 0.50 | s0: 62.00, s1: 63.00 | 0.310 / 0.250 |" in text
    assert "| resnet8 CE | 78,042 | CE | 55.00 | s0: 55.00 |  |" in text  # no disagreement column for CE
    assert "| KDAS winner (kd reward) oracle | 90,000 | oracle | 61.00 | s0: 61.00 | 0.200 |" in text
    assert "| KDAS winner (kd reward) CE | 90,000 | CE | 58.00 | s0: 58.00 |  |" in text
    assert "99.00" not in text  # a job of another experiment in the same folder
    assert "Reference (the base itself, identity add-on): 50.00" in text
    assert "| 0 | 2 | 53.50 | 55.00 | 50.00 | +5.00 | 90000 |" in text  # the reference is not a round-0 candidate
    assert "controller updates (mean policy reward x100, rejected samples count 0): 52.0; baseline x100: 50.0" in text
    assert "stopped: max rounds" in text
    assert "Compute: 4 jobs, 5.0 min" in text  # 4 jobs x 60 s + the teachers' 60 s


def test_task_report_on_a_kdas_sweep_has_the_section_and_says_what_is_missing(tmp_path: Path) -> None:
    sweep, out = tmp_path / "sweep", tmp_path / "report"
    make_sweep(sweep, teachers=False)
    text = Path(build_report(sweep, out)["report_md"]).read_text()
    assert "## KDAS table" in text
    assert "| teacher ensemble (mean logits) |  |  | 64.00 |" in text  # measured by the distill jobs
    assert "No teachers.json in the sweep folder" in text


def test_ensemble_figures_count_members_mean_and_oracle() -> None:
    """Members on one-hot inputs of 3 classes: A predicts the input's class, B swaps classes 1 and 2."""
    a, b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.eye(3))
        b.weight.copy_(torch.eye(3)[[0, 2, 1]])
    teacher = Teacher([a, b], ["a", "b"])
    x, y = torch.eye(3)[[0, 1, 2, 1]], torch.tensor([0, 1, 1, 2])
    # A right on [T, T, F, F], B on [T, F, T, T]; the mean ties 1 vs 2 and takes 1 (torch: the first maximum).
    batches = [SimpleNamespace(x=x[:3], y=y[:3]), SimpleNamespace(x=x[3:], y=y[3:])]
    got = load_script().ensemble_figures(teacher, batches)
    assert got == {"member_top1": [50.0, 75.0], "mean_top1": 75.0, "oracle_top1": 100.0, "disagreement": 0.75,
                   "n": 4}


@pytest.mark.slow
def test_kdas_table_sweep_then_script_then_rerun_skips(tmp_path: Path) -> None:
    """Two rows of the multirun on tiny settings, the script's table, and a rerun that trains nothing."""
    sweep = tmp_path / "sweep"
    tiny = ["experiment/kdas_table=base_oracle,kdas", "logger=none", "data.max_train_per_class=8",
            "data.max_test_per_class=4", "trainer.batch_size=16", "teacher.trainer.batch_size=16", "trainer.epochs=1",
            "trainer.max_steps_per_epoch=1", "teacher.trainer.epochs=1", "teacher.trainer.max_steps_per_epoch=1",
            "search.budget=3", "search.batch=2", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}

    def kdnas() -> str:
        proc = subprocess.run([sys.executable, "-m", "kdnas.cli", "experiment=kdas_table", *tiny], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    assert "Launching 2 jobs" in kdnas()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(sweep)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    teachers = json.loads((sweep / "teachers.json").read_text())
    assert teachers["members"] == ["resnet8"] * 3 and len(teachers["test_member_top1"]) == 3
    assert teachers["test_oracle_top1"] >= max(teachers["test_member_top1"])
    table = (sweep / "kdas_table.md").read_text()
    for row in ("oracle ensemble (any member right)", "| resnet8 oracle | 78,042 | oracle |",
                "KDAS winner (kd reward) oracle", "KDAS winner (kd reward) CE", "Reward trend: kdas"):
        assert row in table, row
    again = kdnas()
    assert again.count("already done") == 2, again[-3000:]


@pytest.mark.parametrize(("row", "objective"), [("kdas", "kd"), ("kdas_ce_reward", "ce")])
def test_search_candidates_train_on_mini_train_while_final_students_use_train_full(row: str, objective: str) -> None:
    """train_full holds mini-val, the candidates' reward: candidates trained on it would be scored on seen images."""
    cfg = compose(None, ["experiment=kdas_table", f"experiment/kdas_table={row}"])
    assert cfg.task == "pipeline" and cfg.trainer.train_split == "train_full"
    assert cfg.evaluator.kind == "train" and cfg.evaluator.objective == objective
    assert cfg.evaluator.trainer.train_split == "train" and cfg.evaluator.trainer.epochs == 1
