"""RL strategies: the LSTM controller, REINFORCE/PPO, AKD's reward, KDAS's rounds, tabular replay (CPU, tiny)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from kdnas.benchmarks.tabular import Table, compare, shipped_config
from kdnas.engine.checkpoint import load_checkpoint, save_checkpoint
from kdnas.errors import ConfigError
from kdnas.evaluators import CachedEvaluator
from kdnas.runs import RunDir
from kdnas.search import run_search
from kdnas.spaces import Arch, Decision, SearchSpace, create_space, load_arch, space_for
from kdnas.spaces.constraints import Constraint
from kdnas.spaces.costs import CostModel
from kdnas.strategies import create_strategy
from kdnas.strategies.akd import AKDStrategy
from kdnas.strategies.controllers import PPO, LSTMController, PolicyStrategy, Reinforce, SkipGroup, bernoulli_kl, plan
from kdnas.strategies.kdas import KDASStrategy

torch.set_num_threads(1)


class ToySpace(SearchSpace):
    """``n`` decisions of ``k`` options, optionally with ENAS-macro links ``skip{j}_{i}`` among ``op{i}``."""

    name = "toy"

    def __init__(self, n: int = 6, k: int = 3, links: bool = False) -> None:
        super().__init__()
        prefix = "op" if links else "d"
        self._decisions = [Decision(f"{prefix}{i}", list(range(k))) for i in range(1, n + 1)]
        if links:
            self._decisions += [Decision(f"skip{j}_{i}", [0, 1]) for i in range(2, n + 1) for j in range(1, i)]

    def decisions(self) -> list[Decision]:
        return self._decisions


class FakeCosts:
    """``latency_ms`` = the sum of the option indices; ``params`` = 1000 x (1 + that sum)."""

    def __call__(self, arch: Arch, keys: Any = ("latency_ms", "params")) -> dict[str, float]:
        total = sum(v for k, v in arch.decisions.items() if not k.startswith("skip"))
        return {k: {"latency_ms": float(total), "params": 1000.0 * (1 + total)}[k] for k in keys}


def zero_fraction(arch: Arch) -> float:
    """The toy reward: the fraction of decisions at option 0."""
    return sum(v == 0 for v in arch.decisions.values()) / len(arch.decisions)


def run_steps(strategy: PolicyStrategy, steps: int, batch: int = 8) -> list[float]:
    """ask/tell with the toy reward; the mean reward of each step."""
    means = []
    for _ in range(steps):
        archs = strategy.ask(batch)
        rewards = [zero_fraction(a) for a in archs]
        strategy.tell(archs, [{"reward": r} for r in rewards])
        means.append(sum(rewards) / len(rewards))
    return means


def through_checkpoint(state: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """A strategy state written and read back as the search loop does (safetensors + JSON)."""
    save_checkpoint(tmp_path, "step", model_state={}, state={"strategy": state}, meta={})
    return load_checkpoint(tmp_path / "step")[1]["strategy"]


# -- the controller -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kdas_addon", "mbconv_akd", "resnet_cifar", "nb201"])
def test_controller_samples_only_valid_archs(name: str) -> None:
    space = create_space(name)
    controller = LSTMController(space.decisions(), hidden=16, tanh_constant=1.5, temperature=2.0)
    roll = controller(batch=32, generator=torch.Generator().manual_seed(0))
    choices = controller.choices(roll.actions)
    for choice in choices:
        space.make(choice)  # raises on an invalid decision
    assert torch.equal(controller.actions([space.make(c).decisions for c in choices]), roll.actions)
    assert len({json.dumps(c, sort_keys=True) for c in choices}) > 1
    scored = controller(actions=roll.actions)
    assert torch.allclose(scored.log_prob, roll.log_prob) and torch.allclose(scored.entropy, roll.entropy)
    assert (roll.log_prob < 0).all() and (roll.entropy > 0).all()


def test_log_prob_and_entropy_on_a_hand_case() -> None:
    """hidden = 1, zero LSTM weights: every step's output is h = s(b_o) tanh(s(b_i) tanh(b_g)) (the forget
    gate closed), so the logits are c / r * tanh(w h / T) with the head weights w."""
    c, r, temp = 1.5, 2.5, 2.0
    ctrl = LSTMController([Decision("a", ["x", "y", "z"]), Decision("b", [0, 1])], hidden=1, tanh_constant=c,
                          op_tanh_reduce=r, temperature=temp)
    b_i, b_f, b_g, b_o = 2.0, -100.0, 0.7, 1.0
    with torch.no_grad():
        for p in ctrl.lstm.parameters():
            p.zero_()
        ctrl.lstm[0].bias_ih.copy_(torch.tensor([b_i, b_f, b_g, b_o]))
        ctrl.heads[0].weight.copy_(torch.tensor([[1.0], [-2.0], [3.0]]))
        ctrl.heads[1].weight.copy_(torch.tensor([[0.5], [4.0]]))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    h = sig(b_o) * math.tanh(sig(b_i) * math.tanh(b_g))

    def dist(ws: list[float]) -> list[float]:
        z = [c / r * math.tanh(w * h / temp) for w in ws]
        return [math.exp(v) / sum(math.exp(u) for u in z) for v in z]

    pa, pb = dist([1.0, -2.0, 3.0]), dist([0.5, 4.0])
    roll = ctrl(actions=torch.tensor([[2, 0]]))
    assert roll.log_prob.item() == pytest.approx(math.log(pa[2]) + math.log(pb[0]), rel=1e-5)
    assert roll.entropy.item() == pytest.approx(-sum(p * math.log(p) for p in pa + pb), rel=1e-5)
    assert roll.skip_kl.item() == 0.0
    assert bernoulli_kl(torch.tensor(0.5), 0.4).item() == pytest.approx(0.5 * math.log(0.5 / 0.4)
                                                                        + 0.5 * math.log(0.5 / 0.6), rel=1e-5)


def test_enas_skip_layout_shapes_and_kl_toward_the_target() -> None:
    space = ToySpace(n=4, k=3, links=True)
    steps = plan(space.decisions())
    groups = [s for s in steps if isinstance(s, SkipGroup)]
    assert [(g.layer, g.sources) for g in groups] == [(1, ()), (2, (1,)), (3, (1, 2)), (4, (1, 2, 3))]
    assert [s.name for s in steps if isinstance(s, Decision)] == ["op1", "op2", "op3", "op4"]
    assert plan(create_space("kdas_addon").decisions())[-1] == SkipGroup(3, (1, 2), ("skip1_3", "skip2_3"))
    ctrl = LSTMController(space.decisions(), hidden=16, tanh_constant=1.5, skip_target=0.4)
    gen = torch.Generator().manual_seed(0)
    roll = ctrl(batch=64, generator=gen)
    links = [ctrl.columns.index(n) for g in groups for n in g.names]
    assert roll.actions.shape == (64, 4 + 6) and set(roll.actions[:, links].unique().tolist()) <= {0, 1}
    # With a constant reward only the KL penalty moves the link probabilities: toward skip_target.
    learner = Reinforce(ctrl, lr=0.03, entropy_weight=0.0, skip_weight=0.8)
    ctrl.v_attn.weight.data.fill_(0.5)  # start far from the target: link probability ~0.7
    first = ctrl(batch=512, generator=gen)
    for _ in range(100):
        with torch.no_grad():
            drawn = ctrl(batch=16, generator=gen)
        learner.update(drawn.actions, drawn.log_prob, [0.0] * 16)
    last = ctrl(batch=4096, generator=gen)
    assert last.skip_kl.mean() < 0.01 < first.skip_kl.mean()
    assert last.actions[:, links].float().mean().item() == pytest.approx(0.4, abs=0.03)


# -- learners through the strategy --------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_policy_gradient_improves_a_toy_reward(algo: str) -> None:
    strategy = PolicyStrategy(ToySpace(), algo=algo, hidden=32, lr=0.01, archs_per_update=8, entropy_weight=1e-4,
                              baseline_decay=0.9, seed=1)

    def expected_reward() -> float:  # of the current policy, over 1024 samples
        with torch.no_grad():
            actions = strategy.controller(batch=1024, generator=torch.Generator().manual_seed(9)).actions
        return (actions == 0).float().mean().item()

    before = expected_reward()
    run_steps(strategy, 100)
    after = expected_reward()
    assert before < 0.4 and after > 0.75, (before, after)
    assert len(strategy.updates) == 100 and strategy.learner.baseline > 0.6


def off_policy_batch(seed: int = 0) -> tuple[LSTMController, Tensor, Tensor]:
    """A controller and 4 archs it drew, with "sampling" log-probs set so that p_now / p_sampled = 2, 0.5, 0.9, 1
    (as if an earlier policy had drawn them)."""
    ctrl = LSTMController(ToySpace(n=3, k=3).decisions(), hidden=8, tanh_constant=1.5, seed=seed)
    with torch.no_grad():
        roll = ctrl(batch=4, generator=torch.Generator().manual_seed(seed))
    return ctrl, roll.actions, roll.log_prob - torch.log(torch.tensor(RATIOS))


RATIOS = [2.0, 0.5, 0.9, 1.0]
ADVANTAGES = [0.5, 0.5, -0.5, 0.5]  # rewards [1, 1, 0, 1] against a fixed baseline 0.5


def fixed_baseline(learner: Any) -> list[float]:
    """Advantage = reward - 0.5 for every sample (decay 1 keeps the baseline); the rewards giving ADVANTAGES."""
    learner.baseline, learner.baseline_decay = 0.5, 1.0
    return [a + 0.5 for a in ADVANTAGES]


def test_ppo_ratio_is_taken_against_the_sampling_policy_and_clipped() -> None:
    """PPO's surrogate by hand: min(rho A, clip(rho, 0.8, 1.2) A) with rho = p_now / p_sampled. Fails if the
    ratio is taken against the current policy (all rho = 1: loss -0.25) or the clip is dropped (-0.325)."""
    ctrl, actions, sampled = off_policy_batch()
    ppo = PPO(ctrl, clip=0.2, epochs=1, entropy_weight=0.0, skip_weight=0.0, lr=0.01)
    stats = ppo.update(actions, sampled, fixed_baseline(ppo))
    by_hand = [min(r * a, min(max(r, 0.8), 1.2) * a) for r, a in zip(RATIOS, ADVANTAGES)]  # 0.6, 0.25, -0.45, 0.5
    assert stats["loss"] == pytest.approx(-sum(by_hand) / 4, abs=1e-6)
    assert stats["ratio_max"] == pytest.approx(2.0, rel=1e-5) and stats["off_policy"] == 0.75
    # Every sample clipped (rho = 2 > 1.2 with A > 0): no gradient, so the step leaves the policy as it was.
    ctrl, actions, sampled = off_policy_batch(seed=1)
    sampled = sampled + torch.log(torch.tensor(RATIOS)) - math.log(2.0)
    ppo = PPO(ctrl, clip=0.2, epochs=1, entropy_weight=0.0, skip_weight=0.0, lr=0.01)
    before = copy.deepcopy(ctrl.state_dict())
    fixed_baseline(ppo)
    ppo.update(actions, sampled, [1.0] * 4)
    assert all(torch.equal(before[k], v) for k, v in ctrl.state_dict().items())


def test_reinforce_importance_weights_samples_of_an_earlier_policy() -> None:
    """REINFORCE's gradient is -mean_k rho_k A_k grad log p(a_k): by hand on a copy of the controller."""
    ctrl, actions, sampled = off_policy_batch()
    reference = copy.deepcopy(ctrl)
    learner = Reinforce(ctrl, entropy_weight=0.0, skip_weight=0.0)
    learner.step = lambda loss: loss.backward()  # keep the gradient, take no step
    stats = learner.update(actions, sampled, fixed_baseline(learner))
    log_prob = reference(actions=actions).log_prob
    (-(torch.tensor(RATIOS) * torch.tensor(ADVANTAGES) * log_prob).mean()).backward()
    grads = [(mine.grad, theirs.grad) for mine, theirs in zip(ctrl.parameters(), reference.parameters())
             if theirs.grad is not None]  # the last decision's embedding feeds nothing
    assert grads and all(torch.allclose(mine, theirs, atol=1e-6) for mine, theirs in grads)
    assert stats["off_policy"] == 0.75 and stats["ratio_min"] == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
