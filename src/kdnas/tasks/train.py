"""task=train: plain cross-entropy training of any model (zoo, timm, searched)."""

from __future__ import annotations

from typing import Any

from kdnas.context import RunContext, build_model
from kdnas.engine.trainer import write_model_card


def run(ctx: RunContext) -> dict[str, Any]:
    cfg = ctx.cfg
    model = build_model(cfg.model, ctx.data.num_classes, cfg.seed)
    summary = ctx.trainer(model).fit(resume=ctx.resume)
    write_model_card(ctx.run.path / "model.json", model=cfg.model.name, num_classes=ctx.data.num_classes,
                     data=cfg.data.name, data_fingerprint=ctx.data.fingerprint)
    params = sum(p.numel() for p in model.parameters())
    return {"model": cfg.model.name, "params": params, **summary}
