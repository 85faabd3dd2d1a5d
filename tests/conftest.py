"""Shared fixtures for netcall's behavioural tests.

Every test gets its own ZeroMQ context (``ctx``), terminated with a timeout: a socket left open
by the library or a test makes that test fail instead of hanging the suite. Services and clients
made through the ``make_service`` / ``make_client`` factories (and the ``service`` / ``client``
pair built on them) are always stopped and closed, even when the test fails.

``endpoint`` is parametrised over tcp, ipc and inproc; tests that take it (directly, or through
``service`` / ``client``) run once per transport. Both ends always share ``ctx`` so inproc works.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import zmq

try:  # the suite runs against the installed package (nox) or the checkout's src/ (plain pytest)
    import netcall  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the suite is run
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from netcall import RPCClient, RPCService

TESTS_DIR = Path(__file__).resolve().parent

# A runner started in the background by a shell without job control (``bash .ci/run &``)
# ignores SIGINT, and the processes the tests start would inherit that: the Ctrl-C tests
# (a service stopped with SIGINT) would then wait for a stop that never comes. With a
# handler here, children start with SIGINT at its default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
CTX_TERM_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0

_ipc_counter = itertools.count()


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_url() -> str:
    return f"tcp://127.0.0.1:{free_tcp_port()}"


def ipc_url(tmp_path: Path) -> str:
    # ipc paths are limited to ~107 bytes; pytest's tmp_path can be long.
    path = tmp_path / f"nc{next(_ipc_counter)}.sock"
    if len(str(path)) > 100:
        path = Path("/tmp") / f"netcall-test-{uuid.uuid4().hex[:12]}.sock"
    return f"ipc://{path}"


def inproc_url() -> str:
    return f"inproc://netcall-test-{uuid.uuid4().hex}"


def netcall_env() -> dict[str, str]:
    """Environment for a subprocess that must import the same netcall as this test run."""
    import netcall as _nc

    src = str(Path(_nc.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ------------------------------------------------------------------------- context


@pytest.fixture
def ctx() -> Any:
    """A fresh zmq.Context per test; terminated with a timeout at teardown."""
    context = zmq.Context()
    yield context
    gc.collect()  # finalisers of dropped generator proxies / clients may close sockets
    done = threading.Event()

    def term() -> None:
        context.term()
        done.set()

    t = threading.Thread(target=term, name="ctx-term", daemon=True)
    t.start()
    if not done.wait(CTX_TERM_TIMEOUT):
        leaked = [s for s in list(getattr(context, "_sockets", ())) if not s.closed]
        context.destroy(linger=0)
        t.join(2)
        pytest.fail(
            f"zmq context did not terminate within {CTX_TERM_TIMEOUT}s: "
            f"{len(leaked)} socket(s) left open ({[zmq.Socket.__repr__(s) for s in leaked]})"
        )


# ------------------------------------------------------------------------- endpoints


@pytest.fixture
def zsockets(ctx: Any) -> Any:
    """``zsockets(zmq.DEALER)`` -> a plain socket on the test's context (LINGER 0), closed
    at teardown."""
    made: list[zmq.Socket[Any]] = []

    def make(kind: int) -> zmq.Socket[Any]:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        made.append(sock)
        return sock

    yield make
    for s in made:
        s.close(0)


@pytest.fixture(params=["tcp", "ipc", "inproc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def endpoint(transport: str, tmp_path: Path) -> str:
    """A unique, unused endpoint on each transport."""
    if transport == "tcp":
        return tcp_url()
    if transport == "ipc":
        return ipc_url(tmp_path)
    return inproc_url()


@pytest.fixture
def make_url(tmp_path: Path) -> Callable[[str], str]:
    """``make_url("tcp" | "ipc" | "inproc")`` -> a fresh endpoint."""

    def make(kind: str = "tcp") -> str:
        if kind == "tcp":
            return tcp_url()
        if kind == "ipc":
            return ipc_url(tmp_path)
        if kind == "inproc":
            return inproc_url()
        raise ValueError(kind)

    return make


# ------------------------------------------------------------------------- services / clients


async def _stop_service(svc: RPCService) -> None:
    try:
        await asyncio.wait_for(svc.stop(grace=0), STOP_TIMEOUT)
    except BaseException:
        svc.close()
        raise
    finally:
        if not svc.closed:  # belt and braces: never leave a socket to block ctx.term()
            svc.close()


@pytest.fixture
async def make_service(ctx: Any) -> AsyncIterator[Callable[..., RPCService]]:
    """Factory: ``make_service(**kwargs)`` -> an RPCService on the test's context (not started).

    Every service made is stopped (grace 0) and closed at teardown.
    """
    made: list[RPCService] = []

    def make(*args: Any, cls: type[RPCService] = RPCService, **kwargs: Any) -> RPCService:
        kwargs.setdefault("context", ctx)
        svc = cls(*args, **kwargs)
        made.append(svc)
        return svc

    yield make
    errors = []
    for svc in reversed(made):
        try:
            await _stop_service(svc)
        except Exception as exc:  # report after closing everything
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
async def make_client(ctx: Any) -> AsyncIterator[Callable[..., RPCClient]]:
    """Factory: ``make_client(**kwargs)`` -> an RPCClient on the test's context (timeout 5 s by
    default, so a broken library fails a test instead of hanging it). Closed at teardown."""
    made: list[RPCClient] = []

    def make(*args: Any, **kwargs: Any) -> RPCClient:
        kwargs.setdefault("context", ctx)
        kwargs.setdefault("timeout", 5.0)
        cli = RPCClient(*args, **kwargs)
        made.append(cli)
        return cli

    yield make
    for cli in reversed(made):
        cli.close()
    # let the loop run callbacks scheduled by close() before it is torn down
    await asyncio.sleep(0)


def register_basics(svc: RPCService) -> None:
    """A few handlers most tests use."""

    @svc.register
    async def echo(x: Any = None) -> Any:
        return x

    @svc.register
    def add(a: Any, b: Any) -> Any:
        return a + b

    @svc.register
    async def sleep(seconds: float, result: Any = None) -> Any:
        await asyncio.sleep(seconds)
        return result

    @svc.register
    async def count(n: int) -> Any:
        for i in range(n):
            yield i


@pytest.fixture
async def service(make_service: Callable[..., RPCService], endpoint: str) -> RPCService:
    """A started service bound to ``endpoint`` (each transport), with :func:`register_basics`."""
    svc = make_service()
    register_basics(svc)
    svc.bind(endpoint)
    svc.start()
    return svc


@pytest.fixture
async def client(
    make_client: Callable[..., RPCClient], service: RPCService, endpoint: str
) -> RPCClient:
    """A client connected to ``service``."""
    cli = make_client()
    cli.connect(endpoint)
    return cli
