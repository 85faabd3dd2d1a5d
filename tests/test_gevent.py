"""gevent, with and without ``monkey.patch_all()``: each case runs in its own process (see
``_gevent_scenarios.py``), since patching cannot be undone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from _adapter_helpers import TESTS_DIR, in_subprocess_header, run_python
from conftest import netcall_env

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["plain", "patched"])
def patched(request: pytest.FixtureRequest) -> bool:
    return request.param == "patched"


def scenario(name: str, patched: bool) -> str:
    code = in_subprocess_header(patched) + f"import _gevent_scenarios\n_gevent_scenarios.{name}()\n"
    if patched:
        code += "from gevent import monkey\nassert monkey.is_module_patched('threading')\n"
    return code


@pytest.mark.parametrize(
    "name",
    [
        "concurrency",
        "generators",
        "timeouts",
        "start_and_serve",
        "ctrl_c_in_a_handler",
        "greenlets_while_a_thread_runs_the_loop",
        "large_payloads",
    ],
)
def test_scenario(name: str, patched: bool) -> None:
    proc = run_python(scenario(name, patched), env=netcall_env(), timeout=45)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture
def wsgi_server(patched: bool) -> Iterator[int]:
    """The wsgi_server scenario in its own process; yields its HTTP port."""
    proc = subprocess.Popen(
        [sys.executable, "-c", scenario("wsgi_server", patched)],
        cwd=TESTS_DIR,
        env=netcall_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line + proc.stderr.read() if proc.stderr else line
        yield int(line.split()[1])
        urllib.request.urlopen(f"http://127.0.0.1:{int(line.split()[1])}/quit", timeout=5).read()
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        assert out.rstrip().endswith("OK"), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


def test_pywsgi_server_calling_netcall(wsgi_server: int) -> None:
    """Concurrent HTTP requests from a real HTTP client (urllib, in threads of this process)
    are served concurrently by handlers that each make a 0.3 s netcall call."""
    n = 30
    bodies: dict[int, str] = {}
    errors: list[BaseException] = []

    def get(i: int) -> None:
        try:
            url = f"http://127.0.0.1:{wsgi_server}/{i}"
            with urllib.request.urlopen(url, timeout=10) as resp:
                bodies[i] = resp.read().decode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=get, args=(i,)) for i in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    elapsed = time.monotonic() - start
    assert not errors, errors
    assert bodies == {i: str(i) for i in range(n)}
    assert elapsed < 3, f"{n} requests of 0.3 s took {elapsed:.2f} s"
