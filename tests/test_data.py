"""Data layer: bundled set, cache, splits, replayable augmentation, image folders and their errors."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg

from kdnas.config import DataConfig
from kdnas.data import apply_crop_flip, build_data, crop_flip_params, datasets, normalize
from kdnas.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SHARED_TARBALL = REPO.parent / "shared/data/cifar10-jpg.tar.gz"


@pytest.fixture(scope="session")
def mini_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the decoded mini set (decoded once per session)."""
    cache = tmp_path_factory.mktemp("cache")
    build_data(DataConfig(), cache / "raw", cache)
    return cache


@pytest.fixture(scope="session")
def mini(mini_cache: Path) -> datasets.TensorDataModule:
    return build_data(DataConfig(), mini_cache / "raw", mini_cache)


def write_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), n_train: int = 4, n_test: int = 2
                 ) -> dict[str, bytes]:
    """A tiny train/test image folder of random 32x32 JPEGs; returns relative path -> bytes."""
    gen = torch.Generator().manual_seed(0)
    files = {}
    for which, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            for i in range(n):
                image = torch.randint(0, 256, (3, 32, 32), generator=gen, dtype=torch.uint8)
                rel = f"{which}/{cls}/{i:02d}.jpg"
                files[rel] = encode_jpeg(image, quality=95).numpy().tobytes()
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(files[rel])
    return files


def folder_cfg(root: Path, **overrides: object) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), val_fraction=0.0, **overrides)


def collect(source: datasets.BatchSource, epoch: int) -> dict[int, torch.Tensor]:
    return {int(i): x for batch in source.epoch(epoch) for i, x in zip(batch.index, batch.x)}


def test_mini_set_loads(mini: datasets.TensorDataModule) -> None:
    assert mini.name == "cifar10_mini" and mini.num_classes == 10 and mini.input_size == 32
    assert mini.images["train"].shape == (10_000, 3, 32, 32)
    assert mini.images["test"].shape == (2_000, 3, 32, 32)
    assert mini.images["train"].dtype == torch.uint8
    assert torch.bincount(mini.labels["train"]).tolist() == [1000] * 10
    assert torch.bincount(mini.labels["test"]).tolist() == [200] * 10
    assert mini.replayable and mini.num_samples("train_full") == 10_000 and mini.num_samples("test") == 2_000


