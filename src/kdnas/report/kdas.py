"""The KDAS table of an ``experiment=kdas_table`` sweep, read from its job folders: one row per student (mean ±
s.e. over seeds), the teacher ensemble, and each search's reward trend. ``teachers.json`` (the members, the mean and
the oracle ensemble on test and train_full) is written into the sweep folder by ``scripts/kdas_table.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kdnas.correlation import mean_se
from kdnas.engine.checkpoint import latest_checkpoint, load_checkpoint
from kdnas.errors import KdnasError
from kdnas.models import create_model
from kdnas.report.collect import Run, read_json_or
from kdnas.report.render import Block, Section, Table, Text
from kdnas.spaces.costs import count_params

ROW_KEY = "experiment/kdas_table="  # the override that names a job's row
TEACHERS_FILE = "teachers.json"


def row_of(job: Run) -> str | None:
    return next((o.removeprefix(ROW_KEY) for o in job.overrides if o.startswith(ROW_KEY)), None)


def mean_se_text(values: list[float]) -> str:
    """``mean ± s.e.`` over seeds; the value alone for one seed; ``—`` for none."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    mean, se = mean_se(values)
    return f"{mean:.2f} ± {se:.2f}"


def disagreement_per_epoch(metrics: list[dict[str, Any]]) -> list[float]:
    """``loss_oracle_disagreement`` of each epoch's train record (the last one per epoch: a resume rewrites)."""
    per_epoch = {int(r["epoch"]): float(r["loss_oracle_disagreement"]) for r in metrics
                 if r.get("split") == "train" and "loss_oracle_disagreement" in r}
    return [per_epoch[e] for e in sorted(per_epoch)]


def loss_label(losses: Any, config: dict[str, Any]) -> str:
    """CE, KD (ensemble mean) or oracle, from the active loss weights a run recorded."""
    names = set(losses) if isinstance(losses, dict) else set(str(losses).split("+"))
    if "oracle" in names:
        return "oracle"
    if "kd" in names:
        teacher = config.get("teacher") or {}
        return "KD (ensemble mean)" if teacher.get("kind") == "ensemble" else "KD"
    return "CE" if names <= {"ce"} else "+".join(sorted(names))


def zoo_params(name: str, num_classes: int) -> int:
    return count_params(create_model(name, num_classes=num_classes))


def students(jobs: list[Run]) -> dict[str, dict[str, Any]]:
    """Row label -> {params, loss, seeds: {seed: {top1, disagreement}}}, in job order (distill jobs give one row,
    pipeline jobs two: the winner with the run's loss and its CE twin)."""
    rows: dict[str, dict[str, Any]] = {}

    def add(label: str, params: Any, loss: str, seed: Any, top1: Any, metrics: list[dict[str, Any]]) -> None:
        row = rows.setdefault(label, {"params": params, "loss": loss, "seeds": {}})
        if top1 is not None:
            row["seeds"][str(seed)] = {"top1": float(top1), "disagreement": disagreement_per_epoch(metrics)}

    for job in jobs:
        s, seed = job.summary, job.config.get("seed")
        if job.state != "ok" or not s:
            continue
        if job.task == "distill":
            model = str(s.get("student") or job.config.get("model", {}).get("name"))
            loss, classes = loss_label(s.get("losses"), job.config), read_json_or(job.path / "model.json", {})
            add(f"{model} {loss}", zoo_params(model, int(classes.get("num_classes", 10))), loss, seed,
                s.get("test_top1_last"), job.metrics)
        elif job.task == "pipeline":
            reward = (s.get("search") or {}).get("reward_kind", "?")
            loss = loss_label(s.get("losses"), job.config)
            distill, ce = job.child("distill"), job.child("ce")
            add(f"KDAS winner ({reward} reward) {loss}", s.get("params"), loss, seed, s.get("kd_test_top1_last"),
                distill.metrics if distill else [])
            add(f"KDAS winner ({reward} reward) CE", s.get("params"), "CE", seed, s.get("ce_test_top1_last"),
                ce.metrics if ce else [])
    return rows


def strategy_state(search: Path) -> dict[str, Any]:
    """The search's last checkpointed strategy state (KDAS rounds, controller updates); {} when unreadable."""
    latest = latest_checkpoint(search / "search_checkpoints")
    if latest is None:
        return {}
    try:
        return load_checkpoint(latest)[1].get("strategy") or {}
    except KdnasError:
        return {}


