"""experiment=compare_strategies through the `kdnas` command: the preset starts the multirun over its rows
(experiment/compare/), every search stops at the shared time budget, and each summary carries the timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["data.max_train_per_class=20", "data.max_test_per_class=10", "trainer.epochs=1", "trainer.batch_size=16",
        "trainer.max_steps_per_epoch=2", "teacher.model=resnet8",  # evaluator.trainer follows trainer
        "teacher.trainer.epochs=1", "teacher.trainer.max_steps_per_epoch=2", "logger=none", "progress=false"]
BUDGET_S = 0.01  # below one candidate's training and one supernet step: the first one already spends it


@pytest.mark.slow
def test_compare_strategies_sweep_at_a_time_budget(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "kdnas.cli", "experiment=compare_strategies",
                           "experiment/compare=random,cream",
                           f"search.time_budget_s={BUDGET_S}", *TINY, f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Launching 2 jobs" in proc.stdout + proc.stderr  # hydra.mode: MULTIRUN from the experiment file

    jobs = {}
    for path in sweep.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        jobs[summary["name"]] = (path.parent, summary)
    assert sorted(jobs) == ["cmp_cream", "cmp_random"]
    for name, (folder, s) in jobs.items():
        assert s["strategy"] == name.removeprefix("cmp_") and s["space"] == "mbconv_cream"
        assert s["params"] > 0 and s["macs"] > 0
        for t in (s["timings"], s["timings"]["cpu"]):
            assert all(t[k] > 0 for k in ("teacher_s", "search_s", "retrain_s", "ce_s"))
            assert t["total_s"] == pytest.approx(t["search_s"] + t["retrain_s"])
        t = s["timings"]
        assert s["search"]["stopped_by"] == "time" and s["search"]["time_budget_s"] == BUDGET_S
        assert BUDGET_S <= s["search"]["seconds"] <= t["search_s"]
        assert "wall clock: search" in (folder / "pipeline.txt").read_text()

    assert jobs["cmp_random"][1]["search"]["evaluated"] == 1  # one batch of one candidate, then out of time
    cream_folder, cream = jobs["cmp_cream"]
    epochs = [json.loads(line) for line in (cream_folder / "search" / "history.jsonl").read_text().splitlines()]
    assert [e["steps"] for e in epochs] == [1]  # stopped after its first step of 50 epochs x 2
    assert cream["search"]["board_size"] == 1