def test_a_batch_told_across_updates_keeps_its_sampling_log_probs(algo: str, tmp_path: Path) -> None:
    """search.batch (6) > archs_per_update (4): the batch's last 2 samples wait for the next update with the
    log-probs of the policy that drew them (not the updated one), also through a checkpoint."""
    strategy = PolicyStrategy(ToySpace(), algo=algo, hidden=16, lr=0.05, archs_per_update=4, seed=0)
    drew = copy.deepcopy(strategy.controller)
    archs = strategy.ask(6)
    strategy.tell(archs, [{"reward": zero_fraction(a)} for a in archs])
    assert len(strategy.updates) == 1 and strategy.updates[0]["off_policy"] == 0.0 and not strategy.pending
    waiting = torch.tensor([a for a, _, _ in strategy.buffer])
    stored = torch.tensor([p for _, p, _ in strategy.buffer])
    with torch.no_grad():
        then, now = drew(actions=waiting).log_prob, strategy.controller(actions=waiting).log_prob
    assert torch.allclose(stored, then, atol=1e-5) and not torch.allclose(stored, now, atol=1e-3)
    clone = PolicyStrategy(ToySpace(), algo=algo, hidden=16, lr=0.05, archs_per_update=4, seed=0)
    clone.load_state_dict(through_checkpoint(strategy.state_dict(), tmp_path))
    assert clone.buffer == strategy.buffer
    run_steps(strategy, 1, batch=2)
    assert strategy.updates[1]["off_policy"] == 0.5  # 2 of its 4 samples came from the first policy


