"""The built wheel carries every config and the bundled data (an editable install would hide a broken one)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_configs_and_data(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("kdnas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    pkg = ROOT / "src"
    expected = {p.relative_to(pkg).as_posix() for p in (pkg / "kdnas" / "conf").rglob("*.yaml")}
    expected |= {p.relative_to(pkg).as_posix() for p in (pkg / "kdnas" / "data" / "assets").iterdir()}
    expected.add("kdnas/conf/__init__.py")
    assert expected <= names, sorted(expected - names)
