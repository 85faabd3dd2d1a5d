"""Migrating from netcall 0.4.2 (2014): its spellings, on every adapter.

- any pyzmq context (``zmq.green``, ``zmq.asyncio``, plain) works from every adapter, with
  gevent patched and unpatched: each combination in a fresh process, which must neither hang
  nor crash (0.4.2's gevent setup passed ``context=zmq.green.Context()``);
- the 2014 names (``GreenRPCService(green_env="gevent")``, ``netcall.threading``,
  ``shutdown()``, ``procedures``), against each kind of service of the shared adapter suite;
- an unknown method is a ``NotImplementedError``; remote generators are real generators;
- ``register_object`` skips reserved and private names, ``register`` refuses reserved ones.
"""

from __future__ import annotations

import gc
import logging
import textwrap
import types
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
import zmq.green

from _adapter_helpers import SERVICE_KINDS, ServiceThread, in_subprocess_header, run_python
from _adapter_helpers import wait_for as wait_until
from _context_scenarios import ADAPTERS, CONTEXTS
from conftest import netcall_env, tcp_url
from netcall import (
    RESERVED_NAMES,
    MethodNotFoundError,
    RemoteRPCError,
    RPCClient,
    RPCService,
    RPCTimeoutError,
)
from netcall.green import GeventRPCService, GreenRPCClient, GreenRPCService
from netcall.sync import SyncRPCClient
from netcall.threading import ThreadingRPCClient, ThreadingRPCService
from netcall.tornado import TornadoRPCClient, TornadoRPCService

pytestmark = pytest.mark.timeout(60)

SERVICE_CLASSES = [RPCService, TornadoRPCService, GreenRPCService, ThreadingRPCService]


# ------------------------------------------------------------------ contexts x adapters


@pytest.mark.parametrize("kind", sorted(CONTEXTS))
@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patched"])
def test_any_context_from_any_adapter(patched: bool, adapter: str, kind: str) -> None:
    code = in_subprocess_header(patched)
    code += f"import _context_scenarios\n_context_scenarios.run({adapter!r}, {kind!r})\n"
    proc = run_python(code, env=netcall_env(), timeout=45)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_the_users_context_is_kept() -> None:
    """``service.context`` stays what the user passed; netcall's sockets share its libzmq
    context, so ``inproc://`` works between them (and the user's own sockets)."""
    ctx = zmq.green.Context()
    svc = GreenRPCService(context=ctx)
    client = GreenRPCClient(context=ctx, timeout=5.0)
    try:
        assert svc.context is ctx
        svc.register(lambda: "pong", name="ping")
        svc.bind("inproc://netcall-migration")
        svc.start()
        client.connect("inproc://netcall-migration")
        assert client.ping() == "pong"
    finally:
        client.shutdown()
        svc.shutdown()
        ctx.term()


# ------------------------------------------------------------------ the 2014 spellings


@pytest.fixture(params=SERVICE_KINDS)
def remote(request: pytest.FixtureRequest, ctx: Any) -> Iterator[ServiceThread]:
    """A service of each kind of the shared suite (the 2014 ThreadingRPCService among them)."""
    svc = ServiceThread(request.param, ctx, tcp_url()).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(params=["green", "threading", "sync"])
def client(request: pytest.FixtureRequest, remote: ServiceThread) -> Iterator[Any]:
    """A blocking client as 0.4.2 code makes it: the gevent one on a ``zmq.green`` context."""
    ctx: Any = None
    if request.param == "green":
        ctx = zmq.green.Context()
        cli: Any = GreenRPCClient(context=ctx, green_env="gevent", timeout=5.0)
    elif request.param == "threading":
        cli = ThreadingRPCClient(context=remote.ctx, executor=None, timeout=5.0)
    else:
        cli = SyncRPCClient(context=remote.ctx, timeout=5.0)
    cli.connect(remote.url)
    try:
        yield cli
    finally:
        cli.shutdown()
        if ctx is not None:
            ctx.term()


