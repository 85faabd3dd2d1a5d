"""The ``netcall`` command line, as a user runs it: real processes (``python -X dev -W error -m
netcall``) against a module served with ``netcall serve``. Every form of the command, and every
mistake a user can make: one line on stderr, a non-zero exit, no traceback (``-v`` shows it)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from conftest import ipc_url, netcall_env, tcp_url
from netcall import protocol as p

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
NETCALL = [sys.executable, "-X", "dev", "-W", "error", "-m", "netcall"]

MODULE = '''
import asyncio
import datetime
import time

notes = []


def add(a, b=0):
    """Add two numbers.

    Returns a + b.
    """
    return a + b


def echo(x):
    return x


def now():
    return {"when": datetime.datetime(2020, 1, 2, 3, 4, 5), "blob": b"\\x00\\x01", "t": (1, 2)}


def count(n):
    yield from range(n)


async def slow(seconds):
    print("slow started", flush=True)  # the tests wait for this line
    await asyncio.sleep(seconds)
    return "done"


def block(seconds):
    print("block started", flush=True)  # a plain function: it holds the loop as it sleeps
    time.sleep(seconds)
    return "done"


async def block_async(seconds):
    print("block_async started", flush=True)  # no await: it runs to its end where it is read
    time.sleep(seconds)
    return "done"


def note(message):
    notes.append(message)


def fail():
    raise ValueError("bad value")
'''


def netcall(
    *args: str, cwd: Path | None = None, stdin: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NETCALL, *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=cwd,
        env=netcall_env(),
        timeout=timeout,
        check=False,
    )


# -X dev turns on asyncio's debug mode, which logs callbacks slower than 0.1 s: on a busy
# machine that is timing, not the command's output.
SLOW_CALLBACK = re.compile(r"^.*WARNING asyncio: Executing <.*> took [\d.]+ seconds\n", re.M)


def one_line_error(done: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """The command failed with ``status`` and said why in one line, without a traceback."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    lines = SLOW_CALLBACK.sub("", done.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netcall"), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


class Served:
    def __init__(self, spec: str, cwd: Path, *options: str) -> None:
        self.url = tcp_url()
        self.proc = subprocess.Popen(
            [*NETCALL, "serve", spec, "--bind", self.url, *options],
            cwd=cwd,
            env=netcall_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(f"serving {spec} on {self.url}"), line + self.proc.stderr.read()

    def wait_for(self, line: str) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == line

    def call(self, *words: str) -> subprocess.Popen[str]:
        """``netcall URL WORDS...`` in a process of its own; once its method prints "METHOD
        started" on the service's stdout, returns the client process."""
        client = subprocess.Popen(
            [*NETCALL, self.url, *words],
            env=netcall_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.wait_for(f"{words[0]} started")
        return client

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 20) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=5)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    (path / "svcmod.py").write_text(MODULE)
    (path / "broken.py").write_text("import no_such_dependency_here\n")
    return path


@pytest.fixture(scope="module")
def served(workdir: Path) -> Iterator[Served]:
    server = Served("svcmod", workdir)
    yield server
    server.interrupt()
    status, _, err = server.finish()
    assert status == 0, err
    assert "Warning" not in err, err
    # the only tracebacks are the service's log of handlers that raised (fail())
    assert err.count("Traceback") == err.count(" raised ValueError") > 0, err


# -- calls ----------------------------------------------------------------------------------


def test_short_form_and_call(served: Served) -> None:
    assert netcall(served.url, "add", "1", "2").stdout == "3\n"
    done = netcall("call", served.url, "echo", '{"a": [1, "x"]}')
    assert done.returncode == 0 and done.stdout == '{"a": [1, "x"]}\n'
    assert netcall(served.url, "echo", "plain words").stdout == '"plain words"\n'
    assert netcall(served.url, "add", "1", "--kw", "b=41").stdout == "42\n"
    # options between the words
    assert netcall("call", served.url, "--timeout", "5", "add", "2", "3").stdout == "5\n"


def test_arguments_from_data_file_and_stdin(served: Served, tmp_path: Path) -> None:
    assert netcall(served.url, "add", "-d", "[1, 2]").stdout == "3\n"
    args = tmp_path / "args.json"
    args.write_text('{"a": 10, "b": 5}')
    assert netcall(served.url, "add", "-d", f"@{args}").stdout == "15\n"
    assert netcall(served.url, "add", "-d", "@-", stdin="[7, 8]").stdout == "15\n"
    both = '{"args": [1], "kwargs": {"b": 2}}'
    assert netcall(served.url, "add", "-d", both).stdout == "3\n"


