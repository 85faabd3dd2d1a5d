"""The blocking client (netcall.sync): threads sharing one client, generators as plain
generators, timeouts, closing, interpreter exit and fork()."""

from __future__ import annotations

import contextlib
import gc
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from _adapter_helpers import ServiceThread, run_python, wait_for
from conftest import netcall_env, tcp_url
from netcall import (
    ClientClosedError,
    MethodNotFoundError,
    RPCTimeoutError,
    SerializationError,
    _bridge,
)
from netcall.sync import SyncRPCClient

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def remote(ctx: Any) -> Iterator[ServiceThread]:
    """An asyncio service in its own thread."""
    svc = ServiceThread("asyncio", ctx, tcp_url()).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def client(ctx: Any, remote: ServiceThread) -> Iterator[SyncRPCClient]:
    cli = SyncRPCClient(context=ctx, timeout=5.0)
    cli.connect(remote.url)
    try:
        yield cli
    finally:
        cli.close()


def test_threads_share_one_client(client: SyncRPCClient) -> None:
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(2):
                results.append(client.slow(0.3, (n, i)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - start
    assert not errors
    assert sorted(results) == [(n, i) for n in range(16) for i in range(2)]
    assert elapsed < 2.0  # 32 x 0.3 s; each thread's two calls take 0.6 s


def test_calls_and_options(client: SyncRPCClient, remote: ServiceThread) -> None:
    assert client.echo("hi") == "hi"
    assert client.call("add", 1, 2) == 3
    assert client.math.mul(3, 4) == 12
    assert client.with_options(timeout=1).call("echo", 7) == 7
    assert client.with_options(timeout=1).pair(1, b=3) == [1, 3]
    assert client.connected == {remote.url}
    assert client.timeout == 5.0
    assert client.pending == 0
    assert "SyncRPCClient" in repr(client)


def test_failures_before_sending_leave_nothing_pending(client: SyncRPCClient) -> None:
    """A call is started on the loop without a task: what fails before it is sent reaches the
    caller, and nothing stays recorded."""
    assert client.echo("warm") == "warm"  # later calls take the path without a task
    with pytest.raises(SerializationError):
        client.echo(object())
    with pytest.raises(ValueError):
        client.with_options(metadata={"bad key": "x"}).echo(1)
    with pytest.raises(MethodNotFoundError):
        client.no_such_method()
    assert client.with_options(oneway=True).echo(1) is None
    assert client.pending == 0
    assert client.echo("still fine") == "still fine"


def test_generators_are_plain_generators(client: SyncRPCClient, remote: ServiceThread) -> None:
    gen = client.echo_gen(1)
    assert isinstance(gen, types.GeneratorType)
    assert next(gen) == 1
    assert next(gen) is None
    assert gen.send(2) == 2
    assert gen.throw(TypeError, "spam") == "caught TypeError: spam"
    assert gen.throw(ValueError("v")) == "caught ValueError: v"
    gen.close()
    assert remote.closed == ["echo_gen"]
    with pytest.raises(StopIteration):
        gen.send(1)

    assert [x * 2 for x in client.count(4)] == [0, 2, 4, 6]
    with contextlib.closing(client.count(10)) as counter:  # a real generator
        assert next(counter) == 0
    assert wait_for(lambda: "count" in remote.closed)
    assert wait_for(lambda: remote.active_streams == 0)


def test_generator_closed_on_garbage_collection(
    client: SyncRPCClient, remote: ServiceThread
) -> None:
    gen = client.echo_gen("x")
    assert next(gen) == "x"
    gen = None
    gc.collect()
    assert wait_for(lambda: remote.closed == ["echo_gen"])
    assert wait_for(lambda: remote.active_streams == 0)
    assert wait_for(lambda: client.open_streams == 0)


@pytest.mark.parametrize("form", ["instance", "type and message", "kept instance"])
def test_a_generator_dropped_after_throw_is_closed_at_once(
    client: SyncRPCClient, remote: ServiceThread, form: str
) -> None:
    """The seed's session: ``throw()``, then ``generator = None`` closes it, with no wait for
    the cycle collector (the thrown exception's traceback held the generator's frame), also
    while the caller keeps the exception it threw."""
    gen = client.echo_gen(1)
    assert next(gen) == 1
    kept = TypeError("spam")
    if form == "type and message":
        assert gen.throw(TypeError, "spam") == "caught TypeError: spam"
    else:
        assert gen.throw(kept) == "caught TypeError: spam"
    collecting = gc.isenabled()
    gc.disable()
    try:
        gen = None
        assert wait_for(lambda: remote.closed == ["echo_gen"])
    finally:
        if collecting:
            gc.enable()
    assert wait_for(lambda: client.open_streams == 0)
    assert kept.args == ("spam",)


def test_generator_step_timeout(ctx: Any, remote: ServiceThread) -> None:
    with SyncRPCClient(context=ctx, timeout=0.3) as cli:
        cli.connect(remote.url)
        gen = cli.echo_gen(1)
        assert next(gen) == 1
        assert gen.send(2) == 2


def test_timeouts(client: SyncRPCClient, remote: ServiceThread, ctx: Any) -> None:
    start = time.monotonic()
    with pytest.raises(RPCTimeoutError):
        client.call("slow", 5, timeout=0.2)
    assert time.monotonic() - start < 2
    assert wait_for(lambda: remote.active_calls == 0)
    with SyncRPCClient(context=ctx, timeout=0.2) as short:
        short.connect(remote.url)
        with pytest.raises(TimeoutError):
            short.slow(5)
        assert short.slow(0.01, "ok") == "ok"


def test_close_stops_the_machinery(ctx: Any, remote: ServiceThread) -> None:
    cli = SyncRPCClient(context=ctx, timeout=5)
    cli.connect(remote.url)
    assert cli.echo(1) == 1
    bridge = cli._bridge
    assert bridge.users == 1, "another netcall client or service was left open"
    cli.close()
    assert bridge.loop.is_closed()  # the loop thread has stopped
    assert _bridge._bridge is None
    cli.close()  # idempotent
    with pytest.raises(ClientClosedError):
        cli.echo(1)
    assert cli.closed

    # A new client starts a new loop thread.
    with SyncRPCClient(context=ctx, timeout=5) as again:
        again.connect(remote.url)
        assert again.echo(2) == 2
        assert again._bridge is not bridge


def test_close_fails_calls_in_flight(client: SyncRPCClient) -> None:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.slow(5)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    assert wait_for(lambda: client.pending == 1)
    client.close()
    t.join(5)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], ClientClosedError)


