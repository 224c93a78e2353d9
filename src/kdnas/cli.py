"""The `kdnas` command: compose the config with Hydra, then hand it to :func:`kdnas.api.execute`."""

from __future__ import annotations

import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from kdnas import __version__
from kdnas.api import compose, execute
from kdnas.callbacks import OUTCOME
from kdnas.config import check_overrides
from kdnas.errors import KdnasError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.overrides_ = list(hc.overrides.task)
        cfg.choices_ = OmegaConf.to_container(hc.runtime.choices)
    sweep_dir = hc.sweep.dir if hc.mode == RunMode.MULTIRUN else None
    return execute(cfg, hc.runtime.output_dir, sweep_dir=sweep_dir)  # None when the task failed


def _list(args: list[str]) -> None:
    """``kdnas task=list ...``: print the listing without a run folder (nothing to record)."""
    from kdnas.tasks.listing import listing

    try:
        listing(compose(None, args))
    except KdnasError as e:
        sys.exit(f"kdnas: error: {e}")


def main() -> None:
    args = sys.argv[1:]
    if "--version" in args:
        print(f"kdnas {__version__}")
        return
    if "task=list" in args and not any(a.startswith("-") for a in args):
        _list(args)
        return
    try:
        check_overrides(args)  # a spelling of an older kdnas: one paragraph naming the new one
    except KdnasError as e:
        sys.exit(f"kdnas: error: {e}")
    _hydra_main()
    if not OUTCOME.failed:  # recorded by kdnas.callbacks.JobReport
        return
    if OUTCOME.sweep:  # a single run has just printed its error
        print(f"kdnas: {len(OUTCOME.failed)} job(s) failed:", file=sys.stderr)
        for path, message in OUTCOME.failed:
            print(f"  {path}: {message.splitlines()[0][:200]}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
