"""task=export of the main flow's result: the trained winner of task=pipeline exports from its distill/ folder,
and an untrained network is exported only when asked for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import kdnas
from kdnas.engine.checkpoint import load_weights
from kdnas.errors import ConfigError
from kdnas.spaces import load_arch

from .helpers import SMOKE

QUICK = [*SMOKE, "export.onnx=false", "export.latency_repeats=2", "export.latency_rounds=2"]


@pytest.mark.slow
def test_the_pipeline_winner_exports_from_its_run_folder(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    kdnas.run("pipeline", [*SMOKE, "teacher.model=resnet8", "search.budget=2", "teacher.trainer.max_steps_per_epoch=2",
                           "trainer.max_steps_per_epoch=2"], run_dir=pipe)
    best = pipe / "search" / "best_arch.json"
    out = kdnas.run("export", [*QUICK, f"export.run_dir={pipe / 'distill'}"], run_dir=tmp_path / "export")
    assert out["trained"] and out["arch_id"] == load_arch(best).arch_id
    exported, distilled = load_weights(tmp_path / "export" / "model.safetensors"), load_weights(
        pipe / "distill" / "model.safetensors")
    assert exported.keys() == distilled.keys() and all(torch.equal(exported[k], distilled[k]) for k in exported)
    card = json.loads((tmp_path / "export" / "model.json").read_text())
    assert card["trained"] and card["model"] == f"arch:{out['arch_id']}" and card["weights_sha256"]
    assert out["latency"]["table_ms"] > 0 and "noisy" in out["latency"]

    # A folder written before the arch was recorded beside the weights: export.arch supplies it, checked.
    old = tmp_path / "old"
    (old).mkdir()
    for name in ("model.safetensors", "model.json"):
        (old / name).write_bytes((pipe / "distill" / name).read_bytes())
    card = json.loads((old / "model.json").read_text())
    (old / "model.json").write_text(json.dumps({k: v for k, v in card.items() if k != "arch"}))
    with pytest.raises(ConfigError, match="export.arch=PATH"):
        kdnas.run("export", [*QUICK, f"export.run_dir={old}"], run_dir=tmp_path / "e1")
    assert kdnas.run("export", [*QUICK, f"export.run_dir={old}", f"export.arch={best}"],
                     run_dir=tmp_path / "e2")["trained"]

    # The arch alone has no weights: refused unless asked for, and then labelled untrained.
    with pytest.raises(ConfigError, match="allow_untrained"):
        kdnas.run("export", [*QUICK, f"export.arch={best}"], run_dir=tmp_path / "e3")
    out = kdnas.run("export", [*QUICK, f"export.arch={best}", "export.allow_untrained=true"], run_dir=tmp_path / "e4")
    assert not out["trained"] and not json.loads((tmp_path / "e4" / "model.json").read_text())["trained"]
