"""Teacher store: trained teachers filed under a key of everything their weights depend on (network, data
identity, split, recipe, seed, store format), so a teacher is trained once and reused by every search, sweep job and
scheme. Layout: ``<cache_dir>/teachers/<model>-<key>/`` with ``model.safetensors`` and ``teacher.json``; an entry is
renamed into place whole, so one that exists is complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdnas.config import ModelConfig, TeacherConfig, TrainerConfig
from kdnas.engine import distributed
from kdnas.engine.checkpoint import load_verified_weights
from kdnas.engine.trainer import write_model_card
from kdnas.engine.workspace import Workspace
from kdnas.errors import ConfigError
from kdnas.models import build_model
from kdnas.runs import RunDir
from kdnas.utils import read_json, stable_hash

log = logging.getLogger("kdnas")
# Teachers shipped inside the package (``<key>/model.safetensors`` + ``teacher.json``), filed into the store on
# first use of their exact key: `make run` then needs no teacher training. scripts/make_quickstart_teacher.py
# regenerates them; tests/test_quickstart.py checks that the quickstart's key still finds its teacher.
PACKAGED_TEACHERS = Path(__file__).resolve().parent.parent / "assets" / "teachers"
STORE_FORMAT = 2  # 2: keyed by the whole data identity; cards carry the weights' sha256
# Trainer keys that do not change the trained weights' recipe.
_RUNTIME_KEYS = ("device", "num_threads", "compile", "log_every", "checkpoint_every", "eval_every",
                 "eval_batch_size")


# The keys only some teacher kinds read (kind, model, cache and trainer are read by several kinds, and presets
# such as debug=smoke set teacher.trainer for every kind). One of them set away from its default while the
# selected kind ignores it is an error: teacher.checkpoint=PATH alone once distilled from the store's teacher.
KIND_KEYS: dict[str, tuple[str, ...]] = {"store": ("seed", "retrain"), "checkpoint": ("checkpoint",),
                                          "ensemble": ("members", "combine"), "none": ()}


def check_kind_keys(tcfg: Any) -> None:
    """Refuse a kind-specific teacher key that ``teacher.kind`` does not read, naming the kind that does."""
    kind = str(tcfg.kind)
    if kind not in KIND_KEYS:
        raise ConfigError(f"teacher.kind={kind!r} is not one of {', '.join(KIND_KEYS)} (select it with teacher=KIND).")
    defaults = asdict(TeacherConfig())
    for key in sorted({k for keys in KIND_KEYS.values() for k in keys} - set(KIND_KEYS[kind])):
        value = getattr(tcfg, key, None)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        if value != defaults[key]:
            readers = [k for k, keys in KIND_KEYS.items() if key in keys]
            raise ConfigError(f"teacher.{key}={value} is not read by teacher={kind}, so it would be ignored. Select "
                              f"the kind that reads it, teacher={readers[0]} (e.g. `teacher={readers[0]} "
                              f"teacher.{key}=...`), or remove the override.")


def recipe_of(trainer_cfg: TrainerConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(trainer_cfg).items() if k not in _RUNTIME_KEYS}


class TeacherStore:
    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir) / "teachers"

    def key(self, *, model: str, data: dict[str, Any], train_split: str, recipe: dict[str, Any], seed: int) -> str:
        """``data`` is :attr:`kdnas.data.DataModule.identity` (what the data is: fingerprint, caps, split, image size,
        normalisation, augmentation); the rest is what the teacher trains on and how."""
        return f"{model.replace(':', '_').replace('/', '_')}-" + stable_hash(
            {"model": model, "data": data, "train_split": train_split, "recipe": recipe, "seed": seed,
             "format": STORE_FORMAT})

    def lookup(self, key: str) -> Path | None:
        path = self.root / key
        return path if (path / "teacher.json").is_file() and (path / "model.safetensors").is_file() else None

    @contextmanager
    def lock(self, key: str):
        """Serialise training of one teacher across processes (sweep jobs asking for the same teacher)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put(self, key: str, weights: Path, meta: dict[str, Any]) -> Path:
        """File a trained teacher: copy into a temp folder, then rename it into place whole."""
        tmp = self.root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copyfile(weights, tmp / "model.safetensors")
        write_model_card(tmp / "teacher.json", key=key, **meta)
        final = self.root / key
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def entries(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        return [read_json(p / "teacher.json") | {"path": str(p)} for p in sorted(self.root.iterdir())
                if (p / "teacher.json").is_file()]


def packaged_teacher(key: str, root: Path = PACKAGED_TEACHERS) -> Path | None:
    """The packaged teacher filed under exactly ``key`` (the full store key: network, data identity, recipe,
    seed, store format), or None. A teacher is only ever reused for the configuration it was trained with."""
    path = root / key
    if not ((path / "model.safetensors").is_file() and (path / "teacher.json").is_file()):
        return None
    return path if read_json(path / "teacher.json").get("key") == key else None


def teacher_config(settings: TeacherConfig | DictConfig | Any) -> TeacherConfig:
    """A typed :class:`TeacherConfig` from the ``teacher`` node (or one already typed, returned as is)."""
    if isinstance(settings, TeacherConfig):
        return settings
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TeacherConfig), settings))  # type: ignore
    except OmegaConfBaseException as e:
        raise ConfigError(f"teacher.{e.full_key}: {str(e).splitlines()[0]}. Valid keys are those of "
                          "kdnas.config.TeacherConfig (kind, model, checkpoint, seed, members, combine, cache, "
                          "trainer, ...).") from None


