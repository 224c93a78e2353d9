"""task=export: build a network from an arch JSON or a trained run folder and write it out for deployment.

    kdnas task=export +export=default export.arch=PATH        # arch.json (searched, untrained)
    kdnas task=export +export=default export.run_dir=DIR      # model.safetensors + arch.json or model.json

Writes into this run's folder: ``arch.json`` (searched archs; with ``num_classes`` and ``input_size``),
``model.json`` (zoo models), ``model.safetensors`` (when trained weights were given) and ``model.onnx``:
``torch.onnx.export`` of a logits-only wrapper with a dynamic batch dimension (input ``input``
[batch, 3, H, W], output ``logits``), checked with ``onnx.checker``. The summary reports params,
MACs/FLOPs (FLOPs = 2 x MACs) and the measured CPU latency at batch 1 (``trainer.num_threads`` threads).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdnas.config import dataclass_from_node
from kdnas.context import RunContext
from kdnas.engine.checkpoint import load_verified_weights, save_weights
from kdnas.engine.trainer import write_model_card
from kdnas.errors import CheckpointError, ConfigError
from kdnas.models import create_model
from kdnas.models.features import FeatureNet
from kdnas.spaces.base import Arch, load_arch, space_for
from kdnas.spaces.costs import count_flops, count_params, measure_latency
from kdnas.utils import atomic_write_json, read_json

log = logging.getLogger("kdnas")


@dataclass
class ExportConfig:  # the keys of conf/export/default.yaml
    arch: str | None = None
    run_dir: str | None = None
    num_classes: int | None = None
    input_size: int | None = None
    onnx: bool = True
    opset: int = 18
    dynamo: bool = True
    latency_repeats: int = 20


class LogitsOnly(nn.Module):
    """ONNX wants tensors out: export ``forward_features(x).logits`` only."""

    def __init__(self, net: FeatureNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x).logits


def export_config(node: Any) -> ExportConfig:
    e = dataclass_from_node(ExportConfig, node, "export")
    if (e.arch is None) == (e.run_dir is None):
        raise ConfigError("task=export needs exactly one of export.arch=PATH (an arch JSON) or export.run_dir=DIR (a "
                          "trained run folder with model.safetensors and arch.json or model.json); compose the keys "
                          "with +export=default (or +export.arch=PATH).")
    return e


def _source(e: ExportConfig) -> tuple[Arch | str, Path | None, dict[str, Any]]:
    """(arch or zoo model name, weights file or None, the source's card with num_classes if known)."""
    if e.arch is not None:
        card = read_json(e.arch) if Path(e.arch).is_file() else {}
        return load_arch(e.arch), None, card
    run = Path(e.run_dir).expanduser()
    weights = run / "model.safetensors"
    weights = weights if weights.is_file() else None
    if (run / "arch.json").is_file():
        return load_arch(run / "arch.json"), weights, read_json(run / "arch.json")
    if (run / "model.json").is_file():
        card = read_json(run / "model.json")
        return str(card["model"]), weights, card
    raise ConfigError(f"export.run_dir={str(run)!r} has neither arch.json nor model.json, so the network is unknown. "
                      "Pass the folder of a finished train/distill run, or export.arch=PATH.")


def _load_weights(model: nn.Module, path: Path) -> None:
    state = {k.removeprefix("_orig_mod."): v for k, v in load_verified_weights(path).items()}  # compiled runs
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"Weights {str(path)!r} do not fit the network described beside them ({err}). Export the "
                              "run folder the weights were trained in, or pass export.arch without weights.") from None


def export_onnx(model: FeatureNet, path: Path, input_size: int, opset: int = 18, dynamo: bool = True) -> None:
    """ONNX of the logits with a dynamic batch dimension (traced at batch 2: batch 1 would be specialised)."""
    wrapper = LogitsOnly(model).eval()
    x = torch.randn(2, 3, input_size, input_size)
    kw: dict[str, Any] = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
    if dynamo:
        kw["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch")}}
    else:
        kw["dynamic_axes"] = {"input": {0: "batch"}, "logits": {0: "batch"}}
    for name in ("onnxscript", "onnx_ir"):  # their graph passes log every rewrite at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        torch.onnx.export(wrapper, (x,), str(path), dynamo=dynamo, verbose=False, external_data=False, **kw)
    import onnx

    onnx.checker.check_model(onnx.load(str(path)))


def run(ctx: RunContext) -> dict[str, Any]:
    e = export_config(ctx.cfg.get("export"))
    source, weights, card = _source(e)
    num_classes = e.num_classes or card.get("num_classes") or ctx.data.num_classes
    input_size = e.input_size or card.get("input_size") or ctx.cfg.data.image_size
    out = ctx.run.path
    if isinstance(source, Arch):
        model = space_for(source).build(source, num_classes, input_size)
        atomic_write_json(out / "arch.json", {**source.to_json(), "num_classes": num_classes, "input_size": input_size})
        summary: dict[str, Any] = {"space": source.space, "arch_id": source.arch_id}
    else:
        model = create_model(source, num_classes=num_classes)
        write_model_card(out / "model.json", **{**card, "model": source, "num_classes": num_classes})
        summary = {"model": source}
    if weights is not None:
        _load_weights(model, weights)
        save_weights(out / "model.safetensors", model.state_dict())
    model.eval()
    if e.onnx:
        export_onnx(model, out / "model.onnx", input_size, e.opset, e.dynamo)
    summary.update(num_classes=num_classes, input_size=input_size, trained=weights is not None,
                   params=count_params(model), **count_flops(model, input_size),
                   files=sorted(p.name for p in out.iterdir() if p.name.startswith(("arch.", "model."))))
    if e.latency_repeats > 0:
        summary["latency"] = measure_latency(model, input_size, 1, "cpu", warmup=3, repeats=e.latency_repeats,
                                             threads=ctx.cfg.trainer.num_threads)
    log.info("export: %s", {k: v for k, v in summary.items() if k != "files"})
    summary["export"] = asdict(e)
    return summary
