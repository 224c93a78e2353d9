"""Reading run folders for a report: tolerant of missing or half-written files (a job killed mid-write, a sweep
still running), since a report over a partly failed sweep is exactly when one is needed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from kdnas.errors import ConfigError
from kdnas.utils import read_jsonl

# Any of these marks a folder as a kdnas run (a job that crashed early may have only its Hydra config).
RUN_MARKERS = ("summary.json", "status.json", "metrics.jsonl", "history.jsonl", "provenance.json",
               ".hydra/config.yaml")


def read_json_or(path: Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing or not (yet) valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in RUN_MARKERS)


def _config(path: Path) -> dict[str, Any]:
    """The composed config (Hydra's ``.hydra/config.yaml``, or ``config.yaml`` of ``kdnas.run``), resolved where
    possible (``name: ${task}``)."""
    for file in (path / ".hydra" / "config.yaml", path / "config.yaml"):
        if file.is_file():
            cfg = OmegaConf.load(file)
            try:
                return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
            except Exception:  # an interpolation needing Hydra's runtime (e.g. ${now:...})
                return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]
    return {}


def _overrides(path: Path, provenance: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    file = path / ".hydra" / "overrides.yaml"
    if file.is_file():
        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(file)) or []]  # type: ignore[union-attr]
    return [str(o) for o in provenance.get("overrides") or cfg.get("overrides_") or []]


@dataclass
class Run:
    """One run folder as the report sees it; ``children`` are its stage folders (a pipeline's search/, distill/,
    ce/; a teacher trained on first use)."""

    path: Path
    status: dict[str, Any]
    summary: dict[str, Any]
    config: dict[str, Any]
    overrides: list[str]
    metrics: list[dict[str, Any]]
    history: list[dict[str, Any]]
    children: list[Run] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def task(self) -> str:
        return str(self.summary.get("task") or self.config.get("task") or "-")

    @property
    def state(self) -> str:
        """ok | failed | running (left so: the job was killed) | unknown (no status.json)."""
        return str(self.status.get("status") or ("ok" if self.summary else "unknown"))

    @property
    def message(self) -> str:
        if self.state == "running":
            return "no final status: still running, or killed"
        return str(self.status.get("message") or f"status {self.state}")

    def child(self, name: str) -> Run | None:
        return next((c for c in self.children if c.path.name == name), None)

    def group(self, key: str) -> str | None:
        """The ``name`` of a config group (strategy, space, ...), when recorded."""
        node = self.config.get(key)
        return str(node.get("name")) if isinstance(node, dict) and node.get("name") else None


def load_run(path: Path, depth: int = 1) -> Run:
    """Read ``path`` and, ``depth`` levels down, its stage folders."""
    cfg = _config(path)
    provenance = read_json_or(path / "provenance.json", {})
    children = [load_run(p, depth - 1) for p in sorted(path.iterdir()) if is_run(p)] if depth > 0 else []
    return Run(path=path, status=read_json_or(path / "status.json", {}),
               summary=read_json_or(path / "summary.json", {}), config=cfg, overrides=_overrides(path, provenance, cfg),
               metrics=read_jsonl(path / "metrics.jsonl", skip_bad_lines=True),  # a job may still be writing
               history=read_jsonl(path / "history.jsonl", skip_bad_lines=True), children=children)


def _job_order(path: Path) -> tuple[int, str]:
    """Hydra's job number first (``10-...`` after ``9-...``), then the name."""
    match = re.match(r"(\d+)", path.name)
    return (int(match.group(1)) if match else 1 << 30, path.name)


def load_target(path: Path) -> tuple[str, list[Run]]:
    """``("run", [run])`` for a run folder, ``("sweep", jobs)`` for a sweep folder (its job folders one level
    down, in job order); a ConfigError naming ``report.path`` otherwise."""
    if not path.is_dir():
        raise ConfigError(f"report.path={str(path)!r} is not a folder: pass a kdnas run folder, a search run or a "
                          "sweep folder (hydra.sweep.dir).")
    if is_run(path):
        return "run", [load_run(path)]
    jobs = sorted((p for p in path.iterdir() if is_run(p)), key=_job_order)
    if not jobs:
        raise ConfigError(f"report.path={str(path)!r} is neither a kdnas run folder nor a sweep folder: it holds none "
                          f"of {', '.join(RUN_MARKERS)}, nor job folders that do.")
    return "sweep", [load_run(p) for p in jobs]


def first(*values: Any) -> Any:
    """The first value that is not None (a figure read from several places, best source first)."""
    return next((v for v in values if v is not None), None)


def stage_seconds(run: Run | None) -> float | None:
    """A stage's seconds: its summary's ``wall_seconds``, else the training seconds its metrics log records."""
    if run is None:
        return None
    logged = [r["seconds"] for r in run.metrics if r.get("split") == "train" and "seconds" in r]
    return first(run.summary.get("wall_seconds"), sum(logged) if logged else None)


def pipeline_row(run: Run) -> dict[str, Any]:
    """One row of the equal-budget comparison: a task=pipeline job's search cost, winner and accuracies.

    Timings: the pipeline's ``timings`` (``search_s`` + ``retrain_s``, the winner's KD training, = ``total_s``),
    else the stage folders' own figures (search/ and distill/), else the search summary's seconds of its last
    session.
    """
    s = run.summary
    found = s.get("search") or {}
    costs = (read_json_or(run.path / "search" / "best_arch.json", {}).get("result") or {}).get("costs") or {}
    timings = s.get("timings") or {}
    search_s = first(timings.get("search_s"), stage_seconds(run.child("search")),
                     found.get("search_seconds_this_session"))
    retrain_s = first(timings.get("retrain_s"), stage_seconds(run.child("distill")))
    flops = first(s.get("flops"), costs.get("flops"), 2 * costs["macs"] if "macs" in costs else None)
    return {"name": run.name, "strategy": first(found.get("strategy"), run.group("strategy")),
            "space": first(found.get("space"), run.group("space")), "evaluated": found.get("evaluated"),
            "search_s": search_s, "retrain_s": retrain_s,
            "total_s": first(timings.get("total_s"), None if None in (search_s, retrain_s) else search_s + retrain_s),
            "params": first(s.get("params"), costs.get("params")),
            "macs": first(s.get("macs"), costs.get("macs"), flops // 2 if flops is not None else None),
            "flops": flops, "kd_top1": s.get("kd_test_top1_last"), "ce_top1": s.get("ce_test_top1_last"),
            "teacher_top1": s.get("teacher_test_top1")}
