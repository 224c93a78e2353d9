"""task=cream_search: a deprecated alias of ``task=search strategy=cream`` (the one way to run Cream), kept so that
existing commands and run folders still work; it logs a deprecation warning and runs task=search."""

from __future__ import annotations

import logging
from typing import Any

from kdnas.context import RunContext
from kdnas.tasks import search

log = logging.getLogger("kdnas")


def run(ctx: RunContext) -> dict[str, Any]:
    log.warning("task=cream_search is deprecated: run task=search strategy=cream (the same search, the same files).")
    return search.run(ctx)
