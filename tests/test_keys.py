"""Every store and cache key holds everything that changes its result: change one component, and the entry must
not be reused (a teacher trained on a 30-image-per-class subset was once reused for full-data runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import kdnas
from kdnas import evaluators
from kdnas.api import compose
from kdnas.config import DataConfig
from kdnas.context import RunContext, to_object
from kdnas.data import build_data, datasets
from kdnas.distill import cache as logit_cache
from kdnas.distill.cache import TeacherLogitCache
from kdnas.evaluators import proxy_evaluator, train_evaluator
from kdnas.runs import RunDir
from kdnas.spaces import create_space
from kdnas.tasks.search import proxy_settings, teacher_settings, train_settings
from kdnas.teachers import store as store_module
from kdnas.teachers import teacher_key

from .helpers import SMOKE

BASE = [*SMOKE, "teacher.model=resnet8"]


def teacher_store(ctx: RunContext) -> str:
    return teacher_key(ctx.workspace, ctx.cfg.teacher)


def teacher_logits(ctx: RunContext) -> str:
    cache = TeacherLogitCache(ctx.cache_dir, ctx.data, "train", int(ctx.cfg.seed))
    return str(cache.path(cache.key("0" * 64, 0)))


def train_eval(ctx: RunContext) -> str:
    return train_evaluator(ctx.workspace, create_space("resnet_cifar"), train_settings(ctx, "ce"),
                           teacher_settings(ctx), seed=int(ctx.cfg.seed), runs=ctx.run.sub("runs")).fingerprint


def proxy_eval(ctx: RunContext) -> str:
    return proxy_evaluator(ctx.workspace, create_space("resnet_cifar"), proxy_settings(ctx),
                           teacher_settings(ctx)).fingerprint


KEYS: dict[str, Callable[[RunContext], str]] = {
    "teacher_store": teacher_store, "teacher_logits": teacher_logits, "train_eval": train_eval,
    "proxy_eval": proxy_eval}
# What the data is: every key depends on all of it.
DATA = {
    "max_train_per_class": "data.max_train_per_class=30",
    "max_test_per_class": "data.max_test_per_class=5",
    "val_fraction": "data.val_fraction=0.2",
    "split_seed": "data.split_seed=1",
    "image_size": "data.image_size=24",
    "mean": "data.mean=[0.5,0.5,0.5]",
    "std": "data.std=[0.25,0.25,0.25]",
    "augment": "data.augment=false",
    "aug_seed": "data.aug_seed=7",
}
# Components of one key only: the teacher's recipe, seed, network and split; a candidate's recipe and seed.
OWN = {
    "teacher_store": {"recipe": "teacher.trainer.lr=0.01", "seed": "teacher.seed=1",
                      "model": "teacher.model=resnet14", "train_split": "teacher.trainer.train_split=train",
                      "steps": "teacher.trainer.max_steps_per_epoch=2"},
    "train_eval": {"recipe": "trainer.lr=0.01", "seed": "seed=1", "train_split": "trainer.train_split=train_full",
                   "epochs": "trainer.epochs=2"},
    "teacher_logits": {"seed": "seed=1"},  # aug_seed=null follows the run seed
    "proxy_eval": {"seed": "seed=1"},
}
# The per-store code version: bumping it retires every old entry.
VERSIONS = {"teacher_store": (store_module, "STORE_FORMAT"), "teacher_logits": (logit_cache, "CACHE_FORMAT"),
            "train_eval": (evaluators.base, "EVAL_FORMAT"), "proxy_eval": (evaluators.base, "EVAL_FORMAT")}


def key_of(key: str, overrides: list[str], tmp_path: Path) -> str:
    cfg = compose("train", [*BASE, *overrides])
    return KEYS[key](RunContext(cfg, RunDir(tmp_path / "run")))


# The proxy cache hashes its fixed batches' bytes (content-addressed: complete for what a proxy reads); the test
# split is not among them.
NOT_READ = {"proxy_eval": {"max_test_per_class"}}
CASES = [(key, change) for key in KEYS
         for change in [*(v for k, v in DATA.items() if k not in NOT_READ.get(key, ())), *OWN[key].values()]]


@pytest.mark.parametrize(("key", "change"), CASES, ids=[f"{k}-{c.split('=')[0]}" for k, c in CASES])
@pytest.mark.slow  # make test-fast stays under 3 minutes (CI runs it)
def test_a_changed_component_changes_the_key(key: str, change: str, tmp_path: Path) -> None:
    assert key_of(key, [change], tmp_path) != key_of(key, [], tmp_path)


@pytest.mark.parametrize("key", [k for k in KEYS if k != "proxy_eval"])  # content-addressed, see NOT_READ
def test_the_data_code_version_is_in_every_key(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = key_of(key, [], tmp_path)
    monkeypatch.setattr(datasets, "DATA_FORMAT", datasets.DATA_FORMAT + 1)
    assert key_of(key, [], tmp_path) != before


@pytest.mark.parametrize("key", list(KEYS))
def test_the_store_code_version_is_in_its_key(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = key_of(key, [], tmp_path)
    module, name = VERSIONS[key]
    monkeypatch.setattr(module, name, getattr(module, name) + 1)
    assert key_of(key, [], tmp_path) != before


@pytest.mark.parametrize("change", ["", "trainer.num_threads=2", "teacher.trainer.eval_every=2", "data.num_workers=0"])
def test_runtime_settings_keep_the_teacher_key(change: str, tmp_path: Path) -> None:
    """Settings that do not change the weights share one teacher (else every thread count retrains it)."""
    assert key_of("teacher_store", [change] if change else [], tmp_path) == key_of("teacher_store", [], tmp_path)


@pytest.mark.slow  # 3-5 s (make test-fast stays under 3 minutes)
def test_decoded_data_cache_is_keyed_by_image_size(tmp_path: Path) -> None:
    """The decoded tensors depend on the source bytes, the image size and the decoder version (nothing else)."""
    cache = tmp_path / "cache"
    for size in (32, 16):
        build_data(to_object(compose("train", [*BASE, f"data.image_size={size}"]).data, DataConfig), cache, cache)
    names = sorted(p.name for p in (cache / "data").glob("*.safetensors"))
    assert len(names) == 2 and all(f"-v{datasets.CACHE_VERSION}." in n for n in names)


@pytest.mark.slow
def test_a_teacher_trained_on_a_subset_is_not_reused_on_more_data(tmp_path: Path) -> None:
    """The issue's reproducer: train_teacher with data.max_train_per_class=20, then with 30, trains again."""
    tiny = [*BASE, "teacher.trainer.max_steps_per_epoch=2"]
    first = kdnas.run("train_teacher", tiny, run_dir=tmp_path / "a")
    second = kdnas.run("train_teacher", [*tiny, "data.max_train_per_class=30"], run_dir=tmp_path / "b")
    assert second["store_key"] != first["store_key"]
    assert second["trained_in"] == str(tmp_path / "b")


def test_train_evaluator_fingerprint_survives_the_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CE train evaluator's fingerprint recorded at c8237b2 (before issue 17 split the distill schemes'
    settings and the evaluator group): an upgrade of kdnas reuses the candidates an older search trained."""
    monkeypatch.setenv("KDNAS_CACHE_DIR", str(tmp_path / "cache"))
    cfg = compose("search", [*BASE])
    ctx = RunContext(cfg, RunDir(tmp_path / "run"))
    assert train_eval(ctx) == "a88b71ebe508c345"
