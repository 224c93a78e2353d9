"""AKD's teacher-student matrix (Liu et al. CVPR 2020, section 3) from an ``experiment=akd_teacher_student`` sweep:
does the ranking of a few fixed students change with the teacher by more than seed noise?

Students are paired by seed across teachers (same init and data order), so for students a, b and teachers t, u the
interaction ``(a - b | t) - (a - b | u)`` is measured per seed. A change is *beyond seed noise* when a pair's order
is the same on every seed under t and reversed on every seed under u ("consistent flip"), or when the teacher x
student interaction sum of squares beats its permutation null (teacher labels exchanged within each (student,
seed); exact up to 2**16 permutations). A CE-only job (``distill=ce``) gives a student's CE accuracy like a KD
job's CE twin (``distill.compare_ce``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kdnas.correlation import kendall, mean_se
from kdnas.report.collect import load_target


def _ce_only(cfg: dict[str, Any], summary: dict[str, Any]) -> bool:
    weights = (cfg.get("distill") or {}).get("weights") or summary.get("losses") or {}
    return bool(weights) and all(float(v) == 0 for k, v in weights.items() if k != "ce")


def load_jobs(sweeps: str | Path | Sequence[str | Path], metric: str = "test_top1_last") -> list[dict[str, Any]]:
    """One record per finished job: teacher, student, seed, KD and CE accuracy (``metric`` and ``ce_<metric>``);
    a CE-only job is a record with teacher None and its accuracy as ``ce``."""
    records = []
    for sweep in [sweeps] if isinstance(sweeps, (str, Path)) else sweeps:
        for job in load_target(Path(sweep))[1]:
            summary, cfg = job.summary.get("summary", job.summary), job.config
            student = (cfg.get("model") or {}).get("name") or summary.get("student")
            seed = cfg.get("seed", summary.get("seed"))
            if metric not in summary or student is None or seed is None:
                continue
            record = {"job": f"{Path(sweep).name}/{job.path.name}", "student": str(student), "seed": int(seed)}
            if _ce_only(cfg, summary):
                records.append({**record, "teacher": None, "kd": math.nan, "ce": float(summary[metric])})
                continue
            teacher = (cfg.get("teacher") or {}).get("model") or "+".join(summary.get("teacher") or [])
            if teacher:
                records.append({**record, "teacher": str(teacher), "kd": float(summary[metric]),
                                "ce": float(summary.get(f"ce_{metric}", math.nan))})
    return records


def to_arrays(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[str], list[int], np.ndarray, np.ndarray]:
    """(teachers, students, seeds, kd[teacher, student, seed], ce[teacher, student, seed]); NaN where missing.
    Students and teachers keep their first-seen order; a CE-only record fills its (student, seed) under every
    teacher whose job had no CE twin."""
    teachers = list(dict.fromkeys(r["teacher"] for r in records if r["teacher"] is not None))
    students = list(dict.fromkeys(r["student"] for r in records))
    seeds = sorted({r["seed"] for r in records if r["teacher"] is not None})
    kd = np.full((len(teachers), len(students), len(seeds)), np.nan)
    ce = kd.copy()
    for r in records:
        if r["teacher"] is not None:
            idx = teachers.index(r["teacher"]), students.index(r["student"]), seeds.index(r["seed"])
            kd[idx], ce[idx] = r["kd"], r["ce"]
    for r in records:
        if r["teacher"] is None and r["seed"] in seeds:
            cell = ce[:, students.index(r["student"]), seeds.index(r["seed"])]
            cell[np.isnan(cell)] = r["ce"]
    return teachers, students, seeds, kd, ce


def ranks(values: Sequence[float]) -> list[float]:
    """Rank 1 = the highest value; ties share their mean rank."""
    x = np.asarray(values, dtype=float)
    out = np.empty(len(x))
    for i, v in enumerate(x):
        out[i] = math.nan if math.isnan(v) else 1 + (x > v).sum() + ((x == v).sum() - 1) / 2
    return out.tolist()


def interaction_ss(kd: np.ndarray) -> float:
    """Teacher x student interaction sum of squares of the seed means, after centring every (teacher, seed)
    over students (a teacher that lifts all students alike changes no ranking)."""
    c = kd - kd.mean(axis=1, keepdims=True)
    m = c.mean(axis=2)  # [teacher, student]
    return float(((m - m.mean(axis=0, keepdims=True)) ** 2).sum())


def permutation_test(kd: np.ndarray, max_exact: int = 2 ** 16, samples: int = 20_000, seed: int = 0
                     ) -> dict[str, float]:
    """p-value of :func:`interaction_ss` under the null that, within each (student, seed), the teacher labels of
    the per-(teacher, seed) centred accuracies are exchangeable (no teacher x student interaction)."""
    c = kd - kd.mean(axis=1, keepdims=True)
    n_t, n_s, n_seed = c.shape
    observed = interaction_ss(c)
    perms = list(itertools.permutations(range(n_t)))
    cells = n_s * n_seed
    total = len(perms) ** cells
    exact = total <= max_exact
    rng = np.random.default_rng(seed)
    choices = (itertools.product(range(len(perms)), repeat=cells) if exact
               else (rng.integers(len(perms), size=cells) for _ in range(samples)))
    hits = count = 0
    for choice in choices:
        p = c.copy()
        for k, pi in enumerate(choice):
            s, d = divmod(k, n_seed)
            p[:, s, d] = c[list(perms[pi]), s, d]
        hits += interaction_ss(p) >= observed - 1e-9
        count += 1
    return {"statistic": observed, "p": hits / count, "permutations": count, "exact": exact}


def pair_flips(teachers: Sequence[str], students: Sequence[str], kd: np.ndarray) -> list[dict[str, Any]]:
    """For every pair of students and of teachers: the per-seed differences under each teacher, whether each
    teacher orders the pair the same way on every seed, and whether that order flips between the teachers."""
    out = []
    for a, b in itertools.combinations(range(len(students)), 2):
        diff = kd[:, a, :] - kd[:, b, :]  # [teacher, seed]
        signs = [set(np.sign(d[~np.isnan(d)]).tolist()) for d in diff]
        for t, u in itertools.combinations(range(len(teachers)), 2):
            inter = diff[t] - diff[u]
            m, se = mean_se(inter)
            consistent_t, consistent_u = signs[t] in ({1.0}, {-1.0}), signs[u] in ({1.0}, {-1.0})
            mt, mu = np.nanmean(diff[t]), np.nanmean(diff[u])
            out.append({"students": [students[a], students[b]], "teachers": [teachers[t], teachers[u]],
                        "diff": [diff[t].tolist(), diff[u].tolist()], "mean_diff": [float(mt), float(mu)],
                        "interaction_mean": float(m), "interaction_se": float(se),
                        "order_flips": bool(np.sign(mt) * np.sign(mu) < 0),
                        "consistent_flip": bool(consistent_t and consistent_u and signs[t] != signs[u])})
    return out


def analyse(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The matrix, ranks, taus and noise tests over the seeds whose every (teacher, student) job finished (the
    seeds of an interrupted sweep are listed as ``dropped_seeds``)."""
    teachers, students, seeds, kd, ce = to_arrays(records)
    whole = [d for d in range(len(seeds)) if not np.isnan(kd[:, :, d]).any()]
    dropped = [seeds[d] for d in range(len(seeds)) if d not in whole]
    if whole and dropped:
        seeds, kd, ce = [seeds[d] for d in whole], kd[:, :, whole], ce[:, :, whole]
    kd_mean, kd_se = mean_se(kd)
    ce_seed = np.nanmean(ce, axis=0)  # the CE twin is the same run under every teacher
    twins = [r for r in records if r["teacher"] is not None and not math.isnan(r["ce"])]
    ce_spread = math.nan  # how far the CE twins of one (student, seed) under different teachers disagree
    if len(teachers) > 1 and twins:
        _, _, _, _, twin_ce = to_arrays(twins)
        ce_spread = float(np.nanmax(np.nanmax(twin_ce, axis=0) - np.nanmin(twin_ce, axis=0)))
    ce_mean, ce_se = mean_se(ce_seed)
    rank = {t: ranks(kd_mean[i]) for i, t in enumerate(teachers)}
    rank["CE"] = ranks(ce_mean)
    columns = {**{t: kd_mean[i] for i, t in enumerate(teachers)}, "CE": ce_mean}
    tau = {f"{a} vs {b}": kendall(columns[a], columns[b]) for a, b in itertools.combinations(columns, 2)}
    per_seed_tau = {f"{teachers[t]} vs {teachers[u]}": [kendall(kd[t, :, d], kd[u, :, d])
                                                       for d in range(len(seeds))]
                    for t, u in itertools.combinations(range(len(teachers)), 2)}
    seed_tau = {}  # the same teacher, two seeds: how much the ranking moves by seed alone
    for i, t in enumerate(teachers):
        seed_tau[t] = [kendall(kd[i, :, d], kd[i, :, e]) for d, e in itertools.combinations(range(len(seeds)), 2)]
    complete = not np.isnan(kd).any()
    perm = permutation_test(kd) if complete and len(teachers) > 1 and len(seeds) > 1 else None
    flips = pair_flips(teachers, students, kd)
    changed = any(tau[k] < 1 for k in tau if "CE" not in k)
    beyond = bool(any(f["consistent_flip"] for f in flips) or (perm is not None and perm["p"] < 0.05))
    return {"teachers": teachers, "students": students, "seeds": seeds, "dropped_seeds": dropped,
            "jobs": len(records),
            "complete": complete, "kd": kd.tolist(), "ce": ce_seed.tolist(), "ce_spread_across_teachers": ce_spread,
            "kd_mean": kd_mean.tolist(), "kd_se": kd_se.tolist(), "ce_mean": ce_mean.tolist(),
            "ce_se": ce_se.tolist(), "rank": rank, "kendall_tau": tau, "kendall_tau_per_seed": per_seed_tau,
            "kendall_tau_seed_vs_seed": seed_tau, "permutation": perm, "pairs": flips,
            "ranking_changes": changed, "beyond_seed_noise": beyond}


