"""Metric sinks. JSONL in the run folder is always written; wandb mirrors it when ``logger=wandb``
(offline by default, imported lazily, finished in a ``finally`` so a crashed job never leaks its run into
the next in-process job)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kdnas.errors import ConfigError
from kdnas.runs import RunDir

log = logging.getLogger("kdnas")


class MetricLogger:
    def __init__(self, cfg: Any, run: RunDir, config: dict[str, Any], name: str):
        self.run = run
        self.wandb_run = None
        if cfg.kind == "wandb":
            import wandb  # lazy: importing wandb costs seconds

            self.wandb_run = wandb.init(project=cfg.project, name=name, dir=str(run.path), mode=cfg.mode,
                                        config=config, tags=list(cfg.tags), reinit="finish_previous")
        elif cfg.kind not in ("jsonl", "none"):
            raise ConfigError(f"logger.kind={cfg.kind!r} is not one of jsonl, wandb, none.")

    def for_run(self, run: RunDir) -> Callable[[dict[str, Any]], None]:
        """A log function writing to ``run``'s metrics.jsonl (and wandb, prefixed by the stage name)."""
        prefix = "" if run.path == self.run.path else f"{run.path.relative_to(self.run.path)}/"

        def log_record(record: dict[str, Any]) -> None:
            run.log(record)
            if self.wandb_run is not None:
                split = record.get("split", "")
                self.wandb_run.log({f"{prefix}{split}/{k}": v for k, v in record.items()
                                    if isinstance(v, (int, float)) and k not in ("epoch", "split")})

        return log_record

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
