"""Strategies and the search loop: evolution beats random on the DisWOT proxy, constraints and dedup hold,
a killed search resumes to the same trajectory; task=search, task=pipeline and task=correlate end to end."""

from __future__ import annotations

import json
import logging
import os
import statistics
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import kdnas
from kdnas.benchmarks.tabular import shipped_config
from kdnas.config import DataConfig
from kdnas.data import build_data
from kdnas.errors import ConfigError
from kdnas.evaluators import CachedEvaluator, ProxyEvaluator, ProxySettings, proxy_batches
from kdnas.models.resnet_cifar import build_cifar_resnet
from kdnas.runs import RunDir
from kdnas.search import run_search
from kdnas.spaces import Arch, create_space, load_arch
from kdnas.spaces.constraints import Constraint
from kdnas.spaces.costs import CostModel
from kdnas.strategies import Strategy, create_strategy
from kdnas.strategies.kdas import KDASStrategy

from .helpers import SMOKE
from .helpers.search import EVOLUTION, Synthetic

# 7^3 = 343 archs at half width: big enough that where a strategy looks matters, cheap to score.
NARROW = create_space("resnet_cifar", depths=list(range(1, 8)), widths=[8, 16, 32])


def drive(strategy: Strategy, evaluator: Any, budget: int, batch: int = 4) -> list[Arch]:
    asked: list[Arch] = []
    while len(asked) < budget:
        archs = strategy.ask(min(batch, budget - len(asked)))
        if not archs:
            break
        strategy.tell(archs, evaluator.evaluate(archs))
        asked += archs
    return asked


@pytest.fixture(scope="module")
def diswot_evaluator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyEvaluator]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as trainer.num_threads=1 does for the tasks
    cache = Path(os.environ["KDNAS_CACHE_DIR"])
    data = build_data(DataConfig(max_train_per_class=20, max_test_per_class=10), cache / "data", cache)
    settings = ProxySettings(batch_size=16)

    def teacher() -> torch.nn.Module:  # a randomly initialised resnet20 of the same widths (DisWOT's default)
        torch.manual_seed(0)
        return build_cifar_resnet([3, 3, 3], [8, 16, 32], data.num_classes).train()

    yield ProxyEvaluator(NARROW, proxy_batches(data, settings, 0, torch.device("cpu")), settings, names=[],
                         teacher=teacher, teacher_identity="resnet20 [8, 16, 32]", num_classes=data.num_classes,
                         seed=0, cache_dir=tmp_path_factory.mktemp("evals"))
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_evolution_finds_better_diswot_scores_than_random(diswot_evaluator: ProxyEvaluator) -> None:
    best: dict[str, list[float]] = {"random": [], "evolution": []}
    for seed in range(6):
        for name, cfg in (("random", {"name": "random"}), ("evolution", EVOLUTION)):
            strategy = create_strategy(cfg, NARROW, seed=seed)
            assert len(drive(strategy, diswot_evaluator, budget=24)) == 24
            best[name].append(strategy.best()[1]["reward"])
    assert statistics.mean(best["evolution"]) > statistics.mean(best["random"]), best


@pytest.mark.parametrize("name", ["random", "evolution"])
def test_every_proposal_meets_the_constraint(name: str) -> None:
    costs = CostModel(NARROW, num_classes=10)
    limit = 150_000  # the synthetic reward pulls toward deep (large) nets, against the limit
    strategy = create_strategy({"name": name} if name == "random" else EVOLUTION, NARROW,
                               constraint=Constraint(params_max=limit), costs=costs, seed=1)
    asked = drive(strategy, Synthetic(), budget=30)
    assert len(asked) == 30 and all(costs(a, ["params"])["params"] <= limit for a in asked)


@pytest.mark.parametrize("name", ["random", "evolution"])
def test_no_arch_is_proposed_twice(name: str) -> None:
    space = create_space("resnet_cifar")  # 64 archs: the budget exhausts it
    strategy = create_strategy({"name": name} if name == "random" else EVOLUTION, space, seed=2)
    asked = drive(strategy, Synthetic(), budget=100, batch=5)
    assert len(asked) == len({a.arch_id for a in asked}) == 64
    assert strategy.ask(4) == []


def _history(run: Path) -> list[tuple[str, float]]:
    return [(r["arch_id"], r["reward"]) for r in map(json.loads, (run / "history.jsonl").open())]