def search_blocks(job: Run) -> list[Block]:
    """A search's reward trend: per round its candidates' rewards, the backbone's, the gain, the promoted size;
    then the controller's mean reward per update."""
    search = job.child("search")
    found = job.summary.get("search") or {}
    if search is None or not search.history:
        return []
    history, state = search.history, strategy_state(search.path)
    rewards: dict[int, list[float]] = {}
    for h in history[1:]:  # the first record is the base's reference evaluation (identity add-on)
        rewards.setdefault(int(h.get("kdas_round", 0)), []).append(float(h["reward"]))
    info = {int(r["round"]): r for r in (state.get("kdas") or {}).get("rounds", [])}
    rows = [[str(rnd), str(len(v)), f"{sum(v) / len(v):.2f}", f"{max(v):.2f}",
             "" if info.get(rnd, {}).get("backbone_reward") is None else f"{info[rnd]['backbone_reward']:.2f}",
             "" if info.get(rnd, {}).get("gain") is None else f"{info[rnd]['gain']:+.2f}",
             str(info.get(rnd, {}).get("params", ""))] for rnd, v in rewards.items()]
    blocks: list[Block] = [
        Text(f"Reference (the base itself, identity add-on): {float(history[0]['reward']):.2f}. Best "
             f"{found.get('best_arch_id')} ({job.summary.get('params', 0):,} params): "
             f"{float(found.get('best_reward', math.nan)):.2f} ({found.get('evaluated')} candidates)."),
        Table(["round", "candidates", "mean reward", "max reward", "backbone reward", "gain", "promoted params"],
              rows)]
    updates = state.get("updates") or []
    if updates:
        blocks.append(Text("controller updates (mean policy reward x100, rejected samples count 0): "
                           + ", ".join(f"{100 * u['reward_mean']:.1f}" for u in updates) + "; baseline x100: "
                           + ", ".join(f"{100 * u['baseline']:.1f}" for u in updates if u.get("baseline") is not None)))
    stops = [r["stopped"] for r in info.values() if r.get("stopped")]
    if stops:
        blocks.append(Text(f"stopped: {stops[-1]}"))
    title = f"Reward trend: {row_of(job)} (reward {found.get('reward_kind')}, seed {job.config.get('seed')})"
    return [Section(title, blocks)]


def teacher_rows(teachers: dict[str, Any] | None, jobs: list[Run]) -> list[list[str]]:
    """The members, the mean ensemble and the oracle ensemble (``teachers.json``); without it, the mean ensemble's
    test top-1 the distill jobs measured."""
    if not teachers:
        mean = next((j.summary["teacher_test_top1"] for j in jobs if j.summary.get("teacher_test_top1") is not None),
                    None)
        return [] if mean is None else [["teacher ensemble (mean logits)", "", "", f"{mean:.2f}", "", ""]]
    t, n = teachers, len(teachers["members"])
    rows = [[f"teacher member {i} ({name}, seed {i})", f"{t['params_each']:,}", "CE", f"{acc:.2f}", "", ""]
            for i, (name, acc) in enumerate(zip(t["members"], t["test_member_top1"]))]
    rows.append(["teacher ensemble (mean logits)", f"{t['params_each'] * n:,}", "", f"{t['test_mean_top1']:.2f}",
                 "", ""])
    rows.append(["oracle ensemble (any member right)", "", "", f"{t['test_oracle_top1']:.2f}", "",
                 f"some member wrong: test {t['test_disagreement']:.3f}, train_full (no aug) "
                 f"{t['train_full_disagreement']:.3f}"])
    return rows


def kdas_blocks(jobs: list[Run]) -> list[Block]:
    """The KDAS section of a sweep report: empty unless the sweep holds experiment=kdas_table jobs."""
    jobs = [j for j in jobs if row_of(j) is not None]
    if not jobs:
        return []
    teachers = read_json_or(jobs[0].path.parent / TEACHERS_FILE)
    rows = teacher_rows(teachers, jobs)
    for label, row in students(jobs).items():
        seeds = row["seeds"]
        dis = next((s["disagreement"] for s in seeds.values() if s["disagreement"]), [])
        rows.append([label, f"{row['params']:,}" if row.get("params") else "", row["loss"],
                     mean_se_text([s["top1"] for s in seeds.values()]),
                     ", ".join(f"s{k}: {v['top1']:.2f}" for k, v in seeds.items()),
                     " / ".join(f"{d:.3f}" for d in dis) if row["loss"] != "CE" else ""])
    cfg = jobs[0].config
    seeds = sorted({str(j.config.get("seed")) for j in jobs})
    wall = sum(float(j.summary.get("wall_seconds") or 0) for j in jobs) + float((teachers or {}).get("seconds", 0))
    blocks: list[Block] = [
        Text(f"Students: {cfg.get('trainer', {}).get('epochs')} epochs on train_full, test top-1 of the LAST epoch "
             f"(mean ± s.e. over seeds {', '.join(seeds)}); teachers: {len(cfg.get('teacher', {}).get('members', []))} "
             f"members, {cfg.get('teacher', {}).get('trainer', {}).get('epochs')} epochs. Searches reward mini-val "
             f"top-1 after a short training on mini-train."),
        Table(["row", "params", "loss", "test top-1 (%)", "per seed", "oracle disagreement per epoch (train, aug)"],
              rows)]
    if not teachers:
        blocks.append(Text(f"No {TEACHERS_FILE} in the sweep folder: run scripts/kdas_table.py SWEEP_DIR for the "
                           "members and the oracle ensemble.", note=True))
    for job in jobs:
        if job.task == "pipeline" and job.state == "ok":
            blocks += search_blocks(job)
    blocks.append(Text(f"Compute: {len(jobs)} jobs, {wall / 60:.1f} min of wall clock summed over jobs."))
    return [Section("KDAS table", blocks)]
