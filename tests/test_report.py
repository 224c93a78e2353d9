"""task=report over real tiny runs (train, search) and a hand-made sweep of pipeline jobs with known numbers; the
auto-report a sweep writes when ``report.after_sweep=true``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import OmegaConf

import kdnas
from kdnas import callbacks
from kdnas.errors import ConfigError
from kdnas.report import build_report
from kdnas.report.plots import pareto_mask, search_trajectory

from .helpers import SMOKE

TRAIN = [*SMOKE, "model=resnet8", "trainer.max_steps_per_epoch=2"]
SEARCH = [*SMOKE, "space=resnet_cifar", "strategy=random", "evaluator.proxy=diswot", "evaluator.batch_size=16",
          "search.budget=6", "search.batch=3"]


def report(path: Path, out: Path) -> tuple[dict[str, Any], str]:
    summary = kdnas.run("report", ["logger=none", "trainer.num_threads=1", f"report.path={path}"], run_dir=out)
    html = Path(summary["report_html"]).read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html and "<link" not in html
    assert summary["plots"] and all(Path(p).stat().st_size > 1000 for p in summary["plots"])
    return summary, Path(summary["report_md"]).read_text()


@pytest.mark.slow
def test_report_over_a_train_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kdnas.run("train", TRAIN, run_dir=tmp_path / "train")
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").open()]
    test, train = (next(r for r in records if r["split"] == s) for s in ("test", "train"))
    summary, md = report(tmp_path / "train", tmp_path / "report")
    assert summary["kind"] == "run" and Path(summary["report_md"]).parent == tmp_path / "report"
    assert f"| . | train | ok | 1 | {train['loss']:.4f} | {train['top1']:.2f} |" in md
    assert f"| {test['top1']:.2f} |" in md and "| model | resnet8 |" in md
    assert (tmp_path / "report" / "plots" / "run-curves.png").is_file() and "(plots/run-curves.png)" in md
    assert summary["report_html"] in capsys.readouterr().out


def test_report_over_a_search_run(tmp_path: Path) -> None:
    found = kdnas.run("search", SEARCH, run_dir=tmp_path / "search")
    history = [json.loads(line) for line in (tmp_path / "search" / "history.jsonl").open()]
    _, md = report(tmp_path / "search", tmp_path / "report")
    assert f"| 1 | {found['best_arch_id']} | {found['best_reward']:.4g} |" in md
    assert f"{len(history)} archs evaluated" in md and "Pareto front (reward vs params)" in md
    kinds = {r["reward_kind"] for r in history}
    assert len(kinds) == 1 and f"reward = {kinds.pop()}" in md  # the reader learns what "reward" measured
    for name in ("trajectory", "decisions", "pareto"):
        assert (tmp_path / "report" / "plots" / f"run-{name}.png").is_file()


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def pipeline_job(folder: Path, name: str, strategy: str, *, kd: float, ce: float, wall: float,
                 timings: bool = True) -> None:
    """A finished task=pipeline job folder with known numbers: search 12.5 s, KD retraining 20 s, in the summary's
    ``timings`` or (``timings=False``) only in the stage folders (the search's session, distill's metrics log)."""
    _write(folder / ".hydra" / "config.yaml", f"task: pipeline\nname: {name}\nstrategy:\n  name: {strategy}\n")
    _write(folder / ".hydra" / "overrides.yaml", f"- task=pipeline\n- strategy={strategy}\n")
    _write(folder / "status.json", {"status": "ok", "message": None})
    _write(folder / "summary.json", {
        "task": "pipeline", "wall_seconds": wall, "params": 123_000, "kd_test_top1_last": kd, "ce_test_top1_last": ce,
        "teacher_test_top1": 70.0,
        **({"timings": {"search_s": 12.5, "retrain_s": 20.0, "total_s": 32.5, "ce_s": 9.0}} if timings else {}),
        "search": {"strategy": strategy, "space": "resnet_cifar", "evaluated": 16,
                                              "search_seconds_this_session": 12.5}})
    _write(folder / "search" / "best_arch.json", {"result": {"reward": 1.0, "costs": {"params": 123_000,
                                                                                       "flops": 40_000_000}}})
    _write(folder / "distill" / "metrics.jsonl", "".join(json.dumps({"epoch": e, "split": "train", "seconds": 10.0})
                                                         + "\n" for e in range(2)))
    _write(folder / "ce" / "summary.json", {"wall_seconds": 10.0})


def test_sweep_comparison_table_lists_each_strategy_and_the_failed_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    pipeline_job(sweep / "0-strategy=random", "cmp-random", "random", kd=61.2, ce=58.3, wall=50.0)
    pipeline_job(sweep / "1-strategy=diswot", "cmp-diswot", "diswot", kd=63.4, ce=59.0, wall=55.5, timings=False)
    _write(sweep / "2-strategy=akd" / "status.json", {"status": "failed", "message": "ConfigError: boom\nmore"})
    _write(sweep / "multirun.yaml", "hydra: {}\n")
    summary = build_report(sweep, tmp_path / "report")
    md = Path(summary["report_md"]).read_text()
    assert summary["kind"] == "sweep" and summary["runs"] == 3 and summary["failed"] == ["2-strategy=akd"]
    row = "| 16 | 12.5 | 20.0 | 32.5 | 0.123M | 20.0M | 40.0M | {} | {} | 70.00 |"
    assert "| cmp-random | random | resnet_cifar " + row.format("61.20", "58.30") in md
    assert "| cmp-diswot | diswot | resnet_cifar " + row.format("63.40", "59.00") in md
    assert "| 2-strategy=akd | failed | ConfigError: boom |" in md
    assert "task=pipeline strategy=random" in md
    assert (tmp_path / "report" / "plots" / "comparison.png").stat().st_size > 1000
    assert "data:image/png;base64," in Path(summary["report_html"]).read_text()


def test_sweep_end_writes_a_report_when_asked_and_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setattr(callbacks, "OUTCOME", callbacks.Outcome())
    sweep = tmp_path / "sweep"
    pipeline_job(sweep / "0-a", "a", "random", kd=61.2, ce=58.3, wall=50.0)

    def end(folder: Path, after_sweep: bool) -> None:
        cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(folder)}}, "report": {"after_sweep": after_sweep}})
        hook = callbacks.JobReport()
        hook.on_multirun_start(cfg)
        hook.on_multirun_end(cfg)

    end(sweep, after_sweep=False)
    assert not (sweep / "report").exists()
    end(sweep, after_sweep=True)
    assert (sweep / "report" / "report.html").is_file() and (sweep / "report" / "plots" / "comparison.png").is_file()
    end(tmp_path / "empty", after_sweep=True)  # no job folders: the report fails, the sweep's outcome stands
    assert not (tmp_path / "empty" / "report").exists() and callbacks.OUTCOME.failed == []


def test_report_over_a_correlate_run_tabulates_proxies_and_embeds_its_scatter(tmp_path: Path) -> None:
    run = tmp_path / "correlate"
    stats = {"diswot_sum": (0.9, 0.8, 1.0, 0.5), "params": (0.2, 0.1, 0.5, float("nan"))}
    _write(run / "status.json", {"status": "ok", "message": None})
    _write(run / "correlate.json", {"archs": 6, "results": {"kd_top1": {p: {
        "spearman": rho, "kendall": tau, "precision_at_2": p2, "partial_spearman_given_params": partial,
        "band_spearman": []} for p, (rho, tau, p2, partial) in stats.items()}}})
    png = search_trajectory([{"reward": 1.0}, {"reward": 2.0}])
    assert png is not None
    (run / "scatter_kd_top1.png").write_bytes(png)
    summary = build_report(run, tmp_path / "report")
    md = Path(summary["report_md"]).read_text()
    assert "| proxy | Spearman | Kendall | P@2 | partial (params) |" in md
    best_first = "| diswot_sum | +0.900 | +0.800 | 1.00 | +0.500 |\n| params | +0.200 | +0.100 | 0.50 | - |"
    assert best_first in md
    assert (tmp_path / "report" / "plots" / "run-scatter_kd_top1.png").read_bytes() == png


def test_report_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="report.path"):
        kdnas.run("report", ["logger=none", "trainer.num_threads=1"], run_dir=tmp_path / "a")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="neither a kdnas run folder nor a sweep folder"):
        build_report(tmp_path / "plain", tmp_path / "b")
    with pytest.raises(ConfigError, match="not a folder"):
        build_report(tmp_path / "missing", tmp_path / "c")


def test_pareto_mask_keeps_the_non_dominated_points() -> None:
    cost = [1, 2, 2, 3, 4, np.nan]
    reward = [0.1, 0.5, 0.4, 0.5, 0.9, 1.0]
    assert pareto_mask(cost, reward).tolist() == [True, True, False, False, True, False]


def md_tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table of a report as rows of cells (header first, the |---| line left out)."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in md.splitlines():
        if line.startswith("| "):
            if not previous.startswith(("| ", "|---")):
                tables.append([])
            tables[-1].append([c.strip() for c in line.strip().strip("|").split(" | ")])
        previous = line
    return tables


def assert_no_empty_column(md: str) -> None:
    for table in md_tables(md):
        header, rows = table[0], table[1:]
        for c, name in enumerate(header):
            assert any(row[c] != "-" for row in rows), f"column {name!r} is all '-': {table}"


def train_job(folder: Path, seed: int, model: str, top1: float, wall: float) -> None:
    _write(folder / ".hydra" / "config.yaml", f"task: train\nname: train\nseed: {seed}\nmodel:\n  name: {model}\n")
    _write(folder / ".hydra" / "overrides.yaml", f"- model={model}\n- seed={seed}\n")
    _write(folder / "status.json", {"status": "ok", "message": None})
    _write(folder / "summary.json", {"task": "train", "test_top1_last": top1, "wall_seconds": wall})


def test_sweep_over_seeds_has_one_row_per_configuration_with_mean_std_and_n(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    figures = {("resnet8", 0): 50.0, ("resnet8", 1): 52.0, ("resnet8", 2): 54.0, ("resnet14", 0): 60.0,
               ("resnet14", 1): 61.0}
    for n, ((model, seed), top1) in enumerate(figures.items()):
        train_job(sweep / f"{n}-model={model},seed={seed}", seed, model, top1, wall=10.0 + seed)
    _write(sweep / "5-model=resnet14,seed=2" / "status.json", {"status": "failed", "message": "boom"})
    md = Path(build_report(sweep, tmp_path / "report")["report_md"]).read_text()
    assert "# Per configuration, over seeds" in md.replace("##", "#")
    assert "| model=resnet8 | 3 | 0,1,2 | 52.00 ± 2.00 | 11.0 ± 1.0 |" in md  # std with n - 1: sqrt(8 / 2) = 2
    assert "| model=resnet14 | 2 | 0,1 | 60.50 ± 0.71 | 10.5 ± 0.7 |" in md  # the failed seed 2 is not counted
    assert "| 0-model=resnet8,seed=0 |" in md  # the per-job table stays
    assert_no_empty_column(md)


def test_one_seed_per_configuration_adds_no_seed_table(tmp_path: Path) -> None:
    for n, model in enumerate(("resnet8", "resnet14")):
        train_job(tmp_path / "sweep" / f"{n}-model={model}", 0, model, 50.0, wall=1.0)
    md = Path(build_report(tmp_path / "sweep", tmp_path / "report")["report_md"]).read_text()
    assert "over seeds" not in md


def test_comparison_plot_labels_points_by_row_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.axes

    from kdnas.report import plots

    labels: list[str] = []
    original = matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda self, text, *a, **kw: labels.append(text) or original(self, text, *a, **kw))
    rows = [{"name": f"cmp_{n}", "strategy": "diswot", "total_s": 10.0 + i, "kd_top1": 50.0 + i, "ce_top1": 48.0,
             "teacher_top1": 70.0} for i, n in enumerate("ab")]
    assert plots.comparison(rows) is not None
    assert labels == ["cmp_a", "cmp_b"]  # both rows run diswot: the strategy would not tell them apart


@pytest.mark.slow
def test_constrained_search_report_shows_the_constraint_and_its_plot(tmp_path: Path) -> None:
    limit = 100_000
    kdnas.run("search", [*SEARCH, "constraint=params_1m", f"constraint.params_max={limit}"],
              run_dir=tmp_path / "search")
    history = [json.loads(line) for line in (tmp_path / "search" / "history.jsonl").open()]
    summary, md = report(tmp_path / "search", tmp_path / "report")
    assert all(r["costs"]["params"] <= limit for r in history)  # a hard constraint admits no arch over it
    assert (f"Constraint (hard: archs over it are rejected before they are scored): params <= {limit:,}; "
            f"{len(history)} of {len(history)} evaluated archs within it.") in md
    header = next(t[0] for t in md_tables(md) if t[0][:3] == ["rank", "arch_id", "reward"])
    assert header[3] == "params" and not any(h.startswith("within") for h in header)  # all "yes" says nothing
    assert (tmp_path / "report" / "plots" / "run-constraint-params.png").stat().st_size > 1000
    assert_no_empty_column(md)


def test_soft_constraint_report_marks_the_archs_over_the_target(tmp_path: Path) -> None:
    run = tmp_path / "search"
    _write(run / ".hydra" / "config.yaml",
           "task: search\nconstraint:\n  params_max: 100\n  macs_max: 20000000\n  mode: soft\n")
    _write(run / "status.json", {"status": "ok", "message": None})
    _write(run / "history.jsonl", "".join(json.dumps({"arch_id": f"a{i}", "arch": {"d": i}, "reward": r,
                                                      "costs": {"params": p, "flops": 1e6 * p / 3}}) + "\n"
                                          for i, (r, p) in enumerate([(0.9, 150), (0.8, 90), (0.5, 60)])))
    md = Path(build_report(run, tmp_path / "report")["report_md"]).read_text()
    # MACs are not recorded: half the FLOPs (2.5e7, 1.5e7, 1e7); a0 is over both targets
    assert ("Constraint (soft: archs over it are scored with a penalty): params <= 100, macs <= 20.00M; 2 of 3 "
            "evaluated archs within it.") in md
    assert ("| 1 | a0 | 0.9 | 150 | 5e+07 | 2.5e+07 | no | d=0 |\n"
            "| 2 | a1 | 0.8 | 90 | 3e+07 | 1.5e+07 | yes | d=1 |") in md
    for key in ("params", "macs"):
        assert (tmp_path / "report" / "plots" / f"run-constraint-{key}.png").stat().st_size > 1000


def test_report_over_a_train_run_has_no_all_dash_column(tmp_path: Path) -> None:
    kdnas.run("train", [*TRAIN, "data.val_fraction=0"], run_dir=tmp_path / "train")
    _, md = report(tmp_path / "train", tmp_path / "report")
    assert "history records" not in md and "val top-1" not in md  # nothing recorded: no column of dashes
    assert_no_empty_column(md)