def test_a_repeated_arch_is_shaped_once(tmp_path: Path) -> None:
    """A 2-arch space and a batch of 8 (repeats certain) through the loop and a cached evaluator: each
    repeat keeps accuracy 70 and reward 70 x 0.5 = 35 (latency 10 ms against a 5 ms soft target, beta = -1)
    in the history and the policy buffer; the cache keeps the evaluator's 70."""

    class Constant(CachedEvaluator):
        def evaluate_one(self, arch: Arch) -> dict[str, Any]:
            return {"reward": 70.0, "scores": {"top1": 70.0}}

    evaluator = Constant(tmp_path / "cache", {"kind": "proxy", "test": "constant 70"})
    akd = AKDStrategy(ToySpace(n=1, k=2), constraint=Constraint(latency_ms_max=5.0, mode="soft", alpha=0.0, beta=-1.0),
                      costs=lambda arch, keys: {"latency_ms": 10.0}, archs_per_update=100, reward_scale=0.01, seed=0)
    run_search(akd, evaluator, RunDir(tmp_path / "run"), budget=8, batch=8, config_hash="h")  # results unlabelled
    records = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert len(records) == 8 and len({r["arch_id"] for r in records}) < 8
    assert [(r["accuracy"], r["reward"]) for r in records] == [(70.0, 35.0)] * 8
    assert [r for _, _, r in akd.buffer] == pytest.approx([0.35] * 8)
    assert [r["reward"] for _, r in akd.history] == [35.0] * 8
    arch = akd.history[0][0]
    first, second = evaluator.evaluate([arch, arch])  # cache hits: independent copies
    assert first == second == {"reward": 70.0, "scores": {"top1": 70.0}}
    assert first is not second and first["scores"] is not second["scores"]


