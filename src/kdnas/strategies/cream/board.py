"""Cream's prioritized path board (:class:`PrioritizedBoard`: the K best paths seen so far, each with its FLOPs, the
few training images it was admitted on and its own softmax on them, which meta matching compares against) and
:class:`CreamStrategy`, which puts it behind ask/tell: ``ask`` draws paths uniformly (single-path one-shot), ``tell``
offers them to the board. Departures from the official code: docs/decisions.md, "Cream".

Reference: Peng et al., NeurIPS 2020, Sec. 3.1, official ``lib/models/PrioritizedBoard.py``; SPOS, Guo et al., ECCV
2020.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdnas.spaces.base import Arch, SearchSpace
from kdnas.strategies.base import Strategy


@dataclass
class BoardEntry:
    path: Arch | None  # None: an external teacher, a fixed mentor that is never ranked or evicted
    score: float  # top-1 (%) the path had when admitted
    flops: int  # FLOPs = 2 x MACs of one 1-image forward pass (kdnas.spaces.costs convention)
    images: torch.Tensor  # [S, 3, H, W]: the training images stored for meta matching
    probs: torch.Tensor  # [S, K]: the entry's own softmax on ``images`` when it was admitted
    step: int  # global training step of admission

    def state(self) -> dict[str, Any]:
        return {"path": self.path.to_json() if self.path else None, "score": self.score, "flops": self.flops,
                "images": self.images, "probs": self.probs, "step": self.step}

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> BoardEntry:
        path = Arch.from_json(s["path"]) if s["path"] else None
        return cls(path, float(s["score"]), int(s["flops"]), s["images"], s["probs"], int(s["step"]))

    def summary(self) -> dict[str, Any]:
        """JSON-able description (no tensors) for history and result files."""
        return {"arch_id": self.path.arch_id if self.path else None, "score": self.score, "flops": self.flops,
                "step": self.step}


class PrioritizedBoard:
    """The K best paths. A path with score ``s`` (top-1, %) and FLOPs ``f`` never enters above ``flops_max``;
    otherwise it enters when the board is not full, when ``s`` beats the worst entry by more than ``gap`` points
    (official 5), or when ``s`` beats the worst entry with fewer FLOPs (official ``isUpdate``); the board then keeps
    its K best, ordered by score, then fewer FLOPs, then earlier admission. A path already on the board that is
    measured again replaces its old entry. The warm-up (no admission before it) is the caller's."""

    def __init__(self, size: int = 10, gap: float = 5.0, flops_max: float | None = None) -> None:
        self.size, self.gap, self.flops_max = size, gap, flops_max
        self.entries: list[BoardEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def admits(self, score: float, flops: float, path: Arch | None = None) -> bool:
        """Whether a path with this score and FLOPs would enter (``path``: ignore its own current entry)."""
        if self.flops_max is not None and flops > self.flops_max:
            return False
        rivals = [e for e in self.entries if path is None or e.path != path]
        if len(rivals) < self.size:
            return True
        worst = rivals[-1]
        return score > worst.score + self.gap or (score > worst.score and flops < worst.flops)

    def offer(self, entry: BoardEntry) -> bool:
        """Admit ``entry`` when the rules allow (keeping the K best); return whether it entered."""
        if not self.admits(entry.score, entry.flops, entry.path):
            return False
        self.entries = [e for e in self.entries if e.path != entry.path] + [entry]
        self.entries.sort(key=lambda e: (-e.score, e.flops, e.step))
        del self.entries[self.size:]
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"entries": [e.state() for e in self.entries]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = [BoardEntry.from_state(s) for s in state["entries"]]

    def to(self, device: torch.device | str) -> PrioritizedBoard:
        for e in self.entries:
            e.images, e.probs = e.images.to(device), e.probs.to(device)
        return self


class CreamStrategy(Strategy):
    """Uniform path sampling (``ask``) and board admission (``tell``); the supernet training is the loop's.

    ``tell`` takes per path a result with ``reward`` (top-1, %), ``flops``, ``images``, ``probs`` and ``step``.
    Told paths are not kept in ``history`` (one per training step); the board is the strategy's memory.
    """

    name = "cream"

    def __init__(self, space: SearchSpace, *, seed: int = 0, board_size: int = 10, gap: float = 5.0,
                 flops_max: float | None = None) -> None:
        super().__init__(space, seed=seed)
        self.board = PrioritizedBoard(board_size, gap, flops_max)

    def ask(self, n: int) -> list[Arch]:
        return [self.space.sample(self.rng) for _ in range(n)]

    def tell(self, archs: Sequence[Arch], results: Sequence[Mapping[str, Any]]) -> None:
        for arch, r in zip(archs, results, strict=True):
            self.board.offer(BoardEntry(arch, float(r["reward"]), int(r["flops"]), r["images"], r["probs"],
                                        int(r["step"])))

    def best(self) -> tuple[Arch, dict[str, Any]] | None:
        if not self.board.entries:
            return None
        top = self.board.entries[0]
        return top.path, {"reward": top.score, "flops": top.flops}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "board": self.board.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.board.load_state_dict(state["board"])
