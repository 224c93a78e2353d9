"""`make run` ships its teacher: the packaged resnet20 (scripts/make_quickstart_teacher.py) is found for the
quickstart's exact store key, filed into the store without training, verified by its sha256, and never served to
any other configuration."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from kdnas.api import compose
from kdnas.context import RunContext
from kdnas.engine.checkpoint import load_verified_weights
from kdnas.errors import ConfigError
from kdnas.runs import RunDir
from kdnas.teachers import PACKAGED_TEACHERS, ensure, packaged_teacher, teacher_key
from kdnas.utils import read_json

ROOT = Path(__file__).resolve().parents[1]
# The store key is computed from what the quickstart composes; runtime keys (threads, logger) do not enter it.
QUICKSTART = ["experiment=quickstart", "logger=none", "trainer.num_threads=1", "teacher.train_if_missing=false"]


def context(tmp_path: Path, *extra: str) -> RunContext:
    return RunContext(compose("pipeline", [*QUICKSTART, f"paths.cache_dir={tmp_path / 'cache'}", *extra]),
                      RunDir(tmp_path / "run"))


@pytest.mark.slow
def test_quickstart_key_finds_the_packaged_teacher_and_files_it_untrained(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    key = teacher_key(ctx.workspace, ctx.cfg.teacher)
    packaged = packaged_teacher(key)
    assert packaged is not None, (f"no packaged teacher for the quickstart's key {key}: the teacher group, the data "
                                  "pipeline or the store key changed; run scripts/make_quickstart_teacher.py")
    card = read_json(packaged / "teacher.json")
    assert card["key"] == key and card["model"] == ctx.cfg.teacher.model and card["dtype"] == "float16"
    assert (packaged / "model.safetensors").stat().st_size < 1_000_000
    load_verified_weights(packaged / "model.safetensors")  # the card's sha256 matches the file
    path, stored = ensure(ctx.workspace, ctx.cfg.teacher)  # train_if_missing=false: raises unless filed
    assert path == tmp_path / "cache" / "teachers" / key and stored["key"] == key
    assert stored["weights_sha256"] == card["weights_sha256"] and stored["test_top1"] == card["test_top1"]
    assert not (tmp_path / "run").joinpath(f"teacher-{key}").exists()  # nothing trained


@pytest.mark.slow
@pytest.mark.parametrize("change", ["teacher.trainer.epochs=11", "teacher.seed=1", "data.max_train_per_class=500",
                                    "teacher.model=resnet14"])
def test_another_configuration_never_gets_the_packaged_teacher(tmp_path: Path, change: str) -> None:
    ctx = context(tmp_path, change)
    key = teacher_key(ctx.workspace, ctx.cfg.teacher)
    assert packaged_teacher(key) is None
    with pytest.raises(ConfigError, match="No stored teacher"):
        ensure(ctx.workspace, ctx.cfg.teacher)


def test_a_packaged_folder_filed_under_another_key_is_not_served(tmp_path: Path) -> None:
    (packaged,) = [p for p in PACKAGED_TEACHERS.iterdir() if (p / "teacher.json").is_file()]
    moved = tmp_path / "teachers" / "resnet20-0000000000000000"
    moved.mkdir(parents=True)
    for f in ("model.safetensors", "teacher.json"):
        (moved / f).write_bytes((packaged / f).read_bytes())
    assert packaged_teacher(moved.name, root=moved.parent) is None  # the card's key must be the folder's
    assert packaged_teacher(packaged.name, root=PACKAGED_TEACHERS) == packaged


def test_wheel_package_data_carries_the_packaged_teachers() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["kdnas"]
    files = [p.relative_to(ROOT / "src" / "kdnas").as_posix() for p in PACKAGED_TEACHERS.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)
