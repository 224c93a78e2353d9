"""Data sets behind one API: splits, fingerprints and epoch-wise batch sources.

Small images (CIFAR, the bundled mini set, small image folders) are decoded once, cached as one uint8
tensor per split, and batched straight from that tensor on the training device with replayable
augmentation (augment.py): per-sample PIL and worker processes would cost more than training a small
network. Large images go through `folder.py` (ImageFolder + DataLoader) with the same BatchSource API.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from kdnas.config import DataConfig
from kdnas.data import augment
from kdnas.errors import ConfigError, DataError
from kdnas.registry import Registry
from kdnas.utils import atomic_write_bytes, generator

SPLITS = ("train", "val", "test", "train_full")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_SUFFIXES = (".jpg", ".jpeg")
MINI_ASSET = "cifar10_mini.tar.gz"
CACHE_VERSION = 1  # bump when decoding changes, so old cache files are not read
# Bump when what a run sees of the data changes (splitting, augmentation, normalisation code): every store and
# cache key holds DataModule.identity, so old entries are then not reused.
DATA_FORMAT = 1
CROP_PAD = 4
# train/<class>/<file> or test/<class>/<file>, optionally under one top-level folder of the archive.
TAR_MEMBER = re.compile(r"^(?:\./)?(?:[^/]+/)?(train|test)/([^/]+)/([^/]+)$")

# (split, class name, file name, encoded bytes)
Item = tuple[str, str, str, bytes]


@dataclass
class Batch:
    x: torch.Tensor  # float, normalised, on the target device, channels_last when asked
    y: torch.Tensor  # int64 labels on the device
    index: torch.Tensor  # int64 on the device: indices into the full training set (or the test set)


class BatchSource(Protocol):
    num_samples: int  # samples delivered per epoch (after drop_last / max_batches)

    def __len__(self) -> int: ...  # batches per epoch

    def epoch(self, epoch: int) -> Iterator[Batch]: ...  # a pure function of (seed, epoch)


@dataclass(frozen=True)
class EpochPlan:
    """Which samples an epoch visits, in which order and batches: shared by every BatchSource.

    With ``world_size`` > 1 (data-parallel training) the epoch's order is cut to a multiple of world_size
    and rank r takes every world_size-th sample from r: disjoint shards of equal length, so every rank
    runs the same number of steps, and batch i of all ranks together is one global batch.
    """

    indices: torch.Tensor  # CPU int64, into the training set or the test set
    batch_size: int
    shuffle: bool
    seed: int
    drop_last: bool
    max_batches: int | None
    rank: int = 0
    world_size: int = 1

    @property
    def shard_size(self) -> int:
        return len(self.indices) // self.world_size

    def __len__(self) -> int:
        n, b = self.shard_size, self.batch_size
        batches = n // b if self.drop_last else -(-n // b)
        return batches if self.max_batches is None else min(batches, self.max_batches)

    @property
    def num_samples(self) -> int:
        return min(self.shard_size, len(self) * self.batch_size)

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """Index batches of `epoch`; the order has its own generator so augmentation draws do not move it."""
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=generator(self.seed, epoch, "order"))]
        order = order[self.rank : self.shard_size * self.world_size : self.world_size]
        return list(order.split(self.batch_size))[: len(self)]


class DataModule:
    """Classes, labels and the deterministic splits of one data set; subclasses turn plans into batches."""

    replayable = False
    pipeline = "base"  # how batches are made (the augmentation code): part of identity

    def __init__(self, cfg: DataConfig, name: str, classes: list[str], labels: dict[str, torch.Tensor],
                 fingerprint: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.cfg = cfg
        self.name, self.classes, self.num_classes = name, classes, len(classes)
        self.input_size = cfg.image_size
        self.fingerprint = fingerprint
        self.mean, self.std = mean, std
        self.labels = labels  # {"train": int64 [N], "test": int64 [M]}, CPU
        self._splits = make_splits(cfg, labels, len(classes))

    @property
    def identity(self) -> dict[str, Any]:
        """What the data is: everything that changes the images, labels, splits or views a run sees. Every
        store and cache key (teacher store, teacher-logit cache, evaluation caches) holds this one dict, so that
        no key forgets a component (a teacher trained on a 30-per-class subset was once reused on full data)."""
        c = self.cfg
        return {"format": DATA_FORMAT, "pipeline": self.pipeline, "name": self.name, "fingerprint": self.fingerprint,
                "num_classes": self.num_classes, "image_size": self.input_size, "mean": list(self.mean),
                "std": list(self.std), "max_train_per_class": c.max_train_per_class,
                "max_test_per_class": c.max_test_per_class, "val_fraction": c.val_fraction,
                "split_seed": c.split_seed, "augment": c.augment, "aug_seed": c.aug_seed}

    def split_indices(self, split: str) -> torch.Tensor:
        """Sorted indices into the training set (train/val/train_full) or the test set (test).

        'val' is empty when data.val_fraction is 0 ('train' is then the full training set).
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self._splits[split].clone()

    def num_samples(self, split: str) -> int:
        return len(self.split_indices(split))

    def loader(self, split: str, batch_size: int, *, train: bool, seed: int,
               device: torch.device | str = "cpu", channels_last: bool = False,
               drop_last: bool | None = None, max_batches: int | None = None, rank: int = 0,
               world_size: int = 1) -> BatchSource:
        """Batches of `split`; train=True shuffles and augments (from seed/aug_seed and the epoch).

        drop_last defaults to `train`, unless dropping would leave no batch at all (tiny smoke splits).
        rank/world_size select this process's shard (see EpochPlan).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        indices = self.split_indices(split)
        if drop_last is None:
            drop_last = train and len(indices) >= batch_size * world_size
        plan = EpochPlan(indices, batch_size, train, seed, drop_last, max_batches, rank, world_size)
        aug_seed = self.cfg.aug_seed if self.cfg.aug_seed is not None else seed
        return self._source("test" if split == "test" else "train", plan,
                            aug_seed if train and self.cfg.augment else None,
                            torch.device(device), channels_last)

    def _source(self, which: str, plan: EpochPlan, aug_seed: int | None, device: torch.device,
                channels_last: bool) -> BatchSource:
        raise NotImplementedError


def _val_count(n: int, fraction: float) -> int:
    """Mini-val size of a class of n: at least one sample, and at least one left to train on."""
    if fraction == 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def _class_orders(labels: torch.Tensor, num_classes: int, seed: int, *parts: object) -> list[torch.Tensor]:
    """Each class's indices in a seeded order, one generator per class so class sizes do not interact."""
    orders = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        orders.append(idx[torch.randperm(len(idx), generator=generator(seed, *parts, c))])
    return orders


