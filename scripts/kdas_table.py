"""Evidence for KDAS (Kang, Mun & Han, "Towards Oracle Knowledge Distillation with Neural Architecture Search",
AAAI 2020) on a CPU budget: one table comparing, on the bundled CIFAR-10 subset (data=cifar10_mini),

- the teachers: N copies of the base student's backbone (seeds 0..N-1, from the teacher store), each member's
  test top-1, the ensemble (mean of logits) and the oracle ensemble (a sample counts when any member is right);
- the base student trained with CE, KD toward the ensemble mean, and the oracle loss (Eq. 4);
- a hand-designed deeper zoo ResNet with about the search's parameter budget M (the paper's ResNet-62/110 and
  'MMN' rows: without it capacity and search cannot be told apart) with KD and oracle;
- KDAS: strategy=kdas over space=kdas_addon on the base, candidates distilled briefly with the oracle loss,
  rewarded with mini-val top-1, |m| <= M (hard constraint); the same search with a CE reward (search.objective=ce,
  "NAS with a CE reward"); each winner retrained with the oracle loss on the full recipe;
- next to every run that reads the ensemble, the per-epoch fraction of (augmented) training samples on which the
  oracle loss differs from plain KD, i.e. at least one member is wrong (metric ``loss_oracle_disagreement``);
- the controller's reward trend (mean reward per controller update and per round).

Everything is a real training through ``kdnas.api.run``; run folders are fixed under ``--out/runs`` so that the
script, run again, skips what finished and resumes what did not. Test top-1 is the LAST epoch's (final
trainings use train_full, so their only eval split is test: selecting the best epoch would select on test).
With 2,000 test images the standard error of one top-1 is ~1.1 points.

    .venv/bin/python scripts/kdas_table.py --out outputs/evidence/kdas --seeds 0 1
    .venv/bin/python scripts/kdas_table.py --out /tmp/kdas_smoke --smoke
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from kdnas.api import compose
from kdnas.api import run as api_run
from kdnas.correlation import mean_se as mean_and_se
from kdnas.utils import read_jsonl

log = logging.getLogger("kdas_table")
STEPS = ["teachers", "base", "kdas", "kdas_winner", "kdas_winner_ce", "deep", "kdas_ce_reward",
         "kdas_ce_reward_winner"]
ZOO_RESNETS = ["resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


# ------------------------------------------------------------------------------------------- helpers
def zoo_params(name: str, num_classes: int = 10) -> int:
    from kdnas.models import create_model

    return sum(p.numel() for p in create_model(name, num_classes=num_classes).parameters())


def arch_params(path: Path, num_classes: int = 10) -> int:
    from kdnas.spaces import load_arch, space_for

    arch = load_arch(path)
    return sum(p.numel() for p in space_for(arch).build(arch, num_classes, 32).parameters())


def disagreement_per_epoch(run_dir: Path) -> list[float]:
    """``loss_oracle_disagreement`` of each epoch's train record (last record per epoch: resumes rewrite)."""
    per_epoch: dict[int, float] = {}
    for rec in read_jsonl(run_dir / "metrics.jsonl"):
        if rec.get("split") == "train" and "loss_oracle_disagreement" in rec:
            per_epoch[int(rec["epoch"])] = float(rec["loss_oracle_disagreement"])
    return [per_epoch[e] for e in sorted(per_epoch)]