def _store_key(ws: Workspace, settings: TeacherConfig) -> tuple[TeacherStore, str, TrainerConfig]:
    trainer = settings.trainer if isinstance(settings.trainer, TrainerConfig) else TrainerConfig(**settings.trainer)
    store = TeacherStore(ws.cache_dir)
    key = store.key(model=settings.model, data=ws.data.identity, train_split=trainer.train_split,
                    recipe=recipe_of(trainer), seed=settings.seed)
    return store, key, trainer


def teacher_key(ws: Workspace, settings: TeacherConfig | DictConfig) -> str:
    """The store key of the teacher ``settings`` describes on ``ws``'s data (its folder under ``teachers/``)."""
    return _store_key(ws, teacher_config(settings))[1]


def ensure(ws: Workspace, settings: TeacherConfig | DictConfig, *, force: bool = False, run: RunDir | None = None
           ) -> tuple[Path, dict[str, Any]]:
    """(store folder, card) of the teacher ``settings`` describes, training it (in ``run``, default a sub-folder of
    the workspace's run) when missing and ``settings.train_if_missing`` (or ``force``: train again)."""
    settings = teacher_config(settings)
    check_kind_keys(settings)
    return _ensure(ws, settings, force=force, run=run)


def _ensure(ws: Workspace, tcfg: TeacherConfig, *, force: bool = False, run: RunDir | None = None
            ) -> tuple[Path, dict[str, Any]]:
    store, key, trainer_cfg = _store_key(ws, tcfg)
    main = distributed.world().is_main
    # Under torchrun, rank 0 holds the store lock for the whole group and decides: the ranks train a missing
    # teacher together (DDP), so a rank waiting on the lock would deadlock the collective ops of the others.
    with store.lock(key) if main else contextlib.nullcontext():
        stored = "yes" if main and store.lookup(key) is not None else "no"
        if distributed.gather(stored)[0] == "yes" and not force:
            return store.root / key, read_json(store.root / key / "teacher.json")  # complete: renamed in whole
        packaged = None if force else packaged_teacher(key)
        if packaged is not None:  # shipped with kdnas for this exact key: file it, train nothing
            load_verified_weights(packaged / "model.safetensors")  # its card's sha256: a damaged install fails here
            card = read_json(packaged / "teacher.json")
            log.info("teacher %s: the one packaged with kdnas (test top-1 %s, %s), filed in the store as %s",
                     tcfg.model, card.get("test_top1"), card.get("regenerate", ""), key)
            if main:
                store.put(key, packaged / "model.safetensors",
                          {k: v for k, v in card.items() if k not in ("key", "schema_version")})
            distributed.gather("filed")
            return store.root / key, read_json(store.root / key / "teacher.json")
        if not (tcfg.train_if_missing or force):
            raise ConfigError(
                f"No stored teacher {tcfg.model!r} for this data set and recipe (store key {key}). Train it with "
                f"`kdnas task=train_teacher teacher.model={tcfg.model}`, set teacher.train_if_missing=true, or "
                "load weights with teacher=checkpoint teacher.checkpoint=PATH.")
        log.info("training teacher %s (store key %s)", tcfg.model, key)
        run = run or ws.run.sub(f"teacher-{key}")
        data = ws.data
        net = build_model(ModelConfig(name=tcfg.model), data.num_classes, tcfg.seed)
        trainer = ws.trainer(net, trainer_cfg=trainer_cfg, run=run, seed=tcfg.seed, config_hash=key,
                             label=f"teacher {tcfg.model}")
        summary = trainer.fit(resume=ws.resume)
        meta = {"model": tcfg.model, "num_classes": data.num_classes, "data_fingerprint": data.fingerprint,
                "data": data.name, "data_identity": data.identity, "seed": tcfg.seed,
                "recipe": recipe_of(trainer_cfg),
                "test_top1": summary.get("test_top1_last"), "summary": summary, "trained_in": str(run.path)}
        if main:
            run.write_summary(summary)
            store.put(key, run.path / "model.safetensors", meta)
        distributed.gather("filed")  # the other ranks read the entry once rank 0 has filed it
        path = store.root / key
        return path, read_json(path / "teacher.json")