def test_stream_prints_one_item_a_line(served: Served) -> None:
    assert netcall(served.url, "count", "3").stdout.split() == ["0", "1", "2"]


def test_json_output_renders_bytes_and_datetimes(served: Served) -> None:
    done = netcall(served.url, "now")
    assert done.stdout == '{"when": "2020-01-02T03:04:05", "blob": "AAE=", "t": [1, 2]}\n'
    raw = netcall(served.url, "now", "--raw").stdout
    assert "datetime.datetime(2020, 1, 2, 3, 4, 5)" in raw and "b'\\x00\\x01'" in raw


def test_oneway_returns_once_accepted(served: Served) -> None:
    done = netcall(served.url, "note", "hello", "--oneway")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""


def test_several_endpoints_skip_the_dead_ones(served: Served) -> None:
    dead = tcp_url()
    done = netcall("call", "--connect", dead, "--connect", served.url, "add", "1", "1")
    assert done.returncode == 0 and done.stdout == "2\n"
    assert f"skipping {dead}" in done.stderr


def test_methods_and_describe(served: Served) -> None:
    methods = netcall("methods", served.url).stdout.splitlines()
    assert "add(a, b=0)  -- Add two numbers." in methods and "count(n)" in methods
    done = netcall("describe", served.url, "add")
    assert done.stdout == "add(a, b=0)\n\nAdd two numbers.\n\nReturns a + b.\n"


def test_version_and_python_m(served: Served) -> None:
    from netcall import __version__

    done = netcall("--version")
    assert done.stdout.strip() == f"netcall {__version__}" and __version__.startswith("1.")


# -- mistakes -------------------------------------------------------------------------------


def test_remote_error_is_one_line_and_v_shows_both_tracebacks(served: Served) -> None:
    assert one_line_error(netcall(served.url, "fail")) == "netcall: ValueError: bad value"
    verbose = netcall("-v", served.url, "fail")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert "remote traceback" in verbose.stderr and 'raise ValueError("bad value")' in (
        verbose.stderr
    )


@pytest.mark.parametrize(
    ("args", "status", "expected"),
    [
        (["nope"], 1, "no method named 'nope'"),
        (["add", "1", "2", "3"], 1, "TypeError: bad arguments for 'add'"),
        (["add", "-d", "[1"], 2, "-d [1 is not valid JSON"),
        (["add", "-d", "@/no/such/file.json"], 2, "cannot read -d @/no/such/file.json"),
        (["add", "--kw", "oops"], 2, "--kw wants NAME=VALUE"),
        (["add", "--bogus"], 2, "unrecognized arguments: --bogus"),
        (["echo", "x", "--serializer", "json"], 1, "SerializerMismatchError"),
        (["slow", "5", "--timeout", "0.3"], 1, "no answer from tcp://"),
    ],
)
def test_call_mistakes(served: Served, args: list[str], status: int, expected: str) -> None:
    line = one_line_error(netcall(served.url, *args), status)
    assert expected in line
    if "--timeout" in args:
        assert "within 0.3 s to slow()" in line and "--timeout" in line


def test_endpoint_mistakes() -> None:
    start = time.monotonic()
    dead = tcp_url()
    line = one_line_error(netcall(dead, "echo", "1"))
    assert f"cannot reach {dead}" in line and "Connection refused" in line
    line = one_line_error(netcall("ipc:///tmp/netcall-no-such.ipc", "echo", "1"))
    assert "no socket file /tmp/netcall-no-such.ipc" in line
    assert "is not an endpoint" in one_line_error(netcall("tcp://nohost", "echo"), 2)
    assert "give the service's endpoint" in one_line_error(netcall("call", "echo"), 2)
    assert "missing METHOD" in one_line_error(netcall("call", dead), 2)
    assert "invalid choice" in one_line_error(netcall("frobnicate"), 2)
    assert time.monotonic() - start < 20  # no mistake waits for a timeout


