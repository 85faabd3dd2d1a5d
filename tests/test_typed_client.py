"""Typed clients: ``client.typed(Protocol)`` is the same client, typed for mypy.

mypy runs on two small files in ``tests/typecheck/``: the correct uses pass, and each line of
the misuses marked ``# error: CODE`` fails with that error code (and nothing else fails).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import pytest

import netcall
from netcall import RPCClient, RPCService

TYPECHECK = Path(__file__).resolve().parent / "typecheck"

needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (the test extra has it)"
)


def _mypy(tmp_path: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    package_root = Path(netcall.__file__).resolve().parents[1]
    if package_root.name != "site-packages":
        # Running from a checkout (PYTHONPATH=src): let mypy find netcall there.
        env["MYPYPATH"] = str(package_root)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--config-file",
            str(tmp_path / "none.ini"),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=env,
        check=False,
    )


@needs_mypy
@pytest.mark.timeout(300)
def test_mypy_accepts_good_and_rejects_wrong_argument_types(tmp_path: Path) -> None:
    (tmp_path / "none.ini").write_text("[mypy]\n")
    good = TYPECHECK / "typed_client_ok.py"
    bad = TYPECHECK / "typed_client_bad.py"
    done = _mypy(tmp_path, good, bad)
    found: set[tuple[str, int, str]] = set()
    for line in done.stdout.splitlines():
        m = re.match(r"(.+?):(\d+): error: .*\[([a-z-]+)\]$", line)
        if m:
            found.add((Path(m.group(1)).name, int(m.group(2)), m.group(3)))
    expected = set()
    for number, text in enumerate(bad.read_text().splitlines(), 1):
        m = re.search(r"# error: ([a-z-]+)", text)
        if m:
            expected.add((bad.name, number, m.group(1)))
    assert expected, "the misuse file marks no errors"
    assert found == expected, done.stdout + done.stderr
    assert done.returncode == 1


class Math(Protocol):
    async def add(self, a: int, b: int) -> int: ...


async def test_typed_is_the_client_at_run_time(
    make_service: Any, make_client: Any, make_url: Any
) -> None:
    svc: RPCService = make_service()

    @svc.register
    async def add(a: int, b: int) -> int:
        return a + b

    url = make_url("inproc")
    svc.bind(url)
    svc.start()
    client: RPCClient = make_client()
    client.connect(url)
    math = client.typed(Math)
    assert math is client
    assert await math.add(2, 3) == 5
    assert await client.with_options(timeout=2).typed(Math).add(a=1, b=1) == 2
