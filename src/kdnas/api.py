"""Running a task: the shared core of the `kdnas` command and the Python API ``kdnas.run``.

A task's failure never escapes as an exception into Hydra (that would stop a multirun sweep at its first
failed job): it is written to the run's ``status.json`` and printed as one paragraph, and the task returns
None; once every job has run, the CLI learns which failed (kdnas.callbacks) and exits non-zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from kdnas import __version__
from kdnas.config import NO_USER_CONF_WARNING, check_overrides, register_configs
from kdnas.context import RunContext, config_hash
from kdnas.distill.terms import DistillConfig
from kdnas.engine import distributed
from kdnas.errors import ConfigError, KdnasError, storage_error
from kdnas.registry import store_schema
from kdnas.runs import RunDir, job_folders, safe_dirname
from kdnas.spaces import SPACES
from kdnas.spaces.constraints import Constraint
from kdnas.strategies import STRATEGIES
from kdnas.tasks import get_task
from kdnas.utils import read_json, resolve_device

log = logging.getLogger("kdnas")


def register_schemas() -> None:
    """Every schema in Hydra's ConfigStore before the first composition: the root's (config.py), one per group whose
    options are presets of one dataclass, and the space and strategy registries' (stored as their modules register
    each option; config.py imports no feature, so the task layer does this)."""
    register_configs()
    store_schema("distill", DistillConfig, keep_ints=False)  # typed (floats) since before the registry
    store_schema("constraint", Constraint)
    for registry in (SPACES, STRATEGIES):
        registry.load()


register_schemas()
warnings.filterwarnings("ignore", message=NO_USER_CONF_WARNING)
# OSErrors of the disk or folder (full, quota, read-only, no permission): the user's to fix, not a bug.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _help_tasks() -> str:
    from kdnas.tasks.listing import format_tasks

    return format_tasks()


def _help_groups() -> str:
    """Hydra resolves the help template on every compose, and listing the groups cost more than the compose
    itself (1.7 of 2.4 s): list them once per config search path."""
    from hydra.core.global_hydra import GlobalHydra

    gh = GlobalHydra.instance()
    sources = gh.config_loader().get_sources() if gh.is_initialized() else []
    return _groups_listing(tuple(s.full_path() for s in sources))


@functools.lru_cache(maxsize=16)
def _groups_listing(search_path: tuple[str, ...]) -> str:
    from kdnas.tasks.listing import format_groups

    return format_groups()


def _version() -> str:
    return __version__


for _name, _resolver in (("kdnas_dirname", safe_dirname), ("kdnas_help_tasks", _help_tasks),
                         ("kdnas_help_groups", _help_groups), ("kdnas_version", _version)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


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


def _user_error(e: Exception, folder: str | Path) -> KdnasError | None:
    """``e`` as an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(e, KdnasError):
        return e
    if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
        return storage_error(e, folder)
    if isinstance(e, MissingMandatoryValue):
        return ConfigError(f"{e.full_key} has no value ('???') and this run needs one: set it on the command line "
                           f"({e.full_key}=...), or select the option that does not read it.")
    return None


def _same_job_done(sweep_dir: Path, config_hash: str, own: Path) -> tuple[Path, dict[str, Any]] | None:
    """A finished job under ``sweep_dir`` (other than ``own``) that computed this configuration, and its summary:
    sweep reruns find finished jobs by what they compute, not by folder name (a result-neutral flag renames
    every job folder; a reordered grid renumbers them)."""
    for folder in job_folders(sweep_dir):
        if folder.resolve() != own.resolve() and (done := _finished_summary(RunDir(folder), config_hash)) is not None:
            return folder, done
    return None


def _drop_if_fresh(folder: Path) -> None:
    """Remove a job folder that holds nothing but what Hydra wrote on job start (the job's result is elsewhere),
    so that a sweep report lists each configuration once."""
    with contextlib.suppress(OSError):
        if {p.name for p in folder.iterdir()} <= {".hydra", "kdnas.log"}:
            shutil.rmtree(folder)


def execute(cfg: DictConfig, run_dir: str | Path, *, raise_errors: bool = False, sweep_dir: str | Path | None = None,
            on_start: Callable[[Path], None] | None = None) -> dict[str, Any] | None:
    """Run ``cfg.task`` in ``run_dir``; return its summary (None when it failed and ``raise_errors`` is off).

    A run folder that already holds a finished run of the same configuration is not run again (unless
    ``resume=false``), nor is a sweep job whose configuration a finished job anywhere under ``sweep_dir`` computed.
    ``on_start(folder)`` runs once the folder is accepted, before anything is written to it. Under torchrun, every
    rank runs this; rank 0 alone writes the folder.
    """
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
            this_hash = config_hash(cfg)
            if str(cfg.resume).lower() == "false":
                if main:
                    shutil.rmtree(folder.checkpoint_dir, ignore_errors=True)
                    folder.metrics_path.unlink(missing_ok=True)
                    folder.reset_sessions()
            elif (done := _finished_summary(folder, this_hash)) is not None:
                log.info("already done: %s (resume=false runs it again)", folder.path)
                return done
            elif sweep_dir is not None and (found := _same_job_done(Path(sweep_dir), this_hash, folder.path)):
                log.info("already done: %s (the same configuration as this job; resume=false runs it again)",
                         found[0])
                if main:
                    _drop_if_fresh(folder.path)
                return found[1]
            else:
                _refuse_other_config(folder, this_hash)
            if on_start is not None and main:
                on_start(folder.path)
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