# -- serve ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "options", "status", "expected"),
    [
        ("no_such_module", [], 1, "no module named 'no_such_module'"),
        ("svcmod:nope", [], 1, "svcmod has no attribute 'nope'"),
        ("broken", [], 1, "importing broken failed: ModuleNotFoundError"),
        ("missing.py", [], 1, "no file missing.py"),
        ("math:pi", [], 2, "math:pi is a float"),
        ("svcmod", ["--bind", "tcp://127.0.0.1"], 2, "is not an endpoint"),
        ("svcmod", ["--bind", "bogus"], 2, "is not an endpoint"),
    ],
)
def test_serve_mistakes(
    workdir: Path, spec: str, options: list[str], status: int, expected: str
) -> None:
    done = netcall("serve", spec, *(options or ["--bind", tcp_url()]), cwd=workdir)
    line = one_line_error(done, status)
    assert expected in line, line


def test_serve_needs_an_endpoint_and_a_free_port(workdir: Path, served: Served) -> None:
    assert "--bind" in one_line_error(netcall("serve", "svcmod", cwd=workdir), 2)
    line = one_line_error(netcall("serve", "svcmod", "--bind", served.url, cwd=workdir))
    assert line == f"netcall: cannot bind {served.url}: Address already in use"


def test_serve_a_built_service_refuses_options_it_cannot_take(workdir: Path) -> None:
    spec = str(ROOT / "examples" / "echo_service.py")
    done = netcall("serve", spec, "--bind", tcp_url(), "--max-concurrent", "2", cwd=workdir)
    assert "--max-concurrent apply only" in one_line_error(done, 2)


def test_serve_a_stdlib_module(tmp_path: Path) -> None:
    server = Served("random", tmp_path)
    try:
        assert netcall(server.url, "randint", "4", "4").stdout == "4\n"
        assert "randint(a, b)" in netcall("methods", server.url).stdout
    finally:
        server.interrupt()
        assert server.finish()[0] == 0


def test_serve_a_file_a_class_and_options(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "calc.py").write_text(
        textwrap.dedent(
            """
            import time

            class Calc:
                def square(self, x):
                    time.sleep(0.01)  # a blocking handler: --executor threads runs it aside
                    return x * x
            """
        )
    )
    options = ["--executor", "threads", "--max-concurrent", "4", "--log-level", "debug"]
    options += ["--serializer", "json", "--grace", "1"]
    server = Served(f"{tmp_path / 'calc.py'}:Calc", workdir, *options)
    try:
        assert netcall(server.url, "square", "7", "--serializer", "json").stdout == "49\n"
    finally:
        server.interrupt()
        status, _, err = server.finish()
    assert status == 0 and "Traceback" not in err, err


def test_serve_workers_take_every_spec_and_option(workdir: Path, tmp_path: Path) -> None:
    """`netcall serve SPEC --workers N` serves what `netcall serve SPEC` serves, built with the
    same options. Before, the workers took only an RPCService ("module has no attribute
    'service'") and --serializer, --executor and --max-concurrent were silently ignored."""
    (tmp_path / "where.py").write_text(
        textwrap.dedent(
            """
            import os
            import threading

            class Where:
                def pid(self):
                    return os.getpid()

                def thread(self):
                    return threading.current_thread().name
            """
        )
    )
    options = ["--workers", "2", "--serializer", "json", "--executor", "threads"]
    server = Served(f"{tmp_path / 'where.py'}:Where", workdir, *options, "--max-concurrent", "4")
    try:
        pids = set()
        for _ in range(40):  # (the broker spreads calls over both workers)
            done = netcall(server.url, "pid", "--serializer", "json")
            assert done.returncode == 0, done.stderr
            pids.add(int(done.stdout))
            if len(pids) == 2:
                break
        assert len(pids) == 2 and server.proc.pid not in pids
        done = netcall(server.url, "thread", "--serializer", "json")
        assert done.stdout.startswith('"netcall-handler'), done.stdout  # --executor threads
        line = one_line_error(netcall(server.url, "pid"))  # msgpack: not what they speak
        assert "SerializerMismatchError" in line, line
    finally:
        server.interrupt()
        status, _, err = server.finish()
    assert status == 0 and "Traceback" not in err, err
    module = Served("svcmod", workdir, "--workers", "1")  # a module's public functions
    try:
        assert netcall(module.url, "add", "2", "3").stdout == "5\n"
    finally:
        module.interrupt()
        assert module.finish()[0] == 0


