"""Replay AKD, random search and evolution (their shipped configs; KD and CE reward) over a measured table for many
seeds, under one hard cost limit, judged by their winners' KD top-1 (kdnas.benchmarks.tabular):

    python scripts/tabular_replay.py RUN/correlate.tsv --budget 100 --seeds 20 --out replay.json
    python scripts/tabular_replay.py --evals KD_DIR CE_DIR  # two train-evaluator caches ($KDNAS_CACHE_DIR/evals/FP)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kdnas.benchmarks.tabular import Table, compare, shipped_config
from kdnas.spaces.constraints import LIMITS, Constraint

KEYS = {cost: key for key, cost in LIMITS.items()}  # params -> params_max, ...


def markdown(report: dict) -> str:
    marks = report["checkpoints"]
    lines = [f"Winners' KD top-1 (mean +- s.e. over {len(report['seeds'])} seeds; {report['rows']} table rows, "
             f"limit {report['constraint']}, best row within it {report['ceiling_kd_top1']:.2f})", "",
             "| strategy/reward | " + " | ".join(f"{m} evals" for m in marks) + " |",
             "|---|" + "---|" * len(marks)]
    for name, by_mark in report["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{by_mark[str(m)]['mean']:.2f} +- {by_mark[str(m)]['se']:.2f}"
                                                 for m in marks) + " |")
    lines += ["", f"| paired difference at {report['budget']} evals | mean +- s.e. | wins | ties |",
              "|---|---|---|---|"]
    lines += [f"| {name} | {p['mean']:+.2f} +- {p['se']:.2f} | {p['wins']:.0%} | {p['ties']:.0%} |"
              for name, p in report["paired"].items()]
    return "\n".join(lines)


def table_from_evals(kd_dir: str | Path, ce_dir: str | Path, metric: str = "test_top1") -> Table:
    """The archs that both cache folders hold (KD and CE ground truth of one recipe), in the KD folder's order."""
    def read(folder: str | Path) -> dict[str, dict]:
        entries = [json.loads(p.read_text()) for p in sorted(Path(folder).expanduser().glob("*.json"))]
        return {e["arch_id"]: e for e in entries if metric in e.get("result", {})}

    kd, ce = read(kd_dir), read(ce_dir)
    rows = [{"decisions": e["arch"]["decisions"], "kd_top1": float(e["result"][metric]),
             "ce_top1": float(ce[a]["result"][metric]),
             **{k: float(v) for k, v in e["result"].get("costs", {}).items()}} for a, e in kd.items() if a in ce]
    if not rows:
        raise SystemExit(f"{kd_dir} and {ce_dir} share no evaluated arch with {metric}.")
    return Table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", help="correlate.tsv, or a .jsonl/.csv with arch, kd_top1, ce_top1, params")
    parser.add_argument("--evals", nargs=2, metavar=("KD_DIR", "CE_DIR"), default=None,
                        help="build the table from two train-evaluator cache folders instead")
    parser.add_argument("--metric", default="test_top1", help="with --evals: test_top1 | val_top1")
    parser.add_argument("--budget", type=int, default=100, help="evaluations per search")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="archs per ask/tell step")
    parser.add_argument("--strategies", nargs="+", default=["akd", "random", "diswot"],
                        help="conf/strategy files (diswot: the evolution)")
    parser.add_argument("--cost", default="params", choices=sorted(KEYS), help="the limited cost")
    parser.add_argument("--quantile", type=float, default=0.5, help="limit = this quantile of the table's cost")
    parser.add_argument("--limit", type=float, default=None, help="an absolute limit instead of --quantile")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[10, 25, 50])
    parser.add_argument("--out", default=None, help="write the full report (curves included) as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if (args.table is None) == (args.evals is None):
        parser.error("give a table file or --evals KD_DIR CE_DIR (one of them)")
    table = Table.load(args.table) if args.evals is None else table_from_evals(*args.evals, metric=args.metric)
    limit = args.limit if args.limit is not None else float(np.quantile([r[args.cost] for r in table.rows],
                                                                        args.quantile))
    configs = [shipped_config(name) for name in args.strategies]
    report = compare(table, {c["name"]: c for c in configs}, seeds=range(args.seeds),
                     budget=args.budget, batch=args.batch, constraint=Constraint(**{KEYS[args.cost]: limit}),
                     checkpoints=args.checkpoints)
    print(markdown(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
