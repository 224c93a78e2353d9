"""task=list: what this installation offers (models, tasks, stored teachers, and the registries the
search and distillation layers add)."""

from __future__ import annotations

from typing import Any

from kdnas.context import RunContext
from kdnas.distill.terms import TERMS
from kdnas.models import list_models
from kdnas.proxies import list_proxies
from kdnas.spaces import list_spaces
from kdnas.strategies import list_strategies
from kdnas.tasks import TASKS
from kdnas.teachers import TeacherStore


def run(ctx: RunContext) -> dict[str, Any]:
    teachers = [{"model": e["model"], "data": e.get("data"), "test_top1": e.get("test_top1"), "path": e["path"]}
                for e in TeacherStore(ctx.cache_dir).entries()]
    listing = {"tasks": sorted(TASKS), "models": list_models(), "spaces": list_spaces(),
               "strategies": [*list_strategies(), "cream"], "proxies": list_proxies(), "losses": sorted(TERMS),
               "teachers": teachers}
    for name, items in listing.items():
        print(f"{name} ({len(items)}):")
        for item in items:
            print("  " + (item if isinstance(item, str) else
                          f"{item['model']:<14} {item['data'] or '':<14} top1 {item['test_top1']}  {item['path']}"))
    return listing
