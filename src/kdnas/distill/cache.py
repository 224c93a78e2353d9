"""Teacher-output cache: a teacher's logits on every training view of an epoch, computed once and shared by
every student, seed, sweep job and search candidate that trains on the same views.

Invariants: augmentation is a pure function of (aug_seed, epoch, sample index) (:mod:`kdnas.data.augment`), so
one file per (teacher weights sha256, data identity, split, aug_seed, epoch) holds that epoch's logits; every
load verifies the file, and a stale or corrupt one is never used; an entry a live job holds is never pruned.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from kdnas.data import DataModule
from kdnas.engine.checkpoint import write_safetensors
from kdnas.errors import ConfigError
from kdnas.progress import Progress
from kdnas.utils import canonical_json, stable_hash

log = logging.getLogger("kdnas")
CACHE_FORMAT = 2  # 2: the whole data identity (kdnas.data.DataModule.identity) in the key
BUILD_BATCH = 500  # eval-mode batches: as big as memory comfortably allows


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor (any dtype, any device), for hashing."""
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def tensor_sha256(t: Tensor) -> str:
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


class TeacherLogitCache:
    """Logits of one data split's training views, per teacher network and epoch: [N, K], fp16, rows in split order,
    one safetensors file per key under ``<paths.cache_dir>/teacher_logits/``, with the key and a sha256 of the
    tensor bytes in its metadata. Without augmentation every epoch shows the same views and shares one file. Two
    flock files sit beside each entry: ``.<name>.lock`` (:func:`lock_file`, exclusive while it is built: of two
    workers racing for an epoch, one builds, the other waits and reads it) and ``.<name>.hold`` (:func:`hold`,
    shared by every live cache object and search evaluator that uses it, so ``task=cache`` pruning skips it).

    ``mode``: ``auto`` builds a missing or invalid file on first use; ``required`` raises
    :class:`~kdnas.errors.ConfigError` instead (the run must not pay for the teacher).
    """

    def __init__(self, cache_dir: str | Path, data: DataModule, split: str, seed: int, mode: str = "auto") -> None:
        if not data.replayable:
            raise ConfigError(f"teacher.cache={mode}: data set {data.name!r} is not held in memory, so its "
                              "augmented views cannot be replayed by index. Set teacher.cache=off.")
        self.root = Path(cache_dir).expanduser() / "teacher_logits"
        self.data, self.split, self.seed, self.mode = data, split, seed, mode
        self.indices = data.split_indices(split)
        self.rows = torch.full((len(data.labels["train"]),), -1, dtype=torch.long)  # training-set index -> row
        self.rows[self.indices] = torch.arange(len(self.indices))
        self.augment = data.cfg.augment
        self.aug_seed = data.cfg.aug_seed if data.cfg.aug_seed is not None else seed  # as DataModule.loader
        self.held: dict[Path, IO[str]] = {}  # entries this object has used: held until it is closed

    def key(self, teacher_hash: str, epoch: int) -> dict:
        """Everything the cached logits depend on (the epoch only when views change with it)."""
        return {"format": CACHE_FORMAT, "teacher": teacher_hash, "data": self.data.identity,
                "split": self.split, "indices": tensor_sha256(self.indices),
                "aug_seed": self.aug_seed if self.augment else None, "epoch": epoch if self.augment else None}

    def path(self, key: dict) -> Path:
        return self.root / f"{key['teacher'][:16]}-{stable_hash(key, 24)}.safetensors"

    def get(self, net: nn.Module, teacher_hash: str, epoch: int) -> Tensor:
        """``net``'s logits [N, K] (fp16, CPU, rows in split order) on the views of epoch ``epoch``; the entry is
        held (:func:`hold`) while this cache object lives, so ``task=cache`` pruning skips it."""
        key = self.key(teacher_hash, epoch)
        path = self.path(key)
        if path not in self.held:
            self.held[path] = hold(path)
        logits, problem = self.load(path, key)
        if logits is not None:
            return logits
        if self.mode == "required":
            raise ConfigError(f"teacher.cache=required, but the teacher-logit cache has no valid entry for epoch "
                              f"{epoch + 1} ({path}: {problem}). Run once with teacher.cache=auto to build it, or "
                              "prebuild it with kdnas.distill.cache.prebuild.")
        with exclusive(lock_file(path)):
            logits, problem = self.load(path, key)  # another process may have built it meanwhile
            if logits is None:
                if problem != "missing":
                    log.warning("teacher-logit cache %s is %s: rebuilding it", path, problem)
                logits = self.compute(net, epoch)
                self.save(path, key, logits)
        return logits

    def load(self, path: Path, key: dict) -> tuple[Tensor | None, str]:
        """(logits, "") when the file is there and verified, else (None, what is wrong with it)."""
        if not path.is_file():
            return None, "missing"
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                logits = f.get_tensor("logits")
        except (OSError, SafetensorError) as e:
            return None, f"unreadable ({e})"
        if meta.get("key") != canonical_json(key):
            return None, "stale (written for another teacher, data or epoch)"
        if meta.get("sha256") != tensor_sha256(logits) or logits.shape[0] != len(self.indices):
            return None, "corrupt (checksum mismatch)"
        return logits, ""

    def save(self, path: Path, key: dict, logits: Tensor) -> None:
        """Written atomically (temp file + ``os.replace``; the caller holds the write lock)."""
        write_safetensors(path, {"logits": logits.contiguous()},
                          {"key": canonical_json(key), "sha256": tensor_sha256(logits)})

    @torch.no_grad()
    def compute(self, net: nn.Module, epoch: int) -> Tensor:
        """The teacher in eval mode on every view of the epoch, in big channels_last batches, stored by index."""
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        out: Tensor | None = None
        source = self.data.loader(self.split, BUILD_BATCH, train=True, seed=self.seed, device=device,
                                  channels_last=True, drop_last=False)
        for batch in source.epoch(epoch):
            logits = net(batch.x).float().cpu().half()
            if out is None:
                out = torch.empty(len(self.indices), logits.shape[1], dtype=torch.float16)
            out[self.rows[batch.index.cpu()]] = logits
        net.train(was_training)
        assert out is not None
        return out

    def close(self) -> None:
        """Release the entries this object holds (also when it is garbage-collected)."""
        held = getattr(self, "held", {})  # absent when __init__ raised
        for f in held.values():
            f.close()
        held.clear()

    def __del__(self) -> None:
        self.close()


