"""The search loop checkpoints by time (a checkpoint holds the whole history: one per step made a long proxy search
quadratic), once more at the end, and a killed search still resumes to the uninterrupted trajectory."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import kdnas.search
from kdnas.runs import RunDir
from kdnas.search import run_search
from kdnas.spaces import create_space
from kdnas.strategies import create_strategy

from .helpers.search import EVOLUTION, Synthetic


def test_checkpoints_every_interval_and_at_the_end_and_resumes_exactly(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Synthetic()  # the fake clock advances 10 s per evaluated batch
    monkeypatch.setattr("kdnas.search.time", SimpleNamespace(perf_counter=lambda: 10.0 * clock.calls))
    saved: list[int] = []
    save = kdnas.search.save_checkpoint

    def counted(directory: Path, tag: str, **kwargs: Any) -> Path:
        saved.append(kwargs["state"]["step"])
        return save(directory, tag, **kwargs)

    monkeypatch.setattr(kdnas.search, "save_checkpoint", counted)

    def search(run: Path, evaluator: Synthetic) -> dict[str, Any]:
        strategy = create_strategy(EVOLUTION, create_space("resnet_cifar"), seed=3)
        return run_search(strategy, evaluator, RunDir(run), budget=30, batch=4, config_hash="h",
                          checkpoint_every_s=25)

    full = search(tmp_path / "full", clock)
    assert full["steps"] == 8 and saved == [3, 6, 8]  # at 30 s, 60 s, and the end; not after each of 8 steps
    saved.clear()
    clock.calls, clock.crash_on_call = 0, 5
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "killed", clock)
    assert saved == [3]  # killed in step 5: steps 4 (and 5) are not in the checkpoint
    clock.crash_on_call = None
    resumed = search(tmp_path / "killed", clock)
    history = [(tmp_path / run / "history.jsonl").read_text() for run in ("full", "killed")]
    assert history[0] == history[1] and resumed["best_arch_id"] == full["best_arch_id"]
    assert json.loads((tmp_path / "killed" / "topk.json").read_text()) == json.loads(
        (tmp_path / "full" / "topk.json").read_text())