def test_serve_workers_refuse_what_they_cannot_do(workdir: Path) -> None:
    done = netcall(
        "serve", "svcmod", "--workers", "2", "--bind", tcp_url(), "--connect", tcp_url(),
        cwd=workdir,
    )  # fmt: skip
    assert "--connect does not go with --workers" in one_line_error(done, 2)
    spec = str(ROOT / "examples" / "echo_service.py")  # a built service: its own options
    done = netcall(
        "serve", spec, "--workers", "1", "--bind", tcp_url(), "--max-concurrent", "2",
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 1, done
    assert "--max-concurrent apply only to what netcall serve builds" in done.stderr
    assert "the workers cannot load" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_ctrl_c_during_a_long_call_is_graceful_then_immediate(workdir: Path) -> None:
    server = Served("svcmod", workdir, "--grace", "1.5")
    try:
        client = server.call("slow", "20")
        start = time.monotonic()
        server.interrupt()
        status, _, err = server.finish()
        took = time.monotonic() - start
        assert status == 0 and 1.4 < took < 6, (took, err)
        assert "stopping, waiting up to 1.5 s for 1 call; Ctrl-C again to stop now" in err
        _, client_err = client.communicate(timeout=15)
        assert client.returncode == 1 and "ServiceStoppingError" in client_err
    finally:
        server.kill()

    server = Served("svcmod", workdir, "--grace", "30")
    try:
        client = server.call("slow", "20", "--timeout", "3")
        start = time.monotonic()
        server.interrupt()
        assert server.proc.stderr is not None
        assert "stopping, waiting up to 30 s for 1 call" in server.proc.stderr.readline()
        server.interrupt()
        status, _, err = server.finish()
        assert status == 130 and time.monotonic() - start < 5, err
        assert "stopping now" in err and "Traceback" not in err
        client.communicate(timeout=15)
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("executor", "method"),
    [("inline", "block"), ("threads", "block"), ("inline", "block_async")],
)
def test_ctrl_c_during_a_plain_function_that_holds_on(
    workdir: Path, executor: str, method: str
) -> None:
    """A plain function served as it is runs on the loop (or in a handler thread) and cannot
    be cancelled, nor can an ``async def`` one with no await: the first Ctrl-C still says so
    at once, and the grace still bounds the stop (the function is interrupted where it is, or
    its thread left behind); the caller gets ServiceStoppingError."""
    options = ["--executor", "threads"] if executor == "threads" else []
    server = Served("svcmod", workdir, "--grace", "1", *options)
    try:
        client = server.call(method, "30")
        start = time.monotonic()
        server.interrupt()
        assert server.proc.stderr is not None
        line = server.proc.stderr.readline()
        assert "stopping, waiting up to 1 s for 1 call; Ctrl-C again to stop now" in line
        assert time.monotonic() - start < 1.0
        status, _, err = server.finish()
        took = time.monotonic() - start
        assert status == 0 and 0.9 < took < 6, (took, err)
        assert "Traceback" not in err
        if executor == "threads":
            assert "leaving 1 handler thread still running" in err
        _, client_err = client.communicate(timeout=15)
        assert client.returncode == 1 and "ServiceStoppingError" in client_err, client_err
    finally:
        server.kill()


def test_the_grace_counts_from_the_ctrl_c_while_a_plain_function_holds_on(workdir: Path) -> None:
    """The graceful stop for the other calls starts only once the held function lets go of the
    loop: it gets what is left of the grace, not a whole one more."""
    server = Served("svcmod", workdir, "--grace", "2")
    try:
        clients = [server.call(method, "30") for method in ("slow", "block")]
        start = time.monotonic()
        server.interrupt()
        status, _, err = server.finish()
        took = time.monotonic() - start
        assert status == 0 and 1.9 < took < 3.9, (took, err)
        assert "for 2 calls" in err
        for client in clients:
            _, client_err = client.communicate(timeout=15)
            assert client.returncode == 1 and "ServiceStoppingError" in client_err, client_err
    finally:
        server.kill()


def test_a_second_ctrl_c_interrupts_a_plain_function_that_holds_on(workdir: Path) -> None:
    server = Served("svcmod", workdir, "--grace", "30")
    try:
        client = server.call("block", "30")
        start = time.monotonic()
        server.interrupt()
        assert server.proc.stderr is not None
        assert "stopping, waiting up to 30 s for 1 call" in server.proc.stderr.readline()
        server.interrupt()
        status, _, err = server.finish()
        assert status == 130 and time.monotonic() - start < 5, err
        assert "stopping now" in err and "Traceback" not in err
        _, client_err = client.communicate(timeout=15)
        assert client.returncode == 1 and "ServiceStoppingError" in client_err, client_err
    finally:
        server.kill()


