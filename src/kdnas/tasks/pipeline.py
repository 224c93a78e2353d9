"""task=pipeline: the whole DisWOT workflow in one command.

teacher (from the store, trained on first use) -> search (``strategy=``, ``proxy=``, ``space=``,
``constraint=``) -> the winner distilled from the teacher with ``distill=`` (KD; ``distill=diswot`` adds the
DisWOT terms as losses, DisWOT-dagger) and, for comparison, the same student (same init, data order and
recipe) trained with CE alone -> a short plain-text table, also written to ``pipeline.txt``.
"""

from __future__ import annotations

from typing import Any

from kdnas.context import RunContext
from kdnas.distill.teachers import build_teacher
from kdnas.distill.terms import active_weights, distill_config
from kdnas.evaluators import CE_ONLY, build_candidate
from kdnas.search import search
from kdnas.spaces import load_arch, space_for
from kdnas.spaces.costs import count_params
from kdnas.tasks.distill import distill_student


def table(rows: list[tuple[str, int | None, float | None]], title: str) -> str:
    lines = [title, f"{'model':<44}{'params':>10}{'test top-1':>12}"]
    for name, params, top1 in rows:
        p = f"{params / 1e6:.3f}M" if params is not None else "-"
        lines.append(f"{name:<44}{p:>10}{f'{top1:.2f}' if top1 is not None else '-':>12}")
    return "\n".join(lines)


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    teacher = build_teacher(ctx)
    found = search(ctx, ctx.run.sub("search"))
    arch = load_arch(found["best_arch_path"])
    space, data = space_for(arch), ctx.data

    def student() -> Any:
        return build_candidate(space, arch, data.num_classes, data.input_size, cfg.seed)

    name = f"arch:{arch.arch_id}"
    dcfg = distill_config(cfg.distill)
    kd = distill_student(ctx, student(), teacher, dcfg, ctx.run.sub("distill"), cfg.seed, student_name=name)
    ce = distill_student(ctx, student(), None, distill_config(CE_ONLY), ctx.run.sub("ce"), cfg.seed,
                         student_name=name)
    losses = "+".join(k for k in active_weights(dcfg) if k != "ce") or "ce"
    decisions = ",".join(f"{k}={v}" for k, v in arch.decisions.items() if k not in space.fixed)
    params = count_params(student())
    text = table([(f"teacher {'+'.join(teacher.names)}", sum(count_params(m) for m in teacher.members),
                   kd.get("teacher_test_top1")),
                  (f"student {decisions} CE", params, ce["test_top1_last"]),
                  (f"student {decisions} {losses}", params, kd["test_top1_last"])],
                 f"kdnas pipeline: {cfg.data.name}, space {space.name}, strategy {found['strategy']}, "
                 f"proxy {cfg.proxy.name}, {found['evaluated']} candidates")
    gain = kd["test_top1_last"] - ce["test_top1_last"]
    text += f"\n{losses} vs CE: {gain:+.2f} points\nrun dir: {ctx.run.path}"
    print(text)
    (ctx.run.path / "pipeline.txt").write_text(text + "\n")
    return {"arch_id": arch.arch_id, "arch": arch.decisions, "params": params, "losses": losses,
            "teacher": teacher.names, "teacher_test_top1": kd.get("teacher_test_top1"),
            "kd_test_top1_last": kd["test_top1_last"], "ce_test_top1_last": ce["test_top1_last"],
            "gain_test_top1_last": gain, "search": found}
