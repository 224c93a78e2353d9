"""The KDAS table of an ``experiment=kdas_table`` sweep: evaluates its teacher ensemble once (each member, the mean,
the oracle: a sample counts when any member is right) into SWEEP/teachers.json, then writes SWEEP/kdas_table.md
(kdnas.report.kdas; ``kdnas task=report report.path=SWEEP`` includes the same section).

    kdnas experiment=kdas_table hydra.sweep.dir=outputs/kdas_table   # the runs (a rerun skips finished jobs)
    python scripts/kdas_table.py outputs/kdas_table
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from kdnas import teachers
from kdnas.benchmarks.workspace import script_workspace
from kdnas.report.collect import load_target
from kdnas.report.kdas import TEACHERS_FILE, kdas_blocks, row_of, zoo_params
from kdnas.report.render import Section, to_markdown

SPLITS = ("test", "train_full")


def ensemble_figures(teacher: teachers.Teacher, batches: Iterable[Any]) -> dict[str, Any]:
    """Each member's top-1, the mean ensemble's, the oracle ensemble's (any member right) and the fraction of
    samples some member gets wrong, over ``batches`` (no augmentation)."""
    correct, mean_ok, any_ok, all_ok, n = None, 0, 0, 0, 0
    for batch in batches:
        logits = teacher.member_logits(batch.x)  # [M, B, K]
        ok = logits.argmax(2) == batch.y[None]
        correct = ok.sum(1) if correct is None else correct + ok.sum(1)
        mean_ok += int((logits.mean(0).argmax(1) == batch.y).sum())
        any_ok, all_ok, n = any_ok + int(ok.any(0).sum()), all_ok + int(ok.all(0).sum()), n + batch.y.shape[0]
    assert correct is not None, "no batches"
    return {"member_top1": [100.0 * int(c) / n for c in correct], "mean_top1": 100.0 * mean_ok / n,
            "oracle_top1": 100.0 * any_ok / n, "disagreement": 1.0 - all_ok / n, "n": n}


def teacher_figures(job: Path) -> dict[str, Any]:
    """The teacher ensemble of ``job`` (a finished sweep job: its members are in the store) on test and train_full."""
    start = time.perf_counter()
    cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
    ws = script_workspace(cfg, job)
    teacher = teachers.load(ws, teachers.teacher_config(cfg.teacher))
    out: dict[str, Any] = {"members": teacher.names, "params_each": zoo_params(teacher.names[0], ws.data.num_classes)}
    for split in SPLITS:
        figures = ensemble_figures(teacher, ws.data.loader(split, 500, train=False, seed=0).epoch(0))
        out.update({f"{split}_{k}": v for k, v in figures.items()})
    return {**out, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the hydra.sweep.dir of experiment=kdas_table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    jobs = [j for j in load_target(args.sweep)[1] if row_of(j) is not None]
    if not (args.sweep / TEACHERS_FILE).is_file():
        done = next((j for j in jobs if j.state == "ok"), None)
        if done is None:
            raise SystemExit(f"{args.sweep} holds no finished experiment=kdas_table job.")
        (args.sweep / TEACHERS_FILE).write_text(json.dumps(teacher_figures(done.path), indent=2))
        jobs = [j for j in load_target(args.sweep)[1] if row_of(j) is not None]
    text = to_markdown(Section(f"KDAS: {args.sweep}", kdas_blocks(jobs)))
    (args.sweep / "kdas_table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