def test_unknown_method_is_not_implemented(client: Any) -> None:
    for name in ("no_such", "start", "shutdown", "_private"):
        with pytest.raises(NotImplementedError, match=repr(name)) as info:
            client.call(name)
        assert isinstance(info.value, RemoteRPCError)
        assert isinstance(info.value, MethodNotFoundError)
        # str() reads like a remote builtin NotImplementedError, in 0.4.2's words (its suite
        # matched them), and still says what netcall found.
        assert str(info.value) == (
            f"NotImplementedError: Unregistered procedure {name!r} (no method named {name!r})"
        )
        assert info.value.type_name == "netcall.MethodNotFound"
        assert info.value.message == f"no method named {name!r}"
        assert info.value.method == name
    assert client.echo("still there") == "still there"


def test_remote_generators_are_real_generators(client: Any, remote: ServiceThread) -> None:
    gen = client.echo_gen(1)
    assert isinstance(gen, types.GeneratorType)
    assert next(gen) == 1
    assert gen.send(2) == 2
    assert gen.throw(TypeError, "spam") == "caught TypeError: spam"
    gen.close()  # waits until the service's finally ran
    assert remote.closed == ["echo_gen"]
    with pytest.raises(StopIteration):
        next(gen)

    counter = client.count(3)
    assert isinstance(counter, types.GeneratorType)
    assert list(counter) == [0, 1, 2]
    assert list(client.sync_count(300)) == list(range(300))  # prefetches after a few steps


def test_dropped_generator_closes_remotely(client: Any, remote: ServiceThread) -> None:
    gen = client.echo_gen("x")
    assert next(gen) == "x"
    assert remote.active_streams == 1
    del gen
    gc.collect()
    assert wait_until(lambda: remote.closed == ["echo_gen"]), "the remote finally did not run"
    assert wait_until(lambda: remote.active_streams == 0)


def test_send_after_prefetching_is_refused(client: Any, remote: ServiceThread) -> None:
    gen = client.sync_count(1000)
    assert [next(gen) for _ in range(100)] == list(range(100))  # switched to prefetching
    with pytest.raises(RuntimeError, match="prefetch"):
        gen.send(1)
    assert wait_until(lambda: remote.active_streams == 0)


def test_timeout_and_shutdown(client: Any) -> None:
    with pytest.raises(RPCTimeoutError):
        client.call("slow", 5, timeout=0.2)
    client.shutdown()
    client.shutdown()  # twice is fine
    assert client.closed


# ------------------------------------------------------------------ services


@pytest.mark.parametrize("cls", SERVICE_CLASSES, ids=lambda c: c.__name__)
def test_procedures_is_a_read_only_view(cls: type[RPCService], ctx: Any) -> None:
    svc = cls(context=ctx)
    try:
        assert svc.procedures == {}

        def double(x: int) -> int:
            return 2 * x

        svc.register(double)
        svc.register(double, name="twice")
        assert svc.procedures == {"double": double, "twice": double}
        with pytest.raises(TypeError):
            svc.procedures["x"] = double  # type: ignore[index]
        with pytest.raises((TypeError, AttributeError)):
            svc.procedures.pop("double")  # type: ignore[attr-defined]
        assert "double" in svc.procedures
    finally:
        svc.shutdown()


class Module:
    """Like a module registered whole: some names are reserved, some private."""

    def start(self) -> str:
        return "a module-level start()"

    def shutdown(self) -> None:
        pass

    def _private(self) -> None:
        pass

    def value(self) -> int:
        return 12