def _write_provenance(ctx: RunContext, world_size: int) -> None:
    data = ctx.built_data
    ctx.run.write_provenance(data_fingerprint=data.fingerprint if data is not None else None,
                             device=str(ctx.cfg.trainer.device),
                             extra={"config_hash": ctx.config_hash, "task": ctx.cfg.task, "world_size": world_size,
                                    "overrides": list(ctx.cfg.get("overrides_", []) or [])})


class CompositionError(ConfigError, ConfigCompositionException):
    """A config that does not compose (unknown key or option, wrong type, bad override syntax): a ConfigError for
    kdnas's callers, still a ConfigCompositionException for Hydra's."""


def composition_error(e: Exception) -> CompositionError:
    """Hydra's composition failure (message and cause) as one paragraph."""
    parts = [str(e), str(e.__cause__ or "")]
    text = " ".join(" ".join(line.strip() for line in part.splitlines() if line.strip()) for part in parts if part)
    schema, full_key = getattr(e.__cause__, "object_type", None), getattr(e.__cause__, "full_key", None)
    if dataclasses.is_dataclass(schema) and full_key and "." in str(full_key):  # a key the option's schema lacks
        group = str(full_key).rsplit(".", 1)[0]
        text += f" {group} takes: {', '.join(f.name for f in dataclasses.fields(schema))}."
    return CompositionError(f"{text} Fix the override (`kdnas --help` lists the groups and their options; "
                            "`kdnas OVERRIDES --cfg job` prints the composed config).")


def _compose(overrides: Sequence[str]) -> tuple[DictConfig, DictConfig]:
    """The task config (with ``choices_``, the group options selected) and Hydra's own node, composed like the
    CLI does (./conf included when the working directory has one); composition errors as CompositionError."""
    check_overrides(overrides)  # a spelling of an older kdnas: one paragraph naming the new one
    try:
        with initialize_config_module(config_module="kdnas.conf", version_base="1.3"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=NO_USER_CONF_WARNING)
            cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:  # ValueError: e.g. `experiment=null`
        raise composition_error(e) from e
    hydra_node = cfg.hydra
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
        cfg.choices_ = OmegaConf.to_container(hydra_node.runtime.choices)
    return cfg, hydra_node


def compose(task: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """The composed config for ``task`` (None: whatever the overrides and experiment select) with Hydra's compose
    API (no run folder, no logging setup)."""
    return _compose([*([f"task={task}"] if task else []), *overrides])[0]


def _job_logging_formats() -> dict[str, str]:
    """The CLI's log formats (conf/hydra/job_logging/kdnas.yaml), so API runs log the same lines."""
    from importlib.resources import files

    spec = OmegaConf.load(str(files("kdnas.conf") / "hydra" / "job_logging" / "kdnas.yaml"))
    return {name: str(f.format) for name, f in spec.formatters.items()}


@contextlib.contextmanager
def run_logging(folder: Path) -> Iterator[None]:
    """For an API run: kdnas's log lines go to ``folder/kdnas.log`` (timestamped, as in the CLI) and, when the
    caller has configured no logging, to stdout in the CLI's console format. Removed afterwards."""
    formats = _job_logging_formats()
    logger = logging.getLogger("kdnas")
    folder.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(folder / "kdnas.log")
    file_handler.setFormatter(logging.Formatter(formats["detailed"]))
    handlers: list[logging.Handler] = [file_handler]
    if not logging.getLogger().handlers and not logger.handlers:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter(formats["plain"]))
        handlers.append(console)
    level = logger.level
    for handler in handlers:
        logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def _write_hydra_folder(folder: Path, cfg: DictConfig, hydra_node: DictConfig, overrides: list[str]) -> None:
    """``.hydra/`` as the CLI writes it: the task config, the overrides and Hydra's own config."""
    out = folder / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if not str(k).endswith("_")])
    OmegaConf.save(task_cfg, out / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), out / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_node}), out / "hydra.yaml")


def run(task: str, overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> dict[str, Any]:
    """Python API: run a task with command-line style overrides; return its summary.

    Like the CLI: the run folder gets ``.hydra/`` and ``kdnas.log``, and every user error (composition included)
    raises a :class:`kdnas.errors.KdnasError` subclass. ``task="list"`` writes nothing and returns the listing.
    """
    args = [f"task={task}", *overrides]
    cfg, hydra_node = _compose(args)
    if cfg.task == "list":
        from kdnas.tasks.listing import listing

        return listing(cfg)
    if run_dir is None:
        run_dir = Path("outputs") / task / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-{cfg.name}"
    with open_dict(cfg):
        cfg.overrides_ = args
    folder = _run_path(cfg, Path(run_dir))
    with run_logging(folder):
        summary = execute(cfg, run_dir, raise_errors=True,
                          on_start=lambda path: _write_hydra_folder(path, cfg, hydra_node, args))
    assert summary is not None
    return summary
