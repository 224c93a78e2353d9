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

from .conftest import SMOKE

TRAIN = [*SMOKE, "model=resnet8", "trainer.max_steps_per_epoch=2"]
SEARCH = [*SMOKE, "space=resnet_cifar", "strategy=random", "proxy=diswot", "proxy.batch_size=16", "search.budget=6",
          "search.batch=3"]


def report(path: Path, out: Path) -> tuple[dict[str, Any], str]:
    summary = kdnas.run("report", ["logger=none", "trainer.num_threads=1", f"report.path={path}"], run_dir=out)
    html = Path(summary["report_html"]).read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html and "<link" not in html
    assert summary["plots"] and all(Path(p).stat().st_size > 1000 for p in summary["plots"])
    return summary, Path(summary["report_md"]).read_text()


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
