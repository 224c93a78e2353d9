"""Candidate evaluation in worker processes and submitit jobs gives the in-process results; a second search
trains nothing; oracle distillation's per-epoch disagreement reaches the search history."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import kdnas
import kdnas.distill.student
from kdnas.api import compose
from kdnas.config import DataConfig
from kdnas.context import RunContext
from kdnas.data import build_data
from kdnas.distill.cache import TeacherLogitCache, tensor_sha256
from kdnas.engine.trainer import Trainer
from kdnas.errors import ConfigError
from kdnas.evaluators import evaluation_pool, per_epoch, train_evaluator
from kdnas.models import create_model
from kdnas.runs import RunDir
from kdnas.spaces import space_from_config
from kdnas.tasks.search import teacher_settings, train_settings
from kdnas.teachers import weights_sha256

from .helpers import SMOKE

TRAIN_SEARCH = [*SMOKE, "space=resnet_cifar", "strategy=random", "evaluator=train", "evaluator.objective=ce",
                "search.budget=3", "search.batch=3", "evaluator.trainer.max_steps_per_epoch=2", "search.workers=2"]


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


@pytest.mark.slow
def test_oracle_disagreement_reaches_the_search_history(tmp_path: Path) -> None:
    oracle = ["teacher=ensemble", "teacher.members=[{model:resnet8,seed:0},{model:resnet8,seed:1}]",
              "teacher.combine=oracle", "distill=oracle", "evaluator.objective=kd", "search.budget=1", "search.batch=1"]
    kdnas.run("search", [*TRAIN_SEARCH, *oracle], run_dir=tmp_path)
    (record,) = history(tmp_path)
    assert len(record["oracle_disagreement"]) == 1 and 0.0 <= record["oracle_disagreement"][0] <= 1.0


@pytest.mark.slow
def test_a_search_builds_each_epochs_teacher_logits_once_before_its_first_candidate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two KD candidates, two epochs: one teacher-logit file per epoch (not one per candidate and epoch), built
    before the first candidate trains, and no teacher pass per candidate (its test top-1 is not a candidate's
    result); the search's one aug seed is in the summary."""
    events: list[str] = []
    compute, distill_student = TeacherLogitCache.compute, kdnas.distill.student.distill_student
    evaluate = Trainer.evaluate

    def logged_evaluate(self: Trainer, split: str, model: torch.nn.Module | None = None) -> dict[str, float]:
        if model is not None:
            events.append(f"teacher on {split}")
        return evaluate(self, split, model)

    def logged_compute(self: TeacherLogitCache, net: torch.nn.Module, epoch: int) -> torch.Tensor:
        events.append(f"build epoch {epoch}")
        return compute(self, net, epoch)

    def logged_distill(*args: Any, **kwargs: Any) -> dict[str, Any]:
        events.append("train")
        return distill_student(*args, **kwargs)

    monkeypatch.setattr(TeacherLogitCache, "compute", logged_compute)
    monkeypatch.setattr(kdnas.distill.student, "distill_student", logged_distill)
    monkeypatch.setattr(Trainer, "evaluate", logged_evaluate)
    kd = [*TRAIN_SEARCH, "evaluator.objective=kd", "teacher.model=resnet8", "search.budget=2", "search.batch=2",
          "search.executor=local", "evaluator.trainer.epochs=2", "seed=3", f"paths.cache_dir={tmp_path / 'cache'}",
          f"paths.data_dir={os.environ['KDNAS_CACHE_DIR']}/data"]
    summary = kdnas.run("search", kd, run_dir=tmp_path / "run")
    assert summary["cache_misses"] == 2 and summary["aug_seed"] == 3
    assert events == ["build epoch 0", "build epoch 1", "train", "train"]
    assert len(list((tmp_path / "cache" / "teacher_logits").glob("*.safetensors"))) == 2


def _train_evaluator(tmp_path: Path, overrides: list[str]) -> Any:
    cfg = compose("search", [*SMOKE, "evaluator=train", *overrides])
    ctx = RunContext(cfg, RunDir(tmp_path / "run"))
    return train_evaluator(ctx.workspace, space_from_config(cfg.space), train_settings(ctx, "ce"),
                           teacher_settings(ctx), seed=cfg.seed, runs=ctx.run.sub("candidates"))


@pytest.mark.slow
def test_the_searchs_aug_seed_is_part_of_the_evaluation_cache_identity(tmp_path: Path) -> None:
    default, other, same = (_train_evaluator(tmp_path, o) for o in ([], ["data.aug_seed=7"], ["data.aug_seed=7"]))
    assert default.aug_seed == 0 and other.aug_seed == 7  # data.aug_seed, else the search seed
    assert default.identity["aug_seed"] == 0 and other.fingerprint != default.fingerprint
    assert same.fingerprint == other.fingerprint


def _race_for_epoch(cache_dir: str, data_dir: str, start: Any, out: Any) -> None:
    """One of two worker processes: both ask the cache for the same missing epoch at the same moment; a build
    is slowed so that the other worker arrives while it runs. Reports how many builds it ran and the logits."""
    torch.set_num_threads(1)
    data = build_data(DataConfig(max_train_per_class=20), data_dir, Path(data_dir).parent)  # decoded once
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=data.num_classes)
    cache = TeacherLogitCache(cache_dir, data, "train", seed=0)
    builds = []
    compute = cache.compute

    def slow_compute(*args: Any) -> torch.Tensor:
        builds.append(1)
        time.sleep(1.0)
        return compute(*args)

    cache.compute = slow_compute  # type: ignore[method-assign]
    start.wait()
    logits = cache.get(net, weights_sha256(net), 0)
    out.put((len(builds), tensor_sha256(logits)))


@pytest.mark.slow
def test_two_workers_racing_for_an_epoch_build_it_once_and_read_the_same_logits(tmp_path: Path) -> None:
    mp = multiprocessing.get_context("spawn")
    start, out = mp.Barrier(2), mp.Queue()
    data_dir = f"{os.environ['KDNAS_CACHE_DIR']}/data"
    workers = [mp.Process(target=_race_for_epoch, args=(str(tmp_path), data_dir, start, out)) for _ in range(2)]
    for w in workers:
        w.start()
    results = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    assert sorted(n for n, _ in results) == [0, 1]  # one worker built the epoch, the other read it
    assert results[0][1] == results[1][1]
    assert len(list((tmp_path / "teacher_logits").glob("*.safetensors"))) == 1
