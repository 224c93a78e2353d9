"""Training-free proxies: the proxy registry and :func:`compute_proxies`, which scores one candidate on one batch.

Invariants: each proxy declares what it reads (``needs``: forward, codes, flops, param_grad, input_grad, teacher) and
:class:`SharedPasses` runs the union once (at most one forward and one backward); a proxy needing a pass of its own
(synflow) makes it on a copy. The shared pass runs BatchNorm in train mode (batch statistics), as zero-cost-nas and
DisWOT do on fresh networks. Every proxy is "higher is better".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from kdnas.data import Batch
from kdnas.errors import ConfigError
from kdnas.models.features import FeatureNet, Features
from kdnas.registry import Registry

if TYPE_CHECKING:
    from kdnas.proxies.diswot import TeacherStats

NEEDS = frozenset({"forward", "codes", "flops", "param_grad", "input_grad", "teacher"})
# Activation functions whose input signs make the binary codes of Mellor et al. (ReLU, and the ReLU-like
# activations of the MBConv spaces).
ACTIVATIONS = frozenset({F.relu, torch.relu, Tensor.relu, F.relu6, F.hardtanh, F.leaky_relu, F.silu,
                         F.hardswish, F.gelu, F.elu})

ProxyFn = Callable[["SharedPasses"], "float | dict[str, float]"]


@dataclass(frozen=True)
class ProxySpec:
    name: str
    fn: ProxyFn
    needs: frozenset[str]


PROXIES: Registry[ProxySpec] = Registry("proxy", "evaluator.proxy",
                                        modules=["kdnas.proxies.diswot", "kdnas.proxies.zero_cost"])


def register_proxy(name: str, *, needs: Iterable[str] = ()) -> Callable[[ProxyFn], ProxyFn]:
    """Register ``fn(passes) -> float`` (or a dict of named floats, the first key being ``name``)."""
    needs = frozenset(needs)
    if needs - NEEDS:
        raise ValueError(f"proxy {name!r}: unknown needs {sorted(needs - NEEDS)}; choose from {sorted(NEEDS)}")

    def add(fn: ProxyFn) -> ProxyFn:
        PROXIES.add(name, ProxySpec(name, fn, needs))
        return fn

    return add


def list_proxies() -> list[str]:
    return PROXIES.names()


def get_proxy(name: str) -> ProxySpec:
    return PROXIES.get(name)


def prunable_weights(model: nn.Module) -> list[nn.Parameter]:
    """Conv and linear weights: the parameters zero-cost-nas (Abdelfattah et al. ICLR 2021) sums over."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad]


def gaussian_init_(model: nn.Module) -> nn.Module:
    """DisWOT's official re-initialisation (``network_weight_gaussian_init``): conv and linear weights
    N(0, 1), biases 0, norm layers weight 1 / bias 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return model


INITS: dict[str, Callable[[nn.Module], nn.Module]] = {"default": lambda m: m, "normal": gaussian_init_}


def apply_init(model: nn.Module, init: str) -> nn.Module:
    """``evaluator.init``: ``default`` keeps the network's own initialisation, ``normal`` is DisWOT's N(0, 1)."""
    if init not in INITS:
        raise ConfigError(f"evaluator.init={init!r} is not one of {', '.join(INITS)}.")
    return INITS[init](model)


class HammingKernel(TorchFunctionMode):
    """Mellor et al. ICML 2021 ("Neural Architecture Search without Training", v2) kernel, accumulated
    during a forward pass: for each activation's input, binary codes c = [x > 0] per sample and
    ``K += c c^T + (1 - c)(1 - c)^T`` (B x B, so N_units - Hamming distance). Activations are intercepted
    as function calls, so networks that call ``F.relu`` (no ``nn.ReLU`` modules to hook) are covered."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.kernel = np.zeros((batch_size, batch_size))

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in ACTIVATIONS:  # numpy, as Mellor et al.'s code, so no torch op lands in a FLOP count
            c = (args[0].detach().flatten(1) > 0).cpu().numpy().astype(np.float32)  # 0/1 sums are exact
            agree = c @ c.T  # (1 - c)(1 - c)^T = N - r_i - r_j + c c^T, with r the row sums
            r = c.sum(1, dtype=np.float64)
            self.kernel += 2 * agree.astype(np.float64) + c.shape[1] - r[:, None] - r[None, :]
        return func(*args, **(kwargs or {}))


class SharedPasses:
    """One candidate on one batch, after the shared passes: what every proxy function reads."""

    def __init__(self, model: FeatureNet, batch: Batch, needs: frozenset[str], teacher: TeacherStats | None = None
                 ) -> None:
        self.model, self.batch, self.teacher = model, batch, teacher
        self.features: Features | None = None
        self.kernel: np.ndarray | None = None
        self.weight_grads: list[tuple[Tensor, Tensor]] = []  # (weight, d CE / d weight)
        self.input_grad: Tensor | None = None
        self.flops: int | None = None
        self._run(needs)

    def _run(self, needs: frozenset[str]) -> None:
        if not needs & {"forward", "codes", "flops", "param_grad", "input_grad"}:
            return
        grads = bool(needs & {"param_grad", "input_grad"})
        x = self.batch.x.detach().clone().requires_grad_("input_grad" in needs)
        mode = HammingKernel(x.shape[0]) if "codes" in needs else nullcontext()
        counter = FlopCounterMode(display=False) if "flops" in needs else nullcontext()
        was_training = self.model.training
        self.model.train()
        try:
            with mode, counter, torch.set_grad_enabled(grads):
                feats = self.model.forward_features(x)
            if "param_grad" in needs:
                weights = prunable_weights(self.model)
                loss = F.cross_entropy(feats.logits, self.batch.y)
                g = torch.autograd.grad(loss, weights, retain_graph="input_grad" in needs)
                self.weight_grads = [(w.detach(), gw) for w, gw in zip(weights, g)]
            if "input_grad" in needs:
                self.input_grad = torch.autograd.grad(feats.logits.sum(), x)[0]
        finally:
            self.model.train(was_training)
        self.features = Features(feats.logits.detach(), [s.detach() for s in feats.stages],
                                 feats.feature_map.detach(), feats.embedding.detach())
        self.kernel = mode.kernel if isinstance(mode, HammingKernel) else None
        self.flops = counter.get_total_flops() // x.shape[0] if isinstance(counter, FlopCounterMode) else None


def compute_proxies(model: FeatureNet, batch: Batch, names: Iterable[str],
                    teacher_stats: TeacherStats | None = None) -> dict[str, float]:
    """Score ``model`` on ``batch`` with every proxy in ``names`` (one shared forward and at most one
    backward per gradient kind); returns ``{name: score}`` plus any extra terms a proxy reports
    (``diswot`` adds ``diswot_semantic`` and ``diswot_relational``)."""
    specs = [get_proxy(n) for n in dict.fromkeys(names)]
    needs = frozenset().union(*(s.needs for s in specs))
    if "teacher" in needs and teacher_stats is None:
        raise ConfigError(f"Proxies {[s.name for s in specs if 'teacher' in s.needs]} compare against a teacher: "
                          "pass teacher statistics (kdnas.proxies.teacher_stats).")
    passes = SharedPasses(model, batch, needs, teacher_stats)
    out: dict[str, float] = {}
    for spec in specs:
        with torch.no_grad():
            value = spec.fn(passes)
        out.update({k: float(v) for k, v in value.items()} if isinstance(value, dict) else {spec.name: float(value)})
    return out
