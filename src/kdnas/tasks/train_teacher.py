"""task=train_teacher: train ``teacher.model`` with the ``teacher.trainer`` recipe and file it in the
teacher store (reused by every later task that names the same teacher, data and recipe)."""

from __future__ import annotations

from typing import Any

from kdnas import teachers
from kdnas.context import RunContext


def run(ctx: RunContext) -> dict[str, Any]:
    settings = teachers.teacher_config(ctx.cfg.teacher)
    path, card = teachers.ensure(ctx.workspace, settings, force=settings.retrain, run=ctx.run)
    return {"teacher": card["model"], "store_path": str(path), "store_key": card["key"],
            "test_top1": card.get("test_top1"), "trained_in": card.get("trained_in")}