@pytest.mark.parametrize("variant", ["diswot", "aging"])
def test_killed_search_resumes_to_the_same_trajectory(tmp_path: Path, variant: str) -> None:
    def search(run: Path, evaluator: Synthetic) -> dict[str, Any]:
        strategy = create_strategy({**EVOLUTION, "variant": variant}, create_space("resnet_cifar"), seed=3)
        return run_search(strategy, evaluator, RunDir(run), budget=30, batch=4, config_hash="h")

    full = search(tmp_path / "full", Synthetic())
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "killed", Synthetic(crash_on_call=5))
    assert len(_history(tmp_path / "killed")) == 16
    resumed = search(tmp_path / "killed", Synthetic())
    assert _history(tmp_path / "killed") == _history(tmp_path / "full")
    assert (resumed["best_arch_id"], resumed["evaluated"]) == (full["best_arch_id"], 30)
    assert json.loads((tmp_path / "killed" / "topk.json").read_text()) == json.loads(
        (tmp_path / "full" / "topk.json").read_text())


def test_time_budget_stops_asking_and_accumulates_over_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """A fake clock that advances 10 s per evaluated batch: the search stops once its own seconds reach the
    time budget, and a rerun with a larger one continues from the checkpointed seconds."""
    clock = Synthetic()
    monkeypatch.setattr("kdnas.search.time", SimpleNamespace(perf_counter=lambda: 10.0 * clock.calls))

    def search(time_budget_s: float) -> dict[str, Any]:
        strategy = create_strategy(EVOLUTION, create_space("resnet_cifar"), seed=3)
        return run_search(strategy, clock, RunDir(tmp_path), budget=30, batch=4, config_hash="h",
                          time_budget_s=time_budget_s)

    first = search(35)  # batches start at 0, 10, 20, 30 s; at 40 s no new one is asked
    assert (first["stopped_by"], first["evaluated"], first["seconds"]) == ("time", 16, 40)
    assert len(_history(tmp_path)) == 16
    clock.calls = 100  # a new session: its clock starts elsewhere, the search's seconds do not
    second = search(55)
    assert (second["stopped_by"], second["evaluated"], second["seconds"]) == ("time", 24, 60)
    assert search(1000)["stopped_by"] == "budget"


GROUPS = ["space=resnet_cifar", "strategy=diswot", "evaluator.proxy=diswot"]
SEARCH = [*SMOKE, *GROUPS, "search.budget=8", "search.batch=4", "strategy.population=4",
          "strategy.sample_size=2", "strategy.top_k=1", "evaluator.batch_size=16"]


def test_task_search_end_to_end_and_cached(tmp_path: Path) -> None:
    own_cache = [*SEARCH, f"paths.cache_dir={tmp_path / 'cache'}"]  # other tests' searches share the session cache
    summary = kdnas.run("search", own_cache, run_dir=tmp_path / "a")
    assert summary["evaluated"] == 8 and summary["cache_misses"] == 8
    assert (summary["evaluator"], summary["reward_kind"]) == ("proxy", "proxy:diswot")  # the strategy's default
    records = [json.loads(line) for line in (tmp_path / "a" / "history.jsonl").open()]
    assert len(records) == 8 and {"arch_id", "arch", "reward", "scores", "costs"} <= set(records[0])
    assert {r["reward_kind"] for r in records} == {"proxy:diswot"}
    assert {"diswot_semantic", "diswot_relational"} <= set(records[0]["scores"])
    arch = load_arch(tmp_path / "a" / "best_arch.json")
    assert arch.arch_id == summary["best_arch_id"] and arch.arch_id in {r["arch_id"] for r in records}
    again = kdnas.run("search", own_cache, run_dir=tmp_path / "b")
    assert again["cache_hits"] == 8 and again["best_arch_id"] == summary["best_arch_id"]


@pytest.mark.slow
def test_task_pipeline_end_to_end(tmp_path: Path) -> None:
    summary = kdnas.run("pipeline", [*SEARCH, "teacher.model=resnet8", "trainer.max_steps_per_epoch=3"],
                        run_dir=tmp_path)
    assert {"kd_test_top1_last", "ce_test_top1_last", "teacher_test_top1", "arch_id"} <= set(summary)
    assert "vs CE" in (tmp_path / "pipeline.txt").read_text()
    assert (tmp_path / "distill" / "model.safetensors").is_file() and (tmp_path / "ce" / "model.json").is_file()


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN included (a correlation over smoke-trained accuracies may be undefined)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


CORRELATE = [*SMOKE, *GROUPS, "correlate.archs=6", "correlate.proxies=[diswot,params,snip]", "correlate.noise_subset=2",
             "+correlate.trainer.max_steps_per_epoch=2", "correlate.top_k=2", "correlate.bands=2",
             "teacher.model=resnet8", "evaluator.batch_size=16"]


