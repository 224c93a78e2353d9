"""task=export: rebuild a trained network from its run folder (``export.run_dir``; its ``arch.json``/``model.json``)
or an arch JSON (``export.arch``) and write ``model.json``, ``arch.json`` (searched archs), ``model.safetensors`` and
``model.onnx`` (logits only, dynamic batch, checked with ``onnx.checker``) into this run's folder, with params,
MACs/FLOPs and CPU latency at batch 1 (look-up table and live rounds with their spread).

Invariant: untrained (randomly initialised) weights are exported only with ``export.allow_untrained=true``.
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
from kdnas.spaces.costs import LatencyTable, count_flops, count_params, measure_latency
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
    latency_rounds: int = 5
    allow_untrained: bool = False


class LogitsOnly(nn.Module):
    """ONNX wants tensors out: export ``forward_features(x).logits`` only."""

    def __init__(self, net: FeatureNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x).logits


def export_config(node: Any) -> ExportConfig:
    e = dataclass_from_node(ExportConfig, node, "export")
    if e.arch is None and e.run_dir is None:
        raise ConfigError("task=export needs export.run_dir=DIR (a trained run folder: a train or distill run, or a "
                          "pipeline's distill/ folder) or export.arch=PATH (an arch JSON; untrained unless given with "
                          "export.run_dir, so it also needs export.allow_untrained=true).")
    return e


def _source(e: ExportConfig) -> tuple[Arch | str, Path | None, dict[str, Any]]:
    """(arch or zoo model name, weights file or None, the source's card with num_classes if known)."""
    if e.run_dir is None:
        path = Path(e.arch).expanduser()
        return load_arch(path), None, read_json(path) if path.is_file() else {}
    run = Path(e.run_dir).expanduser()
    if not run.is_dir():
        raise ConfigError(f"export.run_dir={str(run)!r} is not a folder. Pass the folder of a finished train or "
                          "distill run (a pipeline's trained student is in its distill/ folder).")
    weights = run / "model.safetensors"
    weights = weights if weights.is_file() else None
    card = read_json(run / "model.json") if (run / "model.json").is_file() else {}
    name = str(card.get("model", ""))
    if e.arch is not None:
        arch = load_arch(Path(e.arch).expanduser())
        if name.startswith("arch:") and name != f"arch:{arch.arch_id}":
            raise ConfigError(f"export.arch={e.arch!r} is arch {arch.arch_id}, but the weights in {str(run)!r} were "
                              f"trained as {name}. Pass that run's own arch JSON (or leave export.arch out).")
        return arch, weights, card
    if (run / "arch.json").is_file():
        return load_arch(run / "arch.json"), weights, {**card, **read_json(run / "arch.json")}
    if card.get("arch"):
        return load_arch(card["arch"]), weights, card
    if name.startswith("arch:"):
        raise ConfigError(f"export.run_dir={str(run)!r} holds a searched student ({name}) but not its arch JSON "
                          "(runs of older kdnas versions). Pass it too: export.arch=PATH, the search's best_arch.json "
                          "(a pipeline's search/ folder).")
    if name:
        return name, weights, card
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


def latency(model: nn.Module, input_size: int, repeats: int, rounds: int, threads: int | None) -> dict[str, Any]:
    """CPU latency at batch 1: the look-up table's sum of per-unit medians (what a latency-constrained search
    decides by: it ranks archs, at about 0.4-0.5x whole-network milliseconds) and a live measurement in ``rounds``
    rounds of ``repeats`` forwards, with the rounds' range: ``noisy`` when it exceeds 10% of the median (a loaded
    machine), so one timing is never reported as the latency."""
    medians = sorted(measure_latency(model, input_size, 1, "cpu", warmup=3, repeats=repeats, threads=threads)
                     ["median_ms"] for _ in range(max(1, rounds)))
    mid = medians[len(medians) // 2]
    spread = (medians[-1] - medians[0]) / mid
    return {"table_ms": LatencyTable(threads=threads or torch.get_num_threads()).predict(model, input_size),
            "measured_median_ms": mid, "measured_range_ms": [medians[0], medians[-1]], "relative_spread": spread,
            "noisy": spread > 0.1, "rounds": len(medians), "repeats": repeats, "batch_size": 1, "device": "cpu",
            "threads": threads or torch.get_num_threads()}


def run(ctx: RunContext) -> dict[str, Any]:
    e = export_config(ctx.cfg.get("export"))
    source, weights, card = _source(e)
    if weights is None and not e.allow_untrained:
        where = f"export.run_dir={e.run_dir!r} holds no model.safetensors" if e.run_dir else "export.arch alone"
        raise ConfigError(f"{where}: the export would hold untrained (randomly initialised) weights. Export a trained "
                          "network with export.run_dir=DIR (the run that trained it; a pipeline's distill/ folder), or "
                          "set export.allow_untrained=true to export the untrained network on purpose.")
    num_classes = e.num_classes or card.get("num_classes") or ctx.data.num_classes
    input_size = e.input_size or card.get("input_size") or ctx.cfg.data.image_size
    out = ctx.run.path
    if isinstance(source, Arch):
        model = space_for(source).build(source, num_classes, input_size)
        arch = {**source.to_json(), "num_classes": num_classes, "input_size": input_size}
        atomic_write_json(out / "arch.json", arch)
        name, extra, summary = f"arch:{source.arch_id}", {"arch": arch}, {"space": source.space,
                                                                          "arch_id": source.arch_id}
    else:
        model = create_model(source, num_classes=num_classes)
        name, extra, summary = source, {}, {"model": source}
    if weights is not None:
        _load_weights(model, weights)
    else:
        log.warning("export: UNTRAINED weights (random initialisation, export.allow_untrained=true)")
    save_weights(out / "model.safetensors", model.state_dict())
    write_model_card(out / "model.json", model=name, num_classes=num_classes, input_size=input_size,
                     trained=weights is not None, source=str(weights) if weights else "untrained (random init)",
                     **{k: card[k] for k in ("data", "data_fingerprint", "teacher", "distill") if k in card}, **extra)
    model.eval()
    if e.onnx:
        export_onnx(model, out / "model.onnx", input_size, e.opset, e.dynamo)
    summary.update(num_classes=num_classes, input_size=input_size, trained=weights is not None,
                   params=count_params(model), **count_flops(model, input_size),
                   files=sorted(p.name for p in out.iterdir() if p.name.startswith(("arch.", "model."))))
    if e.latency_repeats > 0:
        summary["latency"] = latency(model, input_size, e.latency_repeats, e.latency_rounds,
                                     ctx.cfg.trainer.num_threads)
    log.info("export: %s%s", "" if weights is not None else "UNTRAINED ",
             {k: v for k, v in summary.items() if k != "files"})
    summary["export"] = asdict(e)
    return summary
