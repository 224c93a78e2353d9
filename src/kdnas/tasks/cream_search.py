"""task=cream_search: Cream of the Crop one-shot search (``space=mbconv_cream strategy=cream``); see
:mod:`kdnas.strategies.cream.search` for the loop and the files it writes into the run folder."""

from kdnas.strategies.cream.search import run

__all__ = ["run"]
