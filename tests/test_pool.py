"""Candidate evaluation in worker processes and submitit jobs gives the in-process results; a second search
trains nothing; oracle distillation's per-epoch disagreement reaches the search history."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import kdnas
from kdnas.errors import ConfigError
from kdnas.evaluators import evaluation_pool, per_epoch

from .conftest import SMOKE

TRAIN_SEARCH = [*SMOKE, "space=resnet_cifar", "strategy=random", "search.evaluator=train", "search.objective=ce",
                "search.budget=3", "search.batch=3", "+search.trainer.max_steps_per_epoch=2", "search.workers=2"]


def history(run: Path) -> list[dict[str, Any]]:
    """The search's history without the timing, which differs from run to run."""
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run / "history.jsonl").open()]


@pytest.mark.slow
def test_executors_give_the_in_process_results_and_share_the_cache(tmp_path: Path) -> None:
    data_dir = f"paths.data_dir={os.environ['KDNAS_CACHE_DIR']}/data"  # decoded once; results cached per executor
    runs = {}
    for executor in ("local", "processes", "submitit_local"):
        overrides = [*TRAIN_SEARCH, f"search.executor={executor}", f"paths.cache_dir={tmp_path / executor}", data_dir]
        summary = kdnas.run("search", overrides, run_dir=tmp_path / f"run-{executor}")
        assert summary is not None and summary["cache_misses"] == 3, executor
        runs[executor] = history(tmp_path / f"run-{executor}")
    assert runs["processes"] == runs["local"] and runs["submitit_local"] == runs["local"]
    assert "oracle_disagreement" not in runs["local"][0]  # CE: no oracle target
    again = kdnas.run("search", [*TRAIN_SEARCH, "search.executor=processes", f"paths.cache_dir={tmp_path / 'local'}",
                                 data_dir], run_dir=tmp_path / "again")
    assert again["cache_hits"] == 3 and again["cache_misses"] == 0
    assert history(tmp_path / "again") == runs["local"]


@pytest.mark.parametrize(("executor", "workers", "slurm", "message"), [
    ("threads", 2, None, "search.executor='threads' is not one of"), ("processes", 0, None, "search.workers=0"),
    ("submitit_slurm", 2, {"queue": "gpu"}, "search.slurm.queue")])
def test_bad_executor_settings_fail_clearly(tmp_path: Path, executor: str, workers: int, slurm: Any,
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message), evaluation_pool(executor, workers, tmp_path, slurm):
        pass


def test_per_epoch_reads_the_train_records_that_have_the_metric() -> None:
    records = [{"epoch": 0, "split": "train", "loss_oracle_disagreement": 0.25}, {"epoch": 0, "split": "val"},
               {"epoch": 1, "split": "train", "loss_oracle_disagreement": 0.5}, {"epoch": 1, "split": "test"}]
    assert per_epoch(records, "loss_oracle_disagreement") == [0.25, 0.5]
    assert per_epoch([{"epoch": 0, "split": "train", "loss": 1.0}], "loss_oracle_disagreement") == []


def test_oracle_disagreement_reaches_the_search_history(tmp_path: Path) -> None:
    oracle = ["teacher=ensemble", "teacher.members=[{model:resnet8,seed:0},{model:resnet8,seed:1}]",
              "teacher.combine=oracle", "distill=oracle", "search.objective=kd", "search.budget=1", "search.batch=1"]
    kdnas.run("search", [*TRAIN_SEARCH, *oracle], run_dir=tmp_path)
    (record,) = history(tmp_path)
    assert len(record["oracle_disagreement"]) == 1 and 0.0 <= record["oracle_disagreement"][0] <= 1.0
