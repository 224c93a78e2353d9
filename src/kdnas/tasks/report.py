"""task=report: Markdown + a self-contained HTML page over a run folder, a search run or a sweep folder
(``report.path=DIR``), written to this task's own run folder (report.md, report.html, plots/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdnas.config import dataclass_from_node
from kdnas.context import RunContext
from kdnas.errors import ConfigError
from kdnas.report import build_report


@dataclass
class ReportSettings:
    """The ``report:`` config group."""

    path: str | None = None  # the run, search run or sweep folder to report on
    after_sweep: bool = False  # a sweep writes a report over its jobs into <hydra.sweep.dir>/report when it ends

    @classmethod
    def from_config(cls, node: Any) -> ReportSettings:
        return dataclass_from_node(cls, node, "report")


def run(ctx: RunContext) -> dict[str, Any]:
    settings = ReportSettings.from_config(ctx.cfg.report)
    if not settings.path:
        raise ConfigError("task=report needs report.path=DIR: the run folder, search run or sweep folder "
                          "(hydra.sweep.dir) to report on.")
    summary = build_report(Path(settings.path).expanduser(), ctx.run.path)
    print(summary["report_html"])
    return summary