def make_splits(cfg: DataConfig, labels: dict[str, torch.Tensor], num_classes: int
                ) -> dict[str, torch.Tensor]:
    """Stratified mini-train/mini-val split and per-class caps, from split_seed only (not the run seed)."""
    train, val = [], []
    for order in _class_orders(labels["train"], num_classes, cfg.split_seed, "train"):
        order = order[: cfg.max_train_per_class]
        k = _val_count(len(order), cfg.val_fraction)
        val.append(order[:k])
        train.append(order[k:])
    test = [order[: cfg.max_test_per_class]
            for order in _class_orders(labels["test"], num_classes, cfg.split_seed, "test")]

    def joined(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts).sort().values

    return {"train": joined(train), "val": joined(val), "train_full": joined(train + val),
            "test": joined(test)}


class TensorBatches:
    """Batches gathered from uint8 images on the device; augmentation is looked up by sample index.

    Epoch e draws crop/flip parameters for the whole set from (aug_seed, e), so a sample's view does not
    depend on the batch size, the order or the split; eval sources (aug_seed None) only normalise.
    """

    def __init__(self, plan: EpochPlan, images: torch.Tensor, labels: torch.Tensor, aug_seed: int | None,
                 mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool) -> None:
        self.plan, self.images, self.labels, self.aug_seed = plan, images, labels, aug_seed
        self.num_samples = plan.num_samples
        self.mean = torch.tensor(mean, device=images.device)
        self.std = torch.tensor(std, device=images.device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return len(self.plan)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        device = self.images.device
        params = None
        if self.aug_seed is not None:
            drawn = augment.crop_flip_params(self.aug_seed, epoch, len(self.images), CROP_PAD,
                                             self.images.shape[-1])
            params = [p.to(device) for p in drawn]
        for idx in self.plan.batches(epoch):
            idx = idx.to(device)
            x = self.images[idx]
            if params is not None:
                dy, dx, flip = (p[idx] for p in params)
                x = augment.apply_crop_flip(x, dy, dx, flip, CROP_PAD)
            x = x.contiguous(memory_format=self.memory_format)
            yield Batch(augment.normalize(x, self.mean, self.std), self.labels[idx], idx)


class TensorDataModule(DataModule):
    """A data set held as one uint8 tensor per split [N,3,H,W]; replayable augmentation."""

    replayable = True
    pipeline = "tensor-crop4-flip"

    def __init__(self, cfg: DataConfig, name: str, classes: list[str], tensors: dict[str, torch.Tensor],
                 fingerprint: str, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        labels = {which: tensors[f"{which}_labels"] for which in ("train", "test")}
        super().__init__(cfg, name, classes, labels, fingerprint, mean, std)
        self.images = {which: tensors[f"{which}_images"] for which in ("train", "test")}
        self._on_device: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def _source(self, which: str, plan: EpochPlan, aug_seed: int | None, device: torch.device,
                channels_last: bool) -> BatchSource:
        key = (which, device)
        if key not in self._on_device:  # one copy per device, shared by every loader
            self._on_device[key] = (self.images[which].to(device), self.labels[which].to(device))
        return TensorBatches(plan, *self._on_device[key], aug_seed, self.mean, self.std, channels_last)


# ---- fingerprints and the decoded-tensor cache -------------------------------------------------------


def digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def digest_listing(root: Path, files: list[Path]) -> str:
    """Fingerprint of a folder from relative paths and sizes: cheap, and changes when files change."""
    listing = [[p.relative_to(root).as_posix(), p.stat().st_size] for p in sorted(files)]
    return hashlib.sha256(json.dumps(listing, separators=(",", ":")).encode()).hexdigest()


def digest_tensors(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"{key}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.numpy())
    return h.hexdigest()


def _load_cache(path: Path) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """The cached tensors and classes, or None when missing or corrupt (truncated, bytes changed)."""
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (OSError, SafetensorError):
        return None
    if meta.get("checksum") != digest_tensors(tensors) or "classes" not in meta:
        return None
    return tensors, json.loads(meta["classes"])


def _save_cache(path: Path, tensors: dict[str, torch.Tensor], classes: list[str]) -> None:
    """Write atomically (temp file + rename) so a killed run never leaves a half-written cache."""
    meta = {"checksum": digest_tensors(tensors), "classes": json.dumps(classes)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


# ---- decoding ----------------------------------------------------------------------------------------


def _fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (shorter side) + centre-crop to size x size; a no-op for images already that size."""
    if images.shape[-2:] == (size, size):
        return images
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(images, [size]), [size, size])


def _decode(names: list[str], blobs: list[bytes], where: str) -> list[torch.Tensor]:
    """Decode to RGB uint8 [3,H,W]: one batched call for all-JPEG lists, per file otherwise or on error."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    data = [torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy()) for blob in blobs]
    if all(name.lower().endswith(JPEG_SUFFIXES) for name in names):
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # some file is corrupt: the per-file pass below names it
    decoded = []
    for name, d in zip(names, data):
        try:
            decoded.append(decode_image(d, mode=ImageReadMode.RGB))
        except RuntimeError as e:
            raise DataError(f"{where}: cannot decode image {name} ({e}). Replace or delete that file.") from e
    return decoded


def decode_items(items: list[Item], size: int, where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Encoded (split, class, name, bytes) items -> uint8 images and int64 labels per split, and classes."""
    classes = sorted({cls for split, cls, _, _ in items if split == "train"})
    if not classes:
        raise DataError(f"{where}: found no images under train/<class>/. The expected layout is "
                        "train/<class>/*.jpg|png and test/<class>/*.jpg|png.")
    label = {cls: i for i, cls in enumerate(classes)}
    tensors = {}
    for which in ("train", "test"):
        chosen = sorted((cls, name, blob) for split, cls, name, blob in items if split == which)
        unknown = sorted({cls for cls, _, _ in chosen} - set(classes))
        if not chosen or unknown:
            problem = f"test classes {unknown} have no train folder" if unknown else f"no {which}/ images"
            raise DataError(f"{where}: {problem}. Both train/<class>/ and test/<class>/ are needed, with the "
                            "same class folder names.")
        names = [f"{which}/{cls}/{name}" for cls, name, _ in chosen]
        decoded = _decode(names, [blob for *_, blob in chosen], where)
        tensors[f"{which}_images"] = torch.stack([_fit(img, size) for img in decoded])
        tensors[f"{which}_labels"] = torch.tensor([label[cls] for cls, _, _ in chosen], dtype=torch.int64)
    return tensors, classes


def tar_items(fileobj: object, where: str) -> list[Item]:
    """Image members of a .tar/.tar.gz with the train/test layout."""
    items = []
    try:
        with tarfile.open(fileobj=fileobj, mode="r:*") as tar:
            for member in tar:
                match = TAR_MEMBER.match(member.name)
                if member.isfile() and match and match[3].lower().endswith(IMAGE_SUFFIXES):
                    items.append((match[1], match[2], match[3], tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{where}: cannot read the archive ({e}); it is truncated or not a tar/tar.gz file. "
                        "Copy or rebuild it, or unpack it and use the folder.") from e
    return items


def folder_files(root: Path) -> list[Path]:
    """root/{train,test}/<class>/<image> files, sorted."""
    return sorted(p for which in ("train", "test") for p in root.glob(f"{which}/*/*")
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_in_memory(cfg: DataConfig, name: str, fingerprint: str, read: Callable[[], list[Item]],
                   cache_dir: Path, where: str) -> TensorDataModule:
    """Decode once, keyed by data fingerprint + image size: later builds read one safetensors file."""
    path = cache_dir / "data" / f"{fingerprint}-{cfg.image_size}px-v{CACHE_VERSION}.safetensors"
    cached = _load_cache(path)
    if cached is None:
        cached = decode_items(read(), cfg.image_size, where)
        _save_cache(path, *cached)
    tensors, classes = cached
    return TensorDataModule(cfg, name, classes, tensors, fingerprint, *default_stats(cfg))


# ---- the data sets ---------------------------------------------------------------------------------


def default_stats(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """cfg.mean/std, else the data set's own: CIFAR-100's, ImageNet's for large folders, else CIFAR-10's."""
    if cfg.name == "cifar100":
        mean, std = augment.CIFAR100_MEAN, augment.CIFAR100_STD
    elif cfg.name == "imagefolder" and cfg.image_size > 64:
        mean, std = augment.IMAGENET_MEAN, augment.IMAGENET_STD
    else:
        mean, std = augment.CIFAR10_MEAN, augment.CIFAR10_STD
    return tuple(cfg.mean or mean), tuple(cfg.std or std)


def _mini(cfg: DataConfig, data_dir: Path, cache_dir: Path) -> DataModule:
    where = f"the bundled data set kdnas/data/assets/{MINI_ASSET} (built by scripts/make_mini_dataset.py)"
    try:
        blob = resources.files("kdnas.data").joinpath("assets", MINI_ASSET).read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{where} is missing from this install: rebuild it in a source checkout, or "
                        "reinstall kdnas.") from e
    fingerprint = hashlib.sha256(blob).hexdigest()
    return load_in_memory(cfg, "cifar10_mini", fingerprint, lambda: tar_items(io.BytesIO(blob), where),
                          cache_dir, where)


def _torchvision(cfg: DataConfig, data_dir: Path, cache_dir: Path) -> DataModule:
    """CIFAR-10/100 through torchvision (its pickled arrays load fast, so no cache of our own)."""
    from torchvision import datasets

    dataset = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[cfg.name]
    try:
        sets = {which: dataset(str(data_dir), train=which == "train", download=cfg.download)
                for which in ("train", "test")}
    except RuntimeError as e:
        raise DataError(f"{cfg.name} is not under {data_dir} (paths.data_dir) and data.download=false. Put "
                        f"the extracted python version ({data_dir / dataset.base_folder}) there, or set "
                        f"data.download=true to fetch it (needs internet).") from e
    except OSError as e:
        raise DataError(f"Downloading {cfg.name} into {data_dir} failed ({e}). Check the network, or "
                        f"fetch {dataset.url} by hand, extract it into {data_dir}, set data.download=false."
                        ) from e
    tensors = {}
    for which, ds in sets.items():
        tensors[f"{which}_images"] = _fit(torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(),
                                          cfg.image_size)
        tensors[f"{which}_labels"] = torch.tensor(ds.targets, dtype=torch.int64)
    return TensorDataModule(cfg, cfg.name, list(sets["train"].classes), tensors, digest_tensors(tensors),
                            *default_stats(cfg))


def _imagefolder(cfg: DataConfig, data_dir: Path, cache_dir: Path) -> DataModule:
    if not cfg.root:
        raise ConfigError("data.name=imagefolder needs data.root: a folder with train/<class>/* and "
                          "test/<class>/*, or a .tar/.tar.gz archive with that layout.")
    root = Path(cfg.root).expanduser()
    where = f"data.root={root}"
    if not root.exists():
        raise ConfigError(f"{where} does not exist. Set data.root to a folder with train/<class>/* and "
                          "test/<class>/*, or to a .tar/.tar.gz archive with that layout.")
    if root.is_file() and not tarfile.is_tarfile(root):
        raise DataError(f"{where} is a file but not a .tar/.tar.gz archive. Point data.root at an archive or "
                        "a folder with train/<class>/* and test/<class>/*.")
    in_memory = cfg.in_memory if cfg.in_memory is not None else cfg.image_size <= 64
    if root.is_file():
        fingerprint = digest_file(root)
        if not in_memory:
            from kdnas.data.folder import FolderDataModule, extract_archive

            return FolderDataModule(cfg, extract_archive(root, fingerprint, cache_dir, where),
                                    fingerprint, where)

        def read() -> list[Item]:
            with open(root, "rb") as f:
                return tar_items(f, where)
    else:
        if not in_memory:
            from kdnas.data.folder import FolderDataModule

            return FolderDataModule(cfg, root, None, where)
        files = folder_files(root)
        fingerprint = digest_listing(root, files)

        def read() -> list[Item]:
            return [(p.parent.parent.name, p.parent.name, p.name, p.read_bytes()) for p in files]

    return load_in_memory(cfg, "imagefolder", fingerprint, read, cache_dir, where)


# data.name -> builder(cfg, data_dir, cache_dir); every name has a conf/data/<name>.yaml option (test_registries).
BUILDERS: Registry[Callable[[DataConfig, Path, Path], DataModule]] = Registry(
    "data set", "data.name", hint=" (imagefolder reads any train/<class>/ + test/<class>/ folder given as data.root)")
for _name, _builder in (("cifar10_mini", _mini), ("cifar10", _torchvision), ("cifar100", _torchvision),
                        ("imagefolder", _imagefolder)):
    BUILDERS.add(_name, _builder)


def check_config(cfg: DataConfig) -> None:
    """Reject bad values before any file is read or decoded."""
    if cfg.name not in BUILDERS:
        raise BUILDERS.unknown(cfg.name)
    if cfg.in_memory is False and cfg.name != "imagefolder":
        raise ConfigError(f"data.in_memory=false is only supported for data.name=imagefolder; {cfg.name} is "
                          "always held in memory. Remove the override.")
    if not 0 <= cfg.val_fraction < 1:
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} is outside [0, 1): it is the share of each "
                          "class held out as mini-val; use e.g. 0.1, or 0 for no mini-val split.")
    for key in ("max_train_per_class", "max_test_per_class"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key}={value} must be a positive number of images per class, "
                              "or null for all of them.")
    for key in ("mean", "std"):
        value = getattr(cfg, key)
        if value is not None and (len(value) != 3 or (key == "std" and min(value) <= 0)):
            raise ConfigError(f"data.{key}={list(value)} must be three numbers (one per RGB channel, 0-1 "
                              "scale; std > 0), or null for the data set's defaults.")
    if cfg.num_workers < 0:
        raise ConfigError(f"data.num_workers={cfg.num_workers} must be >= 0 (0 = load in this process).")


def build_data(cfg: DataConfig, data_dir: str | Path, cache_dir: str | Path) -> DataModule:
    """The DataModule for cfg.name; decoded tensors are cached under cache_dir/data/."""
    check_config(cfg)
    return BUILDERS.get(cfg.name)(cfg, Path(data_dir).expanduser(), Path(cache_dir).expanduser())
