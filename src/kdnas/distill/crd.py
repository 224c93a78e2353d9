"""Contrastive Representation Distillation (Tian, Krishnan & Isola, ICLR 2020) as RepDistiller implements it:
embedding heads, a momentum-updated memory of every training sample's embedding, and the NCE loss of
Eq. (18) against ``nce_k`` negatives drawn from other classes (RepDistiller's ``mode='exact'``).

Memory rows are indexed by the full-training-set index every :class:`~kdnas.data.Batch` carries; negatives
come from a generator reseeded each epoch from (seed, epoch), so a resumed run draws the same ones.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from kdnas.distill.connectors import Embed
from kdnas.utils import generator


def nce_loss(scores: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """Tian et al. ICLR 2020, Eq. (18), RepDistiller ``ContrastLoss``: NCE with a uniform noise distribution
    ``P_n = 1 / n_data``. ``scores`` [B, 1 + K] holds the (normalised) critic of the positive in column 0 and of
    the K negatives after it; the loss is ``-(sum log D(pos) + sum log(1 - D(neg))) / B`` with
    ``D(x) = x / (x + K P_n)``."""
    m_pn = (scores.shape[1] - 1) / n_data
    log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + m_pn + eps))
    log_d0 = torch.log(m_pn / (scores[:, 1:] + m_pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / scores.shape[0]


class ContrastMemory(nn.Module):
    """RepDistiller ``ContrastMemory``: one L2-normalised embedding per training sample for each network,
    updated as ``normalize(m * old + (1 - m) * new)``; the critic ``exp(v . w / T) / Z`` with Z fixed from the
    first batch (``mean * n_data``)."""

    def __init__(self, dim: int, size: int, n_data: int, nce_t: float, momentum: float) -> None:
        super().__init__()
        self.n_data, self.nce_t, self.momentum = n_data, nce_t, momentum
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(size, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(size, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.tensor([-1.0, -1.0]))  # (Z_s, Z_t); < 0 = not set yet

    def _scores(self, memory: Tensor, v: Tensor, sample_idx: Tensor, which: int) -> Tensor:
        weight = memory[sample_idx].detach()  # [B, 1 + K, D]
        out = torch.exp(torch.bmm(weight, v.unsqueeze(2)).squeeze(2).float() / self.nce_t)
        if self.z[which] < 0:
            self.z[which] = out.detach().mean() * self.n_data
        return out / self.z[which].clone()  # a copy: the other side's first call writes into `z` in place

    def forward(self, v_s: Tensor, v_t: Tensor, idx: Tensor, sample_idx: Tensor) -> tuple[Tensor, Tensor]:
        """Scores of the student anchors against the teacher memory and vice versa, then the memory update."""
        out_s = self._scores(self.memory_t, v_s, sample_idx, 0)
        out_t = self._scores(self.memory_s, v_t, sample_idx, 1)
        with torch.no_grad():
            for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                pos = memory[idx] * self.momentum + v.detach().to(memory.dtype) * (1 - self.momentum)
                memory.index_copy_(0, idx, pos / pos.norm(dim=1, keepdim=True))
        return out_s, out_t


class NegativeSampler(nn.Module):
    """Uniform draws, with replacement, from the training samples of a class other than the anchor's."""

    def __init__(self, labels: Tensor, indices: Tensor, num_classes: int, k: int, seed: int) -> None:
        super().__init__()
        split_labels = labels[indices]
        pools = [indices[split_labels != c] for c in range(num_classes)]
        self.k, self.seed = k, seed
        self.register_buffer("pools", pad_sequence(pools, batch_first=True), persistent=False)
        self.register_buffer("sizes", torch.tensor([len(p) for p in pools]), persistent=False)
        self.gen = generator(seed, "crd", 0)

    def on_epoch_start(self, epoch: int) -> None:
        self.gen = generator(self.seed, "crd", epoch)

    def forward(self, y: Tensor) -> Tensor:
        u = torch.rand(len(y), self.k, generator=self.gen).to(y.device)
        return self.pools[y[:, None], (u * self.sizes[y][:, None]).long()]


class CRDLoss(nn.Module):
    """RepDistiller ``CRDLoss``: embed both networks' pooled features, score them against the other network's
    memory, and sum the two NCE losses (teacher-anchored and student-anchored)."""

    def __init__(self, s_dim: int, t_dim: int, *, labels: Tensor, indices: Tensor, num_classes: int, feat_dim: int,
                 nce_k: int, nce_t: float, momentum: float, seed: int) -> None:
        super().__init__()
        self.n_data = len(indices)
        self.embed_s, self.embed_t = Embed(s_dim, feat_dim), Embed(t_dim, feat_dim)
        self.memory = ContrastMemory(feat_dim, len(labels), self.n_data, nce_t, momentum)
        # 16,384 negatives exceed a 10k-image set: never more than the other samples there are.
        self.sampler = NegativeSampler(labels, indices, num_classes, min(nce_k, self.n_data - 1), seed)

    def on_epoch_start(self, epoch: int) -> None:
        self.sampler.on_epoch_start(epoch)

    def forward(self, f_s: Tensor, f_t: Tensor, index: Tensor, target: Tensor) -> Tensor:
        sample_idx = torch.cat([index[:, None], self.sampler(target)], dim=1)
        out_s, out_t = self.memory(self.embed_s(f_s), self.embed_t(f_t), index, sample_idx)
        return nce_loss(out_s, self.n_data) + nce_loss(out_t, self.n_data)
