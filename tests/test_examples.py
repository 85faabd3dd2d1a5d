"""The examples, run as real processes against each other across adapters (a gevent client
against a Tornado service, and so on), on endpoints given on their command lines, all under
``python -X dev -W error``: a ResourceWarning or a DeprecationWarning fails them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ipc_url, netcall_env, tcp_url

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
STRICT = [sys.executable, "-X", "dev", "-W", "error"]

# Run a script as __main__ with Ctrl-C raising KeyboardInterrupt, even when this test run
# inherited an ignored SIGINT (as background jobs do).
RUN_SCRIPT = (
    "import runpy, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


class Service:
    def __init__(self, script: str, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self.proc = subprocess.Popen(
            [*STRICT, "-c", RUN_SCRIPT, str(EXAMPLES / script), *endpoints],
            env=netcall_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.first_line = self.proc.stdout.readline()
        assert self.first_line.startswith("serving on"), self.first_line

    def stop(self) -> tuple[str, str]:
        """Ctrl-C the service; return the rest of its stdout and its stderr."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=15)
        assert self.proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        assert "Traceback" not in err and "Warning" not in err, err
        assert time.monotonic() - start < 5
        return out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


@pytest.fixture
def start_service() -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(script: str, *endpoints: str) -> Service:
        svc = Service(script, list(endpoints))
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.kill()


def run_client(script: str, *endpoints: str) -> list[str]:
    proc = subprocess.run(
        [*STRICT, str(EXAMPLES / script), *endpoints],
        env=netcall_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.parametrize(
    "service", ["tornado_echo_service.py", "gevent_echo_service.py", "echo_service.py"]
)
@pytest.mark.parametrize(
    "client", ["gevent_echo_client.py", "tornado_echo_client.py", "echo_client.py"]
)
def test_echo_across_adapters(
    service: str, client: str, start_service: Callable[..., Service], tmp_path: Path
) -> None:
    tcp, ipc = tcp_url(), ipc_url(tmp_path)
    expected = ["Hi there", "Hello World"]
    if client == "echo_client.py":  # the asyncio client also reads a stream
        expected.append("[0, 1, 2, 3, 4]")
    svc = start_service(service, tcp, ipc)
    assert run_client(client, tcp, ipc) == expected
    assert run_client(client, ipc) == expected  # each endpoint alone works too
    svc.stop()


def test_demo_is_clean_under_dev_mode() -> None:
    start = time.monotonic()
    done = subprocess.run(
        [*STRICT, str(EXAMPLES / "demo.py")],
        env=netcall_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "count(5) -> [0, 1, 2, 3, 4]" in done.stdout
    assert time.monotonic() - start < 20


def test_generator_example(start_service: Callable[..., Service]) -> None:
    url = tcp_url()
    svc = start_service("gevent_generator_service.py", url)
    assert run_client("gevent_generator_client.py", url) == ["1", "None", "2", "TypeError('spam')"]
    assert svc.proc.stdout is not None
    # the client dropped its generator: the service ran the generator's finally block
    assert [svc.proc.stdout.readline().rstrip() for _ in range(2)] == [
        "Execution starts when 'next()' is called for the first time.",
        "Don't forget to clean up when 'close()' is called.",
    ]
    svc.stop()
