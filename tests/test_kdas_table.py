"""scripts/kdas_table.py: reading the oracle-disagreement metric and rendering the table (no training)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "kdas_table.py"


def load_script():
    spec = importlib.util.spec_from_file_location("kdas_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_disagreement_per_epoch_takes_the_last_train_record_of_each_epoch(tmp_path: Path) -> None:
    kt = load_script()
    records = [{"epoch": 0, "split": "train", "loss_oracle_disagreement": 0.5},
               {"epoch": 0, "split": "test", "top1": 10.0},
               {"epoch": 1, "split": "train", "loss_oracle_disagreement": 0.4},
               {"epoch": 1, "split": "train", "loss_oracle_disagreement": 0.3}]  # a resume rewrote epoch 1
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert kt.disagreement_per_epoch(tmp_path) == [0.5, 0.3]
    assert kt.disagreement_per_epoch(tmp_path / "missing") == []
    assert kt.mean_se([]) == "—" and kt.mean_se([50.0]) == "50.00" and kt.mean_se([50.0, 52.0]) == "51.00 ± 1.00"


def test_markdown_lists_teachers_rows_and_reward_trend(tmp_path: Path) -> None:
    kt = load_script()
    args = argparse.Namespace(out=tmp_path, seeds=[0, 1], base="resnet8", members=2, teacher_epochs=1, epochs=1,
                              search_epochs=1, rounds=1, round_budget=2, archs_per_update=1, budget_factor=2.0,
                              deep="auto", aug_seed=0, smoke=True, render=False)
    driver = kt.Driver(args)
    driver.results.update(base_params=78042, M=156084, deep="resnet14", deep_params=175258, teachers={
        "members": ["resnet8", "resnet8"], "params_each": 78042, "test_member_top1": [60.0, 61.0],
        "test_mean_top1": 64.0, "test_oracle_top1": 70.0, "test_disagreement": 0.2, "train_full_disagreement": 0.15})
    driver.results["rows"]["resnet8-oracle"] = {"params": 78042, "loss": "oracle", "seeds": {
        "0": {"test_top1_last": 62.0, "disagreement": [0.31, 0.25]}, "1": {"test_top1_last": 63.0,
                                                                          "disagreement": [0.3, 0.24]}}}
    driver.results["searches"]["kdas"] = {
        "objective": "kd", "best_arch_id": "abc", "best_params": 90000, "best_reward": 55.0,
        "reference_reward": 50.0, "reward_per_round": {"0": {"n": 2, "mean": 52.0, "max": 55.0}},
        "rounds": [{"round": 0, "backbone_reward": 50.0, "gain": 5.0, "params": 90000, "stopped": "done"}],
        "updates": [{"step": 0, "reward_mean": 0.52, "baseline": 0.5}]}
    text = driver.markdown()
    assert "| resnet8-oracle | 78,042 | oracle | 62.50 ± 0.50 | s0: 62.00, s1: 63.00 | 0.310 / 0.250 |" in text
    assert "oracle ensemble (any member right) | | | 70.00" in text
    assert "| 0 | 2 | 52.00 | 55.00 | 50.00 | +5.00 | 90000 |" in text
    assert "controller updates" in text and "stopped: done" in text
