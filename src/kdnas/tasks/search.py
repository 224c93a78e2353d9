"""task=search: find a student architecture with ``strategy=`` in ``space=`` under ``constraint=``, scored by
a training-free ``proxy=`` (default) or short training (``search.evaluator=train``); see :mod:`kdnas.search`."""

from __future__ import annotations

from typing import Any

from kdnas.context import RunContext
from kdnas.search import search


def run(ctx: RunContext) -> dict[str, Any]:
    summary = search(ctx, ctx.run)
    print(f"best arch {summary['best_arch']} ({summary['best_arch_id']}), reward {summary['best_reward']:.6g} after "
          f"{summary['evaluated']} evaluations ({summary['cache_hits']} cached)\n"
          f"arch file: {summary['best_arch_path']}")
    return summary
