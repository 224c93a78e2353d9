"""The `kdnas` command: compose the config with Hydra, then hand it to :func:`kdnas.api.execute`."""

from __future__ import annotations

import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from kdnas import __version__
from kdnas.api import execute
from kdnas.callbacks import OUTCOME


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, Any] | None:
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.overrides_ = list(hc.overrides.task)
    return execute(cfg, hc.runtime.output_dir)  # None when the task failed


def main() -> None:
    if "--version" in sys.argv[1:]:
        print(f"kdnas {__version__}")
        return
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
