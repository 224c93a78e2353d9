"""Zero-cost proxies, the baselines of DisWOT's Table 1, as defined by zero-cost-nas (Abdelfattah et al., ICLR 2021):
sums over conv and linear weights on one batch, higher is better, read from :class:`~kdnas.proxies.base.SharedPasses`.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from kdnas.proxies.base import SharedPasses, prunable_weights, register_proxy
from kdnas.spaces.costs import count_params


@register_proxy("params")
def params(p: SharedPasses) -> float:
    """Parameter count (the trivial baseline that many proxies barely beat)."""
    return count_params(p.model)


@register_proxy("flops", needs={"flops"})
def flops(p: SharedPasses) -> float:
    """Conv/matmul FLOPs per sample (2 x MACs), counted during the shared forward pass."""
    return p.flops


@register_proxy("grad_norm", needs={"param_grad"})
def grad_norm(p: SharedPasses) -> float:
    """Sum over layers of ``||dL/dW||_2`` (zero-cost-nas ``grad_norm``)."""
    return sum(g.norm().item() for _, g in p.weight_grads)


@register_proxy("snip", needs={"param_grad"})
def snip(p: SharedPasses) -> float:
    """SNIP saliency (Lee et al. ICLR 2019) summed: ``sum |dL/dW * W|``."""
    return sum((g * w).abs().sum().item() for w, g in p.weight_grads)


@register_proxy("synflow")
def synflow(p: SharedPasses) -> float:
    """SynFlow (Tanaka et al. NeurIPS 2020): ``sum |dR/dW * W|`` with ``R = sum(f(1))`` the output of the
    network with every parameter replaced by its absolute value on an all-ones input, in float64 (it
    overflows float32 on deep nets). Its own pass, on a copy: BN layers use fresh running statistics in eval
    mode, i.e. act as the identity, as zero-cost-nas's BN-free copies do."""
    net = copy.deepcopy(p.model).double()
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.abs_()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    net.eval()
    x = torch.ones(1, *p.batch.x.shape[1:], dtype=torch.float64, device=p.batch.x.device)
    weights = prunable_weights(net)
    with torch.enable_grad():
        grads = torch.autograd.grad(net(x).sum(), weights)
    return sum((g * w).abs().sum().item() for w, g in zip(weights, grads))


@register_proxy("naswot", needs={"codes"})
def naswot(p: SharedPasses) -> float:
    """NASWOT (Mellor et al. ICML 2021): ``log |det K_H|`` of the Hamming kernel of binary activation codes
    (see :class:`~kdnas.proxies.base.HammingKernel`); ``-inf`` when two inputs share every code."""
    return float(np.linalg.slogdet(p.kernel)[1])


@register_proxy("jacob_cov", needs={"input_grad"})
def jacob_cov(p: SharedPasses) -> float:
    """Jacobian covariance (Mellor et al. 2020, v1 of "NAS without training"): with ``J`` the gradients of
    the summed logits w.r.t. each input and ``v`` the eigenvalues of their correlation matrix,
    ``-sum(log(v + k) + 1 / (v + k))``, k = 1e-5. NaN when an input's gradient is constant."""
    corr = torch.corrcoef(p.input_grad.reshape(p.input_grad.shape[0], -1).double())
    if not torch.isfinite(corr).all():
        return math.nan
    v, k = torch.linalg.eigvalsh(corr), 1e-5
    return -(torch.log(v + k) + 1.0 / (v + k)).sum().item()
