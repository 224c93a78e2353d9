"""Tasks: each is a plain function ``run(ctx) -> summary dict`` in its own module; the CLI only dispatches.

Registered lazily by module path so that `kdnas --help` and `task=list` stay fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from kdnas.errors import ConfigError

TASKS: dict[str, str] = {
    "train": "kdnas.tasks.train",
    "train_teacher": "kdnas.tasks.train_teacher",
    "distill": "kdnas.tasks.distill",
    "list": "kdnas.tasks.listing",
    "export": "kdnas.tasks.export",
    "cream_search": "kdnas.tasks.cream_search",
    "search": "kdnas.tasks.search",
    "pipeline": "kdnas.tasks.pipeline",
    "correlate": "kdnas.tasks.correlate",
    "cache": "kdnas.tasks.cache",
    "report": "kdnas.tasks.report",
}


def get_task(name: str) -> Callable[[Any], dict[str, Any]]:
    if name not in TASKS:
        raise ConfigError(f"task={name!r} is not a kdnas task. Available: {', '.join(sorted(TASKS))}.")
    return importlib.import_module(TASKS[name]).run