def test_a_soft_factor_never_multiplies_a_signed_score() -> None:
    """A soft factor < 1 raises a negative score (slow nets would win): a proxy reward with soft targets is
    refused up front, a negative reward at shaping; hard targets or trained top-1 are fine."""
    space = ToySpace(n=2, k=11)
    soft = AKDStrategy(space, constraint=Constraint(latency_ms_max=5.0, mode="soft"), costs=FakeCosts())
    with pytest.raises(ConfigError, match="constraint.mode=hard"):
        soft.check_search(budget=8, reward_kind="proxy:diswot")
    soft.check_search(budget=8, reward_kind="kd")
    AKDStrategy(space, constraint=Constraint(latency_ms_max=5.0, mode="hard"),
                costs=FakeCosts()).check_search(budget=8, reward_kind="proxy:diswot")
    with pytest.raises(ConfigError, match="negative reward"):
        soft.tell([space.make({"d1": 10, "d2": 0})], [{"reward": -0.5}])


def test_akd_reward_and_search_objective_must_agree() -> None:
    ce = AKDStrategy(ToySpace(), reward="ce")
    ce.check_search(budget=8, reward_kind="ce")
    with pytest.raises(ConfigError, match="strategy.reward=ce but evaluator.objective=kd"):
        ce.check_search(budget=8, reward_kind="kd")
    with pytest.raises(ConfigError, match="evaluator=train"):
        ce.check_search(budget=8, reward_kind="proxy:diswot")
    AKDStrategy(ToySpace()).check_search(budget=8, reward_kind="proxy:diswot")  # kd with a proxy: labelled proxy


