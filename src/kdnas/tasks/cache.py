"""task=cache: list what ``paths.cache_dir`` holds (kind, size, age) and prune it (``cache.prune.older_than_days``,
``cache.prune.max_gb``, ``cache.prune.kinds``, ``cache.prune.dry_run``).

Invariants: an entry another job holds (its ``.lock`` while being built, its ``.hold`` while in use; see
:mod:`kdnas.distill.cache`) is never removed and is listed as held; listing creates no lock files.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdnas.config import dataclass_from_node
from kdnas.context import RunContext
from kdnas.distill.cache import exclusive, hold_file, lock_file
from kdnas.errors import ConfigError
from kdnas.utils import atomic_write_json

log = logging.getLogger("kdnas")
KINDS = ("teacher_logits", "evals", "teachers", "data")
GB = 1e9
DAY = 86400.0


@dataclass
class PruneSettings:
    """``cache.prune``: nothing is removed unless ``older_than_days`` or ``max_gb`` is set."""

    older_than_days: float | None = None
    max_gb: float | None = None
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    dry_run: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ConfigError(f"cache.prune.kinds: {unknown} are not cache kinds; choose from {', '.join(KINDS)}.")
        for key in ("older_than_days", "max_gb"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"cache.prune.{key}={value} must be >= 0, or null to not prune by it.")


@dataclass
class CacheSettings:
    """The ``cache:`` config group."""

    prune: PruneSettings = field(default_factory=PruneSettings)
    show: int = 40  # entries printed (largest first); cache.json lists them all

    @classmethod
    def from_config(cls, node: Any) -> CacheSettings:
        settings = dataclass_from_node(cls, node, "cache")
        if not isinstance(settings.prune, dict):
            raise ConfigError(f"cache.prune={settings.prune!r}: give its keys instead, e.g. "
                              "cache.prune.older_than_days=7 or cache.prune.max_gb=2 (cache.prune.kinds, "
                              "cache.prune.dry_run=true).")
        settings.prune = dataclass_from_node(PruneSettings, settings.prune, "cache.prune")
        return settings


@dataclass(frozen=True)
class Entry:
    kind: str
    path: Path
    bytes: int
    mtime: float  # newest write inside it


def _usage(path: Path) -> tuple[int, float]:
    """(bytes, newest mtime) of a file or a folder tree (its files'; an empty folder's own)."""
    if path.is_file():
        st = path.stat()
        return st.st_size, st.st_mtime
    stats = [p.stat() for p in path.rglob("*") if p.is_file()]
    return sum(st.st_size for st in stats), max((st.st_mtime for st in stats), default=path.stat().st_mtime)


def entries(root: Path, kinds: tuple[str, ...] | list[str] = KINDS) -> list[Entry]:
    """Every entry of ``kinds`` under the cache folder ``root`` (lock, hold and temp files are not entries)."""
    found = []
    for kind in kinds:
        folder = root / kind
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            if not path.name.startswith("."):
                found.append(Entry(kind, path, *_usage(path)))
    return found


def is_held(entry: Path) -> bool:
    """Whether another job is building (write lock) or using (hold) the entry right now. Without either lock file no
    job ever locked it: listing must not create them."""
    if not (lock_file(entry).exists() or hold_file(entry).exists()):
        return False
    with exclusive(lock_file(entry), wait=False) as free, exclusive(hold_file(entry), wait=False) as unused:
        return not (free and unused)


def remove(entry: Path) -> bool:
    """Remove ``entry`` unless another job holds it, under both its locks (no job can start using it meanwhile);
    False when it is held. The (empty) lock files stay: removing them would let two jobs lock different files."""
    with exclusive(lock_file(entry), wait=False) as free, exclusive(hold_file(entry), wait=False) as unused:
        if not (free and unused):
            return False
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
        return True


def select(found: list[Entry], prune: PruneSettings, now: float) -> list[Entry]:
    """The entries to remove: of ``prune.kinds``, those older than ``older_than_days``, then the oldest until the
    cache (every kind counted) fits in ``max_gb``."""
    chosen: dict[Path, Entry] = {}
    candidates = sorted((e for e in found if e.kind in prune.kinds), key=lambda e: e.mtime)
    if prune.older_than_days is not None:
        chosen.update((e.path, e) for e in candidates if now - e.mtime > prune.older_than_days * DAY)
    if prune.max_gb is not None:
        total = sum(e.bytes for e in found) - sum(e.bytes for e in chosen.values())
        for e in candidates:
            if total <= prune.max_gb * GB:
                break
            if e.path not in chosen:
                chosen[e.path] = e
                total -= e.bytes
    return list(chosen.values())


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def age(seconds: float) -> str:
    return f"{seconds / DAY:.1f} d" if seconds >= DAY else f"{seconds / 3600:.1f} h"


def table(found: list[Entry], now: float, show: int) -> str:
    lines = [f"{'kind':<15}{'entries':>8}{'size':>11}"]
    for kind in KINDS:
        of_kind = [e for e in found if e.kind == kind]
        lines.append(f"{kind:<15}{len(of_kind):>8}{human(sum(e.bytes for e in of_kind)):>11}")
    lines.append(f"{'total':<15}{len(found):>8}{human(sum(e.bytes for e in found)):>11}")
    if found and show > 0:
        largest = sorted(found, key=lambda e: -e.bytes)[:show]
        lines += ["", f"{'size':>10}  {'age':>7}  {'held':<4}  entry"]
        lines += [f"{human(e.bytes):>10}  {age(now - e.mtime):>7}  {'yes' if is_held(e.path) else '':<4}  "
                  f"{e.kind}/{e.path.name}" for e in largest]
        if len(found) > show:
            lines.append(f"... {len(found) - show} smaller entries (all in cache.json; cache.show=N)")
    return "\n".join(lines)


def record(e: Entry, now: float) -> dict[str, Any]:
    return {"kind": e.kind, "path": str(e.path), "bytes": e.bytes, "age_days": (now - e.mtime) / DAY}


def run(ctx: RunContext) -> dict[str, Any]:
    s = CacheSettings.from_config(ctx.cfg.cache)
    root, now = Path(ctx.cache_dir).expanduser(), time.time()
    found = entries(root)
    print(f"cache {root}\n{table(found, now, s.show)}")
    removed, held = [], []
    if s.prune.older_than_days is not None or s.prune.max_gb is not None:
        for e in select(found, s.prune, now):
            gone = not is_held(e.path) if s.prune.dry_run else remove(e.path)
            (removed if gone else held).append(e)
        verb = "would remove" if s.prune.dry_run else "removed"
        print(f"prune ({', '.join(f'{k}={v}' for k, v in asdict(s.prune).items() if v is not None)}): {verb} "
              f"{len(removed)} entries ({human(sum(e.bytes for e in removed))}); kept {len(held)} held by running "
              "jobs")
        for e in held:
            log.info("cache: kept %s (held by a running job)", e.path)
    gone = {e.path for e in removed} if not s.prune.dry_run else set()
    left = [e for e in found if e.path not in gone]
    summary = {"cache_dir": str(root), "entries": len(left), "bytes": sum(e.bytes for e in left),
               "bytes_by_kind": {k: sum(e.bytes for e in left if e.kind == k) for k in KINDS},
               "removed": len(removed), "removed_bytes": sum(e.bytes for e in removed), "held": len(held),
               "dry_run": s.prune.dry_run}
    atomic_write_json(ctx.run.path / "cache.json", {
        "schema_version": 1, **summary, "listing": [record(e, now) for e in found],
        "removed_entries": [record(e, now) for e in removed], "held_entries": [record(e, now) for e in held]})
    return summary
