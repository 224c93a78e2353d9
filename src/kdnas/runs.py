"""Run folders: :class:`RunDir` writes one run's provenance, metrics (JSONL), summary, status and sessions; sweep
job folders are named and found here. The layout is documented once, in README "Run directory". Every JSON file and
record carries ``schema_version``; every file but the append-only ``metrics.jsonl`` is written atomically.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from kdnas.utils import atomic_write_json, read_json, read_jsonl, stable_hash

SCHEMA_VERSION = 1
_ACTIVE: list[RunDir] = []  # the run whose session this process is timing (heartbeat() updates it)


def safe_dirname(text: str, max_len: int = 80) -> str:
    """Hydra's override_dirname made safe for one folder level ('/' would nest folders)."""
    clean = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)
    return clean if len(clean) <= max_len else f"{clean[: max_len - 9]}-{stable_hash(text, 8)}"


def job_folders(sweep_dir: Path) -> Iterator[Path]:
    """Every job folder under a sweep folder, at any depth (a folder Hydra wrote ``.hydra/`` into)."""
    return (p.parent for p in sorted(sweep_dir.rglob(".hydra")) if p.is_dir())


def heartbeat() -> None:
    """Mark the active run session alive now (every checkpoint does): a session killed later counts up to it."""
    if _ACTIVE:
        _ACTIVE[-1].heartbeat()
_PACKAGES = ("kdnas", "torch", "torchvision", "hydra-core", "omegaconf", "timm", "numpy", "safetensors",
             "wandb")


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the kdnas source tree (None outside a git checkout)."""
    src = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class RunDir:
    """One run's folder. Every writer is atomic except the append-only metrics log, which is
    truncated back to the checkpointed step on resume."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoint_dir = self.path / "checkpoints"
        self.sessions_path = self.path / "sessions.json"
        self._session: int | None = None

    def write_provenance(self, *, data_fingerprint: str | None, device: str, extra: dict | None = None) -> None:
        atomic_write_json(self.path / "provenance.json", {
            "schema_version": SCHEMA_VERSION,
            "git": git_state(),
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "device": device,
            "cuda": torch.version.cuda,
            "torch_threads": torch.get_num_threads(),
            "data_fingerprint": data_fingerprint,
            "argv": sys.argv,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        })

    def log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps({"schema_version": SCHEMA_VERSION, **record}, default=float) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def truncate_metrics(self, keep_through_epoch: int) -> None:
        """On resume: drop records logged after the checkpoint we restart from."""
        kept = [r for r in self.read_metrics() if r.get("epoch", -1) <= keep_through_epoch]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, default=float) + "\n" for r in kept))
        os.replace(tmp, self.metrics_path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / "summary.json", {"schema_version": SCHEMA_VERSION, **summary})

    def read_summary(self) -> dict[str, Any] | None:
        p = self.path / "summary.json"
        return read_json(p) if p.exists() else None

    def write_status(self, status: str, message: str | None = None) -> None:
        atomic_write_json(self.path / "status.json",
                          {"schema_version": SCHEMA_VERSION, "status": status, "message": message})

    def _sessions(self) -> list[list[float]]:
        try:
            return [list(map(float, s)) for s in read_json(self.sessions_path)["sessions"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _write_sessions(self, sessions: list[list[float]]) -> None:
        atomic_write_json(self.sessions_path, {"schema_version": SCHEMA_VERSION, "sessions": sessions})

    def begin_session(self) -> None:
        """Start timing this process's session of the run; :meth:`wall_seconds` sums every session, so a run
        resumed after a kill reports the time of all its parts."""
        now = time.time()
        sessions = [*self._sessions(), [now, now]]
        self._write_sessions(sessions)
        self._session = len(sessions) - 1
        _ACTIVE[:] = [self]

    def heartbeat(self) -> None:
        if self._session is None:
            return
        sessions = self._sessions()
        if self._session < len(sessions):
            sessions[self._session][1] = time.time()
            self._write_sessions(sessions)

    def wall_seconds(self) -> float | None:
        """Wall-clock seconds of every session of this run up to now (None when this process timed none)."""
        if self._session is None:
            return None
        self.heartbeat()
        return sum(end - start for start, end in self._sessions())

    def reset_sessions(self) -> None:
        """resume=false: the run starts over, and so does its clock."""
        self.sessions_path.unlink(missing_ok=True)

    def sub(self, name: str) -> RunDir:
        """A child run folder (one stage of a scheme or pipeline)."""
        return RunDir(self.path / name)