def test_cache_reused_and_fingerprint_stable(mini: datasets.TensorDataModule, mini_cache: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(*args: object) -> None:
        raise AssertionError("decoded again although the cache file is valid")

    monkeypatch.setattr(datasets, "decode_items", no_decode)
    again = build_data(DataConfig(), mini_cache / "raw", mini_cache)
    assert again.fingerprint == mini.fingerprint and len(again.fingerprint) == 64
    assert torch.equal(again.images["train"], mini.images["train"])
    assert len(list((mini_cache / "data").glob("*.safetensors"))) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip_bytes"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, damage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_folder(tmp_path / "imgs")
    cfg = folder_cfg(tmp_path / "imgs")
    first = build_data(cfg, tmp_path, tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache/data").glob("*.safetensors")
    blob = bytearray(cache_file.read_bytes())
    if damage == "truncate":
        del blob[len(blob) // 2:]
    else:
        blob[-100:-90] = bytes(255 - b for b in blob[-100:-90])
    cache_file.write_bytes(bytes(blob))

    calls = []
    decode = datasets.decode_items
    monkeypatch.setattr(datasets, "decode_items", lambda *a: calls.append(1) or decode(*a))
    rebuilt = build_data(cfg, tmp_path, tmp_path / "cache")
    assert calls == [1]
    assert torch.equal(rebuilt.images["train"], first.images["train"])
    assert datasets._load_cache(cache_file) is not None


def test_split_stratified_disjoint_deterministic(mini: datasets.TensorDataModule, mini_cache: Path) -> None:
    train, val, full = (mini.split_indices(s) for s in ("train", "val", "train_full"))
    labels = mini.labels["train"]
    assert torch.bincount(labels[val]).tolist() == [100] * 10
    assert torch.bincount(labels[train]).tolist() == [900] * 10
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(torch.cat([train, val]).sort().values, full)
    assert torch.equal(mini.split_indices("test"), torch.arange(2000))

    same = build_data(DataConfig(), mini_cache / "raw", mini_cache)
    assert torch.equal(same.split_indices("val"), val)
    other = build_data(DataConfig(split_seed=1), mini_cache / "raw", mini_cache)
    assert not torch.equal(other.split_indices("val"), val)
    # The run seed changes the order, never the membership.
    for seed in (0, 1):
        source = mini.loader("val", 128, train=True, seed=seed, drop_last=False)
        seen = torch.cat([b.index for b in source.epoch(0)])
        assert torch.equal(seen.sort().values, val)


def test_per_class_caps_and_no_val_split(mini_cache: Path) -> None:
    dm = build_data(DataConfig(max_train_per_class=20, max_test_per_class=5), mini_cache / "raw", mini_cache)
    assert torch.bincount(dm.labels["train"][dm.split_indices("train_full")]).tolist() == [20] * 10
    assert torch.bincount(dm.labels["train"][dm.split_indices("val")]).tolist() == [2] * 10
    assert torch.bincount(dm.labels["test"][dm.split_indices("test")]).tolist() == [5] * 10
    plain = build_data(DataConfig(val_fraction=0.0), mini_cache / "raw", mini_cache)
    assert torch.equal(plain.split_indices("train"), torch.arange(10_000))
    assert plain.num_samples("val") == 0
    with pytest.raises(ConfigError, match="data.val_fraction"):
        build_data(DataConfig(val_fraction=1.0), mini_cache / "raw", mini_cache)


def test_augmentation_replays_by_index(mini_cache: Path) -> None:
    dm = build_data(DataConfig(max_train_per_class=30, aug_seed=7), mini_cache / "raw", mini_cache)
    views = collect(dm.loader("train", 16, train=True, seed=0), epoch=3)
    other_order = collect(dm.loader("train_full", 50, train=True, seed=5), epoch=3)
    assert len(views) > 200
    assert all(torch.equal(x, other_order[i]) for i, x in views.items())

    # The view is the documented pure function of (aug_seed, epoch, index).
    dy, dx, flip = crop_flip_params(7, 3, 10_000)
    i = next(iter(views))
    cropped = apply_crop_flip(dm.images["train"][[i]], dy[[i]], dx[[i]], flip[[i]])
    assert torch.equal(views[i], normalize(cropped, dm.mean, dm.std)[0])

    next_epoch = collect(dm.loader("train", 16, train=True, seed=0), epoch=4)
    differ = sum(not torch.equal(x, next_epoch[i]) for i, x in views.items() if i in next_epoch)
    assert differ > 0.9 * len(views)


def test_aug_seed_follows_seed_when_unset(mini_cache: Path) -> None:
    dm = build_data(DataConfig(max_train_per_class=10), mini_cache / "raw", mini_cache)
    a = collect(dm.loader("train_full", 100, train=True, seed=0), 0)
    b = collect(dm.loader("train_full", 100, train=True, seed=1), 0)
    assert sum(not torch.equal(x, b[i]) for i, x in a.items()) > 0.9 * len(a)


def test_eval_loader_fixed_order_no_augmentation(mini: datasets.TensorDataModule) -> None:
    source = mini.loader("test", 300, train=False, seed=3, channels_last=True)
    batches = list(source.epoch(0))
    assert len(source) == len(batches) == 7 and source.num_samples == 2000
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(2000))
    first = batches[0]
    assert first.x.dtype == torch.float32 and first.y.dtype == first.index.dtype == torch.int64
    assert first.x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(first.x, normalize(mini.images["test"][:300], mini.mean, mini.std))
    assert torch.equal(first.y, mini.labels["test"][:300])
    capped = mini.loader("train", 64, train=True, seed=0, max_batches=3)
    assert len(capped) == 3 and capped.num_samples == 192 and len(list(capped.epoch(0))) == 3


def test_crop_identity_flip_and_offset() -> None:
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    pad = torch.full((5,), 4)
    assert torch.equal(apply_crop_flip(x, pad, pad, torch.zeros(5, dtype=torch.bool)), x)
    assert torch.equal(apply_crop_flip(x, pad, pad, torch.ones(5, dtype=torch.bool)), torch.flip(x, [3]))
    zeros, eights = torch.zeros(5, dtype=torch.long), torch.full((5,), 8)
    shifted = apply_crop_flip(x, zeros, eights, torch.zeros(5, dtype=torch.bool))
    assert torch.equal(shifted, F.pad(x, (4, 4, 4, 4))[:, :, 0:32, 8:40])


def make_tar(src: Path, archive: Path, prefix: str = "") -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            tar.add(path, arcname=prefix + path.relative_to(src).as_posix())
    return archive


@pytest.mark.parametrize("form", ["folder", "tar.gz", "wrapped tar"])
def test_imagefolder_in_memory(tmp_path: Path, form: str) -> None:
    files = write_folder(tmp_path / "imgs")
    root = tmp_path / "imgs"
    if form != "folder":
        root = make_tar(root, tmp_path / "imgs.tar.gz", prefix="top/" if form == "wrapped tar" else "")
    dm = build_data(folder_cfg(root), tmp_path, tmp_path / "cache")
    assert dm.classes == ["cat", "dog"] and dm.replayable
    assert dm.images["train"].shape == (8, 3, 32, 32) and dm.labels["test"].tolist() == [0, 0, 1, 1]
    expected = decode_jpeg(torch.frombuffer(bytearray(files["train/dog/01.jpg"]), dtype=torch.uint8))
    assert torch.equal(dm.images["train"][5], expected)
    batch = next(iter(dm.loader("train", 8, train=True, seed=0).epoch(0)))
    assert batch.x.shape == (8, 3, 32, 32)


@pytest.mark.parametrize("archived", [False, True])
def test_imagefolder_streaming_path(tmp_path: Path, archived: bool) -> None:
    write_folder(tmp_path / "imgs")
    root = make_tar(tmp_path / "imgs", tmp_path / "imgs.tar") if archived else tmp_path / "imgs"
    dm = build_data(folder_cfg(root, in_memory=False, num_workers=0), tmp_path, tmp_path / "cache")
    assert not dm.replayable and dm.classes == ["cat", "dog"]
    source = dm.loader("train", 3, train=True, seed=0, channels_last=True)
    batches = list(source.epoch(0))
    assert len(source) == len(batches) == 2 and source.num_samples == 6
    assert batches[0].x.shape == (3, 3, 32, 32)
    assert batches[0].x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batches[0].y, dm.labels["train"][batches[0].index])
    test = list(dm.loader("test", 10, train=False, seed=0).epoch(0))
    assert test[0].index.tolist() == [0, 1, 2, 3]


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.root"):
        build_data(DataConfig(name="imagefolder"), tmp_path, tmp_path / "cache")
    with pytest.raises(ConfigError, match="data.root"):
        build_data(folder_cfg(tmp_path / "missing"), tmp_path, tmp_path / "cache")
    (tmp_path / "empty/train").mkdir(parents=True)
    with pytest.raises(DataError, match="data.root"):
        build_data(folder_cfg(tmp_path / "empty"), tmp_path, tmp_path / "cache")
    with pytest.raises(DataError, match="data.root"):
        build_data(folder_cfg(tmp_path / "empty", in_memory=False), tmp_path, tmp_path / "cache")

    write_folder(tmp_path / "bad")
    (tmp_path / "bad/train/dog/01.jpg").write_bytes(b"\xff\xd8not really a jpeg")
    with pytest.raises(DataError, match=r"data.root.*train/dog/01\.jpg"):
        build_data(folder_cfg(tmp_path / "bad"), tmp_path, tmp_path / "cache")
    (tmp_path / "not_a.tar").write_bytes(b"plain text")
    with pytest.raises(DataError, match="data.root"):
        build_data(folder_cfg(tmp_path / "not_a.tar"), tmp_path, tmp_path / "cache")


def test_config_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.download"):
        build_data(DataConfig(name="cifar10"), tmp_path, tmp_path / "cache")
    with pytest.raises(ConfigError, match="data.name"):
        build_data(DataConfig(name="mnist"), tmp_path, tmp_path / "cache")
    with pytest.raises(ConfigError, match="data.in_memory"):
        build_data(DataConfig(in_memory=False), tmp_path, tmp_path / "cache")
    with pytest.raises(ConfigError, match="data.mean"):
        build_data(DataConfig(mean=[0.5, 0.5]), tmp_path, tmp_path / "cache")


@pytest.mark.skipif(not SHARED_TARBALL.exists(), reason="the shared CIFAR-10 tarball is not on this machine")
@pytest.mark.slow  # make test-fast stays under 3 minutes (CI runs it)
def test_mini_asset_rebuilds_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "mini.tar.gz"
    script = REPO / "scripts/make_mini_dataset.py"
    subprocess.run([sys.executable, str(script), "--source", str(SHARED_TARBALL), "--out", str(out)],
                   check=True, capture_output=True)
    assert out.read_bytes() == (REPO / "src/kdnas/data/assets" / datasets.MINI_ASSET).read_bytes()
