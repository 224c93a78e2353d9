"""Small shared helpers: stable hashing, seeding, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of every stable hash in kdnas."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of canonical JSON, truncated: cache keys, arch ids, config hashes."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed derived from (seed, parts): each component gets its own stream, so changing
    one (e.g. the candidate) does not shift the others (data order, augmentation)."""
    return int(hashlib.sha256(canonical_json([seed, *parts]).encode()).hexdigest()[:15], 16)


def generator(seed: int, *parts: Any) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *parts))
    return g


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: colleagues could not read results
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_jsonl(path: str | Path, *, missing_ok: bool = True, skip_bad_lines: bool = False) -> list[dict[str, Any]]:
    """The records of a JSONL log, blank lines skipped; ``[]`` for a missing file when ``missing_ok``.
    ``skip_bad_lines``: for readers of runs that may still be going or died mid-write, a line that does not parse
    is skipped and an unreadable file reads as ``[]``, instead of raising."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        if missing_ok or skip_bad_lines:
            return []
        raise
    except OSError:
        if skip_bad_lines:
            return []
        raise
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if not skip_bad_lines:
                raise
    return records


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
