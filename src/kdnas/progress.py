"""Progress of long runs, the same everywhere (training epochs, search candidates, Cream's supernet, a pipeline):
a tqdm bar with its ETA when stderr is a terminal, else a one-line status with the ETA in the log, at most every
``every_s`` seconds, so that a run in a batch job or behind ``nohup`` says where it is and how long it has left.

Every line names what is running (``label``: "teacher resnet20", "KD student arch:1a2b3c4d", "candidate
1a2b3c4d 3/16", "cream supernet"), since a pipeline trains several networks with identical epoch lines otherwise.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

from tqdm.auto import tqdm

log = logging.getLogger("kdnas")
# Seconds between two status lines in a log (no terminal); module-level so that a test can lower it.
EVERY_S = 30.0


def duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def is_terminal() -> bool:
    return sys.stderr.isatty()


class Progress:
    """``total`` units of work named ``label``; :meth:`update` after each unit (or several).

    ``bar`` and stderr a terminal: a tqdm bar. Otherwise, with ``lines``: ``log.info`` of :meth:`status` at most
    every ``every_s`` seconds (``every_s=0``: at every update). Neither suits a caller that logs its own lines and
    only wants :meth:`eta` (or a rank > 0). ``done`` counts units finished before this session (a resumed run):
    they take no time here, so the ETA is this session's rate times what is left.
    """

    def __init__(self, label: str, total: int, *, unit: str = "step", done: int = 0, bar: bool = True,
                 lines: bool = True, every_s: float | None = None, leave: bool = False) -> None:
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.done = self.start_done = done
        self.every_s = EVERY_S if every_s is None else every_s
        self.start = self.last_log = time.perf_counter()
        self.bar = None
        self.log_lines = lines and not (bar and is_terminal())
        if bar and is_terminal():
            self.bar = tqdm(total=self.total, initial=done, desc=label, unit=unit, leave=leave, dynamic_ncols=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self) -> float | None:
        """Seconds left at this session's rate; None before the first unit."""
        ran = self.done - self.start_done
        return None if ran <= 0 else self.elapsed() / ran * max(self.total - self.done, 0)

    def status(self, extra: str = "") -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (f"{self.label}: {self.done}/{self.total} {self.unit}s{pct}{'  ' + extra if extra else ''}, "
                f"{duration(self.elapsed())} elapsed, ETA {duration(self.eta())}")

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if extra:
                self.bar.set_postfix_str(extra, refresh=False)
        elif self.log_lines and time.perf_counter() - self.last_log >= self.every_s:
            self.last_log = time.perf_counter()
            log.info("%s", self.status(extra))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
