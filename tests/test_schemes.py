"""Distillation schemes (``distill=dml|born_again|takd|label_refinery|fitnet_two_stage``): each runs end to end
on smoke data with one folder and summary per stage, plus the property that makes it that scheme."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import kdnas
from kdnas.config import DataConfig, ModelConfig
from kdnas.context import build_model
from kdnas.data import build_data
from kdnas.distill.schemes import fitnet_two_stage
from kdnas.distill.schemes.dml import MutualObjective
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint, load_weights
from kdnas.engine.trainer import Trainer
from kdnas.errors import ConfigError
from kdnas.models import create_model
from kdnas.teachers import weights_sha256

from .helpers import SMOKE

BASE = [*SMOKE, "model=resnet8", "teacher.model=resnet8", "trainer.max_steps_per_epoch=3"]


def run_scheme(tmp_path: Path, scheme: str, *overrides: str) -> dict[str, Any]:
    return kdnas.run("distill", [*BASE, f"distill={scheme}", *overrides], run_dir=str(tmp_path))


def check_stages(tmp_path: Path, summary: dict[str, Any], stages: list[str]) -> dict[str, dict[str, Any]]:
    """Every stage has its folder and summary, and a row of the top-level table; returns the stage summaries."""
    assert [row["stage"] for row in summary["table"] if (tmp_path / row["stage"]).is_dir()] == stages
    assert (tmp_path / "table.md").is_file() and json.loads((tmp_path / "summary.json").read_text())["table"]
    out = {s: json.loads((tmp_path / s / "summary.json").read_text()) for s in stages}
    assert all(isinstance(out[s]["test_top1_last"], float) for s in stages)
    return out


def resnet8(weights: Path | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = create_model("resnet8", num_classes=10)
    if weights is not None:
        net.load_state_dict(load_weights(weights))
    return net


# ---------------------------------------------------------------------------------------------- DML


def test_dml_trains_every_peer(tmp_path: Path) -> None:
    summary = run_scheme(tmp_path, "dml", "distill.dml.students=[resnet8,resnet8]")
    check_stages(tmp_path, summary, ["peer0", "peer1"])
    assert (tmp_path / "mutual" / "summary.json").is_file()
    _, state, _ = load_checkpoint(latest_checkpoint(tmp_path / "mutual" / "checkpoints"))
    assert any(k.startswith("peers.0.") for k in state["objective"])  # peer 1 is checkpointed with peer 0
    peers = [load_weights(tmp_path / f"peer{k}" / "model.safetensors") for k in (0, 1)]
    assert not torch.equal(peers[0]["conv1.weight"], peers[1]["conv1.weight"])  # own inits
    train = [json.loads(line) for line in (tmp_path / "mutual" / "metrics.jsonl").open()]
    assert {"loss_kl_0", "loss_kl_1", "loss_ce_0", "loss_ce_1"} <= set(train[0])
    with pytest.raises(ConfigError, match=r"\['at'\]"):
        run_scheme(tmp_path / "bad", "dml", "distill.weights.at=1")


def test_mutual_objective_pulls_peers_together(kdnas_cache: Path) -> None:
    data = build_data(DataConfig(max_train_per_class=20, max_test_per_class=10), kdnas_cache, kdnas_cache)
    batch = next(iter(data.loader("train", 32, train=True, seed=0).epoch(0)))
    model, peer = resnet8(seed=1), resnet8(seed=2)
    objective = MutualObjective([peer], ce=0.0, kd=1.0, temperature=1.0)
    out = objective(model, batch, 0)
    assert out.terms["kl_0"] > 0 and out.terms["kl_1"] > 0
    out.loss.backward()
    for net in (model, peer):
        assert all(p.grad is not None for p in net.parameters()) and net.classifier.weight.grad.abs().sum() > 0
    opt = torch.optim.SGD([*model.parameters(), *objective.parameters()], lr=0.05)
    kl = []
    for _ in range(8):
        out = objective(model, batch, 0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        kl.append(out.terms["kl_0"].item())
    assert kl[-1] < kl[0] / 2, kl


# -------------------------------------------------------------------------------------- born-again


def test_born_again_generation_k_learns_from_generation_k_minus_1(tmp_path: Path) -> None:
    summary = run_scheme(tmp_path, "born_again", "distill.born_again.generations=2")
    stages = check_stages(tmp_path, summary, ["gen0", "gen1", "gen2", "ensemble"])
    for k in (1, 2):
        previous = weights_sha256(resnet8(tmp_path / f"gen{k - 1}" / "model.safetensors"))
        assert stages[f"gen{k}"]["teacher_sha256"] == [previous]
    assert stages["gen0"]["losses"] == {"ce": 1.0} and stages["gen1"]["losses"] == {"kd": 1.0}


def test_born_again_from_the_stored_teacher(tmp_path: Path) -> None:
    summary = run_scheme(tmp_path, "born_again", "distill.born_again.gen0=teacher", "distill.born_again.generations=1",
                         "distill.born_again.ensemble=false")
    stages = check_stages(tmp_path, summary, ["gen0", "gen1"])
    assert stages["gen1"]["teacher"] == ["resnet8"] and "losses" not in stages["gen0"]


# -------------------------------------------------------------------------------------------- TAKD


def test_takd_chains_teacher_assistant_student(tmp_path: Path) -> None:
    summary = run_scheme(tmp_path, "takd", "teacher.model=resnet14", "distill.takd.assistant=resnet8")
    stages = check_stages(tmp_path, summary, ["assistant", "student"])
    assert stages["assistant"]["teacher"] == ["resnet14"] and stages["student"]["teacher"] == ["resnet8"]
    assert summary["table"][0]["stage"] == "teacher" and summary["teacher"] == ["resnet14"]


# ---------------------------------------------------------------------------------- label refinery


def scripted_evaluation(monkeypatch: pytest.MonkeyPatch, top1: Any) -> None:
    """Every evaluation reports ``next(top1)``."""
    monkeypatch.setattr(Trainer, "evaluate", lambda self, split, model=None: {"loss": 1.0, "top1": next(top1),
                                                                             "top5": 100.0})


def test_label_refinery_stops_when_val_stops_improving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_evaluation(monkeypatch, itertools.repeat(50.0))
    summary = run_scheme(tmp_path, "label_refinery", "distill.label_refinery.max_generations=4")
    check_stages(tmp_path, summary, ["gen0", "gen1"])
    assert not (tmp_path / "gen2").exists()
    assert summary["stopped"] == "no_improvement" and summary["best_generation"] == 0
    train = [json.loads(line) for line in (tmp_path / "gen1" / "metrics.jsonl").open()]
    assert train[0]["loss_soft_ce"] > 0  # generation 1 learns generation 0's predictions


def test_label_refinery_stops_at_the_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scripted_evaluation(monkeypatch, itertools.count(10.0))
    summary = run_scheme(tmp_path, "label_refinery", "distill.label_refinery.max_generations=2",
                         "distill.label_refinery.soft_weight=0.5")
    check_stages(tmp_path, summary, ["gen0", "gen1", "gen2"])
    assert summary["stopped"] == "max_generations" and summary["best_generation"] == 2


# -------------------------------------------------------------------------------------------- FitNets


def test_fitnet_stage1_trains_only_lower_layers_and_regressor(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    starts = []  # each stage's student weights when it starts
    distill = fitnet_two_stage.distill_student

    def spy(ctx: Any, student: torch.nn.Module, *args: Any, **kwargs: Any) -> dict[str, Any]:
        starts.append({k: v.clone() for k, v in student.state_dict().items()})
        return distill(ctx, student, *args, **kwargs)

    monkeypatch.setattr(fitnet_two_stage, "distill_student", spy)
    summary = run_scheme(tmp_path, "fitnet_two_stage", "distill.fitnet_two_stage.hint_epochs=1")
    stages = check_stages(tmp_path, summary, ["hint", "kd"])
    lower = set(stages["hint"]["lower_layers"])
    assert {k.split(".")[0] for k in lower} == {"conv1", "bn1", "layer1", "layer2"}  # up to hint_stage=stage2
    assert stages["hint"]["losses"] == {"fitnet": 1.0} and stages["kd"]["losses"] == {"ce": 0.1, "kd": 0.9}

    student = build_model(ModelConfig(name="resnet8"), 10, 0)  # as task=distill builds it (seed 0)
    init, params = student.state_dict(), dict(student.named_parameters())
    hint = load_weights(tmp_path / "hint" / "model.safetensors")
    assert all(torch.equal(starts[0][k], init[k]) for k in init)
    assert all(torch.equal(hint[k], init[k]) for k in params if k not in lower)  # upper layers frozen
    assert all(not torch.equal(hint[k], init[k]) for k in params if k in lower)
    _, state, _ = load_checkpoint(latest_checkpoint(tmp_path / "hint" / "checkpoints"))
    regressor = [k for k in state["objective"] if k.startswith("terms.fitnet.regressor.") and "running" not in k
                 and "num_batches" not in k]
    optimised = state["optimizer"]["param_groups"][0]["params"]
    assert len(optimised) == len([k for k in params if k in lower]) + len(regressor)
    # stage 2 starts from stage 1's lower layers and the fresh init above them
    assert all(torch.equal(starts[1][k], hint[k] if k in lower else init[k]) for k in init)


# -------------------------------------------------------------------------------------------- settings


def test_every_scheme_has_its_own_settings_field() -> None:
    """One schema per scheme, a DistillConfig field named after it (as the terms' ``distill.dkd.*``), and no other."""
    import pkgutil
    from dataclasses import fields

    import kdnas.distill.schemes as schemes
    from kdnas.distill.scheme_config import SCHEME_CONFIGS
    from kdnas.distill.terms import DistillConfig

    modules = {m.name for m in pkgutil.iter_modules(schemes.__path__)}
    assert modules == set(SCHEME_CONFIGS) == set(schemes.SCHEMES.names())
    assert all(schemes.SCHEMES.entry(name).settings is SCHEME_CONFIGS[name] for name in modules)
    types = {f.name: f.type for f in fields(DistillConfig)}
    assert all(types[name] in (schema, schema.__name__) for name, schema in SCHEME_CONFIGS.items())


def test_scheme_settings_compose_typed_and_the_old_key_still_works(caplog: pytest.LogCaptureFixture) -> None:
    from kdnas.api import CompositionError, compose
    from kdnas.distill.terms import distill_config

    cfg = distill_config(compose("distill", [*BASE, "distill=born_again", "distill.born_again.generations=5"]).distill)
    assert cfg.born_again.generations == 5 and cfg.scheme == "born_again"
    with pytest.raises(CompositionError, match="generation"):  # a typo fails at composition, before any work
        compose("distill", [*BASE, "distill=born_again", "distill.born_again.generation=5"])
    node = compose("distill", [*BASE, "distill=label_refinery", "distill.schemes.soft_weight=0.5",
                               "distill.schemes.generations=2"]).distill
    with caplog.at_level("WARNING", logger="kdnas"):
        old = distill_config(node)
    assert old.label_refinery.soft_weight == 0.5 and old.born_again.generations == 2
    assert "distill.label_refinery.soft_weight=0.5" in caplog.text and "deprecated" in caplog.text
    assert distill_config(old) == old  # migrated once: the old node is emptied
