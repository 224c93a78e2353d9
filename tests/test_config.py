"""Every shipped config composes (lightning-hydra-template style); wrong types and keys fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

import kdnas
from kdnas.api import compose
from kdnas.context import config_hash
from kdnas.errors import ConfigError, KdnasError
from kdnas.tasks import TASKS

from .helpers import SMOKE, without

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "src" / "kdnas" / "conf"
USER_CONF = REPO / "conf"
SKIP_GROUPS = {"hydra"}


def group_options() -> list[tuple[str, str]]:
    out = []
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group != "." and group.split("/")[0] not in SKIP_GROUPS and not group.startswith("experiment/"):
            out.append((group, path.stem))  # experiment/<rows>/ need their preset: tests/test_experiments.py
    return out


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_composes(group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if (group, option) == ("data", "imagefolder"):
        overrides.append("data.root=/tmp/x")
    if (group, option) == ("teacher", "checkpoint"):
        overrides.append("teacher.checkpoint=/tmp/x")
    cfg = compose("train", overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def _sets_task(path: Path) -> bool:
    """The preset, or a preset of its own group it extends, names ``task``."""
    node = OmegaConf.load(path)
    parents = [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return "task" in node or any(_sets_task(path.parent / f"{p}.yaml") for p in parents)


def validate(cfg: DictConfig) -> None:
    """What a task checks before it runs: every value resolves and each group its task reads parses."""
    from kdnas.distill.terms import distill_config
    from kdnas.search import SearchSettings
    from kdnas.spaces.base import space_from_config
    from kdnas.spaces.constraints import constraint_from_config

    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.task in TASKS, cfg.task
    distill_config(cfg.distill)
    if cfg.task in ("search", "pipeline", "correlate"):
        SearchSettings.from_config(cfg.search)
        constraint_from_config(cfg.constraint)
        space_from_config(cfg.space)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_names_its_task(preset: str) -> None:
    """`kdnas experiment=X` alone runs what X describes (20 presets once set no task: plain CE training ran).
    Compose only: the shipped presets are 240-epoch or full-data runs, too long for a smoke step each in CI."""
    assert _sets_task(CONF / "experiment" / f"{preset}.yaml"), f"experiment/{preset}.yaml sets no task"
    cfg = compose(None, [f"experiment={preset}"])
    assert cfg.task != "train", f"experiment={preset} would run plain CE training"
    validate(cfg)


def test_user_examples_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository's conf/ examples compose as `experiment=NAME` from the repository root, no --config-dir."""
    examples = sorted(USER_CONF.glob("experiment/*.yaml"))
    assert len(examples) >= 2, f"no user examples in {USER_CONF}"
    monkeypatch.chdir(REPO)
    for path in examples:
        assert "# @package _global_" in path.read_text(), f"{path} must be a global experiment overlay"
        assert _sets_task(path), f"{path} sets no task"
        cfg = compose(None, [f"experiment={path.stem}"])
        validate(cfg)
        assert cfg.name == path.stem


