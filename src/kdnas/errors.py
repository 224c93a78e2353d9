"""User-facing errors: each carries a one-paragraph message naming the key and the fix.

The CLI prints these without a traceback and exits non-zero; anything else is a bug and keeps its trace.
"""

from __future__ import annotations

from pathlib import Path


class KdnasError(Exception):
    """Base of every error the user can fix."""


class ConfigError(KdnasError):
    """A config key has a bad value or names something that does not exist."""


class DataError(KdnasError):
    """Data is missing, empty or corrupt."""


class CheckpointError(KdnasError):
    """A checkpoint is missing, truncated, tampered with, or not a kdnas checkpoint."""


class NonFiniteLossError(KdnasError):
    """Training produced NaN/inf; the last good checkpoint is kept."""


class ConstraintError(KdnasError):
    """A search constraint cannot be satisfied by the space."""


def storage_error(e: OSError, folder: str | Path) -> KdnasError:
    """A full disk, a quota, a read-only or forbidden folder, as a message naming the place and the fix."""
    return KdnasError(
        f"{e.strerror or e}: {e.filename or folder}. kdnas writes the run folder {folder} (hydra.run.dir=DIR, sweeps "
        "hydra.sweep.dir=DIR) and caches under KDNAS_CACHE_DIR: put them on a writable disk with free space. Running "
        "the same command again resumes from the last complete checkpoint.")
