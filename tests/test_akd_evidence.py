"""AKD evidence tooling: the teacher-student matrix analysis (kdnas.report.akd) on hand-made sweeps, and the
tabular replay's reader on task=correlate's real correlate.tsv layout."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from kdnas.benchmarks.tabular import Table, compare, shipped_config
from kdnas.correlation import kendall
from kdnas.report import akd
from kdnas.spaces.constraints import Constraint

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEED_NOISE = [0.0, 0.3, -0.2]


def records(kd: dict[str, dict[str, float]], ce: dict[str, float]) -> list[dict]:
    """Every (teacher, student, seed) of a hand-made matrix, with a small seed-dependent wobble."""
    return [{"teacher": t, "student": s, "seed": k, "kd": acc + SEED_NOISE[k], "ce": ce[s] + SEED_NOISE[k]}
            for t, row in kd.items() for s, acc in row.items() for k in range(3)]


def test_ranks_and_kendall_tau() -> None:
    assert akd.ranks([50.0, 70.0, 60.0]) == [3, 1, 2]
    assert akd.ranks([50.0, 70.0, 50.0]) == [2.5, 1, 2.5]
    assert kendall([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall([1, 2, 3], [30, 20, 10]) == -1.0
    assert kendall([1, 2, 3], [10, 30, 20]) == pytest.approx(1 / 3)
    x, y = [1, 2, 2, 3, 5], [2, 1, 3, 3, 4]  # ties on both sides: tau-b
    assert kendall(x, y) == pytest.approx(kendalltau(x, y).statistic)


def test_matrix_detects_a_teacher_dependent_ranking() -> None:
    kd = {"resnet20": {"a": 60.0, "b": 57.0, "c": 54.0}, "wrn_16_2": {"a": 52.0, "b": 55.0, "c": 58.0}}
    r = akd.analyse(records(kd, {"a": 50.0, "b": 49.0, "c": 48.0}))
    assert r["teachers"] == ["resnet20", "wrn_16_2"] and r["students"] == ["a", "b", "c"] and r["seeds"] == [0, 1, 2]
    np.testing.assert_allclose(r["kd_mean"], [[60 + 1 / 30, 57 + 1 / 30, 54 + 1 / 30],
                                              [52 + 1 / 30, 55 + 1 / 30, 58 + 1 / 30]])
    assert r["rank"] == {"resnet20": [1, 2, 3], "wrn_16_2": [3, 2, 1], "CE": [1, 2, 3]}
    assert r["kendall_tau"]["resnet20 vs wrn_16_2"] == -1.0 and r["kendall_tau"]["resnet20 vs CE"] == 1.0
    assert r["kendall_tau_per_seed"]["resnet20 vs wrn_16_2"] == [-1.0] * 3
    assert r["ce_spread_across_teachers"] == 0.0
    ac = next(p for p in r["pairs"] if p["students"] == ["a", "c"])
    assert ac["consistent_flip"] and ac["order_flips"] and ac["interaction_mean"] == pytest.approx(12.0)
    perm = r["permutation"]  # as extreme: the identity and the mirror, times b's 2**3 free swaps (b is centred at 0)
    assert perm["exact"] and perm["permutations"] == 2 ** 9 and perm["p"] == pytest.approx(16 / 512)
    assert r["ranking_changes"] and r["beyond_seed_noise"]
    assert "EXCEEDS seed noise" in akd.markdown(r)


def test_matrix_sees_no_change_when_a_teacher_lifts_every_student_alike() -> None:
    kd = {"t1": {"a": 60.0, "b": 57.0, "c": 54.0}, "t2": {"a": 65.0, "b": 62.0, "c": 59.0}}
    r = akd.analyse(records(kd, {"a": 50.0, "b": 49.0, "c": 48.0}))
    assert r["rank"]["t1"] == r["rank"]["t2"] == [1, 2, 3] and r["kendall_tau"]["t1 vs t2"] == 1.0
    assert r["permutation"]["statistic"] == pytest.approx(0.0) and r["permutation"]["p"] == 1.0
    assert not r["ranking_changes"] and not r["beyond_seed_noise"]
    assert not any(p["order_flips"] for p in r["pairs"])


def test_matrix_calls_a_noisy_swap_seed_noise() -> None:
    """Two students swap by a hair under one teacher while seeds disagree on their order: not beyond noise."""
    rows = [{"teacher": t, "student": s, "seed": k, "kd": v, "ce": 50.0} for t, s, vals in [
        ("t1", "a", [60.0, 59.0, 61.0]), ("t1", "b", [59.5, 60.5, 59.8]), ("t1", "c", [50.0, 50.2, 49.9]),
        ("t2", "a", [59.8, 60.6, 59.0]), ("t2", "b", [60.2, 59.1, 60.9]), ("t2", "c", [50.1, 49.8, 50.0])]
        for k, v in enumerate(vals)]
    r = akd.analyse(rows)
    assert r["rank"]["t1"] == [1, 2, 3] and r["rank"]["t2"] == [2, 1, 3]
    assert r["ranking_changes"] and not any(p["consistent_flip"] for p in r["pairs"])
    assert r["permutation"]["p"] > 0.05 and not r["beyond_seed_noise"]


def write_kd_jobs(sweep: Path) -> None:
    """Two finished task=distill jobs: resnet8 from resnet20 and from wrn_16_2, seed 0, with their CE twins."""
    for i, (t, s, seed, kd, ce) in enumerate([("resnet20", "resnet8", 0, 40.0, 38.0),
                                              ("wrn_16_2", "resnet8", 0, 41.0, 38.0)]):
        job = sweep / f"{i}-job"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  name: {s}\nteacher:\n  model: {t}\n")
        (job / "summary.json").write_text(json.dumps({"test_top1_last": kd, "ce_test_top1_last": ce,
                                                      "student": s, "teacher": [t]}))


def test_load_jobs_reads_a_sweep_folder(tmp_path: Path) -> None:
    write_kd_jobs(tmp_path)
    (tmp_path / "2-unfinished").mkdir()
    got = akd.load_jobs(tmp_path)
    assert [(r["teacher"], r["student"], r["seed"], r["kd"], r["ce"]) for r in got] == [
        ("resnet20", "resnet8", 0, 40.0, 38.0), ("wrn_16_2", "resnet8", 0, 41.0, 38.0)]
    ce_job = tmp_path.parent / "ce_sweep" / "0-model=resnet8,seed=0"  # distill=ce: the CE baseline, once
    (ce_job / ".hydra").mkdir(parents=True)
    (ce_job / ".hydra" / "config.yaml").write_text("seed: 0\nmodel:\n  name: resnet8\nteacher:\n  model: resnet20\n"
                                                   "distill:\n  weights:\n    ce: 1.0\n    kd: 0.0\n")
    (ce_job / "summary.json").write_text(json.dumps({"test_top1_last": 37.0, "student": "resnet8", "teacher": []}))
    for job in tmp_path.glob("*/summary.json"):  # KD jobs without their CE twin (distill.compare_ce=false)
        job.write_text(json.dumps({k: v for k, v in json.loads(job.read_text()).items() if not k.startswith("ce_")}))
    got = akd.load_jobs([tmp_path, ce_job.parent])
    assert got[2]["teacher"] is None and got[2]["ce"] == 37.0
    teachers, students, seeds, kd, ce = akd.to_arrays(got)
    assert teachers == ["resnet20", "wrn_16_2"] and students == ["resnet8"] and seeds == [0]
    assert kd[:, 0, 0].tolist() == [40.0, 41.0] and ce[:, 0, 0].tolist() == [37.0, 37.0]


@pytest.mark.slow
def test_akd_matrix_script_prints_the_matrix(tmp_path: Path) -> None:
    write_kd_jobs(tmp_path)
    script = subprocess.run([sys.executable, str(ROOT / "scripts" / "akd_matrix.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert script.returncode == 0, script.stderr[-2000:]
    assert "| resnet8 | 40.00 +- n/a (1) | 41.00 +- n/a (1) | 38.00 +- n/a (1) |" in script.stdout
    assert "Not enough jobs yet" in script.stdout


def test_replay_reads_the_correlate_tsv_layout(tmp_path: Path) -> None:
    """task=correlate writes arch_id, the decisions, params_count, the proxy columns (`params` and `flops`
    among them), then kd_top1 / ce_top1; a row without a truth (an untrained arch) is left out."""
    header = ["arch_id", "depth", "width", "params_count", "diswot_semantic", "params", "flops", "synflow",
              "diswot_sum", "kd_top1", "ce_top1"]
    lines = ["\t".join(header)]
    for i, (depth, width) in enumerate([(d, w) for d in (1, 2, 3) for w in (8, 16)]):
        params = 1000 * depth * width
        kd = "" if i == 5 else str(40 + depth + width / 8)
        lines.append("\t".join(map(str, [f"id{i}", depth, width, params, 0.1, params, 10 * params, 3.0, 0.2, kd,
                                         30 + width / 4])))
    path = tmp_path / "correlate.tsv"
    path.write_text("\n".join(lines) + "\n")
    table = Table.load(path)
    assert [d.name for d in table.decisions] == ["depth", "width"] and len(table.rows) == 5
    assert [sorted(d.options) for d in table.decisions] == [[1, 2, 3], [8, 16]]
    assert table.rows[0] == {"decisions": {"depth": 1, "width": 8}, "kd_top1": 42.0, "ce_top1": 32.0,
                             "params": 8000.0, "flops": 80000.0}
    report = compare(table, {"random": shipped_config("random")}, seeds=range(2), budget=4, batch=2,
                     constraint=Constraint(params_max=20_000))
    assert report["ceiling_kd_top1"] == 43.0 and report["rows"] == 5


def test_replay_table_takes_list_valued_decisions_from_the_eval_cache(tmp_path: Path) -> None:
    """resnet_cifar archs carry a fixed ``widths`` list; tabular_replay --evals reads the evaluator cache."""
    replay = _script("tabular_replay")
    for name, acc in (("kd", 40.0), ("ce", 35.0)):
        folder = tmp_path / name
        folder.mkdir()
        for i, depth in enumerate((1, 3, 5)):
            arch = {"decisions": {"depth1": depth, "widths": [16, 32, 64]}}
            entry = {"arch_id": f"a{i}", "arch": arch, "result": {"test_top1": acc + depth, "val_top1": 0.0,
                                                                  "costs": {"params": 1000 * depth}}}
            if not (name == "ce" and depth == 5):  # an arch only the KD truth has yet is left out
                (folder / f"a{i}.json").write_text(json.dumps(entry))
    table = replay.table_from_evals(tmp_path / "kd", tmp_path / "ce")
    assert [d.options for d in table.decisions] == [[1, 3], [[16, 32, 64]]]
    assert [(r["kd_top1"], r["ce_top1"], r["params"]) for r in table.rows] == [(41.0, 36.0, 1000.0),
                                                                                (43.0, 38.0, 3000.0)]
    report = compare(table, {"akd": shipped_config("akd")}, seeds=range(1), budget=4, batch=2,
                     constraint=Constraint(params_max=5000))
    assert report["ceiling_kd_top1"] == 43.0 and all(len(c) == 4 for c in report["curves"]["akd/kd"])
