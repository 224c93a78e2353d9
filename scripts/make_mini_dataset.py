"""Build the bundled CIFAR-10 subset (`src/kdnas/data/assets/cifar10_mini.tar.gz`) from the shared tarball.

Reproducible to the byte: members are chosen from sorted names with a seeded RNG, the JPEG bytes are
copied unchanged, and every tar header and the gzip header carry fixed metadata (mtime 0, uid 0, sorted
order), so a rebuild gives the same sha256, which is the data fingerprint that keys every cache.

The archive is gzipped although JPEG data does not compress: at 32x32 px each file is ~920 bytes, about
600 of them the same JPEG tables in every file, and an uncompressed tar adds 512-byte headers and
512-byte padding per member; 12,000 members would take ~18 MB as a plain tar against ~4 MB gzipped.

    python scripts/make_mini_dataset.py [--source PATH] [--out PATH] [--train-per-class N]
        [--test-per-class N] [--seed S]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import random
import re
import tarfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEMBER = re.compile(r"^(?:\./)?(train|test)/([^/]+)/([^/]+\.jpe?g)$", re.IGNORECASE)
MAX_BYTES = 5 * 1024 * 1024


def read_members(source: Path) -> dict[tuple[str, str], dict[str, bytes]]:
    """All JPEG files of the source archive, grouped by (split, class)."""
    groups: dict[tuple[str, str], dict[str, bytes]] = defaultdict(dict)
    with tarfile.open(source, "r:*") as tar:
        for member in tar:
            match = MEMBER.match(member.name)
            if member.isfile() and match:
                split, cls, name = match.groups()
                groups[(split, cls)][name] = tar.extractfile(member).read()
    return groups


def choose(groups: dict[tuple[str, str], dict[str, bytes]], per_split: dict[str, int], seed: int
           ) -> list[tuple[str, bytes]]:
    """The subset as sorted (archive path, bytes): one RNG walks the groups in sorted order."""
    rng = random.Random(seed)
    chosen = []
    for split, cls in sorted(groups):
        names = sorted(groups[(split, cls)])
        k = per_split[split]
        if len(names) < k:
            raise SystemExit(f"{split}/{cls} has {len(names)} images, fewer than the {k} asked for")
        chosen += [(f"{split}/{cls}/{name}", groups[(split, cls)][name]) for name in rng.sample(names, k)]
    return sorted(chosen)


def write_archive(files: list[tuple[str, bytes]], out: Path) -> bytes:
    """A tar (gzipped when `out` ends in .gz) whose bytes depend on the file list only."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    payload = raw.getvalue()
    if out.suffix == ".gz":
        packed = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=packed, compresslevel=9, mtime=0) as gz:
            gz.write(payload)
        payload = packed.getvalue()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(payload)
    return payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared/data/cifar10-jpg.tar.gz")
    parser.add_argument("--out", type=Path, default=REPO / "src/kdnas/data/assets/cifar10_mini.tar.gz")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    groups = read_members(args.source)
    if not groups:
        raise SystemExit(f"{args.source}: no train/<class>/*.jpg or test/<class>/*.jpg members")
    files = choose(groups, {"train": args.train_per_class, "test": args.test_per_class}, args.seed)
    payload = write_archive(files, args.out)
    print(f"{args.out}: {len(files)} images, {len(payload):,} bytes")
    print(f"sha256 {hashlib.sha256(payload).hexdigest()}")
    if len(payload) > MAX_BYTES:
        raise SystemExit(f"{args.out} is {len(payload):,} bytes, over the {MAX_BYTES:,}-byte budget")


if __name__ == "__main__":
    main()
