"""User-facing errors: each carries a one-paragraph message naming the key and the fix.

The CLI prints these without a traceback and exits non-zero; anything else is a bug and keeps its trace.
"""


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
