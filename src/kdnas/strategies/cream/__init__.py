"""Cream of the Crop (Peng et al., NeurIPS 2020, "Cream of the Crop: Distilling Prioritized Paths for One-Shot
Neural Architecture Search"; official code https://github.com/microsoft/Cream).

* :mod:`.supernet`: the weight-sharing supernet over an MBConv space, path extraction, BN recalibration, MACs;
* :mod:`.board`: the prioritized path board and :class:`CreamStrategy` (uniform ask, board-admission tell);
* :mod:`.meta`: meta matching, the path-distillation loss, the look-ahead hypergradient (and the official
  code's bugs fixed here);
* :mod:`.search`: the training loop, checkpoints and result files, and :class:`Cream` (``strategy=cream``, whose
  ``search`` runs that loop for ``task=search`` and ``task=pipeline``).
"""

from kdnas.strategies.cream.board import BoardEntry, CreamStrategy, PrioritizedBoard
from kdnas.strategies.cream.meta import MetaMatching, cream_loss, lookahead_hypergradient
from kdnas.strategies.cream.search import CreamConfig, CreamSearch
from kdnas.strategies.cream.supernet import MacsTable, Supernet, recalibrate_bn

__all__ = ["BoardEntry", "CreamConfig", "CreamSearch", "CreamStrategy", "MacsTable", "MetaMatching",
           "PrioritizedBoard", "Supernet", "cream_loss", "lookahead_hypergradient", "recalibrate_bn"]
