"""Multi-stage distillation schemes, run with ``task=distill distill=NAME``: ``dml``, ``born_again``, ``takd``,
``label_refinery``, ``fitnet_two_stage``.

Each module has ``run(ws, distill, *, model, student, teacher) -> summary`` (a Workspace and typed settings; the
scheme's own parameters are ``distill.<name>.*``, :mod:`kdnas.distill.scheme_config`) and
trains its stages with :func:`kdnas.distill.student.distill_student` (or the engine directly when the loss is not a
sum of terms), one sub-folder of the run per stage (weights, model card, metrics, checkpoints, ``summary.json``).
The top-level summary holds the scheme's ``table`` (one row per stage), also written as ``table.md``.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from typing import Any

from torch import nn

from kdnas.distill.scheme_config import SCHEME_CONFIGS
from kdnas.engine.trainer import Trainer
from kdnas.engine.workspace import Workspace
from kdnas.registry import Registry
from kdnas.runs import RunDir
from kdnas.teachers import Teacher
from kdnas.utils import atomic_write_bytes

log = logging.getLogger("kdnas")


def _register_schemes() -> None:
    """Every module of this package is a scheme, named after the module; its ``run`` is the entry point and its
settings are ``distill.<name>`` (:data:`~kdnas.distill.scheme_config.SCHEME_CONFIGS`)."""
    for module in pkgutil.iter_modules(__path__):
        SCHEMES.add(module.name, importlib.import_module(f"{__name__}.{module.name}").run,
                    settings=SCHEME_CONFIGS[module.name])


# distill.scheme -> the scheme's run function; each has a conf/distill/<name>.yaml preset (tests/test_registries.py).
SCHEMES: Registry[Callable[..., dict[str, Any]]] = Registry(
    "distillation scheme", "distill.scheme", load=_register_schemes, hint="; or none for plain distillation")
COLUMNS = ("val_top1_last", "test_top1_last", "test_top1_best")


def stage_row(run: RunDir, stage: str, model: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Write a finished stage's summary into its folder; return its row of the scheme's table."""
    run.write_summary({"stage": stage, "model": model, **summary})
    return {"stage": stage, "model": model, **{k: summary[k] for k in COLUMNS if summary.get(k) is not None}}


def frozen_teacher(net: nn.Module, name: str, cache: str) -> Teacher:
    """A network trained by an earlier stage as the frozen teacher of the next (``cache`` is ``teacher.cache``:
    cache entries are keyed by the weights' hash)."""
    return Teacher([net], [name], cache=cache)


def top1(trainer: Trainer, net: nn.Module) -> dict[str, float]:
    """``{split}_top1_last`` of ``net`` on ``trainer``'s evaluation splits."""
    return {f"{split}_top1_last": trainer.evaluate(split, net)["top1"] for split in trainer.eval_splits}


def evaluate(ws: Workspace, net: nn.Module, run: RunDir) -> dict[str, float]:
    """:func:`top1` of a trained (possibly frozen) network outside its training run, through the engine's
    evaluation loop; the trainer is built around a one-weight placeholder, since ``net`` may have no trainable
    parameter and an optimiser needs one."""
    trainer = ws.trainer(nn.Linear(1, 1), run=run)
    return top1(trainer, net.to(trainer.device))


def summary_table(run: RunDir, scheme: str, rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The scheme's top-level summary: its stage table (logged and written as ``table.md`` in ``run``) and
    ``extra``."""
    columns = ["stage", "model", *(c for c in COLUMNS if any(c in r for r in rows))]

    def line(cells: list[Any]) -> str:
        return "| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells) + " |"

    body = [line([r.get(c, "") for c in columns]) for r in rows]
    text = "\n".join([line(columns), "|" + "---|" * len(columns), *body]) + "\n"
    atomic_write_bytes(run.path / "table.md", text.encode())
    log.info("%s:\n%s", scheme, text)
    return {"scheme": scheme, "table": rows, **extra}
