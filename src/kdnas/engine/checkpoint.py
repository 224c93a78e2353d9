"""Checkpoints as safetensors + JSON, written atomically; loading never unpickles.

A checkpoint is a folder ``<dir>/<tag>/`` holding ``model.safetensors`` (the network weights alone, so
export and teacher loading read one file), ``state.safetensors`` + ``state.json`` (optimizer, RNG,
objective, counters; nested Python state is packed to tensors + JSON) and ``meta.json`` with the sha256
of each file. The folder is written under a temp name and renamed whole, then the ``latest`` pointer
file is replaced atomically, so a kill at any instant leaves either the old or the new checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from kdnas.errors import CheckpointError
from kdnas.runs import heartbeat
from kdnas.utils import atomic_write_bytes, atomic_write_json

log = logging.getLogger("kdnas")
FORMAT = "kdnas-checkpoint/1"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # protocol-2+ pickle, zip (torch.save)


def pack(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested state (dicts, lists, tensors, numbers) into flat tensors + a JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o: Any, key: str) -> Any:
        if isinstance(o, torch.Tensor):
            tensors[key] = o.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(o, dict):
            if all(isinstance(k, str) for k in o):
                return {k: walk(v, f"{key}.{k}") for k, v in o.items()}
            return {"__items__": [[k, walk(v, f"{key}.{k}")] for k, v in o.items()]}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(o)]
        if o is None or isinstance(o, (bool, int, float, str)):
            return o
        raise TypeError(f"cannot checkpoint value of type {type(o).__name__} at {key!r}")

    return tensors, walk(obj, prefix)


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__items__" in skeleton:
            return {k: unpack(v, tensors) for k, v in skeleton["__items__"]}
        return {k: unpack(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unpack(v, tensors) for v in skeleton]
    return skeleton


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                      ) -> None:
    """An atomic safetensors file. Serialised in memory and written by :func:`atomic_write_bytes`, because
    ``safetensors.torch.save_file`` drops write errors (a full disk leaves a truncated file and no error)."""
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def save_weights(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                 ) -> None:
    """safetensors file of contiguous CPU tensors (channels_last tensors are refused otherwise)."""
    write_safetensors(path, {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, metadata)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors weight file; refuse pickles and report truncation clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file {str(path)!r} does not exist. Check the path you gave "
                              "(teacher.checkpoint / resume / export.checkpoint).")
    with open(path, "rb") as f:
        head = f.read(9)
    header_len = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    is_safetensors = 0 < header_len <= path.stat().st_size - 8 and head[8:9] == b"{"
    if not is_safetensors and head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{str(path)!r} is a pickle/torch.save file. kdnas never unpickles files (it can run arbitrary code). "
            "Convert it once in a trusted session: `from safetensors.torch import save_file; "
            "save_file(torch.load(p, weights_only=True), 'model.safetensors')`, then pass the .safetensors file.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"Checkpoint {str(path)!r} is corrupt or truncated ({e}). Delete it and rerun, "
                              "or pass another checkpoint.") from None


WEIGHTS = "model.safetensors"
CARDS = ("model.json", "teacher.json")  # what kdnas writes beside weights: run/export folders, teacher store entries


def weights_record(folder: str | Path) -> dict[str, str]:
    """The card fields that identify ``folder/model.safetensors`` (empty when there is none): its sha256,
    checked by :func:`load_verified_weights` on every load."""
    path = Path(folder) / WEIGHTS
    return {"weights_file": WEIGHTS, "weights_sha256": _sha256(path)} if path.is_file() else {}


def load_verified_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights a run, a teacher store entry or an export wrote, after checking the sha256 its card (model.json /
    teacher.json beside it) recorded; a file without such a card loads with a warning that it cannot be verified."""
    path = Path(path)
    cards = [path.parent / c for c in CARDS if (path.parent / c).is_file()]
    recorded = None
    for card in cards:
        try:
            fields = json.loads(card.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if fields.get("weights_file") == path.name and fields.get("weights_sha256"):
            recorded = card, fields["weights_sha256"]
            break
    if recorded is None:
        log.warning("%s has no model.json with its sha256 beside it, so it cannot be verified (kdnas records one for "
                    "every weights file it writes); loading it as it is.", path)
    elif path.is_file() and _sha256(path) != recorded[1]:
        raise CheckpointError(
            f"Weights {str(path)!r} do not match the sha256 recorded in {str(recorded[0])!r} when kdnas wrote them: "
            "the file was damaged or changed since. Copy it again from its source or retrain it (a teacher store "
            "entry: task=train_teacher teacher.retrain=true); a file you changed on purpose loads without its card "
            "(move the card away).")
    return load_weights(path)


def save_checkpoint(directory: str | Path, tag: str, *, model_state: dict[str, torch.Tensor],
                    state: dict[str, Any], meta: dict[str, Any], keep: int = 2) -> Path:
    """Write ``directory/tag`` atomically, point ``latest`` at it, keep the newest ``keep`` folders."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / tag
    tmp = directory / f".tmp-{tag}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp / "model.safetensors", model_state)
    tensors, skeleton = pack(state)
    write_safetensors(tmp / "state.safetensors", tensors)
    (tmp / "state.json").write_text(json.dumps(skeleton))
    files = {n: _sha256(tmp / n) for n in ("model.safetensors", "state.safetensors", "state.json")}
    atomic_write_json(tmp / "meta.json", {"format": FORMAT, "tag": tag, "sha256": files, **meta})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(directory / "latest", tag.encode())
    heartbeat()  # the run's session lasted at least until here, should it be killed later
    tags = sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime_ns)
    for old in tags[:-keep] if keep > 0 else []:
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names; when that folder is gone (removed as the error for a corrupt
    checkpoint suggests), the newest remaining complete one, so a resume continues from it instead of starting
    over. Tags sort by name (zero-padded epochs/steps)."""
    directory = Path(directory)
    pointer = directory / "latest"
    if pointer.is_file():
        path = directory / pointer.read_text().strip()
        if path.is_dir():
            return path
    complete = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")
                      and (p / "meta.json").is_file()) if directory.is_dir() else []
    if not complete:
        return None
    if pointer.is_file():
        log.warning("checkpoint %s named by %s is gone: resuming from the previous one, %s",
                    pointer.read_text().strip(), pointer, complete[-1])
    return complete[-1]


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Return (model_state, state, meta) after verifying every file's sha256 against meta.json."""
    path = Path(path)
    meta_path = path / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"Checkpoint {str(path)!r} has no readable meta.json ({e}); it is not a complete "
                              "kdnas checkpoint. Delete the folder (or its `latest` pointer) and rerun.") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"Checkpoint {str(path)!r} has format {meta.get('format')!r}, expected {FORMAT!r}.")
    for name, digest in meta["sha256"].items():
        if not (path / name).is_file() or _sha256(path / name) != digest:
            raise CheckpointError(f"Checkpoint file {str(path / name)!r} is missing or does not match its "
                                  f"recorded sha256 (truncated or tampered). Delete the folder {str(path)!r} and "
                                  "rerun: the run resumes from the previous checkpoint (kdnas keeps two), or starts "
                                  "over when there is none.")
    model_state = load_weights(path / "model.safetensors")
    tensors = load_weights(path / "state.safetensors")
    state = unpack(json.loads((path / "state.json").read_text()), tensors)
    return model_state, state, meta
