"""Cream of the Crop (Peng et al., "Cream of the Crop: Distilling Prioritized Paths for One-Shot Neural
Architecture Search", NeurIPS 2020; https://github.com/microsoft/Cream): :mod:`.supernet` (the weight-sharing
supernet), :mod:`.board` (the prioritized path board, :class:`CreamStrategy`), :mod:`.meta` (meta matching and the
look-ahead hypergradient), :mod:`.search` (the training loop; ``strategy=cream``). Where kdnas departs from the
official code: docs/decisions.md, Cream.
"""

from kdnas.strategies.cream.board import BoardEntry, CreamStrategy, PrioritizedBoard
from kdnas.strategies.cream.meta import MetaMatching, cream_loss, lookahead_hypergradient
from kdnas.strategies.cream.search import CreamConfig, CreamSearch
from kdnas.strategies.cream.supernet import MacsTable, Supernet, recalibrate_bn

__all__ = ["BoardEntry", "CreamConfig", "CreamSearch", "CreamStrategy", "MacsTable", "MetaMatching",
           "PrioritizedBoard", "Supernet", "cream_loss", "lookahead_hypergradient", "recalibrate_bn"]
