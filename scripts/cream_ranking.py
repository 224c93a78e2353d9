"""Evidence for Cream (Peng et al., NeurIPS 2020, Sec. 4.3) on a CPU budget: (1) Kendall tau between the supernet
accuracy of random paths and their stand-alone accuracy, for a supernet trained with path distillation and one
without (``strategy.distill=false``); (2) the board's best path vs a random path of similar FLOPs, both trained
stand-alone. Reduced: ``mbconv_cream`` with one layer per stage at a quarter of the channels on cifar10_mini at
16x16 (a 12-path tau has an s.e. around 0.2: the direction of the effects, not the paper's numbers).

    .venv/bin/python scripts/cream_ranking.py --out outputs/cream_ranking [--max-steps 2 --paths 3]  # smoke
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import DictConfig
from scipy import stats

from kdnas.api import compose
from kdnas.benchmarks.workspace import script_workspace
from kdnas.engine.workspace import Workspace
from kdnas.spaces.base import Arch
from kdnas.spaces.mbconv import CreamSpace, LayerSpec, make_divisible
from kdnas.strategies.cream import CreamSearch
from kdnas.strategies.cream.search import cream_config
from kdnas.utils import derive_seed

RECIPE = ("data.image_size=16", "logger=none", "progress=false", "trainer.num_threads=1", "trainer.lr=0.1",
          "trainer.schedule=cosine")


class NarrowCreamSpace(CreamSpace):
    """``mbconv_cream`` with every width scaled by ``WIDTH`` (same choices, same layout)."""

    name = "mbconv_cream_narrow"
    WIDTH = 0.25
    STEM, HEAD = 8, 320

    def layers(self, d: dict) -> list[LayerSpec]:
        return [replace(s, out=make_divisible(s.out * self.WIDTH)) for s in super().layers(d)]


def workspace(args: argparse.Namespace, name: str, epochs: int, overrides: tuple[str, ...] = ()
              ) -> tuple[Workspace, DictConfig]:
    """A run folder under ``args.out`` with the shared recipe: 16x16 data, SGD lr 0.1 cosine, 1 thread."""
    steps = f"trainer.max_steps_per_epoch={args.max_steps or 'null'}"
    cfg = compose("search", [*RECIPE, f"trainer.epochs={epochs}", steps, *overrides])
    return script_workspace(cfg, args.out / name), cfg


def search(args: argparse.Namespace, space: NarrowCreamSpace, distill: bool) -> CreamSearch:
    ws, cfg = workspace(args, f"supernet-{'distill' if distill else 'plain'}", args.supernet_epochs, (
        "strategy=cream", f"strategy.distill={distill}", "strategy.warmup_epochs=1",
        f"strategy.meta_every={args.meta_every}"))
    cream = CreamSearch(ws, cream_config(cfg.strategy), space)
    cream.run()
    return cream


def standalone(args: argparse.Namespace, space: NarrowCreamSpace, path: Arch, epochs: int) -> dict[str, float]:
    """Train ``path`` from scratch (seeded by its arch id); its last val / test top-1."""
    ws, _ = workspace(args, f"standalone-{epochs}ep-{path.arch_id}", epochs)
    torch.manual_seed(derive_seed(0, "init", path.arch_id))
    net = space.build(path, ws.data.num_classes, ws.data.input_size)
    summary = ws.trainer(net, eval_splits=["val", "test"]).fit()
    return {"val": summary["val_top1_last"], "test": summary["test_top1_last"]}


def similar_flops_path(cream: CreamSearch, target: Arch, rng: random.Random, tolerance: float = 0.05) -> Arch:
    flops = cream.macs(target)
    while True:
        path = cream.supernet.space.sample(rng)
        if path != target and abs(cream.macs(path) - flops) <= tolerance * flops:
            return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/cream_ranking"))
    parser.add_argument("--paths", type=int, default=12)
    parser.add_argument("--supernet-epochs", type=int, default=4)
    parser.add_argument("--meta-every", type=int, default=50)
    parser.add_argument("--proxy-epochs", type=int, default=1, help="stand-alone epochs for the ranking")
    parser.add_argument("--final-epochs", type=int, default=3, help="stand-alone epochs for board vs random")
    parser.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (smoke checks)")
    args = parser.parse_args()
    start, cpu = time.perf_counter(), time.process_time()
    space = NarrowCreamSpace([1, 1, 1, 1, 1])
    searches = {distill: search(args, space, distill) for distill in (True, False)}
    rng = random.Random(0)
    paths = list({p.arch_id: p for p in (space.sample(rng) for _ in range(10 * args.paths))}.values())[: args.paths]
    truth = [standalone(args, space, p, args.proxy_epochs)["val"] for p in paths]
    ranking = {}
    for distill, cream in searches.items():
        supernet = [cream.evaluate_path(p, ["val"])["val_top1"] for p in paths]
        tau = stats.kendalltau(supernet, truth)
        ranking["distill" if distill else "plain"] = {"kendall_tau": tau.statistic, "p_value": tau.pvalue,
                                                      "supernet_val_top1": supernet}
    cream = searches[True]
    best = Arch.from_json(json.loads((cream.run_dir.path / "best_arch.json").read_text()))
    other = similar_flops_path(cream, best, rng)
    final = {name: {"arch_id": p.arch_id, "macs": cream.macs(p), **standalone(args, space, p, args.final_epochs)}
             for name, p in (("board_best", best), ("random_similar_flops", other))}
    results = {"space": "mbconv_cream, layers [1,1,1,1,1], width x0.25, 16x16 cifar10_mini", "args": {
        k: str(v) for k, v in vars(args).items()}, "paths": [p.arch_id for p in paths], "standalone_val_top1": truth,
        "ranking": ranking, "board_vs_random": final, "wall_seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    for name, r in ranking.items():
        print(f"supernet {name:8s} Kendall tau {r['kendall_tau']:+.3f} (p={r['p_value']:.2f}) over {len(paths)} paths")
    for name, r in final.items():
        print(f"{name:22s} {r['macs'] / 1e6:6.2f} MMACs  val {r['val']:.2f}%  test {r['test']:.2f}%")
    print(f"wall {results['wall_seconds']:.0f} s, CPU {results['cpu_seconds']:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