@pytest.mark.slow
def test_task_correlate_writes_table_and_plots_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kdnas.run("correlate", CORRELATE, run_dir=tmp_path / "a")
    table = (tmp_path / "a" / "correlate.md").read_text()
    for name in ("diswot_semantic", "diswot_relational", "diswot_sum", "diswot_rank", "params", "snip",
                 "kd_top1", "ce_top1", "Seed noise"):
        assert name in table
    assert (tmp_path / "a" / "scatter_kd_top1.png").stat().st_size > 1000
    rows = (tmp_path / "a" / "ground_truth.tsv").read_text().splitlines()
    assert len(rows) == 1 + 6 + 2  # header, 6 archs, 2 of them with a second seed

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the ground truth should come from the cache")

    monkeypatch.setattr("kdnas.distill.student.distill_student", no_training)
    again = kdnas.run("correlate", CORRELATE, run_dir=tmp_path / "b")
    assert _same(again["spearman"], first["spearman"])
    from_file = kdnas.run("correlate", [*CORRELATE, f"correlate.ground_truth={tmp_path / 'a' / 'ground_truth.tsv'}"],
                          run_dir=tmp_path / "c")
    assert _same(from_file["spearman"], first["spearman"])
    more = [o if o != "correlate.archs=6" else "correlate.archs=8" for o in CORRELATE]  # the 6 first, 2 untrained
    cut = kdnas.run("correlate", [*more, "correlate.cached_only=true"], run_dir=tmp_path / "d")
    assert cut["archs"] == 6 and _same(cut["spearman"], first["spearman"])


# -- policy strategies through the loop: repeated archs, batches told across updates -----------------------------------