def mean_se(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    mean, se = mean_and_se(values)
    return f"{mean:.2f} ± {se:.2f}"


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.out = args, args.out
        self.results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "teachers": {},
                                        "rows": {}, "searches": {}, "failures": [], "timings": {}}
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        base = args.base
        members = ",".join(f"{{model:{base},seed:{i}}}" for i in range(args.members))
        self.common = ["data=cifar10_mini", f"data.aug_seed={args.aug_seed}", "progress=false",
                       "trainer.num_threads=1", "teacher=ensemble", f"teacher.model={base}",
                       f"teacher.members=[{members}]", f"teacher.trainer.epochs={args.teacher_epochs}",
                       "teacher.trainer.num_threads=1"]
        if args.smoke:
            self.common += ["data.max_train_per_class=20", "data.max_test_per_class=10", "trainer.batch_size=16",
                            "teacher.trainer.batch_size=16", "trainer.max_steps_per_epoch=2",
                            "teacher.trainer.max_steps_per_epoch=2",
                            f"paths.cache_dir={(self.out / 'cache').resolve()}"]  # smoke teachers stay out of the store
        self.final = [f"trainer.epochs={args.epochs}", "trainer.train_split=train_full"]

    # -- bookkeeping -------------------------------------------------------------------------------
    def save(self) -> None:
        self.results["timings"]["total_wall_seconds"] = time.perf_counter() - self.t0
        self.results["timings"]["script_cpu_seconds"] = time.process_time() - self.cpu0
        tag = "" if not self.args.only else "." + "+".join(self.args.only)  # a side process: its own files
        (self.out / f"results{tag}.json").write_text(json.dumps(self.results, indent=2, default=str))
        (self.out / f"table{tag}.md").write_text(self.markdown())

    def run(self, key: str, task: str, overrides: list[str]) -> dict[str, Any] | None:
        run_dir = self.out / "runs" / key
        wall, cpu = time.perf_counter(), time.process_time()
        log.info("=== %s: kdnas task=%s %s", key, task, " ".join(overrides))
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        timing = run_dir / "kdas_table_timing.json"
        # Several processes of this script may share --out (--only): one runs a given folder, the others wait
        # and then read it as already done.
        with open(run_dir.parent / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if timing.is_file() and (run_dir / "summary.json").is_file():  # timing: written after a success only
                # Finished by this script (any process) with these overrides: read it as is. api.run would
                # compare config hashes, and those change whenever any shipped config file changes (another
                # group's defaults), which would refuse a finished run of the same experiment.
                log.info("=== %s: reusing the finished run in %s", key, run_dir)
                self.results["timings"][key] = json.loads(timing.read_text())
                return json.loads((run_dir / "summary.json").read_text())
            try:
                summary = api_run(task, overrides, run_dir=run_dir)
            except Exception as e:  # one failed training must not cost the rest of the table
                traceback.print_exc()
                self.results["failures"].append({"run": key, "error": f"{type(e).__name__}: {e}"})
                self.save()
                return None
            if not timing.is_file():  # the process that trained it (a rerun that finds it done keeps that)
                timing.write_text(json.dumps({"wall_seconds": time.perf_counter() - wall,
                                              "cpu_seconds": time.process_time() - cpu}))
        self.results["timings"][key] = json.loads(timing.read_text())
        log.info("=== %s done in %.0f s wall", key, time.perf_counter() - wall)
        return summary

    # -- phases ------------------------------------------------------------------------------------
    def teachers(self) -> None:
        """Train (through the store) and evaluate the members: each one, the mean ensemble, the oracle."""
        from kdnas import teachers as kdnas_teachers
        from kdnas.config import TrainerConfig
        from kdnas.context import RunContext, to_object
        from kdnas.engine.trainer import apply_runtime
        from kdnas.runs import RunDir

        wall, cpu = time.perf_counter(), time.process_time()
        cfg = compose("distill", [*self.common, *self.final])
        ctx = RunContext(cfg, RunDir(self.out / "runs" / "teachers"))
        apply_runtime(to_object(cfg.trainer, TrainerConfig))
        teacher = kdnas_teachers.load(ctx.workspace, cfg.teacher)
        out: dict[str, Any] = {"members": teacher.names, "params_each": zoo_params(self.args.base)}
        for split in ("test", "train_full"):
            correct_m, mean_ok, n = None, 0, 0
            for batch in ctx.data.loader(split, 500, train=False, seed=0).epoch(0):
                logits = teacher.member_logits(batch.x)  # [M, B, K]
                ok = logits.argmax(2) == batch.y[None]
                correct_m = ok.sum(1) if correct_m is None else correct_m + ok.sum(1)
                mean_ok += int((logits.mean(0).argmax(1) == batch.y).sum())
                out.setdefault(f"{split}_any", 0)
                out.setdefault(f"{split}_all", 0)
                out[f"{split}_any"] += int(ok.any(0).sum())
                out[f"{split}_all"] += int(ok.all(0).sum())
                n += batch.y.shape[0]
            out[f"{split}_member_top1"] = [100.0 * int(c) / n for c in correct_m]
            out[f"{split}_mean_top1"] = 100.0 * mean_ok / n
            out[f"{split}_oracle_top1"] = 100.0 * out.pop(f"{split}_any") / n
            out[f"{split}_disagreement"] = 1.0 - out.pop(f"{split}_all") / n  # some member wrong (no augmentation)
            out[f"{split}_n"] = n
        self.results["teachers"] = out
        self.results["timings"]["teachers"] = {"wall_seconds": time.perf_counter() - wall,
                                               "cpu_seconds": time.process_time() - cpu}
        ctx.logger.close()
        self.save()

    def student(self, row: str, seed: int, overrides: list[str], *, model: str | None = None,
                arch: Path | None = None, params: int | None = None, loss: str = "") -> None:
        student = [f"model={model}"] if model else [f"student.arch={arch.resolve()}"]
        summary = self.run(f"{row}-s{seed}", "distill", [*self.common, *self.final, *student, *overrides,
                                                         f"seed={seed}"])
        rec = self.results["rows"].setdefault(row, {"params": params, "loss": loss, "seeds": {}})
        if summary is not None:
            rec["seeds"][str(seed)] = {"test_top1_last": summary["test_top1_last"],
                                       "test_top1_best": summary.get("test_top1_best"),
                                       "teacher_test_top1": summary.get("teacher_test_top1"),
                                       "disagreement": disagreement_per_epoch(Path(summary["run_dir"])),
                                       "wall_seconds": summary.get("wall_seconds")}
        self.save()

    def search(self, key: str, objective: str) -> Path | None:
        a = self.args
        budget = 1 + a.rounds * a.round_budget
        overrides = [*self.common, "experiment=kdas_ensemble_gap", f"space.base={a.base}",
                     f"constraint.params_max={self.M}", "constraint.mode=hard", f"search.budget={budget}",
                     f"search.batch={a.round_budget}", f"search.objective={objective}",
                     f"search.trainer.epochs={a.search_epochs}", f"strategy.round_budget={a.round_budget}",
                     f"strategy.archs_per_update={a.archs_per_update}", f"strategy.max_rounds={a.rounds}",
                     "teacher.combine=oracle", "distill=oracle", "seed=0"]
        summary = self.run(key, "search", overrides)
        if summary is None:
            return None
        run_dir = Path(summary["run_dir"])
        history = read_jsonl(run_dir / "history.jsonl")
        rounds: dict[int, list[float]] = {}
        for i, h in enumerate(history):
            if i == 0:
                continue  # the base's reference evaluation (identity add-on), kept out of the policy update
            rounds.setdefault(int(h.get("kdas_round", 0)), []).append(float(h["reward"]))
        from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint

        latest = latest_checkpoint(run_dir / "search_checkpoints")
        state = load_checkpoint(latest)[1]["strategy"] if latest is not None else {}
        best = run_dir / "best_arch.json"
        self.results["searches"][key] = {
            "objective": objective, "run_dir": str(run_dir), "budget": budget, "evaluated": summary.get("evaluated"),
            "best_arch_id": summary["best_arch_id"], "best_reward": summary["best_reward"],
            "best_params": arch_params(best), "reference_reward": history[0]["reward"] if history else None,
            "reward_per_round": {r: {"n": len(v), "mean": statistics.mean(v), "max": max(v)}
                                 for r, v in rounds.items()},
            "rewards_in_order": [float(h["reward"]) for h in history],
            "updates": [{"step": u.get("step"), "reward_mean": u.get("reward_mean"), "baseline": u.get("baseline")}
                        for u in state.get("updates", [])],
            "rounds": state.get("kdas", {}).get("rounds", []), "wall_seconds": summary.get("wall_seconds")}
        self.save()
        return best

    # -- the whole experiment ----------------------------------------------------------------------
    def main(self) -> None:
        a = self.args
        base_params = zoo_params(a.base)
        self.M = int(round(a.budget_factor * base_params))
        candidates = {n: zoo_params(n) for n in ZOO_RESNETS}
        deep = a.deep
        if deep == "auto":
            deep = min((n for n, p in candidates.items() if p > base_params), key=lambda n: abs(candidates[n] - self.M))
        self.results.update(base=a.base, base_params=base_params, M=self.M, deep=deep, deep_params=candidates[deep],
                            zoo_params=candidates)
        log.info("base %s %d params, M = %d, deeper student %s %d params", a.base, base_params, self.M, deep,
                 candidates[deep])
        self.save()
        steps = set(a.only or STEPS)
        if "teachers" in steps:
            self.teachers()
        kd, oracle = ["distill=kd", "teacher.combine=mean"], ["distill=oracle", "teacher.combine=oracle"]
        first, rest = a.seeds[0], a.seeds[1:]

        def base_rows(seed: int) -> None:
            self.student(f"{a.base}-ce", seed, ["distill=ce"], model=a.base, params=base_params, loss="CE")
            self.student(f"{a.base}-kd", seed, kd, model=a.base, params=base_params, loss="KD (ensemble mean)")
            self.student(f"{a.base}-oracle", seed, oracle, model=a.base, params=base_params, loss="oracle")

        def deep_rows(seed: int) -> None:
            self.student(f"{deep}-kd", seed, kd, model=deep, params=candidates[deep], loss="KD (ensemble mean)")
            self.student(f"{deep}-oracle", seed, oracle, model=deep, params=candidates[deep], loss="oracle")

        winners: dict[str, Path | None] = {}

        # The core comparison first (base, KDAS winner, same-memory student), the CE-reward search last, then the
        # other seeds: the table is rewritten after every run, so a cut-short run still leaves the key rows.
        # Searches run once (seed 0); a winner step runs its search first (or reads it, when done).
        for seed in [first, *rest]:
            if "base" in steps:
                base_rows(seed)
            for key, objective in (("kdas", "kd"), ("kdas_ce_reward", "ce")):
                if key not in winners and (key in steps or any(s.startswith(f"{key}_winner") for s in steps)):
                    winners[key] = self.search(key, objective)
                if f"{key}_winner" in steps and winners.get(key) is not None:
                    path = winners[key]
                    self.student(f"{key}-winner-oracle", seed, oracle, arch=path, params=arch_params(path),
                                 loss="oracle")
                if key == "kdas" and "kdas_winner_ce" in steps and winners.get(key) is not None:
                    # Control: the searched arch without a teacher (does the oracle loss help it, or the arch?)
                    path = winners[key]
                    self.student(f"{key}-winner-ce", seed, ["distill=ce"], arch=path, params=arch_params(path),
                                 loss="CE")
                if key == "kdas" and "deep" in steps:
                    deep_rows(seed)
        self.save()
        print(self.markdown())

    # -- output ------------------------------------------------------------------------------------
    def markdown(self) -> str:
        r, a = self.results, self.args
        lines = [f"## KDAS on {'SMOKE settings (numbers meaningless)' if a.smoke else 'cifar10_mini'}", "",
                 f"Base student {a.base} ({r.get('base_params', 0):,} params); budget M = {a.budget_factor} x base = "
                 f"{r.get('M', 0):,}; deeper hand-designed student {r.get('deep')} ({r.get('deep_params', 0):,}). "
                 f"Teachers: {a.members} x {a.base} (seeds 0-{a.members - 1}), {a.teacher_epochs} epochs on "
                 f"train_full. "
                 f"Students: {a.epochs} epochs (SGD lr 0.05 cosine, batch {16 if a.smoke else 64}) on train_full "
                 f"(10,000 images), test top-1 of the LAST epoch on the 2,000-image test split (s.e. of one top-1 "
                 f"~1.1 points), seeds {', '.join(map(str, a.seeds))} (mean ± s.e. over seeds). Searches: seed 0 "
                 f"only, {a.rounds} rounds x {a.round_budget} candidates (+1 reference), {a.search_epochs} epoch(s) "
                 f"each on mini-train (9,000), reward = mini-val top-1 (1,000); teachers and searches are not "
                 f"repeated over seeds.", ""]
        t = r.get("teachers") or {}
        lines += ["| row | params | loss | test top-1 (%) | per seed | oracle disagreement per epoch "
                  "(train, augmented) |",
                  "|---|---:|---|---:|---|---|"]
        if t:
            for i, acc in enumerate(t["test_member_top1"]):
                lines.append(f"| teacher member {i} ({t['members'][i]}, seed {i}) | {t['params_each']:,} | CE | "
                             f"{acc:.2f} | | |")
            lines.append(f"| teacher ensemble (mean logits) | {t['params_each'] * len(t['members']):,} | | "
                         f"{t['test_mean_top1']:.2f} | | |")
            lines.append(f"| oracle ensemble (any member right) | | | {t['test_oracle_top1']:.2f} | | "
                         f"some member wrong: test {t['test_disagreement']:.3f}, train_full (no aug) "
                         f"{t['train_full_disagreement']:.3f} |")
        for name, row in r["rows"].items():
            seeds = row["seeds"]
            accs = [s["test_top1_last"] for s in seeds.values()]
            per_seed = ", ".join(f"s{k}: {v['test_top1_last']:.2f}" for k, v in seeds.items())
            dis = next((s["disagreement"] for s in seeds.values() if s["disagreement"]), [])
            dis_s = " / ".join(f"{d:.3f}" for d in dis) if "oracle" in name or "kd" in name else ""
            params = f"{row['params']:,}" if row.get("params") else ""
            lines.append(f"| {name} | {params} | {row['loss']} | {mean_se(accs)} | {per_seed} | {dis_s} |")
        for s in r["searches"].values():
            lines.append(f"| (search {s['objective']} reward: best candidate, {a.search_epochs} ep mini-train) | "
                         f"{s['best_params']:,} | {'oracle' if s['objective'] == 'kd' else 'CE'} | "
                         f"val {s['best_reward']:.2f} | | |")
        for key, s in r["searches"].items():
            lines += ["", f"### Controller reward trend: {key} (reward = mini-val top-1 %, objective "
                      f"{'oracle KD' if s['objective'] == 'kd' else 'CE'})", "",
                      f"Reference (base {a.base} itself, identity add-on): {s['reference_reward']:.2f}. "
                      f"Best {s['best_arch_id']} ({s['best_params']:,} params): {s['best_reward']:.2f}.", "",
                      "| round | candidates | mean reward | max reward | backbone reward | gain | promoted params |",
                      "|---:|---:|---:|---:|---:|---:|---:|"]
            info = {int(x["round"]): x for x in s["rounds"]}
            for rnd, v in s["reward_per_round"].items():
                x = info.get(int(rnd), {})
                back = "" if x.get("backbone_reward") is None else f"{x['backbone_reward']:.2f}"
                gain = "" if x.get("gain") is None else f"{x['gain']:+.2f}"
                lines.append(f"| {rnd} | {v['n']} | {v['mean']:.2f} | {v['max']:.2f} | {back} | {gain} | "
                             f"{x.get('params', '')} |")
            if s["updates"]:
                lines += ["", "controller updates (mean policy reward x100, rejected samples count 0; baseline x100): "
                          + ", ".join(f"{100 * u['reward_mean']:.1f}" for u in s["updates"])
                          + "; baseline " + ", ".join(f"{100 * u['baseline']:.1f}" for u in s["updates"]
                                                       if u.get("baseline") is not None)]
            stops = [x.get("stopped") for x in s["rounds"] if x.get("stopped")]
            if stops:
                lines.append(f"stopped: {stops[-1]}")
        if r["failures"]:
            lines += ["", "Failures: " + "; ".join(f"{f['run']}: {f['error']}" for f in r["failures"])]
        tm = r["timings"]
        parts = {k: v for k, v in tm.items() if isinstance(v, dict)}
        cpu = sum(v["cpu_seconds"] for v in parts.values())
        wall = sum(v["wall_seconds"] for v in parts.values())
        lines += ["", f"Compute: {len(parts)} steps (teacher training + evaluation, trainings, searches), 1 thread "
                  f"each, on a 2-core machine shared with other jobs: {cpu / 60:.1f} CPU-min, {wall / 60:.1f} min of "
                  f"wall summed over steps (as measured by the process that ran each step); this process: "
                  f"{tm.get('total_wall_seconds', 0) / 60:.1f} min wall."]
        return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/evidence/kdas"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--base", default="resnet8")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--teacher-epochs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5, help="the full recipe of every final student")
    p.add_argument("--search-epochs", type=int, default=1, help="per search candidate")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--round-budget", type=int, default=6)
    p.add_argument("--archs-per-update", type=int, default=2)
    p.add_argument("--budget-factor", type=float, default=2.0, help="M = factor x base params")
    p.add_argument("--deep", default="auto", help="zoo ResNet for the same-memory row; auto: the closest to M")
    p.add_argument("--aug-seed", type=int, default=0, help="shared by every run so teacher logits are cached once")
    p.add_argument("--smoke", action="store_true", help="tiny data, 2 steps per epoch, 1 epoch, tiny budgets")
    p.add_argument("--only", nargs="+", choices=STEPS, default=None,
                   help="run only these steps (a side process sharing --out; writes results.<steps>.json)")
    p.add_argument("--render", action="store_true", help="only rewrite table.md from --out/results.json")
    args = p.parse_args()
    if args.smoke:
        args.teacher_epochs = args.epochs = args.search_epochs = 1
        args.rounds, args.round_budget, args.archs_per_update, args.members = 2, 2, 1, 2
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    driver = Driver(args)
    if args.render:
        driver.results = json.loads((args.out / "results.json").read_text())
        (args.out / "table.md").write_text(driver.markdown())
        print(driver.markdown())
        return
    driver.main()


if __name__ == "__main__":
    main()
