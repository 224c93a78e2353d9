"""task=search: find a student architecture with ``strategy=`` in ``space=`` under ``constraint=``, scored by
a training-free ``proxy=`` (default) or short training (``search.evaluator=train``); see :mod:`kdnas.search`.

``strategy=cream`` is weight-sharing (its evaluator is the supernet itself) and runs its own loop
(``Strategy.search``), with the same output files (history.jsonl, best_arch.json)."""

from __future__ import annotations

from typing import Any

from kdnas.context import RunContext
from kdnas.search import run_strategy


def run(ctx: RunContext) -> dict[str, Any]:
    summary = run_strategy(ctx, ctx.run)
    print(f"best arch {summary['best_arch']} ({summary['best_arch_id']}), reward {summary['best_reward']:.6g}"
          + (f" after {summary['evaluated']} evaluations ({summary['cache_hits']} cached)" if "evaluated" in summary
             else "") + f"\narch file: {summary['best_arch_path']}")
    return summary
