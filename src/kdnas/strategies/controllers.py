"""Autoregressive LSTM policies over a space's decisions (:class:`LSTMController`), their policy-gradient learners
(:class:`Reinforce`, :class:`PPO`) and the ask/tell strategy that drives them (:class:`PolicyStrategy`).

Invariant: each arch's log-probability under the policy that drew it is stored at ``ask`` (and checkpointed), so a
batch told across several updates (``search.batch`` > ``strategy.archs_per_update``) is corrected: PPO's ratio is
taken against it, REINFORCE weights each sample by ``p_now / p_sampled``; each update records ``off_policy``, the
fraction of its samples an earlier policy drew. Departures from ENAS's code: docs/decisions.md, "Controllers".

References: Zoph & Le, ICLR 2017; ENAS, Pham et al., ICML 2018 (``general_controller.py``); REINFORCE, Williams
1992; PPO, Schulman et al. 2017, as in MnasNet, Tan et al., CVPR 2019.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical

from kdnas.errors import CheckpointError, ConfigError, ConstraintError
from kdnas.spaces.base import Arch, Decision, SearchSpace
from kdnas.spaces.constraints import Constraint
from kdnas.spaces.costs import CostModel
from kdnas.strategies.base import Strategy
from kdnas.utils import derive_seed

SKIP_NAME = re.compile(r"^skip(\d+)_(\d+)$")
LAYER_NAME = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class SkipGroup:
    """The binary ENAS-macro links into ``layer``: ``names[k]`` links from earlier layer ``sources[k]``."""

    layer: int
    sources: tuple[int, ...]
    names: tuple[str, ...]


Step = Decision | SkipGroup


def plan(decisions: Sequence[Decision]) -> list[Step]:
    """The controller's step order. Without ``skip{j}_{i}`` decisions: the space's order. With them (ENAS
    macro): decisions without a layer number, then per layer i its decisions followed by its skip group
    (empty for a layer without links: it still records the layer's anchor)."""
    links = {d.name: SKIP_NAME.match(d.name) for d in decisions if SKIP_NAME.match(d.name) and d.options == [0, 1]}
    if not links:
        return list(decisions)
    choices = [d for d in decisions if d.name not in links]

    def layer_of(d: Decision) -> int:
        m = LAYER_NAME.search(d.name)
        return int(m.group(1)) if m else 0

    into: dict[int, list[tuple[int, str]]] = {}
    for name, m in links.items():
        into.setdefault(int(m.group(2)), []).append((int(m.group(1)), name))
    last = max([*into, *(j for pairs in into.values() for j, _ in pairs), *map(layer_of, choices)])
    steps: list[Step] = [d for d in choices if layer_of(d) == 0]
    for i in range(1, last + 1):
        pairs = sorted(into.get(i, []))
        steps += [d for d in choices if layer_of(d) == i]
        steps.append(SkipGroup(i, tuple(j for j, _ in pairs), tuple(n for _, n in pairs)))
    return steps


@dataclass
class Rollout:
    """A batch of B sequences: option indices [B, C] (columns in ``LSTMController.columns`` order), and per
    sequence the log-probability, entropy and skip-target KL [B]."""

    actions: Tensor
    log_prob: Tensor
    entropy: Tensor
    skip_kl: Tensor


def bernoulli_kl(p: Tensor, target: float) -> Tensor:
    """KL(Bernoulli(p) || Bernoulli(target)), elementwise."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return p * torch.log(p / target) + (1 - p) * torch.log((1 - p) / (1 - target))


class LSTMController(nn.Module):
    """The autoregressive policy; ``forward`` samples (``actions=None``) or scores given actions, batched.

    An LSTM reads the embedding of the previous choice (a learned ``g_emb`` first); one linear softmax head per
    decision gives the next choice's logits ``l``, shaped as in ENAS: ``l / temperature``, then ``c * tanh(l)`` with
    ``c = tanh_constant / op_tanh_reduce`` for categorical decisions. Parameters start uniform in [-0.1, 0.1].

    ENAS-macro skip connections: binary decisions named ``skip{j}_{i}`` (options ``[0, 1]``, link from layer j to a
    later layer i; layers are numbered by the trailing integer of the other decisions, e.g. ``op{i}``) are sampled
    per layer i by attention over the earlier layers' anchors (the LSTM output at each layer's skip step):
    ``q_j = v^T tanh(W1 h_j + W2 h_i)``, ``p_j = sigmoid(c * tanh(q_j / temperature))``, with the penalty
    ``KL(Bernoulli(p) || Bernoulli(skip_target))`` summed over links and averaged over layers. The next input is
    the mean of the selected anchors (``sum / (1 + count)``), or ``g_emb`` at the first layer. Entropies are the
    full categorical/Bernoulli entropies.
    """

    def __init__(self, decisions: Sequence[Decision], hidden: int = 64, lstm_layers: int = 1,
                 tanh_constant: float | None = None, op_tanh_reduce: float = 1.0, temperature: float | None = None,
                 skip_target: float = 0.4, seed: int = 0) -> None:
        super().__init__()
        self.steps = plan(decisions)
        choices = [s for s in self.steps if isinstance(s, Decision)]
        self.columns = [n for s in self.steps for n in (s.names if isinstance(s, SkipGroup) else (s.name,))]
        self.options = {d.name: list(d.options) for d in decisions}
        self.head_of = {d.name: k for k, d in enumerate(choices)}
        self.tanh_constant, self.op_tanh_reduce, self.temperature = tanh_constant, op_tanh_reduce, temperature
        self.skip_target = skip_target
        self.g_emb = nn.Parameter(torch.empty(1, hidden))
        self.lstm = nn.ModuleList(nn.LSTMCell(hidden, hidden) for _ in range(lstm_layers))
        self.heads = nn.ModuleList(nn.Linear(hidden, len(d.options), bias=False) for d in choices)
        self.embeddings = nn.ModuleList(nn.Embedding(len(d.options), hidden) for d in choices)
        if any(isinstance(s, SkipGroup) for s in self.steps):
            self.w_attn_1 = nn.Linear(hidden, hidden, bias=False)
            self.w_attn_2 = nn.Linear(hidden, hidden, bias=False)
            self.v_attn = nn.Linear(hidden, 1, bias=False)
        g = torch.Generator().manual_seed(seed)
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1, generator=g)

    def _shape(self, logits: Tensor, reduce: float) -> Tensor:
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant / reduce * torch.tanh(logits)
        return logits

    def _cell(self, x: Tensor, state: list[tuple[Tensor, Tensor]]) -> Tensor:
        for k, cell in enumerate(self.lstm):
            state[k] = cell(x, state[k])
            x = state[k][0]
        return x

    def _attend(self, h: Tensor, keys: dict[int, Tensor], sources: Sequence[int]) -> Bernoulli:
        """ENAS attention over earlier layers: ``logit_j = v^T tanh(W1 h_j + W2 h)``, shaped like the logits."""
        q = self.v_attn(torch.tanh(torch.stack([keys[j] for j in sources], 1) + self.w_attn_2(h)[:, None]))
        return Bernoulli(logits=self._shape(q.squeeze(2), 1.0))

    def forward(self, batch: int = 1, actions: Tensor | None = None,
                generator: torch.Generator | None = None) -> Rollout:
        n = batch if actions is None else actions.shape[0]
        zeros = self.g_emb.new_zeros(n, self.g_emb.shape[1])
        state = [(zeros, zeros) for _ in self.lstm]
        x = self.g_emb.expand(n, -1)
        cols: list[Tensor] = []
        kls: list[Tensor] = []
        log_prob, entropy, offset = zeros[:, 0], zeros[:, 0], 0
        anchors: dict[int, Tensor] = {}  # layer -> its LSTM output
        keys: dict[int, Tensor] = {}  # layer -> W1 anchor
        for step in self.steps:
            h = self._cell(x, state)
            width = len(step.names) if isinstance(step, SkipGroup) else 1
            given = None if actions is None else actions[:, offset: offset + width]
            offset += width
            if isinstance(step, Decision):
                k = self.head_of[step.name]
                dist = Categorical(logits=self._shape(self.heads[k](h), self.op_tanh_reduce))
                a = torch.multinomial(dist.probs, 1, generator=generator) if given is None else given
                log_prob = log_prob + dist.log_prob(a[:, 0])
                entropy = entropy + dist.entropy()
                x = self.embeddings[k](a[:, 0])
                cols.append(a)
                continue
            if step.sources:
                dist = self._attend(h, keys, step.sources)
                a = torch.bernoulli(dist.probs, generator=generator).long() if given is None else given
                log_prob = log_prob + dist.log_prob(a.float()).sum(1)
                entropy = entropy + dist.entropy().sum(1)
                kls.append(bernoulli_kl(dist.probs, self.skip_target).sum(1))
                linked = torch.stack([anchors[j] for j in step.sources], 1)  # [n, S, H]
                x = (a.float()[:, None] @ linked).squeeze(1) / (1 + a.sum(1, keepdim=True))
                cols.append(a)
            else:
                x = self.g_emb.expand(n, -1)
            anchors[step.layer], keys[step.layer] = h, self.w_attn_1(h)
        skip_kl = torch.stack(kls).mean(0) if kls else zeros[:, 0]
        return Rollout(torch.cat(cols, 1), log_prob, entropy, skip_kl)

    def choices(self, actions: Tensor) -> list[dict[str, Any]]:
        """Option values per row of ``actions``."""
        return [{c: self.options[c][i] for c, i in zip(self.columns, row)} for row in actions.tolist()]

    def actions(self, choices: Sequence[Mapping[str, Any]]) -> Tensor:
        """Inverse of :meth:`choices` (extra keys, e.g. a space's fixed decisions, are ignored)."""
        return torch.tensor([[self.options[c].index(ch[c]) for c in self.columns] for ch in choices],
                            dtype=torch.long)


class PolicyLearner:
    """Adam on the controller (ENAS's ``beta1 = 0, eps = 1e-3``) and a moving-average reward baseline
    ``b <- decay * b + (1 - decay) * R``, started at the first reward; subclasses define :meth:`update`."""

    def __init__(self, controller: LSTMController, lr: float = 1e-3, entropy_weight: float = 1e-4,
                 baseline_decay: float = 0.99, skip_weight: float = 0.8) -> None:
        self.controller = controller
        self.entropy_weight, self.baseline_decay, self.skip_weight = entropy_weight, baseline_decay, skip_weight
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr, betas=(0.0, 0.999), eps=1e-3)
        self.baseline: float | None = None

    def advantages(self, rewards: Sequence[float]) -> Tensor:
        """``A_k = R_k - b_k`` with the baseline updated by each reward first, in order (ENAS)."""
        out = []
        for r in rewards:
            b = r if self.baseline is None else self.baseline
            self.baseline = self.baseline_decay * b + (1 - self.baseline_decay) * r
            out.append(r - self.baseline)
        return torch.tensor(out)

    def step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def update(self, actions: Tensor, sampled_log_prob: Tensor, rewards: Sequence[float]) -> dict[str, float]:
        """One update on B samples: option indices [B, C], their log-probabilities under the policy that drew
        them [B], and their rewards."""
        raise NotImplementedError

    @staticmethod
    def stats(roll: Rollout, ratio: Tensor, loss: Tensor) -> dict[str, float]:
        """What an update reports; ``off_policy``: the share of samples an earlier policy drew (ratio != 1)."""
        return {"loss": loss.item(), "entropy": roll.entropy.mean().item(), "skip_kl": roll.skip_kl.mean().item(),
                "ratio_min": ratio.min().item(), "ratio_max": ratio.max().item(),
                "off_policy": ((ratio - 1).abs() > 1e-4).float().mean().item()}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]


