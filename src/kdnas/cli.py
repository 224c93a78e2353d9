"""The `kdnas` command: compose the config with Hydra, then hand it to :func:`kdnas.api.execute`."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from kdnas import __version__
from kdnas.api import FAILED, execute


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.overrides_ = list(hc.overrides.task)
    execute(cfg, hc.runtime.output_dir)


def main() -> None:
    if "--version" in sys.argv[1:]:
        print(f"kdnas {__version__}")
        return
    _hydra_main()
    if FAILED:
        print(f"kdnas: {len(FAILED)} job(s) failed:", file=sys.stderr)
        for path, message in FAILED:
            print(f"  {path}: {message.splitlines()[0][:200]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
