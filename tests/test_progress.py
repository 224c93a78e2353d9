"""Long runs say what runs and how long it has left: every training run's epoch lines carry its role, a log
without a terminal gets periodic status lines with an ETA, a search says which candidate k/N trains and ends with
the best arch."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import kdnas
from kdnas import progress
from kdnas.progress import Progress, duration

from .helpers import SMOKE


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kdnas"]


def test_duration_and_eta() -> None:
    assert [duration(s) for s in (None, 42.4, 185, 3725)] == ["?", "42s", "3m05s", "1h02m"]
    p = Progress("x", 10, bar=False, lines=False, done=4)
    assert p.eta() is None  # nothing ran in this session yet: no rate
    p.start -= 6.0  # 6 s for the 2 units of this session: 3 s each, 4 left
    p.update(2)
    assert p.eta() == pytest.approx(12.0, rel=0.05) and "6/10 steps (60%)" in p.status()


def test_status_lines_in_a_log_at_most_every_every_s(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kdnas")
    p = Progress("teacher resnet8 epoch 1/2", 5, every_s=3600.0)
    for _ in range(5):
        p.update()
    assert not messages(caplog)  # an hour between lines: none yet
    p = Progress("teacher resnet8 epoch 1/2", 5, every_s=0.0)
    p.update(2)
    assert messages(caplog)[-1].startswith("teacher resnet8 epoch 1/2: 2/5 steps (40%)") and "ETA " in messages(
        caplog)[-1]


@pytest.mark.slow
def test_distill_with_ce_logs_roles_eta_and_the_comparison(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "EVERY_S", 0.0)  # a status line at every step
    caplog.set_level(logging.INFO, logger="kdnas")
    kdnas.run("distill", [*SMOKE, "model=resnet8", "teacher.model=resnet8", "distill=kd", "distill.compare_ce=true",
                          "trainer.max_steps_per_epoch=2"], run_dir=str(tmp_path))
    lines = messages(caplog)
    assert any(m.startswith("KD student resnet8: epoch 1/1 ") and "ETA " in m for m in lines), lines
    assert any(m.startswith("CE baseline resnet8: epoch 1/1 ") for m in lines), lines
    assert any(m.startswith("KD student resnet8 epoch 1/1: 1/2 steps") and "ETA " in m for m in lines), lines
    assert any(m.startswith("KD vs CE on 100 test images: ") and "paired s.e." in m for m in lines), lines


@pytest.mark.slow
def test_train_evaluator_search_names_each_candidate_and_ends_with_the_best(tmp_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kdnas")
    found = kdnas.run("search", [*SMOKE, "space=resnet_cifar", "strategy=random", "evaluator=train",
                                 "evaluator.objective=ce", "search.budget=2", "search.batch=2",
                                 "trainer.max_steps_per_epoch=1", "data.val_fraction=0.5"], run_dir=str(tmp_path))
    lines = messages(caplog)
    for k in (1, 2):
        assert any(m.startswith("candidate ") and f" {k}/2: epoch 1/1 " in m for m in lines), lines
    assert any(m.startswith("search random step 1: 2/2 evaluated") and "ETA 0s" in m for m in lines), lines
    assert any(m.startswith(f"search random done: best arch {found['best_arch_id']}") for m in lines), lines