class Trained(CachedEvaluator):
    """A stand-in for candidate training through the real evaluation cache: a top-1 in [50, 70) from the arch id;
    optionally killed on its n-th evaluate call."""

    def __init__(self, cache_dir: Path, crash_on_call: int | None = None) -> None:
        super().__init__(cache_dir, {"kind": "train", "test": "top-1 from the arch id"})
        self.calls, self.crash_on_call = 0, crash_on_call

    def evaluate(self, archs: list[Arch]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise KeyboardInterrupt("simulated kill")
        return super().evaluate(archs)

    def evaluate_one(self, arch: Arch) -> dict[str, Any]:
        return {"reward": self.top1(arch.arch_id), "val_top1": self.top1(arch.arch_id)}

    @staticmethod
    def top1(arch_id: str) -> float:
        return 50 + int(arch_id[:4], 16) % 200 / 10


class Repeating(KDASStrategy):
    """KDAS whose every batch ends with its previous arch again: a repeat, as a peaked policy draws."""

    def ask(self, n: int) -> list[Arch]:
        archs = super().ask(n)
        return archs[:-1] + archs[-2:-1] if len(archs) >= 3 else archs


def policy_search(name: str, run: Path, cache: Path, crash_on_call: int | None = None) -> Strategy:
    """AKD (PPO) on resnet_cifar or KDAS (REINFORCE) on kdas_addon over resnet8, shipped settings but 4 rewards per
    update, batches of 8, under a soft params target (alpha 0, beta -1), trained rewards labelled kd."""
    if name == "akd":
        space, limit = create_space("resnet_cifar"), 150_000
        build: Any = lambda **kw: create_strategy({**shipped_config("akd"), "archs_per_update": 4}, space, **kw)  # noqa: E731
    else:
        space, limit = create_space("kdas_addon", base="resnet8"), 100_000
        settings = {k: v for k, v in shipped_config("kdas").items() if k != "name"}
        build = lambda **kw: Repeating(space, **{**settings, "round_budget": 8, **kw})  # noqa: E731
    strategy = build(constraint=Constraint(params_max=limit, mode="soft", alpha=0.0, beta=-1.0),
                     costs=CostModel(space, num_classes=10), seed=0)
    run_search(strategy, Trained(cache, crash_on_call), RunDir(run), budget=24, batch=8, config_hash="h",
               reward_kind="kd")
    return strategy


@pytest.mark.slow
@pytest.mark.parametrize("name", ["akd", "kdas"])
def test_policy_search_with_repeats_and_batches_told_across_updates(name: str, tmp_path: Path) -> None:
    """search.batch 8 > archs_per_update 4: each batch spans two updates, the second on samples the first
    policy drew (off_policy > 0; the first is on-policy). A repeated arch is recorded identically each time, its
    reward its top-1 times the cost factor once. A killed search resumes to the same history and updates."""
    strategy = policy_search(name, tmp_path / "full", tmp_path / "cache")
    records = [json.loads(line) for line in (tmp_path / "full" / "history.jsonl").open()]
    assert len(records) == len(strategy.history) >= 17 and {r["reward_kind"] for r in records} == {"kd"}
    for r in records:
        assert r["accuracy"] == r["val_top1"] == Trained.top1(r["arch_id"])
        assert r["reward"] == pytest.approx(r["accuracy"] * r["reward_factor"])
    assert any(r["reward_factor"] < 1 for r in records)  # the target bites somewhere
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_id.setdefault(r["arch_id"], []).append({k: v for k, v in r.items() if k != "step"})
    repeats = [rs for rs in by_id.values() if len(rs) > 1]
    assert repeats and all(rs[0] == rest for rs in repeats for rest in rs[1:])
    first_of_batch = [u["off_policy"] for u in strategy.updates[0::2]]
    second_of_batch = [u["off_policy"] for u in strategy.updates[1::2]]
    assert len(strategy.updates) >= 4 and set(first_of_batch) == {0.0} and min(second_of_batch) > 0
    with pytest.raises(KeyboardInterrupt):
        policy_search(name, tmp_path / "killed", tmp_path / "cache2", crash_on_call=3)
    resumed = policy_search(name, tmp_path / "killed", tmp_path / "cache2")
    assert (tmp_path / "killed" / "history.jsonl").read_text() == (tmp_path / "full" / "history.jsonl").read_text()
    assert resumed.updates == strategy.updates


def test_diswot_evolution_drops_the_worst_member_and_aging_the_oldest() -> None:
    """A full population whose oldest member is the best and 4th the worst; one child joins: DisWOT's variant
    drops the worst, aging evolution the oldest."""
    rewards = [100.0, 50.0, 60.0, -10.0, 70.0, 80.0, 90.0, 55.0]
    for variant, dropped in (("diswot", 3), ("aging", 0)):
        strategy = create_strategy({**EVOLUTION, "variant": variant}, NARROW, seed=0)
        members = strategy.ask(8)
        strategy.tell(members, [{"reward": r} for r in rewards])
        child = strategy.ask(1)
        strategy.tell(child, [{"reward": 65.0}])
        kept = [a.arch_id for a, _ in strategy.population]
        assert kept == [a.arch_id for i, a in enumerate(members) if i != dropped] + [child[0].arch_id], variant


def test_settings_that_change_nothing_warn(caplog: pytest.LogCaptureFixture) -> None:
    """search.budget <= strategy.population: the evolution never breeds. A soft target on a strategy that does not
    shape rewards (evolution, random) changes nothing. Say so."""
    logger = logging.getLogger("kdnas")
    logger.addHandler(caplog.handler)
    try:
        create_strategy(EVOLUTION, NARROW).check_search(budget=8)  # population 8
        assert "search.budget=8 <= strategy.population=8" in caplog.text
        caplog.clear()
        create_strategy(EVOLUTION, NARROW).check_search(budget=9)
        assert "population" not in caplog.text
        soft = Constraint(params_max=100_000, mode="soft")
        create_strategy({"name": "random"}, NARROW, constraint=soft).check_search(budget=9)
        assert "the soft params target changes nothing" in caplog.text
        caplog.clear()
        create_strategy({"name": "akd"}, NARROW, constraint=soft).check_search(budget=9, reward_kind="kd")
        assert not caplog.text
    finally:
        logger.removeHandler(caplog.handler)


AKD_README = [*SMOKE, "space=mbconv_akd", "strategy=akd", "constraint=latency", "teacher.model=resnet8"]


@pytest.mark.slow
def test_akd_and_its_reward_keys_refuse_what_they_cannot_measure(tmp_path: Path) -> None:
    """A soft latency factor on a signed proxy score, and strategy.reward against evaluator.objective: errors
    before any training."""
    with pytest.raises(ConfigError, match="evaluator=proxy rewards the proxy:diswot score"):
        kdnas.run("search", [*AKD_README, "evaluator=proxy", "search.budget=2"], run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="strategy.reward=ce but evaluator.objective=kd"):
        kdnas.run("search", [*AKD_README, "strategy.reward=ce", "evaluator.objective=kd", "search.budget=2"],
                  run_dir=tmp_path / "b")


@pytest.mark.slow
def test_the_readme_akd_search_trains_its_candidates(tmp_path: Path) -> None:
    """The README's AKD command trains candidates with KD (its paper's reward) and says so; strategy.reward=ce
    alone trains them with CE."""
    overrides = [*AKD_README, "search.budget=2", "search.batch=2", "trainer.max_steps_per_epoch=2"]
    summary = kdnas.run("search", overrides, run_dir=tmp_path / "kd")
    assert (summary["evaluator"], summary["reward_kind"]) == ("train", "kd")
    records = [json.loads(line) for line in (tmp_path / "kd" / "history.jsonl").open()]
    assert all(r["reward_kind"] == "kd" and 0 <= r["val_top1"] == r["accuracy"] <= 100 for r in records)
    assert all(r["reward"] == pytest.approx(r["accuracy"] * r["reward_factor"]) for r in records)
    ce = kdnas.run("search", [*overrides, "strategy.reward=ce"], run_dir=tmp_path / "ce")
    assert ce["reward_kind"] == "ce" and ce["evaluator_fingerprint"] != summary["evaluator_fingerprint"]
