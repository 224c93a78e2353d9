"""Hydra callbacks (``hydra.callbacks`` in conf/config.yaml), run in the process that launched the run or sweep: they
tell the CLI which jobs failed (``kdnas.api.execute`` never raises into Hydra).

A single run's task returns None when it failed. A sweep's jobs may run in other processes or machines, so the
``status.json`` files this sweep wrote are read; a job skipped because a finished job computed its configuration
writes none, so an old folder of a fixed ``hydra.sweep.dir`` (say, of a since-fixed grid value) is not reported.
``report.after_sweep=true`` ends a sweep with a report over its jobs in ``<hydra.sweep.dir>/report``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kdnas.errors import storage_error
from kdnas.runs import job_folders
from kdnas.utils import read_json

log = logging.getLogger("kdnas")


@dataclass
class Outcome:
    """What the last run or sweep of this process left behind (read by the CLI)."""

    sweep: bool = False
    failed: list[tuple[str, str]] = field(default_factory=list)  # (job folder, message)


OUTCOME = Outcome()


def _make_folder(folder: Path) -> None:
    """Hydra would fail on an unwritable output folder with a traceback (a callback cannot raise: Hydra turns
    that into a warning), so check it first and exit with one paragraph."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        sys.exit(f"kdnas: error: {storage_error(e, folder)}")


def sweep_report(sweep_dir: Path) -> None:
    """``report.after_sweep=true``: a report over the sweep's jobs in ``<sweep_dir>/report``. A failure here is
    logged, never raised: it must not hide or change the jobs' own outcome and exit status."""
    try:
        from kdnas.report import build_report

        print(f"kdnas: sweep report: {build_report(sweep_dir, sweep_dir / 'report')['report_html']}")
    except Exception as e:
        log.warning("the sweep report failed (%s: %s); retry with: kdnas task=report report.path=%s",
                    type(e).__name__, e, sweep_dir)


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size  # status.json is replaced atomically: a new inode per write


class JobReport(Callback):
    """Checks the output folder can be created, then records failed jobs in ``OUTCOME``.

    A sweep's job folders are the folders under ``hydra.sweep.dir`` that Hydra wrote ``.hydra/`` into, at any
    depth (kdnas's own subdir name is one folder level; a user's ``hydra.sweep.subdir`` may nest).
    """

    def __init__(self) -> None:
        self.sweep_dir = Path()
        self.before: dict[Path, tuple[int, int, int]] = {}

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _make_folder(Path(config.hydra.run.dir))

    def on_run_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.COMPLETED or job_return.return_value is None:
            OUTCOME.failed.append((str(config.hydra.run.dir), "see the error above"))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        OUTCOME.sweep = True
        self.sweep_dir = Path(config.hydra.sweep.dir)
        _make_folder(self.sweep_dir)
        self.before = {p: _stamp(p) for p in self._status_files()}

    def _status_files(self) -> list[Path]:
        return [job / "status.json" for job in job_folders(self.sweep_dir) if (job / "status.json").is_file()]

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for status_file in self._status_files():
            if self.before.get(status_file) == _stamp(status_file):
                continue  # not written by this sweep: an earlier sweep's job, or one skipped as already done
            status = read_json(status_file)
            if status.get("status") != "ok":
                message = status.get("message") or f"the job stopped while {status.get('status')}"
                OUTCOME.failed.append((str(status_file.parent), message))
        if OmegaConf.select(config, "report.after_sweep", default=False):
            sweep_report(self.sweep_dir)