def test_working_directory_conf_is_on_the_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "my_study.yaml").write_text(
        "# @package _global_\ntask: distill\ntrainer:\n  epochs: 7\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose(None, ["experiment=my_study"])
    assert cfg.task == "distill" and cfg.trainer.epochs == 7
    monkeypatch.chdir(tmp_path / "conf")  # no ./conf here: the packaged configs alone, and no error
    with pytest.raises(ConfigError, match="my_study"):
        compose(None, ["experiment=my_study"])


@pytest.mark.parametrize("override", ["trainer.epochs=abc", "trainer.not_a_key=1", "data.val_fraction=many"])
def test_bad_values_fail_at_composition(override: str) -> None:
    """A KdnasError (ConfigError) naming the key, for API callers as for the CLI."""
    key = override.split("=")[0].split(".")[-1]
    with pytest.raises(ConfigError) as info:
        compose("train", [override])
    assert key in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("overrides", [["model=nope"], ["trainer.epochs=="], ["+trainer=quick"], ["experiment=null"]])
def test_composition_errors_are_kdnas_errors(overrides: list[str]) -> None:
    with pytest.raises(KdnasError):
        compose("train", overrides)


def test_teacher_recipe_is_a_nested_trainer() -> None:
    cfg = compose("train_teacher", ["trainer@teacher.trainer=cifar_240"])
    assert cfg.teacher.trainer.epochs == 240 and cfg.teacher.trainer.milestones == [150, 180, 210]
    assert cfg.trainer.epochs == 5  # the student's recipe is untouched


# -- the run-folder config hash ---------------------------------------------------------------------------------

TINY = [*SMOKE, "model=resnet8"]


def test_a_key_added_later_with_its_default_keeps_the_hash() -> None:
    """An upgrade that adds keys (here data.aug_seed, trainer.sync_bn, teacher.cache) must not orphan run folders."""
    for task in ("train", "distill", "search"):
        cfg = compose(task, TINY)
        assert config_hash(without(cfg, "data.aug_seed", "trainer.sync_bn", "teacher.cache")) == config_hash(cfg)


@pytest.mark.parametrize(("task", "override"), [
    ("train", "trainer.lr=0.2"), ("train", "trainer=short"), ("train", "seed=1"), ("train", "model=resnet14"),
    ("train", "data.max_train_per_class=30"), ("train", "data.aug_seed=5"), ("train", "trainer.num_threads=2"),
    ("train", "student.arch=/x/best_arch.json"), ("train", "data.num_workers=0"),
    ("train_teacher", "teacher.model=resnet14"), ("train_teacher", "trainer@teacher.trainer=short"),
    ("train_teacher", "teacher.seed=2"), ("distill", "distill=at"), ("distill", "distill.temperature=2"),
    ("distill", "teacher.model=resnet14"), ("search", "strategy=random"), ("search", "strategy.population=4"),
    ("search", "evaluator.proxy=snip"), ("search", "space=nb201"), ("search", "search.budget=9"),
    ("search", "constraint=params_1m"), ("distill", "teacher.cache=off"),
])
def test_a_changed_value_the_task_reads_changes_the_hash(task: str, override: str) -> None:
    assert config_hash(compose(task, [*TINY, override])) != config_hash(compose(task, TINY)), override


@pytest.mark.parametrize(("task", "override"), [
    ("train", "logger=jsonl"), ("train", "progress=true"), ("train", "report.after_sweep=true"),
    ("train", "trainer.log_every=7"), ("train", "trainer.checkpoint_every=3"), ("train", "name=other"),
    ("train", "paths.cache_dir=/elsewhere"), ("train", "resume=true"), ("train", "space=nb201"),
    ("train", "distill=at"), ("train", "teacher.model=resnet14"), ("train_teacher", "model=resnet14"),
    ("search", "search.executor=processes"), ("search", "search.workers=4"),
])
def test_a_result_neutral_or_unread_key_keeps_the_hash(task: str, override: str) -> None:
    assert config_hash(compose(task, [*TINY, override])) == config_hash(compose(task, TINY)), override


def test_an_experiment_hashes_as_its_settings() -> None:
    """The hash is what is computed: the preset and the same settings spelled out agree."""
    preset = compose(None, ["experiment=kd_resnet56_resnet20"])
    spelled = compose("distill", ["data=cifar100", "trainer=cifar_240", "trainer@teacher.trainer=cifar_240",
                                  "data.val_fraction=0.0", "trainer.train_split=train_full", "teacher.model=resnet56"])
    assert config_hash(preset) == config_hash(spelled)


@pytest.mark.parametrize("group", ["data", "model", "trainer"])
def test_a_key_added_to_a_typed_group_is_one_config_error(group: str, tmp_path: Path) -> None:
    """``+data.KEY=`` (what Hydra suggests for a key the schema lacks) passes composition; the run then names the key
    in a ConfigError (it was a TypeError's traceback)."""
    with pytest.raises(ConfigError, match=rf"{group}\.seeed"):
        kdnas.run("train", [*SMOKE, f"+{group}.seeed=1"], run_dir=tmp_path)
