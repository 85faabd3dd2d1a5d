"""A short fuzzing campaign (issue 9): hostile peers in processes of their own throw every
attack of ``fuzz_peer.py`` at a service process over tcp while an honest client keeps calling.

The service must survive, answer the honest client within 1 s throughout, keep its RSS within
tens of MB, and keep its log short. ``nox -s fuzz`` runs the same campaign for longer.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TESTS_DIR, netcall_env

SECONDS = 12


@pytest.mark.timeout(SECONDS + 60)
def test_short_fuzz_campaign():
    out = subprocess.run(
        [
            sys.executable,
            str(TESTS_DIR / "fuzz_peer.py"),
            "campaign",
            "--seconds",
            str(SECONDS),
            "--seed",
            "9",
            "--attackers",
            "2",
            "--rate",
            "1000",
            "--max-growth-mb",
            "120",
            "--max-log-lines",
            "200",
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 50,
        env=netcall_env(),
    )
    assert out.stdout.strip(), out.stderr[-3000:]
    report = json.loads(out.stdout)
    summary = {k: v for k, v in report.items() if k not in ("attackers", "target_log_tail")}
    assert report["target_alive"], summary
    assert not report["problems"], (report["problems"], summary)
    assert out.returncode == 0
    assert sum(a.get("attacks", 0) for a in report["attackers"]) > 10_000
