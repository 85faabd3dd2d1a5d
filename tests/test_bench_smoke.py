"""The benchmark harness still works: a quick run writes every report, with no errors.

Behaviour only: no figure is compared with anything (speed is the benchmark's job).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_NUMPY = importlib.util.find_spec("numpy") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
SWEEP = ["16B", "256B", "1KiB", "4KiB", "16KiB", "64KiB", "256KiB", "1MiB", "4MiB", "16MiB"]


def _run(tmp_path: Path, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "results.md").read_text().startswith("## Results")
    return json.loads((tmp_path / "results.json").read_text())


@pytest.mark.timeout(120)
def test_quick_benchmark_run(tmp_path: Path) -> None:
    results = _run(tmp_path, "--quick")
    systems = results["systems"]
    assert {"raw-zmq-asyncio", "netcall-asyncio"} <= set(systems)
    netcall = systems["netcall-asyncio"]
    assert netcall["errors"] == ({} if HAS_NUMPY else {"numpy": "n/a: numpy is not importable"})
    for metric in ("seq", "c1", "c8", "c64", "c512", "kib1", "mib1"):
        assert netcall["metrics"][metric]["calls_s"] > 0, metric
    assert netcall["metrics"]["stream"]["items_s"] > 0
    # the payload figures, netcall and the baseline alike
    for s in ("netcall-asyncio", "raw-zmq-asyncio"):
        metrics = systems[s]["metrics"]
        for metric in ("kib1_c64", "mib1_c64", "mib16") + (("numpy",) if HAS_NUMPY else ()):
            assert metrics[metric]["calls_s"] > 0, (s, metric)
            assert systems[s]["ratios"][f"{metric}.calls_s"] > 0, (s, metric)
        assert metrics["stream_mib"]["items_s"] > 0
        assert metrics["stream_mib"]["mib_s"] > 0
    # the payload-size sweep, 16 B to 16 MiB: every size, netcall and the baseline alike
    for s in ("netcall-asyncio", "raw-zmq-asyncio"):
        metrics = systems[s]["metrics"]
        for size in SWEEP:
            m = metrics[f"sweep_{size}"]
            assert m["calls_s"] > 0 and m["mib_s"] > 0 and m["n"] >= 1, (s, size)
            assert m["mib_s"] == pytest.approx(m["calls_s"] * m["size"] / 2**20), (s, size)
            assert systems[s]["ratios"][f"sweep_{size}.mib_s"] > 0, (s, size)
    assert metrics["sweep_16MiB"]["size"] == 16 * 2**20
    for png in ("throughput.png", "payload_throughput.png"):
        assert (tmp_path / png).exists() == HAS_MATPLOTLIB, png
    curve = systems["netcall-curve"]  # the same, with CURVE encryption
    assert curve["errors"] == ({} if HAS_NUMPY else {"numpy": "n/a: numpy is not importable"})
    assert curve["metrics"]["c64"]["calls_s"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "### CURVE encryption" in md
    assert "### Payloads" in md and "1 MiB 64 in flight" in md
    assert "### Payload sizes" in md and "| 16 B | 256 B |" in md
    # the header names the commit of the netcall that was imported
    git = shutil.which("git")
    netcall_path = Path(results["env"]["netcall_path"])
    if git and netcall_path.is_relative_to(ROOT / "src"):
        head = subprocess.run(
            [git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        assert results["env"]["git"].split("-")[0] == head
        assert f"(git {results['env']['git']})" in md


@pytest.mark.timeout(120)
def test_benchmark_figures_option(tmp_path: Path) -> None:
    """``--figures`` measures only the figures asked for (and no memory figures)."""
    results = _run(
        tmp_path, "--quick", "--systems", "netcall-asyncio", "--figures", "mib1_c64,stream_mib"
    )
    for s in ("raw-zmq-asyncio", "netcall-asyncio"):  # the baseline is always added
        assert set(results["systems"][s]["metrics"]) == {"mib1_c64", "stream_mib"}, s
        assert results["systems"][s]["errors"] == {}
    assert "memory" not in results
    md = (tmp_path / "results.md").read_text()
    assert "1 MiB 64 in flight" in md and "64 in flight |" not in md.split("### Payloads")[0]


@pytest.mark.timeout(120)
def test_benchmark_sweep_only(tmp_path: Path) -> None:
    """``--figures sweep``: the payload-size sweep alone, in every repetition asked for."""
    results = _run(
        tmp_path,
        "--quick",
        "--systems",
        "netcall-asyncio",
        "--figures",
        "sweep",
        "--reps",
        "2",
        "--sweep-time",
        "0.01",
    )
    for s in ("raw-zmq-asyncio", "netcall-asyncio"):
        metrics = results["systems"][s]["metrics"]
        assert set(metrics) == {f"sweep_{size}" for size in SWEEP}, s
        assert all(m["reps"] == 2 for m in metrics.values()), s
        assert results["systems"][s]["errors"] == {}
    assert results["config"]["sweep_time"] == 0.01
    md = (tmp_path / "results.md").read_text()
    assert "### Payload sizes" in md and "### Payloads" not in md
    assert (tmp_path / "payload_throughput.png").exists() == HAS_MATPLOTLIB


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["c64", "stream"])
def test_ab_script_compares_a_source_tree_with_a_raw_baseline(mode: str) -> None:
    """benchmarks/ab.py (the A/B script of benchmarks/README.md) runs each system's service
    and client processes and prints one line per system."""
    options = ["--reps", "1", "--time", "0.2", "--mode", mode, "--in-flight", "8"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "ab.py"), str(ROOT / "src"), "raw-fd", *options],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{mode}, 1 reps of 0.2 s")
    unit = "items/s" if mode == "stream" else "calls/s"
    assert len(lines) == 3
    for line, system in zip(lines[1:], [str(ROOT / "src"), "raw-fd"], strict=True):
        assert line.startswith(system) and unit in line and "CPU per call: client" in line


_INPROC = ["--runs", "1", "--rounds", "2", "--calls", "500", "--in-flight", "8"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "script, options, expected",
    [
        ("threads.py", ["--threads", "4", "--rounds", "1", "--time", "0.2"], "socket-per-thread"),
        ("workers.py", ["--reps", "1", "--time", "0.3", "--in-flight", "4"], "ratio 2/1"),
        ("workers.py", ["--cli", "--reps", "1", "--time", "0.3", "--in-flight", "4"], "serve's"),
        ("stream_memory.py", ["--item-mib", "1", "--wait", "0.2"], "client RSS +"),
        ("slow_link.py", ["--delay", "0.01", "--items", "30", "--item-mib", "0.1"], "MiB/s"),
        ("inproc.py", ["service", str(ROOT / "src"), *_INPROC], "CPU µs per call"),
        ("inproc.py", ["client", str(ROOT / "src"), *_INPROC], "CPU µs per call"),
    ],
    ids=[
        "threads",
        "workers",
        "workers-cli",
        "stream-memory",
        "slow-link",
        "inproc-service",
        "inproc-client",
    ],
)
def test_other_benchmark_scripts_run(script: str, options: list[str], expected: str) -> None:
    """benchmarks/threads.py, benchmarks/workers.py (with and without --cli),
    benchmarks/stream_memory.py, benchmarks/slow_link.py and benchmarks/inproc.py (both
    sides) run to the end and print their figures."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *options],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert expected in done.stdout
