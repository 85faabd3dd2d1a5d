"""The benchmark harness still works: a quick run writes every report, with no errors.

Behaviour only: no figure is compared with anything (speed is the benchmark's job).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_quick_benchmark_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "results.md").read_text().startswith("## Results")
    results = json.loads((tmp_path / "results.json").read_text())
    systems = results["systems"]
    assert {"raw-zmq-asyncio", "netcall-asyncio"} <= set(systems)
    netcall = systems["netcall-asyncio"]
    assert netcall["errors"] == {}
    for metric in ("seq", "c1", "c8", "c64", "c512", "kib1", "mib1"):
        assert netcall["metrics"][metric]["calls_s"] > 0, metric
    assert netcall["metrics"]["stream"]["items_s"] > 0
    curve = systems["netcall-curve"]  # the same, with CURVE encryption
    assert curve["errors"] == {}
    assert curve["metrics"]["c64"]["calls_s"] > 0
    assert "### CURVE encryption" in (tmp_path / "results.md").read_text()
