"""Autoregressive LSTM policies over a space's decisions, their policy-gradient learners, and the strategy
that plugs them into the ask/tell search loop.

Policy (Zoph & Le, ICLR 2017; ENAS, Pham et al., ICML 2018, ``general_controller.py``): an LSTM reads the
embedding of the previous choice (a learned ``g_emb`` first) and one linear softmax head per decision
gives the next choice's logits ``l``, shaped as in ENAS: ``l / temperature``, then ``c * tanh(l)`` with
``c = tanh_constant / op_tanh_reduce`` for categorical decisions. Parameters start uniform in [-0.1, 0.1].

ENAS-macro skip connections: binary decisions named ``skip{j}_{i}`` (options ``[0, 1]``, link from layer j
to a later layer i; layers are numbered by the trailing integer of the other decisions, e.g. ``op{i}``)
are sampled per layer i by attention over the earlier layers' anchors (the LSTM output at each layer's
skip step): ``q_j = v^T tanh(W1 h_j + W2 h_i)``, ``p_j = sigmoid(c * tanh(q_j / temperature))``, with the
penalty ``KL(Bernoulli(p) || Bernoulli(skip_target))`` summed over links and averaged over layers. The
next input is the mean of the selected anchors (``sum / (1 + count)``), or ``g_emb`` at the first layer.
Ours vs ENAS's code: ENAS samples a link from ``softmax([-c q, c q])`` (i.e. ``sigmoid(2 c q)``) but
penalises ``sigmoid(c q)``; we sample from the penalised ``p`` itself, so ``skip_target`` is the link
density the penalty pulls toward. Entropies are the full categorical/Bernoulli entropies (ENAS uses the
sampled term ``-p(a) log p(a)``).

Learners: :class:`Reinforce` (Williams 1992, as ENAS: reward += entropy_weight * entropy, moving-average
baseline ``b <- decay * b + (1 - decay) * R`` updated before ``A = R - b``, loss ``-log p * A +
skip_weight * KL``) and :class:`PPO` (Schulman et al. 2017, clipped surrogate, as MnasNet, Tan et al.
CVPR 2019: several epochs over each batch of sampled archs, entropy bonus in the loss). Both use Adam with
ENAS's ``beta1 = 0, eps = 1e-3``; the baseline starts at the first reward (ENAS: 0).
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

from kdnas.errors import ConfigError, ConstraintError
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
    """The autoregressive policy; ``forward`` samples (``actions=None``) or scores given actions, batched."""

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
    """Adam on the controller and a moving-average reward baseline; subclasses define :meth:`update`."""

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

    def update(self, actions: Tensor, rewards: Sequence[float]) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "baseline": self.baseline}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]


class Reinforce(PolicyLearner):
    """ENAS REINFORCE: ``loss = mean_k -log p(a_k) (R_k + w_H H_k - b) + w_skip mean_k KL_k``, one Adam step."""

    def update(self, actions: Tensor, rewards: Sequence[float]) -> dict[str, float]:
        roll = self.controller(actions=actions)
        bonus = self.entropy_weight * roll.entropy.detach()
        adv = self.advantages((torch.tensor(rewards) + bonus).tolist())
        loss = -(roll.log_prob * adv).mean() + self.skip_weight * roll.skip_kl.mean()
        self.step(loss)
        return {"loss": loss.item(), "entropy": roll.entropy.mean().item(), "skip_kl": roll.skip_kl.mean().item()}


class PPO(PolicyLearner):
    """PPO-clip: ``epochs`` Adam steps on ``-mean min(rho A, clip(rho, 1 +- clip) A) - w_H mean H + w_skip
    mean KL`` with ``rho = p_new(a) / p_old(a)`` and ``A = R - b``."""

    def __init__(self, controller: LSTMController, clip: float = 0.2, epochs: int = 4, **kwargs: Any) -> None:
        super().__init__(controller, **kwargs)
        self.clip, self.epochs = clip, epochs

    def update(self, actions: Tensor, rewards: Sequence[float]) -> dict[str, float]:
        with torch.no_grad():
            old = self.controller(actions=actions).log_prob
        adv = self.advantages(rewards)
        for _ in range(self.epochs):
            roll = self.controller(actions=actions)
            ratio = torch.exp(roll.log_prob - old)
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - self.clip, 1 + self.clip) * adv)
            loss = (-surrogate.mean() - self.entropy_weight * roll.entropy.mean()
                    + self.skip_weight * roll.skip_kl.mean())
            self.step(loss)
        return {"loss": loss.item(), "entropy": roll.entropy.mean().item(), "skip_kl": roll.skip_kl.mean().item()}


LEARNERS: dict[str, type[PolicyLearner]] = {"reinforce": Reinforce, "ppo": PPO}


class PolicyStrategy(Strategy):
    """An RL strategy: ``ask`` samples the controller; ``tell`` shapes each result's reward with the
    constraint (MnasNet Eq. 2, :meth:`Constraint.reward`) and updates the policy every ``archs_per_update``
    rewards, fed to it times ``reward_scale`` (0.01 turns a top-1 in percent into ENAS's [0, 1] accuracy, the
    scale its entropy and skip weights are tuned for).

    ``tell`` rewrites ``reward`` in the caller's result dicts (the evaluator's value is kept as ``accuracy``,
    the factor as ``reward_factor``), so the loop's history and best arch rank by the shaped reward. Under a
    hard constraint, samples over the limit are redrawn (never evaluated) and enter the next update with
    ``reject_reward``, so the policy learns the limit. Repeated archs are proposed again (policy gradients
    need on-policy samples; the evaluator's cache makes them free).
    """

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
        self.buffer: list[tuple[list[int], float]] = []  # (actions, policy reward) awaiting the next update
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
                actions = self.controller(batch=n - len(out), generator=self.generator).actions
            for row, choice in zip(actions.tolist(), self.controller.choices(actions)):
                arch = self.space.make(choice)
                if self.valid(arch):
                    out.append(self.propose(arch))
                else:
                    self.buffer.append((row, self.reject_reward))
        return out

    def shape(self, arch: Arch, result: Mapping[str, Any]) -> dict[str, Any]:
        """``reward = accuracy * prod_c (cost_c / T_c) ** w_c`` over the constraint's targets (factor 1 without)."""
        accuracy = float(result["reward"])
        costs = self.costs(arch, list(self.constraint.targets)) if self.constraint.targets else {}
        factor = self.constraint.soft_factor(costs)
        return {"accuracy": accuracy, "reward_factor": factor, "reward": accuracy * factor,
                **{f"reward_{k}": v for k, v in costs.items()}}

    def tell(self, archs: Sequence[Arch], results: Sequence[dict[str, Any]]) -> None:
        for arch, result in zip(archs, results):
            result.update(self.shape(arch, result))
        super().tell(archs, results)

    def on_result(self, arch: Arch, result: dict[str, Any]) -> None:
        r = result["reward"]
        self.buffer.append((self.controller.actions([arch.decisions])[0].tolist(),
                            self.reject_reward if math.isnan(r) else self.reward_scale * r))
        if len(self.buffer) >= self.archs_per_update:
            self.update_policy()

    def update_policy(self) -> None:
        actions = torch.tensor([a for a, _ in self.buffer], dtype=torch.long)
        stats = self.learner.update(actions, [r for _, r in self.buffer])
        stats.update(step=len(self.updates), reward_mean=sum(r for _, r in self.buffer) / len(self.buffer),
                     baseline=self.learner.baseline)
        self.updates.append(stats)
        self.buffer.clear()

    # -- state --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "controller": self.controller.state_dict(),
                "learner": self.learner.state_dict(), "generator": self.generator.get_state(),
                "buffer": [[a, r] for a, r in self.buffer], "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])
        self.learner.load_state_dict(state["learner"])
        self.generator.set_state(state["generator"])
        self.buffer = [(list(a), float(r)) for a, r in state["buffer"]]
        self.updates = [dict(u) for u in state["updates"]]
