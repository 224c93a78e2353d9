"""Loading the run's teacher (:func:`load`: from the store, a checkpoint, or an ensemble of those) from a
:class:`~kdnas.engine.workspace.Workspace` and the typed ``teacher`` settings. ``load_network`` and
``resolve_checkpoint`` are pure (no workspace)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from kdnas.config import TeacherConfig
from kdnas.engine.checkpoint import load_verified_weights
from kdnas.engine.workspace import Workspace
from kdnas.errors import CheckpointError, ConfigError
from kdnas.models import create_model
from kdnas.teachers.ensemble import Teacher, freeze, member_configs
from kdnas.teachers.store import _ensure, check_kind_keys, teacher_config
from kdnas.utils import read_json


def load_network(model_name: str, num_classes: int, weights: Path, **model_kwargs: Any) -> nn.Module:
    """Build ``model_name`` and load safetensors weights into it, strictly."""
    net = create_model(model_name, num_classes=num_classes, **model_kwargs)
    try:
        net.load_state_dict(load_verified_weights(weights))
    except RuntimeError as e:
        raise CheckpointError(f"Weights {str(weights)!r} do not fit model {model_name!r} with {num_classes} classes: "
                              f"{str(e).splitlines()[0]} Set teacher.model / model.name to the network the weights "
                              "were trained as.") from None
    return net


def resolve_checkpoint(path: str | Path, default_model: str) -> tuple[str, Path]:
    """A weights file, a run folder or a store folder -> (model name, weights file)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for card in ("teacher.json", "model.json"):
            if (path / card).is_file():
                return read_json(path / card).get("model", default_model), path / "model.safetensors"
        if (path / "model.safetensors").is_file():
            return default_model, path / "model.safetensors"
        raise CheckpointError(f"{str(path)!r} holds no model.safetensors. Pass a run folder of a finished training "
                              "run, a teacher store folder, or a .safetensors file (teacher.checkpoint=PATH).")
    if not path.exists():
        raise CheckpointError(f"teacher.checkpoint={str(path)!r} does not exist. Give the path of a .safetensors file "
                              "or a finished run folder.")
    return default_model, path


def _network(ws: Workspace, tcfg: TeacherConfig) -> nn.Module:
    """The frozen network of one ``store`` or ``checkpoint`` teacher (an ensemble member, or the run's teacher)."""
    if tcfg.kind == "store":
        path, card = _ensure(ws, tcfg)
        return freeze(load_network(card["model"], ws.data.num_classes, path / "model.safetensors"))
    if tcfg.kind == "checkpoint":
        if not tcfg.checkpoint:
            raise ConfigError("teacher=checkpoint needs teacher.checkpoint=PATH (a .safetensors file or a run folder).")
        model, weights = resolve_checkpoint(tcfg.checkpoint, tcfg.model)
        return freeze(load_network(model, ws.data.num_classes, weights))
    raise ConfigError(f"teacher.kind={tcfg.kind!r} cannot be loaded as a single network here; use store or "
                      "checkpoint (ensembles are built by the distillation layer).")


def load(ws: Workspace, settings: TeacherConfig | DictConfig) -> Teacher:
    """The run's :class:`Teacher` for ``settings.kind`` store, checkpoint or ensemble (members trained into the
    store when missing and allowed); ``kind=none`` raises a ConfigError."""
    tcfg = teacher_config(settings)
    check_kind_keys(tcfg)
    if tcfg.kind == "none":
        raise ConfigError("Distillation needs a teacher: teacher=store teacher.model=NAME, teacher=checkpoint "
                          "teacher.checkpoint=PATH, or teacher=ensemble.")
    members = member_configs(tcfg) if tcfg.kind == "ensemble" else [tcfg]
    return Teacher([_network(ws, m) for m in members], [str(m.model) for m in members],
                   combine=tcfg.combine, cache=tcfg.cache)