def _f(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def markdown(r: dict[str, Any]) -> str:
    teachers, students = r["teachers"], r["students"]
    lines = [f"Students' top-1 distilled from each teacher (KD; mean +- s.e. over seeds {r['seeds']}; "
             f"{r['jobs']} jobs{'' if r['complete'] else ', INCOMPLETE'}"
             f"{'; unfinished seeds left out: ' + str(r['dropped_seeds']) if r['dropped_seeds'] else ''}), "
             "rank in brackets (1 = best)", "",
             "| student | " + " | ".join(f"KD from {t}" for t in teachers) + " | CE alone |",
             "|---|" + "---|" * (len(teachers) + 1)]
    for s, name in enumerate(students):
        cells = [f"{_f(r['kd_mean'][t][s])} +- {_f(r['kd_se'][t][s])} ({r['rank'][teacher][s]:g})"
                 for t, teacher in enumerate(teachers)]
        cells.append(f"{_f(r['ce_mean'][s])} +- {_f(r['ce_se'][s])} ({r['rank']['CE'][s]:g})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    spread = r["ce_spread_across_teachers"]
    lines += ["", "(CE alone: trained once per student and seed, distill=ce jobs.)" if math.isnan(spread) else
              f"(CE twins of one student and seed differ across teachers by at most {spread:.3f} points: 0 = the "
              "runs are paired exactly.)", "",
              "| rankings compared | Kendall tau (of the means) | per seed |", "|---|---|---|"]
    for k, v in r["kendall_tau"].items():
        per = r["kendall_tau_per_seed"].get(k)
        lines.append(f"| {k} | {_f(v)} | {', '.join(_f(x) for x in per) if per else ''} |")
    for t, v in r["kendall_tau_seed_vs_seed"].items():
        lines.append(f"| {t}: seed vs seed (noise alone) | - | {', '.join(_f(x) for x in v)} |")
    lines += ["", "| students a vs b | teachers t vs u | a - b under t (per seed) | a - b under u (per seed) | "
              "interaction (t - u) mean +- s.e. | order flips | consistent flip |", "|---|---|---|---|---|---|---|"]
    for p in r["pairs"]:
        dt, du = (", ".join(f"{x:+.2f}" for x in d) for d in p["diff"])
        lines.append(f"| {' vs '.join(p['students'])} | {' vs '.join(p['teachers'])} | {dt} | {du} | "
                     f"{p['interaction_mean']:+.2f} +- {_f(p['interaction_se'])} | "
                     f"{'yes' if p['order_flips'] else 'no'} | {'YES' if p['consistent_flip'] else 'no'} |")
    perm = r["permutation"]
    if perm:
        lines += ["", f"Teacher x student interaction (SS of seed means centred per teacher and seed): "
                  f"{perm['statistic']:.3f}, permutation p = {perm['p']:.3f} "
                  f"({perm['permutations']} {'exact ' if perm['exact'] else 'sampled '}permutations)."]
    verdict = ("The students' ranking changes with the teacher" if r["ranking_changes"]
               else "The students' ranking is the same under every teacher")
    if len(teachers) < 2 or len(students) < 2 or len(r["seeds"]) < 2:
        verdict = "Not enough jobs yet: the test needs 2+ teachers, 2+ students and 2+ seeds."
    elif r["ranking_changes"]:
        verdict += (", and the change EXCEEDS seed noise (a pair flips consistently on every seed, or the "
                    "interaction is significant at 5%)." if r["beyond_seed_noise"] else
                    ", but the change does NOT exceed seed noise (no pair flips on every seed, interaction not "
                    "significant at 5%).")
    else:
        verdict += "."
    return "\n".join(lines + ["", f"**Verdict:** {verdict}"])
