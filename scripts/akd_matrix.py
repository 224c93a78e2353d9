"""AKD's teacher-student matrix of an ``experiment=akd_teacher_student`` sweep (kdnas.report.akd), in Markdown:

    kdnas experiment=akd_teacher_student hydra.sweep.dir=DIR
    python scripts/akd_matrix.py DIR [CE_DIR] [--metric test_top1_last] [--out matrix.json] > matrix.md

CE_DIR: optional CE-only jobs, so a CPU-bound run trains the CE baseline once per (student, seed), not per teacher:

    kdnas experiment=akd_teacher_student distill.compare_ce=false hydra.sweep.dir=DIR
    kdnas -m task=distill distill=ce model=resnet8,resnet14,wrn_16_1 seed=0,1,2 trainer.epochs=3 hydra.sweep.dir=CE_DIR
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from kdnas.report.akd import analyse, load_jobs, markdown


def main() -> None:
    np.seterr(all="ignore")
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # means of a still-empty cell
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", help="the sweep folder of experiment=akd_teacher_student "
                        "(hydra.sweep.dir), and optionally one of CE-only (distill=ce) jobs")
    parser.add_argument("--metric", default="test_top1_last", help="summary key: test_top1_last | test_top1_best")
    parser.add_argument("--out", default=None, help="also write the analysis as JSON")
    args = parser.parse_args()
    records = load_jobs(args.sweeps, args.metric)
    if not any(r["teacher"] is not None for r in records):
        raise SystemExit(f"{args.sweeps}: no finished KD job (no */summary.json with {args.metric}).")
    report = analyse(records)
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps({"metric": args.metric, "records": records, **report}, indent=1))


if __name__ == "__main__":
    main()
