"""Running a task: the shared core of the `kdnas` command and the Python API ``kdnas.run``.

A task's failure never escapes as an exception into Hydra (that would stop a multirun sweep at its first
failed job): it is written to the run's ``status.json``, printed as one paragraph, and recorded so that the
CLI exits non-zero after every job has run.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from kdnas.config import register_configs
from kdnas.errors import KdnasError
from kdnas.runs import RunDir

log = logging.getLogger("kdnas")
register_configs()
FAILED: list[tuple[str, str]] = []  # (run dir, message) of failed jobs in this process


def safe_dirname(text: str, max_len: int = 80) -> str:
    """Hydra's override_dirname made safe for one folder level ('/' would nest folders)."""
    from kdnas.utils import stable_hash

    clean = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    return clean if len(clean) <= max_len else f"{clean[: max_len - 9]}-{stable_hash(text, 8)}"


if not OmegaConf.has_resolver("kdnas_dirname"):
    OmegaConf.register_new_resolver("kdnas_dirname", safe_dirname)


def _prepare_run_dir(cfg: DictConfig, default: Path) -> RunDir:
    resume = str(cfg.resume)
    path = default
    if resume.lower() not in ("auto", "true", "false"):
        path = Path(resume).expanduser()
        if not path.is_dir():
            raise KdnasError(f"resume={resume!r} is not an existing run folder. Pass the folder of the run to "
                             "continue, or resume=auto to continue whatever is in the output folder.")
    run = RunDir(path)
    if resume.lower() == "false":
        shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
        run.metrics_path.unlink(missing_ok=True)
    return run


def execute(cfg: DictConfig, run_dir: str | Path, *, raise_errors: bool = False) -> dict[str, Any] | None:
    """Run ``cfg.task`` in ``run_dir``; return its summary (None when it failed and ``raise_errors`` is off)."""
    from kdnas.context import RunContext
    from kdnas.tasks import get_task

    run = None
    ctx = None
    try:
        run = _prepare_run_dir(cfg, Path(run_dir))
        with open_dict(cfg):
            cfg.run_dir = str(run.path)
        run.write_status("running")
        task = get_task(cfg.task)
        ctx = RunContext(cfg, run)
        _write_provenance(ctx)
        started = time.perf_counter()
        summary = task(ctx)
        summary = {"task": cfg.task, "run_dir": str(run.path), "wall_seconds": time.perf_counter() - started,
                   **summary}
        run.write_summary(summary)
        _write_provenance(ctx)  # now with the data fingerprint
        run.write_status("ok")
        log.info("done: %s", run.path)
        return summary
    except Exception as e:
        user_error = isinstance(e, KdnasError)
        message = str(e) if user_error else f"{type(e).__name__}: {e}"
        if run is not None:
            run.write_status("failed", message)
        FAILED.append((str(run.path if run else run_dir), message))
        if raise_errors:
            raise
        if not user_error or cfg.get("traceback", False):
            traceback.print_exc()
        print(f"kdnas: error: {message}", file=sys.stderr)
        return None
    finally:
        if ctx is not None:
            ctx.logger.close()


def _write_provenance(ctx: Any) -> None:
    data = ctx.__dict__.get("data")  # only when the task built it (cached_property)
    ctx.run.write_provenance(data_fingerprint=data.fingerprint if data is not None else None,
                             device=str(ctx.cfg.trainer.device),
                             extra={"config_hash": ctx.config_hash, "task": ctx.cfg.task,
                                    "overrides": list(ctx.cfg.get("overrides_", []) or [])})


def compose(task: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for ``task`` with Hydra's compose API (no run folder, no logging setup)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="kdnas.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"task={task}", *overrides])
    return cfg


def run(task: str, overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> dict[str, Any]:
    """Python API: run a task with command-line style overrides; return its summary (raises on failure)."""
    cfg = compose(task, overrides)
    if run_dir is None:
        run_dir = Path("outputs") / task / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{cfg.name}"
    with open_dict(cfg):
        cfg.overrides_ = list(overrides)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, Path(run_dir) / "config.yaml")
    summary = execute(cfg, run_dir, raise_errors=True)
    assert summary is not None
    return summary