class Reinforce(PolicyLearner):
    """ENAS REINFORCE, importance-weighted: ``loss = -mean_k rho_k (R_k + w_H H_k - b) + w_skip mean_k KL_k``
    with ``rho_k = p_now(a_k) / p_sampled(a_k)``, one Adam step. Its gradient is ``-mean_k rho_k A_k grad log
    p(a_k)``: ENAS's ``-log p * A`` for on-policy samples (rho = 1), the unbiased importance-sampled gradient for
    samples an earlier policy drew (a batch told across updates; kept rather than dropped, as each costs a
    candidate training)."""

    def update(self, actions: Tensor, sampled_log_prob: Tensor, rewards: Sequence[float]) -> dict[str, float]:
        roll = self.controller(actions=actions)
        ratio = torch.exp(roll.log_prob - sampled_log_prob)
        bonus = self.entropy_weight * roll.entropy.detach()
        adv = self.advantages((torch.tensor(rewards) + bonus).tolist())
        loss = -(ratio * adv).mean() + self.skip_weight * roll.skip_kl.mean()
        self.step(loss)
        return self.stats(roll, ratio.detach(), loss)


class PPO(PolicyLearner):
    """PPO-clip: ``epochs`` Adam steps on ``-mean min(rho A, clip(rho, 1 +- clip) A) - w_H mean H + w_skip
    mean KL`` with ``rho = p_new(a) / p_old(a)``, ``p_old`` the policy that drew ``a`` (stored at sampling), and
    ``A = R - b``. The reported ratio and ``off_policy`` are those of the first epoch, before any step."""

    def __init__(self, controller: LSTMController, clip: float = 0.2, epochs: int = 4, **kwargs: Any) -> None:
        super().__init__(controller, **kwargs)
        self.clip, self.epochs = clip, epochs

    def update(self, actions: Tensor, sampled_log_prob: Tensor, rewards: Sequence[float]) -> dict[str, float]:
        adv = self.advantages(rewards)
        for epoch in range(self.epochs):
            roll = self.controller(actions=actions)
            ratio = torch.exp(roll.log_prob - sampled_log_prob)
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
            loss = (-surrogate.mean() - self.entropy_weight * roll.entropy.mean()
                    + self.skip_weight * roll.skip_kl.mean())
            if epoch == 0:
                stats = self.stats(roll, ratio.detach(), loss)
            self.step(loss)
        return stats