def test_call_from_the_loop_thread_raises(client: SyncRPCClient) -> None:
    assert client.echo(1) == 1
    seen: list[BaseException] = []
    done = threading.Event()

    def in_loop() -> None:
        try:
            client.echo(1)
        except BaseException as exc:
            seen.append(exc)
        done.set()

    client._bridge.loop.call_soon_threadsafe(in_loop)
    # (a lone caller runs the loop itself while it waits: the next call runs in_loop)
    assert client.echo(3) == 3
    assert done.wait(5)
    assert isinstance(seen[0], RuntimeError)
    assert "deadlock" in str(seen[0])
    assert client.echo(2) == 2


def test_dropped_client_is_closed(ctx: Any, remote: ServiceThread) -> None:
    cli = SyncRPCClient(context=ctx, timeout=5)
    cli.connect(remote.url)
    assert cli.echo(1) == 1
    bridge = cli._bridge
    sock = cli._client.socket
    del cli
    gc.collect()
    assert wait_for(lambda: sock.closed)
    assert wait_for(lambda: bridge.loop.is_closed())


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    url = sys.argv[1]
    def late():  # registered before netcall: runs after netcall's own atexit handler
        from netcall import ClientClosedError
        try:
            CLIENT.echo("late")
        except ClientClosedError:
            print("late: closed")
    atexit.register(late)

    from netcall.sync import SyncRPCClient
    CLIENT = SyncRPCClient(timeout=5)
    CLIENT.connect(url)
    print("call:", CLIENT.echo("hi"))
    gen = CLIENT.echo_gen(1)
    print("gen:", next(gen))

    def early():  # registered after netcall: runs first, with everything alive
        print("early:", CLIENT.echo("early"))
    atexit.register(early)
    # exit without closing anything
    """
)


def test_interpreter_exit_does_not_hang(remote: ServiceThread) -> None:
    start = time.monotonic()
    proc = run_python(EXIT_SCRIPT, remote.url, env=netcall_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["call: hi", "gen: 1", "early: early", "late: closed"]
    assert time.monotonic() - start < 15
    assert wait_for(lambda: remote.active_streams == 0), "the stream was not closed at exit"


FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from netcall.sync import SyncRPCClient
    url = sys.argv[1]
    client = SyncRPCClient(timeout=5)
    client.connect(url)
    assert client.echo("parent") == "parent"
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            client.echo("child")
            code = 3
        except RuntimeError as exc:
            assert "fork" in str(exc), exc
        fresh = SyncRPCClient(timeout=5)
        fresh.connect(url)
        if fresh.echo("fresh") != "fresh":
            code = 4
        fresh.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert client.echo("parent again") == "parent again"
    client.close()
    print("child exit", os.waitstatus_to_exitcode(status))
    """
)


def test_use_after_fork_is_refused(remote: ServiceThread) -> None:
    proc = run_python(FORK_SCRIPT, remote.url, env=netcall_env(), timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "child exit 0"


def test_close_while_many_threads_call(ctx: Any, remote: ServiceThread) -> None:
    """Closing under load: every caller gets an answer or ClientClosedError, none hangs."""
    cli = SyncRPCClient(context=ctx, timeout=5)
    cli.connect(remote.url)
    answered = [0] * 20
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            while True:
                assert cli.echo(n) == n
                answered[n] += 1
        except ClientClosedError:
            pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    assert wait_for(lambda: all(answered))
    bridge = cli._bridge
    cli.close()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads), "a caller hung on close"
    assert not errors, errors
    assert bridge.loop.is_closed()
