"""Every experiment preset (conf/experiment/**.yaml: a new one is tested automatically) composes and runs one smoke
step through kdnas.run. A file in a subfolder is a row of the preset whose sweep selects that folder (e.g.
experiment/compare/random.yaml, a job of experiment=compare_strategies); a multirun preset runs its first job."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

import kdnas
from kdnas.api import compose
from kdnas.tasks import TASKS

EXPERIMENTS = Path(kdnas.__file__).resolve().parent / "conf" / "experiment"
BUNDLED_DATA = "cifar10_mini"  # presets on data that needs a download run on the bundled subset
# Smoke sizes; every trainer node of the composed config (trainer, teacher.trainer, a search's candidate recipe)
# additionally gets 1 epoch of 1 step, and a search a budget of 2 candidates and a near-zero time budget.
SMOKE = ["logger=none", "progress=false", "data.max_train_per_class=8", "data.max_test_per_class=4",
         "trainer.num_threads=1", "trainer.batch_size=16", "trainer.eval_batch_size=64"]
SEARCH = {"search.budget": 2, "search.time_budget_s": 0.01}


def sweep_params(preset: str) -> dict[str, list[str]]:
    """The grid ``hydra.sweeper.params`` of a preset (its own file and the presets it extends), values split."""
    node = OmegaConf.load(EXPERIMENTS / f"{preset}.yaml")
    params: dict[str, list[str]] = {}
    for parent in node.get("defaults", []):
        if isinstance(parent, str) and parent != "_self_" and (EXPERIMENTS / f"{parent}.yaml").is_file():
            params.update(sweep_params(parent))
    swept = OmegaConf.select(node, "hydra.sweeper.params") or {}
    params.update({str(k): [v.strip() for v in str(swept[k]).split(",")] for k in swept})
    return params


def presets() -> list[tuple[str, list[str]]]:
    """(id, overrides selecting it) for every preset file; a row is selected through the preset that sweeps it."""
    top = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
    owner = {key.removeprefix("experiment/"): name for name in top for key in sweep_params(name)
             if key.startswith("experiment/")}
    out = []
    for path in sorted(EXPERIMENTS.rglob("*.yaml")):
        folder = path.parent.relative_to(EXPERIMENTS).as_posix()
        if folder == ".":
            out.append((path.stem, [f"experiment={path.stem}"]))
        else:
            assert folder in owner, f"experiment/{folder}/ is swept by no preset: {path} is never run"
            out.append((f"{folder}/{path.stem}", [f"experiment={owner[folder]}", f"experiment/{folder}={path.stem}"]))
    return out


def first_job(preset_overrides: list[str]) -> list[str] | None:
    """The overrides of the first job of a multirun preset's grid (None: every job is a row run on its own)."""
    grid = sweep_params(preset_overrides[0].removeprefix("experiment="))
    if len(preset_overrides) == 1 and any(key.startswith("experiment/") for key in grid):
        return None
    chosen = {o.split("=")[0] for o in preset_overrides}
    return [*preset_overrides, *(f"{key}={values[0]}" for key, values in grid.items() if key not in chosen)]


PRESETS = presets()
RUNS = [(name, job) for name, overrides in PRESETS if (job := first_job(overrides)) is not None]


def trainer_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every ``trainer`` mapping in the composed config."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if key == "trainer" and isinstance(value, dict):
                yield path
            yield from trainer_paths(value, path + ".")


def smoke_overrides(cfg: DictConfig) -> list[str]:
    container = OmegaConf.to_container(cfg, resolve=False)
    out = list(SMOKE)
    if OmegaConf.select(cfg, "data.name") != BUNDLED_DATA:
        out.insert(0, f"data={BUNDLED_DATA}")
    for path in trainer_paths(container):
        out += [f"++{path}.epochs=1", f"++{path}.max_steps_per_epoch=1"]
    if cfg.task in ("search", "pipeline", "correlate"):
        out += [f"{key}={value}" for key, value in SEARCH.items() if OmegaConf.select(cfg, key) is not None]
    return out


@pytest.mark.parametrize(("preset", "overrides"), PRESETS, ids=[p for p, _ in PRESETS])
def test_preset_composes(preset: str, overrides: list[str]) -> None:
    cfg = compose(None, overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.task in TASKS and cfg.task != "train", f"experiment {preset} runs task={cfg.task}"


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "job"), RUNS, ids=[p for p, _ in RUNS])
def test_preset_runs_one_smoke_step(preset: str, job: list[str], tmp_path: Path) -> None:
    cfg = compose(None, job)
    summary = kdnas.run(cfg.task, [*job, *smoke_overrides(cfg)], run_dir=str(tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["task"] == cfg.task == summary["task"]
    figures = [v for k, v in written.items() if k.endswith("top1_last") or k == "best_reward"]
    assert figures and all(math.isfinite(v) for v in figures), written
