"""task=cache lists the cache with sizes and ages and prunes it by age or size, never removing an entry that a
running job is building or still uses."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import kdnas
from kdnas.config import DataConfig
from kdnas.data import build_data
from kdnas.distill.cache import TeacherLogitCache, exclusive, lock_file
from kdnas.errors import ConfigError
from kdnas.evaluators import CachedEvaluator
from kdnas.models import create_model
from kdnas.teachers import weights_sha256

from .helpers import SMOKE

DAY = 86400


def put(path: Path, size: int, age_days: float) -> Path:
    """A cache entry of ``size`` bytes last written ``age_days`` ago (a folder entry gets one file inside)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path / "result.json" if path.suffix == "" else path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x" * size)
    stamp = time.time() - age_days * DAY
    os.utime(target, (stamp, stamp))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "cache"
    return {"root": root,
            "old_logits": put(root / "teacher_logits" / "a-old.safetensors", 3000, 10),
            "new_logits": put(root / "teacher_logits" / "a-new.safetensors", 2000, 0.1),
            "evals": put(root / "evals" / "fp1", 500, 8),
            "teacher": put(root / "teachers" / "resnet8-k", 1000, 1),
            "data": put(root / "data" / "mini-32px-v1.safetensors", 4000, 30)}


def run_cache(root: Path, tmp_path: Path, *overrides: str) -> dict[str, Any]:
    run_dir = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"  # a new folder per run
    return kdnas.run("cache", [*SMOKE, f"paths.cache_dir={root}", *overrides], run_dir=run_dir)


@pytest.mark.slow
def test_lists_every_kind_with_sizes_and_ages(cache: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    summary = run_cache(cache["root"], tmp_path)
    assert summary["entries"] == 5 and summary["bytes"] == 10_500 and summary["removed"] == 0
    assert summary["bytes_by_kind"] == {"teacher_logits": 5000, "evals": 500, "teachers": 1000, "data": 4000}
    listing = json.loads((Path(summary["run_dir"]) / "cache.json").read_text())["listing"]
    ages = {Path(e["path"]).name: e["age_days"] for e in listing}
    assert ages["a-old.safetensors"] == pytest.approx(10, abs=0.01) and ages["fp1"] == pytest.approx(8, abs=0.01)
    out = capsys.readouterr().out
    assert "teacher_logits/a-old.safetensors" in out and "10.0 d" in out
    assert all(p.exists() for p in cache.values())
    assert not list(cache["root"].rglob(".*.lock")) and not list(cache["root"].rglob(".*.hold"))  # listing locks none


def test_prunes_by_age(cache: dict[str, Path], tmp_path: Path) -> None:
    summary = run_cache(cache["root"], tmp_path, "cache.prune.older_than_days=7")
    assert summary["removed"] == 3 and summary["removed_bytes"] == 7500
    assert not cache["old_logits"].exists() and not cache["evals"].exists() and not cache["data"].exists()
    assert cache["new_logits"].exists() and cache["teacher"].exists()


def test_prunes_the_oldest_entries_until_the_cache_fits(cache: dict[str, Path], tmp_path: Path) -> None:
    summary = run_cache(cache["root"], tmp_path, "cache.prune.max_gb=0.000004")  # 4,000 bytes
    # oldest first: data (30 d, 4000), then logits (10 d, 3000) -> 3500 bytes left
    assert summary["removed"] == 2 and summary["bytes"] == 3500
    assert not cache["data"].exists() and not cache["old_logits"].exists() and cache["evals"].exists()


@pytest.mark.slow
def test_prune_kinds_and_dry_run(cache: dict[str, Path], tmp_path: Path) -> None:
    summary = run_cache(cache["root"], tmp_path, "cache.prune.max_gb=0", "cache.prune.kinds=[teacher_logits]",
                        "cache.prune.dry_run=true")
    assert summary["removed"] == 2 and summary["dry_run"] and all(p.exists() for p in cache.values())
    summary = run_cache(cache["root"], tmp_path, "cache.prune.max_gb=0", "cache.prune.kinds=[teacher_logits]")
    assert summary["removed"] == 2 and not cache["new_logits"].exists() and cache["data"].exists()


def test_never_removes_an_entry_being_built(cache: dict[str, Path], tmp_path: Path) -> None:
    with exclusive(lock_file(cache["old_logits"])):  # a job is writing it
        summary = run_cache(cache["root"], tmp_path, "cache.prune.older_than_days=0")
    assert summary["held"] == 1 and cache["old_logits"].exists() and not cache["new_logits"].exists()


@pytest.mark.slow
def test_never_removes_what_a_live_logit_cache_or_evaluator_uses(tmp_path: Path) -> None:
    """A teacher-logit cache object holds the epochs it read, an evaluator its results folder, until released."""
    root = tmp_path / "cache"
    data = build_data(DataConfig(max_train_per_class=5), f"{os.environ['KDNAS_CACHE_DIR']}/data",
                      os.environ["KDNAS_CACHE_DIR"])
    torch.manual_seed(0)
    net = create_model("resnet8", num_classes=data.num_classes)
    logits = TeacherLogitCache(root, data, "train", seed=0)
    logits.get(net, weights_sha256(net), 0)
    evaluator = CachedEvaluator(root, {"kind": "proxy", "test": 1})
    put(evaluator.root / "arch", 10, 0)
    kept = run_cache(root, tmp_path, "cache.prune.max_gb=0")
    assert kept["held"] == 2 and kept["removed"] == 0 and kept["entries"] == 2
    logits.close()
    del evaluator
    gone = run_cache(root, tmp_path, "cache.prune.max_gb=0")
    assert gone["removed"] == 2 and gone["entries"] == 0


@pytest.mark.parametrize(("override", "message"), [
    ("cache.prune.kinds=[logits]", "cache.prune.kinds"), ("cache.prune=7", "cache.prune.older_than_days=7"),
    ("cache.prune.max_gb=-1", "cache.prune.max_gb=-1"), ("+cache.prune.days=3", "cache.prune.days")])
def test_bad_prune_settings_fail_clearly(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_cache(tmp_path / "cache", tmp_path, override)
