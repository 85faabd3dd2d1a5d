"""Closing a client, a service or a broker while its connections break must not stop the
other sockets of its ZeroMQ context.

libzmq's I/O thread sends each socket-monitor event with a blocking send. A monitor PAIR closed
while the monitored socket can still report (it does until libzmq reaps it, after ``close()``)
takes that send with it: the I/O thread blocked for good, and with it every socket of the
context (seen in CI as chains of calls across processes that timed out after earlier tests
closed their clients). netcall stops a socket's monitor before closing it or its PAIR
(:func:`netcall._socket.stop_monitor`).

Each scenario runs in a process of its own: a stuck context would also hang the exit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TESTS_DIR, netcall_env

pytestmark = pytest.mark.timeout(120)

SCENARIO = TESTS_DIR / "_monitor_close_scenario.py"
ROUNDS = 40  # before the fix, every kind was stuck within 30 rounds (5 for a service)


@pytest.mark.parametrize("kind", ["client", "service", "broker"])
def test_closing_while_connections_break_leaves_the_context_working(kind: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SCENARIO), kind, str(ROUNDS)],
        capture_output=True,
        text=True,
        timeout=90,
        env=netcall_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"ok {ROUNDS}"