def test_state_dict_resume_continues_identically(tmp_path: Path) -> None:
    make = lambda: AKDStrategy(ToySpace(), hidden=16, archs_per_update=12, lr=0.01, seed=3)  # noqa: E731
    a = make()
    run_steps(a, 4)  # 32 rewards: two PPO updates and 8 rewards waiting in the buffer
    b = make()
    b.load_state_dict(through_checkpoint(a.state_dict(), tmp_path))
    assert len(b.buffer) == 8 and b.learner.baseline == a.learner.baseline
    assert run_steps(a, 5) == run_steps(b, 5)
    assert [x.arch_id for x, _ in a.history] == [x.arch_id for x, _ in b.history]
    for pa, pb in zip(a.controller.parameters(), b.controller.parameters()):
        assert torch.equal(pa, pb)


# -- AKD ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("latency, soft, hard", [(10.0, 2 ** -0.07, 0.5), (4.0, 0.8 ** -0.07, 1.0)])
def test_akd_reward_is_accuracy_times_the_latency_factor(latency: float, soft: float, hard: float) -> None:
    space = ToySpace(n=2, k=11)
    arch = space.make({"d1": int(latency), "d2": 0})  # FakeCosts: latency = sum of indices
    for constraint, factor in [(Constraint(latency_ms_max=5.0, mode="soft"), soft),
                               (Constraint(latency_ms_max=5.0, mode="soft", alpha=0.0, beta=-1.0), hard)]:
        akd = AKDStrategy(space, constraint=constraint, costs=FakeCosts(), archs_per_update=2, reward_scale=0.01)
        given = {"reward": 70.0, "val_top1": 70.0}
        [result] = akd.tell([arch], [given])
        assert given == {"reward": 70.0, "val_top1": 70.0}  # the caller's dict is not changed
        assert result["reward"] == pytest.approx(70.0 * factor) and result["accuracy"] == 70.0
        assert result["reward_factor"] == pytest.approx(factor) and result["reward_latency_ms"] == latency
        assert akd.history[-1][1] == result and akd.buffer[-1][2] == pytest.approx(0.7 * factor)
        assert akd.shape(arch, result) == {k: v for k, v in result.items() if k != "val_top1"}  # idempotent