LEARNERS: dict[str, type[PolicyLearner]] = {"reinforce": Reinforce, "ppo": PPO}


@dataclass
class PolicySettings:
    """The ``strategy.*`` keys of a controller-driven strategy (:class:`PolicyStrategy`'s keyword arguments)."""

    max_tries: int = 200
    algo: str = "reinforce"
    hidden: int = 64
    lstm_layers: int = 1
    tanh_constant: float | None = 1.5
    op_tanh_reduce: float = 1.0
    temperature: float | None = None
    skip_target: float = 0.4
    skip_weight: float = 0.8
    entropy_weight: float = 1e-4
    lr: float = 1e-3
    baseline_decay: float = 0.99
    ppo_clip: float = 0.2
    ppo_epochs: int = 4
    archs_per_update: int = 1
    reward_scale: float = 1.0
    reject_reward: float = 0.0


class PolicyStrategy(Strategy):
    """An RL strategy: ``ask`` samples the controller; ``tell`` shapes each result's reward with the
    constraint (MnasNet Eq. 2, :meth:`Constraint.reward`) and updates the policy every ``archs_per_update``
    rewards, fed to it times ``reward_scale`` (0.01 turns a top-1 in percent into ENAS's [0, 1] accuracy, the
    scale its entropy and skip weights are tuned for).

    ``tell`` records and returns new result dicts (the caller's are never changed): ``reward`` shaped, the
    evaluator's value kept as ``accuracy``, the factor as ``reward_factor``, so the loop's history and best arch
    rank by the shaped reward. Shaping is idempotent (a shaped result shapes to itself), so a repeated arch,
    whose results the evaluator's cache serves again, is shaped once. The factor multiplies a non-negative
    reward (a top-1): a negative reward with a factor other than 1 is refused (:meth:`check_reward_kind`
    refuses proxy scores under soft targets up front). Under a hard constraint, samples over the limit are
    redrawn (never evaluated) and enter the next update with ``reject_reward``, so the policy learns the limit.
    Repeated archs are proposed again (policy gradients need samples of the current policy; the evaluator's
    cache makes them free). Each sample's log-probability is stored when it is drawn, for the off-policy
    correction of the learners (see the module docstring).
    """

    default_evaluator = "train"  # a policy learns from trained top-1 (AKD, KDAS); evaluator=proxy opts out
    shapes_rewards = True

    def __init__(self, space: SearchSpace, *, constraint: Constraint | None = None, costs: CostModel | None = None,
                 seed: int = 0, max_tries: int = 200, algo: str = "reinforce", hidden: int = 64,
                 lstm_layers: int = 1, tanh_constant: float | None = 1.5, op_tanh_reduce: float = 1.0,
                 temperature: float | None = None, skip_target: float = 0.4, skip_weight: float = 0.8,
                 entropy_weight: float = 1e-4, lr: float = 1e-3, baseline_decay: float = 0.99, ppo_clip: float = 0.2,
                 ppo_epochs: int = 4, archs_per_update: int = 1, reward_scale: float = 1.0,
                 reject_reward: float = 0.0) -> None:
        super().__init__(space, constraint=constraint, costs=costs, seed=seed, max_tries=max_tries)
        if algo not in LEARNERS:
            raise ConfigError(f"strategy.algo={algo!r} is not one of {', '.join(LEARNERS)}.")
        self.seed = seed
        self.controller_kwargs = {"hidden": hidden, "lstm_layers": lstm_layers, "tanh_constant": tanh_constant,
                                  "op_tanh_reduce": op_tanh_reduce, "temperature": temperature,
                                  "skip_target": skip_target}
        self.learner_kwargs = {"lr": lr, "entropy_weight": entropy_weight, "baseline_decay": baseline_decay,
                               "skip_weight": skip_weight, **({"clip": ppo_clip, "epochs": ppo_epochs}
                                                              if algo == "ppo" else {})}
        self.algo, self.archs_per_update = algo, archs_per_update
        self.reward_scale, self.reject_reward = reward_scale, reject_reward
        self.generator = torch.Generator().manual_seed(derive_seed(seed, "strategy", self.name, "sampling"))
        # (actions, log-prob when drawn, policy reward) awaiting the next update
        self.buffer: list[tuple[list[int], float, float]] = []
        self.pending: dict[str, tuple[list[int], float]] = {}  # asked, not yet told: arch_id -> (actions, log-prob)
        self.updates: list[dict[str, float]] = []
        self.build_policy()

    def build_policy(self) -> None:
        """(Re)create controller and learner for the current space (KDAS calls it again each round)."""
        self.controller = LSTMController(self.space.decisions(), seed=derive_seed(self.seed, "controller"),
                                         **self.controller_kwargs)
        self.learner = LEARNERS[self.algo](self.controller, **self.learner_kwargs)

    # -- ask / tell -------------------------------------------------------------------------------
    def ask(self, n: int) -> list[Arch]:
        out: list[Arch] = []
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > self.max_tries:
                raise ConstraintError(f"The {self.name} controller drew {len(out)} of {n} archs of space "
                                      f"{self.space.name!r} meeting the constraint in {self.max_tries} batch draws. "
                                      "Raise the limit, use constraint.mode=soft, or raise strategy.max_tries.")
            with torch.no_grad():
                roll = self.controller(batch=n - len(out), generator=self.generator)
            for row, log_prob, choice in zip(roll.actions.tolist(), roll.log_prob.tolist(),
                                             self.controller.choices(roll.actions)):
                arch = self.space.make(choice)
                if self.valid(arch):
                    out.append(self.propose(arch))
                    self.pending[arch.arch_id] = (row, log_prob)  # a repeat in one draw: the same row and policy
                else:
                    self.buffer.append((row, log_prob, self.reject_reward))
        return out

    def check_reward_kind(self, kind: str) -> None:
        if kind.startswith("proxy:") and self.constraint.mode == "soft" and self.constraint.targets:
            targets = ", ".join(f"constraint.{k}" for k in self.constraint.targets_by_key())
            raise ConfigError(
                f"strategy={self.name} with a soft constraint ({targets}, constraint.mode=soft) multiplies each "
                "reward by (cost / target) ** w, which penalises cost only for a non-negative reward such as a trained "
                f"top-1, but evaluator=proxy rewards the {kind} score, whose sign and offset are arbitrary (a "
                "negative DisWOT score times a factor < 1 rises, so slow nets would win). Train the candidates "
                "(evaluator=train, the paper's reward), or reject over-limit candidates with "
                "constraint.mode=hard.")

    def shape(self, arch: Arch, result: Mapping[str, Any]) -> dict[str, Any]:
        """``reward = accuracy * prod_c (cost_c / T_c) ** w_c`` over the constraint's targets (factor 1 without);
        ``accuracy`` is the evaluator's reward, read back from an already shaped result (idempotent)."""
        accuracy = float(result["accuracy"] if "reward_factor" in result else result["reward"])
        costs = self.costs(arch, list(self.constraint.targets)) if self.constraint.targets else {}
        factor = self.constraint.soft_factor(costs)
        if accuracy < 0 and factor != 1:
            raise ConfigError(f"strategy={self.name} got a negative reward {accuracy:.6g} for arch {arch.arch_id} "
                              "under a soft constraint: the cost factor would raise it. Soft targets need a "
                              "non-negative reward (a trained top-1); use constraint.mode=hard with a signed score.")
        return {"accuracy": accuracy, "reward_factor": factor, "reward": accuracy * factor,
                **{f"reward_{k}": v for k, v in costs.items()}}

    def record(self, arch: Arch, result: Mapping[str, Any]) -> dict[str, Any]:
        return {**super().record(arch, result), **self.shape(arch, result)}

    def tell(self, archs: Sequence[Arch], results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        recorded = super().tell(archs, results)
        for arch in archs:
            self.pending.pop(arch.arch_id, None)
        return recorded

    def drawn(self, arch: Arch) -> tuple[list[int], float]:
        """The arch's actions and their log-probability when drawn; an arch this controller never proposed (told
        directly, e.g. in a replay) is scored under the current policy."""
        if arch.arch_id in self.pending:
            return self.pending[arch.arch_id]
        actions = self.controller.actions([arch.decisions])
        with torch.no_grad():
            return actions[0].tolist(), self.controller(actions=actions).log_prob.item()

    def on_result(self, arch: Arch, result: dict[str, Any]) -> None:
        r = result["reward"]
        row, log_prob = self.drawn(arch)
        self.buffer.append((row, log_prob, self.reject_reward if math.isnan(r) else self.reward_scale * r))
        if len(self.buffer) >= self.archs_per_update:
            self.update_policy()

    def update_policy(self) -> None:
        actions = torch.tensor([a for a, _, _ in self.buffer], dtype=torch.long)
        rewards = [r for _, _, r in self.buffer]
        stats = self.learner.update(actions, torch.tensor([p for _, p, _ in self.buffer]), rewards)
        stats.update(step=len(self.updates), reward_mean=sum(rewards) / len(rewards), baseline=self.learner.baseline)
        self.updates.append(stats)
        self.buffer.clear()

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "controller": self.controller.state_dict(),
                "learner": self.learner.state_dict(), "generator": self.generator.get_state(),
                "buffer": [list(b) for b in self.buffer], "updates": self.updates,
                "pending": {k: list(v) for k, v in self.pending.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if any(len(b) != 3 for b in state["buffer"]) or "pending" not in state:
            raise CheckpointError(f"This {self.name} search state was written by an older kdnas that did not store "
                                  "sampling log-probabilities; it cannot resume exactly. Start a new run folder, or "
                                  "pass resume=false.")
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])
        self.learner.load_state_dict(state["learner"])
        self.generator.set_state(state["generator"])
        self.buffer = [(list(a), float(p), float(r)) for a, p, r in state["buffer"]]
        self.pending = {k: (list(a), float(p)) for k, (a, p) in state["pending"].items()}
        self.updates = [dict(u) for u in state["updates"]]