def lock_file(entry: Path) -> Path:
    """The write lock of a cache entry (file or folder), beside it: held exclusively while it is built (the teacher
    store's convention too)."""
    return entry.with_name(f".{entry.name}.lock")


def hold_file(entry: Path) -> Path:
    """The use lock of a cache entry: shared by every job that still needs it (:func:`hold`)."""
    return entry.with_name(f".{entry.name}.hold")


def hold(entry: Path) -> IO[str]:
    """A shared lock on ``entry``'s use lock for as long as the returned file stays open: ``task=cache`` never
    removes a held entry. Separate from the write lock, so that holders never delay a build."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    f = open(hold_file(entry), "a")  # noqa: SIM115 - the caller keeps it open as long as it holds the entry
    fcntl.flock(f, fcntl.LOCK_SH)
    return f


@contextmanager
def exclusive(lock: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on the file ``lock``; ``wait=False``: yields False at once if another holder has it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prebuild(cache: TeacherLogitCache, nets: list[nn.Module], hashes: list[str], epochs: int, *,
             progress: bool = False) -> None:
    """Fill the cache for every epoch of a recipe (before a search's first candidate or a sweep, so every
    candidate and job starts warm); ``progress``: a bar on a terminal, status lines in a log. Epochs already
    cached are only verified."""
    jobs = [(epoch, net, h) for epoch in range(epochs if cache.augment else 1) for net, h in zip(nets, hashes)]
    log.info("teacher-logit cache: %d epoch(s) x %d teacher(s) for this search (aug_seed %s)", epochs, len(nets),
             cache.aug_seed)
    with Progress("teacher logits", len(jobs), unit="epoch", bar=progress, lines=progress) as bar:
        for epoch, net, teacher_hash in jobs:
            cache.get(net, teacher_hash, epoch)
            bar.update()