def test_hard_constraint_rejects_samples_and_teaches_the_policy() -> None:
    space = ToySpace(n=4, k=3)
    akd = AKDStrategy(space, constraint=Constraint(params_max=4000, mode="hard"), costs=FakeCosts(),
                      archs_per_update=1000, reward="ce")
    archs = akd.ask(16)
    assert len(archs) == 16 and all(FakeCosts()(a, ["params"])["params"] <= 4000 for a in archs)
    assert akd.buffer and all(r == 0.0 for _, _, r in akd.buffer)  # the rejected draws, reward 0
    results = akd.tell(archs, [{"reward": 50.0} for _ in archs])
    assert all(r["reward_factor"] == 1.0 and r["reward"] == 50.0 for r in results)


@pytest.mark.parametrize("name, space", [("akd", "mbconv_akd"), ("kdas", "kdas_addon")])
def test_shipped_configs_build_their_strategy(name: str, space: str) -> None:
    strategy = create_strategy(shipped_config(name), create_space(space))
    assert strategy.name == name and len(strategy.ask(2)) == 2


# -- KDAS ---------------------------------------------------------------------------------------------


def grown_ops(decisions: dict[str, Any]) -> int:
    """Non-skip ops added over every round of a kdas_addon arch."""
    base = decisions["base"]
    earlier = grown_ops(base["decisions"]) if isinstance(base, dict) and base["space"] == "kdas_addon" else 0
    return earlier + sum(v != "skip" for k, v in decisions.items() if k.startswith("op"))


def run_kdas(strategy: KDASStrategy, reward: Any, steps: int = 100, batch: int = 3) -> int:
    """The search loop with a fake evaluator; the number of evaluations."""
    evaluated = 0
    for _ in range(steps):
        archs = strategy.ask(batch)
        if not archs:
            break
        strategy.tell(archs, [{"reward": reward(a)} for a in archs])
        evaluated += len(archs)
    return evaluated


def test_kdas_promotes_the_round_best_and_stops_without_gain(tmp_path: Path) -> None:
    space = create_space("kdas_addon", base="resnet8")
    reward = lambda a: 50.0 + min(grown_ops(a.decisions), 4)  # noqa: E731 - saturates: growth stops paying
    kdas = KDASStrategy(space, round_budget=5, seed=0)
    first = kdas.ask(3)
    assert first[0] == kdas.identity_addon() and len(first) == 3
    kdas.tell(first, [{"reward": reward(a)} for a in first])
    assert kdas.backbone_reward == 50.0 and len(kdas.buffer) == 0 and kdas.round_told == 2
    assert len(kdas.ask(8)) == 3  # capped at the round's remaining budget (proposed, never told)
    run_kdas(kdas, reward, steps=1)
    assert kdas.round == 1 and kdas.rounds[0]["gain"] > 0 and kdas.stopped is None
    backbone = kdas.backbone
    assert kdas.space.fixed["base"]["decisions"] == backbone.decisions
    assert kdas.rounds[0]["reward"] == max(r["reward"] for _, r in kdas.history if r["kdas_round"] == 0)
    # resume mid-round-1 from a checkpoint: the same continuation
    run_kdas(kdas, reward, steps=1)
    clone = KDASStrategy(space, round_budget=5, seed=0)
    clone.load_state_dict(through_checkpoint(kdas.state_dict(), tmp_path))
    assert clone.space.fixed == kdas.space.fixed and clone.round_told == kdas.round_told
    run_kdas(kdas, reward)
    run_kdas(clone, reward)
    assert [a.arch_id for a, _ in clone.history] == [a.arch_id for a, _ in kdas.history]
    assert kdas.rounds == clone.rounds and "no gain" in kdas.stopped and kdas.ask(4) == []
    assert [r["gain"] > 0 for r in kdas.rounds] == [True] * (len(kdas.rounds) - 1) + [False]
    for earlier, later in zip(kdas.rounds, kdas.rounds[1:]):  # each round grew the previous round's best
        grown = next(a for a, _ in kdas.history if a.arch_id == later["best_arch_id"])
        assert load_arch(grown.decisions["base"]).arch_id == earlier["best_arch_id"]


