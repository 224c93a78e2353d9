"""Large images (ImageNet-style): files decoded per sample in DataLoader workers, same BatchSource API.

Holding 224 px images in memory is not an option, so this path trades the replayable schedule for
streaming: RandomResizedCrop draws from the worker RNGs, seeded per epoch from (aug_seed, epoch), so a
run repeats for the same num_workers (> 0; with 0 the global RNG draws), but a view is not a function of
the sample index (replayable=False).
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from kdnas.config import DataConfig
from kdnas.data.datasets import Batch, BatchSource, DataModule, EpochPlan, default_stats, digest_listing
from kdnas.errors import DataError
from kdnas.utils import current_umask, generator

LAYOUT = "The expected layout is train/<class>/* and test/<class>/* image files."


class FolderFiles(Dataset):
    """(image tensor, label) of sample i; a file that cannot be read is named in a DataError."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable, where: str) -> None:
        self.samples, self.transform, self.where = samples, transform, where

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        try:
            image = default_loader(path)
        except OSError as e:
            raise DataError(f"{self.where}: cannot read image {path} ({e}). Replace or delete it.") from e
        return self.transform(image), label


def folder_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...], augment_: bool) -> Callable:
    """RandomResizedCrop + flip for training, Resize + CenterCrop (ratio 0.875) otherwise; then normalise."""
    from torchvision.transforms import v2

    if augment_:
        head = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        head = [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*head, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


class FolderBatches:
    """The plan's index batches, loaded by DataLoader workers and moved to the device."""

    def __init__(self, plan: EpochPlan, dataset: FolderFiles, num_workers: int, worker_seed: int,
                 device: torch.device, channels_last: bool) -> None:
        self.plan, self.dataset, self.num_workers, self.worker_seed = plan, dataset, num_workers, worker_seed
        self.num_samples = plan.num_samples
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.plan)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        batches = self.plan.batches(epoch)
        loader = DataLoader(self.dataset, batch_sampler=[b.tolist() for b in batches],
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            generator=generator(self.worker_seed, epoch, "workers"))
        for idx, (x, y) in zip(batches, loader):
            yield Batch(x.to(self.device, non_blocking=True, memory_format=self.memory_format),
                        y.to(self.device, non_blocking=True), idx.to(self.device))


class FolderDataModule(DataModule):
    """An image folder read lazily (torchvision's ImageFolder listing and loader)."""

    pipeline = "folder-randomresizedcrop-flip"

    def __init__(self, cfg: DataConfig, root: Path, fingerprint: str | None, where: str) -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        try:
            classes, class_to_idx = find_classes(str(root / "train"))
            self.samples = {which: make_dataset(str(root / which), class_to_idx, extensions=IMG_EXTENSIONS)
                            for which in ("train", "test")}
        except FileNotFoundError as e:
            raise DataError(f"{where}: {e}. {LAYOUT}") from e
        labels = {which: torch.tensor([label for _, label in s], dtype=torch.int64)
                  for which, s in self.samples.items()}
        if fingerprint is None:
            fingerprint = digest_listing(root, [Path(p) for s in self.samples.values() for p, _ in s])
        super().__init__(cfg, "imagefolder", classes, labels, fingerprint, *default_stats(cfg))
        self.where = where

    @property
    def identity(self) -> dict[str, Any]:
        """The worker count seeds the views (see the module docstring), so it is part of what the data is."""
        return {**super().identity, "num_workers": self.cfg.num_workers}

    def _source(self, which: str, plan: EpochPlan, aug_seed: int | None, device: torch.device,
                channels_last: bool) -> BatchSource:
        transform = folder_transform(self.input_size, self.mean, self.std, aug_seed is not None)
        dataset = FolderFiles(self.samples[which], transform, self.where)
        worker_seed = aug_seed if aug_seed is not None else plan.seed
        return FolderBatches(plan, dataset, self.cfg.num_workers, worker_seed, device, channels_last)


def extract_archive(archive: Path, fingerprint: str, cache_dir: Path, where: str) -> Path:
    """Unpack once to cache_dir/data/extracted/<fingerprint>, via a temp folder renamed whole."""
    dest = cache_dir / "data" / "extracted" / fingerprint
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{fingerprint[:16]}."))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700: a shared cache must stay readable
    # The "data" filter refuses absolute paths and links out of the folder (Python >= 3.10.12 / 3.11.4).
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, **safe)
        inner = [p for p in tmp.iterdir() if p.is_dir()]
        # Like the in-memory reader, accept the layout wrapped in one top-level folder.
        os.replace(inner[0] if len(inner) == 1 and not (tmp / "train").is_dir() else tmp, dest)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: cannot unpack the archive ({e}); it is truncated or not a tar/tar.gz "
                        "file. Copy it again, or unpack it and point data.root at the folder.") from e
    except OSError:
        if not dest.is_dir():  # else another process unpacked the same archive first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
