"""task=pipeline: the whole DisWOT workflow in one command. Teacher (from the store, trained on first use) ->
search (as task=search: :func:`kdnas.search.run_strategy`) -> the winner distilled from the teacher with
``distill=`` and, for comparison, trained with CE alone -> a plain-text table, also written to ``pipeline.txt``.

Invariants: the CE baseline is the same student (same init, data order and recipe); ``trainer`` is the winner's
retraining recipe, while the candidates (and Cream's supernet) train with ``evaluator.trainer``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig

from kdnas.context import RunContext
from kdnas.correlation import comparison_line, paired_comparison, test_hits
from kdnas.distill.student import distill_student
from kdnas.distill.terms import distill_config, teacher_terms
from kdnas.evaluators import CE_ONLY
from kdnas.progress import duration
from kdnas.search import run_strategy
from kdnas.spaces import build_candidate, load_arch, space_for
from kdnas.spaces.costs import CostModel, count_params
from kdnas.tasks.search import search_job
from kdnas.teachers import load

log = logging.getLogger("kdnas")
STAGES = ("teacher", "search", "KD retraining of the winner", "CE baseline of the winner")


def table(rows: list[tuple[str, int | None, float | None]], title: str) -> str:
    w = max(44, *(len(name) + 2 for name, _, _ in rows))  # MBConv students have long names
    lines = [title, f"{'model':<{w}}{'params':>10}{'test top-1':>12}"]
    for name, params, top1 in rows:
        p = f"{params / 1e6:.3f}M" if params is not None else "-"
        lines.append(f"{name:<{w}}{p:>10}{f'{top1:.2f}' if top1 is not None else '-':>12}")
    return "\n".join(lines)


def searched(found: dict[str, Any], cfg: DictConfig) -> str:
    """How the winner was found, for the table's title."""
    if "evaluated" not in found:  # cream
        return f"supernet board of {found['board_size']}"
    how = f"proxy {cfg.evaluator.proxy}" if found["evaluator"] == "proxy" else f"{found['evaluator']} evaluator"
    return f"{how}, {found['evaluated']} candidates"


def run(ctx: RunContext) -> dict[str, Any]:
    """The summary's ``timings`` (seconds of this session's wall clock) make runs comparable at an equal budget
    (experiment=compare_strategies): ``search_s`` + ``retrain_s`` (the winner's KD training) = ``total_s``, the cost
    of a distilled student; the teacher (``teacher_s``) and the CE baseline (``ce_s``) are reported outside it.
    ``timings.cpu`` has the same keys in CPU seconds of this process: on a machine shared with other jobs, wall
    clock also measures their load."""
    cfg = ctx.cfg
    timings: dict[str, Any] = {"cpu": {}}
    laps = [(time.perf_counter(), time.process_time())]

    def lap(stage: str) -> None:
        """Wall and CPU seconds since the previous lap, as ``{stage}_s``."""
        laps.append((time.perf_counter(), time.process_time()))
        timings[f"{stage}_s"], timings["cpu"][f"{stage}_s"] = (b - a for a, b in zip(*laps[-2:]))

    def stage(k: int) -> None:
        log.info("pipeline stage %d/%d: %s (%s elapsed)", k + 1, len(STAGES), STAGES[k],
                 duration(laps[-1][0] - laps[0][0]))

    stage(0)
    job = search_job(ctx)
    teacher = load(ctx.workspace, job.teacher)
    lap("teacher")
    stage(1)
    found = run_strategy(ctx.workspace, ctx.run.sub("search"), job)
    lap("search")
    arch = load_arch(found["best_arch_path"])
    space, data = space_for(arch), ctx.data

    def student() -> Any:
        return build_candidate(space, arch, data.num_classes, data.input_size, cfg.seed)

    name = f"arch:{arch.arch_id}"
    dcfg = distill_config(cfg.distill)
    stage(2)
    kd_net = student()
    kd = distill_student(ctx.workspace, kd_net, teacher, dcfg, ctx.run.sub("distill"), cfg.seed, student_name=name,
                         arch=arch)
    lap("retrain")
    stage(3)
    ce_net = student()  # the same init
    ce = distill_student(ctx.workspace, ce_net, None, distill_config(CE_ONLY), ctx.run.sub("ce"), cfg.seed,
                         student_name=name, arch=arch)
    lap("ce")
    for t in (timings, timings["cpu"]):
        t["total_s"] = t["search_s"] + t["retrain_s"]
    losses = teacher_terms(dcfg) or "ce"
    decisions = ",".join(f"{k}={v}" for k, v in arch.decisions.items() if k not in space.fixed)
    costs = CostModel(space, data.num_classes, data.input_size)(arch, ["params", "macs"])
    params = int(costs["params"])
    text = table([(f"teacher {'+'.join(teacher.names)}", sum(count_params(m) for m in teacher.members),
                   kd.get("teacher_test_top1")),
                  (f"student {decisions} CE", params, ce["test_top1_last"]),
                  (f"student {decisions} {losses}", params, kd["test_top1_last"])],
                 f"kdnas pipeline: {cfg.data.name}, space {space.name}, strategy {found['strategy']}, "
                 f"{searched(found, cfg)}")
    gain = kd["test_top1_last"] - ce["test_top1_last"]
    recipe = ctx.workspace.trainer_config
    cmp = paired_comparison(test_hits(data, kd_net, recipe), test_hits(data, ce_net, recipe))
    text += "\n" + comparison_line(cmp, losses.upper())
    for kind, t in (("wall clock", timings), ("CPU time", timings["cpu"])):
        text += (f"\n{kind}: search {t['search_s']:.0f} s + {losses} retraining {t['retrain_s']:.0f} s = "
                 f"{t['total_s']:.0f} s (CE baseline {t['ce_s']:.0f} s, teacher {t['teacher_s']:.0f} s)")
    text += f"\nrun dir: {ctx.run.path}"
    print(text)
    (ctx.run.path / "pipeline.txt").write_text(text + "\n")
    return {"name": cfg.name, "strategy": found["strategy"], "space": space.name, "arch_id": arch.arch_id,
            "arch": arch.decisions, "params": params, "macs": int(costs["macs"]), "losses": losses,
            "teacher": teacher.names, "teacher_test_top1": kd.get("teacher_test_top1"),
            "kd_test_top1_last": kd["test_top1_last"], "ce_test_top1_last": ce["test_top1_last"],
            "gain_test_top1_last": gain, "gain_test_top1_last_se": cmp["se"], "timings": timings, "search": found}