@pytest.mark.parametrize("cls", SERVICE_CLASSES, ids=lambda c: c.__name__)
def test_register_object_skips_reserved_names(
    cls: type[RPCService], ctx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    svc = cls(context=ctx)
    try:
        with caplog.at_level(logging.DEBUG, logger="netcall"):
            assert svc.register_object(Module()) == ["value"]
        assert sorted(svc.procedures) == ["value"]
        assert "start" in caplog.text and "shutdown" in caplog.text  # what was skipped
        assert svc.register_object(Module(), namespace="mod") == [
            "mod.shutdown",
            "mod.start",
            "mod.value",
        ]
        reserved_042 = {"register", "register_object", "proc", "task", "start", "stop", "serve"}
        reserved_042 |= {"shutdown", "reset", "connect", "bind", "bind_ports"}
        for name in reserved_042 | {"procedures"}:
            assert name in RESERVED_NAMES
            with pytest.raises(ValueError, match=f"^{name} is a reserved function name"):
                svc.register(lambda: None, name=name)  # 0.4.2's wording
        for name in ("_private", "_SEND"):
            with pytest.raises(ValueError, match=f"^{name} is a reserved function name"):
                svc.register(lambda: None, name=name)
    finally:
        svc.shutdown()


@pytest.mark.parametrize("cls", [GreenRPCService, GreenRPCClient])
def test_green_env(cls: Any, ctx: Any) -> None:
    cls(context=ctx, green_env="gevent").shutdown()
    cls(context=ctx, green_env=None).shutdown()
    for env in ("eventlet", "greenhouse", "threading"):
        with pytest.raises(ValueError, match=f"{env!r}.*not supported"):
            cls(context=ctx, green_env=env)


def test_threading_service_start_returns_serve_blocks(ctx: Any) -> None:
    import threading

    svc = ThreadingRPCService(context=ctx)
    seen: list[str] = []

    @svc.register
    def where() -> str:
        seen.append(threading.current_thread().name)
        return "ok"

    url = tcp_url()
    svc.bind(url)
    assert svc.start() is None  # returns at once
    serving = threading.Thread(target=svc.serve)
    serving.start()  # serve() blocks until stop()
    with ThreadingRPCClient(context=ctx, timeout=5.0) as cli:
        cli.connect(url)
        assert cli.where() == "ok"
    assert seen and seen[0].startswith("netcall-handler")  # in the service's thread pool
    assert serving.is_alive()
    svc.stop()
    serving.join(5)
    assert not serving.is_alive()


def test_a_threading_handler_that_ends_after_the_service_is_quiet() -> None:
    """Under monkey-patching, a ThreadingRPCService's handler still running in its pool when
    the service closes (and its loop with it) ends without a traceback: nobody waits for it."""
    code = in_subprocess_header(True) + textwrap.dedent(
        """
        import threading, time
        from conftest import tcp_url
        from netcall import RPCTimeoutError
        from netcall.threading import ThreadingRPCClient, ThreadingRPCService

        svc = ThreadingRPCService()
        running = threading.Event()

        @svc.register
        def slow():
            running.set()
            time.sleep(0.5)
            return "late"

        url = tcp_url()
        svc.bind(url)
        svc.start()
        with ThreadingRPCClient(timeout=0.2) as cli:
            cli.connect(url)
            try:
                cli.slow()
            except RPCTimeoutError:
                pass
        assert running.wait(5)
        svc.shutdown()
        time.sleep(1.0)  # the handler ends after the service and its loop are gone
        print("OK")
        """
    )
    proc = run_python(code, env=netcall_env(), timeout=45)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr, proc.stderr


def test_a_threading_service_closed_under_gevent_closes_its_streams() -> None:
    """Under monkey-patching, ThreadingRPCService.close() with a stream open runs the
    generator's finally block (its close went to a greenlet that found the pool shut down,
    and was lost with a traceback)."""
    code = in_subprocess_header(True) + textwrap.dedent(
        """
        import time
        from conftest import tcp_url
        from netcall.threading import ThreadingRPCClient, ThreadingRPCService

        closed = []
        svc = ThreadingRPCService()

        @svc.register
        def numbers(n):
            try:
                for i in range(n):
                    time.sleep(0.01)
                    yield i
            finally:
                closed.append(True)

        url = tcp_url()
        svc.bind(url)
        svc.start()
        with ThreadingRPCClient(timeout=5) as cli:
            cli.connect(url)
            gen = cli.numbers(1000)
            assert (next(gen), next(gen)) == (0, 1)
            svc.close()
            deadline = time.monotonic() + 5
            while not closed and time.monotonic() < deadline:
                time.sleep(0.01)
            assert closed, "the generator's finally did not run"
        print("OK")
        """
    )
    proc = run_python(code, env=netcall_env(), timeout=45)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_every_client_and_service_has_shutdown(ctx: Any) -> None:
    for cls in (RPCClient, TornadoRPCClient, SyncRPCClient, GreenRPCClient, ThreadingRPCClient):
        cli = cls(context=ctx)
        cli.shutdown()
        assert cli.closed
    for svc_cls in (*SERVICE_CLASSES, GeventRPCService):
        svc = svc_cls(context=ctx)
        svc.shutdown()
        assert svc.closed