def test_ipc_endpoint(workdir: Path, tmp_path: Path) -> None:
    url = ipc_url(tmp_path)
    proc = subprocess.Popen(
        [*NETCALL, "serve", "svcmod", "--bind", url],
        cwd=workdir,
        env=netcall_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("serving")
        assert netcall(url, "add", "2", "2").stdout == "4\n"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_serve_connects_out_to_a_broker(workdir: Path) -> None:
    frontend, backend = tcp_url(), tcp_url()
    broker = subprocess.Popen(
        [*NETCALL, "broker", "--frontend", frontend, "--backend", backend, "--stats-every", "0"],
        env=netcall_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    service = None
    try:
        assert broker.stdout is not None and broker.stdout.readline().startswith("broker:")
        service = subprocess.Popen(
            [*NETCALL, "serve", "svcmod", "--connect", backend],
            cwd=workdir,
            env=netcall_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert service.stdout is not None
        assert service.stdout.readline().startswith(f"serving svcmod on {backend}")
        deadline = time.monotonic() + 20
        while True:  # until the service has announced itself to the broker
            done = netcall(frontend, "add", "2", "3", "--timeout", "2")
            if done.returncode == 0 or time.monotonic() > deadline:
                break
        assert done.stdout == "5\n", done.stderr
    finally:
        for proc in (service, broker):
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=15)
                assert proc.returncode == 0 and "Warning" not in err, err


def test_broker_help_shows_the_bounds_and_their_defaults() -> None:
    done = netcall("broker", "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "--max-queued N" in text and "is cut off (default 10000)" in text
    assert "--max-queued-bytes N bytes that may wait so (default 4194304)" in text


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-queued", "0"), ("--max-queued-bytes", "-1"), ("--max-queued", "x")]
)
def test_broker_refuses_bounds_that_are_not_positive(flag: str, value: str) -> None:
    done = netcall("broker", "--frontend", tcp_url(), "--backend", tcp_url(), flag, value)
    line = one_line_error(done, 2)
    assert f"argument {flag}: must be a positive integer, got '{value}'" in line, line


@pytest.mark.parametrize("bound", [["--max-queued", "5"], ["--max-queued-bytes", "1000"]])
def test_broker_cuts_off_a_client_at_the_bounds_it_is_given(
    tmp_path: Path, bound: list[str]
) -> None:
    # A client that reads nothing, sent 20,000 answers: its pipe (10,001 messages, and the ipc
    # socket's kernel buffers) fills, then the rest waits at the broker. The defaults (10,000
    # messages, 4 MiB) would hold them all; the bound given cuts it off.
    front, back = ipc_url(tmp_path), ipc_url(tmp_path)
    args = ["broker", "--frontend", front, "--backend", back, "--stats-every", "0.2", *bound]
    broker = subprocess.Popen(
        [*NETCALL, *args],
        env=netcall_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ctx = zmq.Context()
    client = ctx.socket(zmq.DEALER)
    try:
        assert broker.stdout is not None and broker.stdout.readline().startswith("broker:")
        client.setsockopt(zmq.LINGER, 0)
        client.setsockopt(zmq.RCVHWM, 1)
        client.connect(front)
        for i in range(20_000):  # each answered at once (MethodNotFound, or Busy)
            client.send_multipart(p.Call(i + 1, "nope", "msgpack", b"\x90").to_frames())
        deadline = time.monotonic() + 30
        line = ""
        while "clients_cut_off=" not in line:  # a stats line every 0.2 s
            assert time.monotonic() < deadline, line
            line = broker.stdout.readline()
            assert line, broker.stderr.read() if broker.stderr else ""
    finally:
        client.close()
        ctx.term()
        broker.send_signal(signal.SIGINT)
        _, err = broker.communicate(timeout=15)
    assert broker.returncode == 0 and "cut off client" in err, err


@pytest.mark.parametrize(
    ("flag", "value", "what"),
    [
        ("--heartbeat", "0", "a positive number"),
        ("--heartbeat", "nan", "a positive number"),
        ("--max-queue", "-1", "a non-negative integer"),
        ("--stats-every", "-2", "a non-negative number"),
    ],
)
def test_broker_refuses_other_numbers_out_of_range(flag: str, value: str, what: str) -> None:
    # A usage error (exit 2, one line), not a ValueError from Broker() or a broker that runs
    # with a negative queue.
    done = netcall("broker", "--frontend", tcp_url(), "--backend", tcp_url(), flag, value)
    line = one_line_error(done, 2)
    assert f"argument {flag}: must be {what}, got '{value}'" in line, line