def test_kdas_stops_when_the_backbone_fills_the_parameter_budget() -> None:
    space = create_space("kdas_addon", base="resnet8")
    limit = 160_000  # resnet8 has 78,042 params; a 3x3 conv after its last stage adds ~37k
    kdas = KDASStrategy(space, constraint=Constraint(params_max=limit, mode="hard"), round_budget=6, budget_fill=0.6,
                        seed=0)
    run_kdas(kdas, lambda a: 50.0 + kdas.costs(a, ["params"])["params"] / 1e4)  # bigger is better
    assert all(CostModel(space_for(a))(a, ["params"])["params"] <= limit for a, _ in kdas.history)
    assert "params" in kdas.stopped and kdas.rounds[-1]["params"] >= 0.6 * limit
    assert kdas.backbone.arch_id == kdas.rounds[-1]["best_arch_id"]


# -- tabular replay -----------------------------------------------------------------------------------


def synthetic_table(path: Path) -> Path:
    """81 archs of 4 ternary decisions: KD favours option 0, CE option 1, params grow with the indices."""
    rows = []
    for code in range(81):
        d = [code // 3 ** i % 3 for i in range(4)]
        noise = (code * 37 % 11) / 10
        rows.append({"arch": {f"d{i + 1}": v for i, v in enumerate(d)}, "kd_top1": 60 + 3 * d.count(0) + noise,
                     "ce_top1": 55 + 3 * d.count(1) + noise, "params": 1000 + 100 * sum(d)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tabular_replay_runs_for_a_few_seeds(tmp_path: Path) -> None:
    table = Table.load(synthetic_table(tmp_path / "table.jsonl"))
    assert len(table.rows) == 81 and [d.options for d in table.decisions] == [[0, 1, 2]] * 4
    tsv = tmp_path / "correlate.tsv"  # the task=correlate layout reads the same
    tsv.write_text("arch_id\td1\td2\td3\td4\tparams\tsynflow\tkd_top1\tce_top1\n" + "".join(
        f"x{i}\t" + "\t".join(str(r["decisions"][f"d{k}"]) for k in range(1, 5))
        + f"\t{r['params']}\t0.5\t{r['kd_top1']}\t{r['ce_top1']}\n" for i, r in enumerate(table.rows)))
    assert Table.load(tsv).rows == table.rows
    constraint = Constraint(params_max=1400)
    configs = [shipped_config(name) for name in ("akd", "random", "diswot")]
    report = compare(table, {c["name"]: c for c in configs}, seeds=range(3),
                     budget=24, batch=4, constraint=constraint, checkpoints=[8])
    assert set(report["results"]) == {f"{s}/{r}" for s in ("akd", "random", "diswot") for r in ("kd", "ce")}
    assert report["checkpoints"] == [8, 24] and "akd/kd - random/kd" in report["paired"]
    assert report["ceiling_kd_top1"] == max(r["kd_top1"] for r in table.rows if r["params"] <= 1400)
    for name, curves in report["curves"].items():
        for curve in curves:
            assert len(curve) == 24 and max(curve) <= report["ceiling_kd_top1"]
            if name.endswith("/kd"):  # winners by KD reward only get better
                assert curve == sorted(curve)


def test_kdas_round_baseline_starts_at_the_backbone_reward() -> None:
    """Not at the round's first reward: a rejected first candidate (0) made every later one look good."""
    kdas = KDASStrategy(create_space("kdas_addon", base="resnet8"), round_budget=4, seed=0, reward_scale=0.01)
    reference = kdas.ask(1)
    assert reference == [kdas.identity_addon()] and kdas.learner.baseline is None
    kdas.tell(reference, [{"reward": 50.0}])
    assert kdas.learner.baseline == pytest.approx(0.5)
    kdas.backbone_reward = 60.0
    kdas.set_backbone(kdas.ask(1)[0])  # what a promotion does: a fresh controller, judged against the new backbone
    assert kdas.learner.baseline == pytest.approx(0.6)
