"""The examples, run as real processes against each other across adapters (a gevent client
against a Tornado service, and so on), on endpoints given on their command lines."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ipc_url, netcall_env, tcp_url

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

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
            [sys.executable, "-c", RUN_SCRIPT, str(EXAMPLES / script), *endpoints],
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
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=15)
        assert self.proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        assert "Traceback" not in err, err
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
        [sys.executable, str(EXAMPLES / script), *endpoints],
        env=netcall_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout.splitlines()


@pytest.mark.parametrize(
    "service", ["tornado_echo_service.py", "gevent_echo_service.py", "echo_service.py"]
)
@pytest.mark.parametrize("client", ["gevent_echo_client.py", "tornado_echo_client.py"])
def test_echo_across_adapters(
    service: str, client: str, start_service: Callable[..., Service], tmp_path: Path
) -> None:
    tcp, ipc = tcp_url(), ipc_url(tmp_path)
    # the asyncio echo_service.py takes one endpoint
    endpoints = [tcp] if service == "echo_service.py" else [tcp, ipc]
    svc = start_service(service, *endpoints)
    assert run_client(client, *endpoints) == ["Hi there", "Hello World"]
    if len(endpoints) > 1:  # each endpoint alone works too
        assert run_client(client, ipc) == ["Hi there", "Hello World"]
    svc.stop()


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
