"""Running a task: the shared core of the `kdnas` command and the Python API ``kdnas.run``.

A task's failure never escapes as an exception into Hydra (that would stop a multirun sweep at its first
failed job): it is written to the run's ``status.json`` and printed as one paragraph, and the task returns
None; once every job has run, the CLI learns which failed (kdnas.callbacks) and exits non-zero.
"""

from __future__ import annotations

import contextlib
import errno
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
from kdnas.engine import distributed
from kdnas.errors import ConfigError, KdnasError
from kdnas.runs import RunDir
from kdnas.utils import read_json, resolve_device

log = logging.getLogger("kdnas")
register_configs()
# OSErrors of the disk or folder (full, quota, read-only, no permission): the user's to fix, not a bug.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def safe_dirname(text: str, max_len: int = 80) -> str:
    """Hydra's override_dirname made safe for one folder level ('/' would nest folders)."""
    from kdnas.utils import stable_hash

    clean = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    return clean if len(clean) <= max_len else f"{clean[: max_len - 9]}-{stable_hash(text, 8)}"


if not OmegaConf.has_resolver("kdnas_dirname"):
    OmegaConf.register_new_resolver("kdnas_dirname", safe_dirname)


def _run_path(cfg: DictConfig, default: Path) -> Path:
    resume = str(cfg.resume)
    if resume.lower() in ("auto", "true", "false"):
        return default
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise KdnasError(f"resume={resume!r} is not an existing run folder. Pass the folder of the run to "
                         "continue, or resume=auto to continue whatever is in the output folder.")
    return path


def _finished_summary(run: RunDir, config_hash: str) -> dict[str, Any] | None:
    """The stored summary when ``run`` already finished with this configuration (re-run sweeps skip it)."""
    status = run.path / "status.json"
    if not status.is_file() or read_json(status).get("status") != "ok":
        return None
    summary = run.read_summary()
    return summary if summary is not None and summary.get("config_hash") == config_hash else None


def storage_error(e: OSError, folder: str | Path) -> KdnasError:
    """A full disk, a quota, a read-only or forbidden folder, as a message naming the place and the fix."""
    return KdnasError(
        f"{e.strerror or e}: {e.filename or folder}. kdnas writes the run folder {folder} (hydra.run.dir=DIR, sweeps "
        "hydra.sweep.dir=DIR) and caches under KDNAS_CACHE_DIR: put them on a writable disk with free space. Running "
        "the same command again resumes from the last complete checkpoint.")


def _user_error(e: Exception, folder: str | Path) -> KdnasError | None:
    """``e`` as an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(e, KdnasError):
        return e
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        return storage_error(e, folder)
    return None


def execute(cfg: DictConfig, run_dir: str | Path, *, raise_errors: bool = False) -> dict[str, Any] | None:
    """Run ``cfg.task`` in ``run_dir``; return its summary (None when it failed and ``raise_errors`` is off).

    A run folder that already holds a finished run of the same configuration is not run again (unless
    ``resume=false``). Under torchrun, every rank runs this; rank 0 alone writes the folder.
    """
    from kdnas.context import RunContext, config_hash
    from kdnas.tasks import get_task

    run = None
    main = True
    with contextlib.ExitStack() as cleanup:
        try:
            path = _run_path(cfg, Path(run_dir))
            world = cleanup.enter_context(distributed.process_group(resolve_device(cfg.trainer.device)))
            main = world.is_main
            if len(set(distributed.gather(str(path.resolve())))) > 1:
                raise ConfigError("Under torchrun all ranks write one run folder: pass hydra.run.dir=DIR (the "
                                  "default folder name holds each rank's own start time).")
            folder = RunDir(path)
            with open_dict(cfg):
                cfg.run_dir = str(folder.path)
                if not main:
                    cfg.logger.kind = "none"  # one wandb run per job: rank 0's
            if str(cfg.resume).lower() == "false":
                if main:
                    shutil.rmtree(folder.checkpoint_dir, ignore_errors=True)
                    folder.metrics_path.unlink(missing_ok=True)
                    folder.reset_sessions()
            elif (done := _finished_summary(folder, config_hash(cfg))) is not None:
                log.info("already done: %s (resume=false runs it again)", folder.path)
                return done
            else:
                _refuse_other_config(folder, config_hash(cfg))
            run = folder  # from here on, a failure is recorded in the folder's status.json
            if main:
                run.write_status("running")
                run.begin_session()  # wall_seconds sums every session of a resumed run
            task = get_task(cfg.task)
            ctx = RunContext(cfg, run)
            cleanup.callback(ctx.logger.close)
            if main:
                _write_provenance(ctx, world.size)
            started = time.perf_counter()
            summary = task(ctx)
            summary = {"task": cfg.task, "run_dir": str(run.path), "config_hash": ctx.config_hash,
                       "wall_seconds": run.wall_seconds() or time.perf_counter() - started,
                       "session_wall_seconds": time.perf_counter() - started, **summary}
            if main:
                run.write_summary(summary)
                _write_provenance(ctx, world.size)  # now with the data fingerprint
                run.write_status("ok")
            log.info("done: %s", run.path)
            return summary
        except Exception as e:
            error = _user_error(e, run.path if run else run_dir)
            message = str(error) if error is not None else f"{type(e).__name__}: {e}"
            if run is not None and main:
                with contextlib.suppress(OSError):  # an unwritable folder is what is being reported
                    run.write_status("failed", message)
            if raise_errors:
                if error is None or error is e:
                    raise
                raise error from e
            if error is None or cfg.get("traceback", False):
                traceback.print_exc()
            print(f"kdnas: error: {message}", file=sys.stderr)
            return None


def _refuse_other_config(run: RunDir, config_hash: str) -> None:
    """A folder written by another configuration is refused before anything in it is touched: resuming it
    would mix two runs, and a failed attempt would overwrite a finished run's status."""
    try:
        previous = read_json(run.path / "provenance.json").get("config_hash")
    except (OSError, ValueError):
        return
    if previous is not None and previous != config_hash:
        raise ConfigError(
            f"The run folder {run.path} holds a run of another configuration (config hash {previous}, this one "
            f"{config_hash}; its overrides are in provenance.json). Run in a new folder (hydra.run.dir=DIR), repeat "
            "that run's overrides to resume it, or pass resume=false to start over in this folder (overwrites it).")


def _write_provenance(ctx: Any, world_size: int) -> None:
    data = ctx.__dict__.get("data")  # only when the task built it (cached_property)
    ctx.run.write_provenance(data_fingerprint=data.fingerprint if data is not None else None,
                             device=str(ctx.cfg.trainer.device),
                             extra={"config_hash": ctx.config_hash, "task": ctx.cfg.task, "world_size": world_size,
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
