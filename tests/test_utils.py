"""The shared readers and statistics every script and report uses (one copy each in the library)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from kdnas.correlation import kendall, mean_se
from kdnas.utils import read_jsonl


def test_read_jsonl_skips_blank_lines_and_reads_a_missing_file_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(path, missing_ok=False)
    path.write_text(json.dumps({"a": 1}) + "\n\n" + json.dumps({"a": 2}) + "\n")
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_read_jsonl_raises_on_a_torn_line_unless_told_to_skip_it(tmp_path: Path) -> None:
    """A run's own log must parse; a report over folders that may still be written skips the torn last line."""
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps({"a": 1}) + '\n{"a": ')
    with pytest.raises(ValueError):
        read_jsonl(path)
    assert read_jsonl(path, skip_bad_lines=True) == [{"a": 1}]
    assert read_jsonl(tmp_path, skip_bad_lines=True) == []  # unreadable (a folder)


def test_mean_se_is_the_sample_sd_over_root_n_without_nans() -> None:
    values = [61.234, 60.987, 62.5, 59.01]
    mean, se = mean_se(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert se == pytest.approx(statistics.stdev(values) / 2)
    assert math.isnan(mean_se([50.0])[1]) and mean_se([50.0])[0] == 50.0
    m, s = mean_se(np.array([[1.0, 3.0, np.nan], [2.0, np.nan, np.nan]]))
    np.testing.assert_allclose(m, [2.0, 2.0])
    assert s[0] == pytest.approx(math.sqrt(2) / math.sqrt(2)) and math.isnan(s[1])


def test_kendall_is_scipys_tau_b() -> None:
    x, y = [1, 2, 2, 3, 5], [2, 1, 3, 3, 4]  # ties on both sides
    assert kendall(x, y) == pytest.approx(kendalltau(x, y).statistic)
    assert kendall([1, 2, 3], [30, 20, 10]) == -1.0 and math.isnan(kendall([1, 2, 3], [5, 5, 5]))
