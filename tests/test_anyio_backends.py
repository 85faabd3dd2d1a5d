"""The shared behavioural suite on three runners: plain ``asyncio.run``, ``anyio.run`` on
asyncio, and ``anyio.run`` on trio (issue 16).

Each scenario is one async function written with anyio's primitives; the service and the
client live in the same run, over real tcp sockets, on the test's own ZeroMQ context (whose
teardown fails the test if a socket is left open). Handlers are written with anyio too, so
under trio they run as trio code.

trio's own checks are on: ``strict_exception_groups=True``, and each trio scenario checks
that nothing of asyncio shows in the trio thread (no running or current asyncio loop, handlers
that see trio through sniffio and trio's cancellation, no asyncio object handed back).
RuntimeWarnings (a coroutine never awaited) are errors here.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
import sniffio

from conftest import netcall_env
from netcall import (
    ClientClosedError,
    ConnectionLostError,
    MethodNotFoundError,
    RemoteGenerator,
    RemoteRPCError,
    RPCClient,
    RPCService,
    RPCTimeoutError,
    ServiceStoppingError,
    current_call,
)
from netcall.testing import free_tcp_endpoint, service_client_pair

trio = pytest.importorskip("trio")

pytestmark = [
    pytest.mark.filterwarnings("error::RuntimeWarning"),
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
]

BACKENDS = ["asyncio", "anyio-asyncio", "anyio-trio"]
HANG_GUARD = 20.0  # seconds any scenario may take


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(backend: str, scenario: Callable[[], Awaitable[None]]) -> None:
    """Run ``scenario`` on ``backend``, bounded in time; under trio, check that nothing of
    asyncio shows in the trio thread afterwards."""

    async def guarded() -> None:
        with anyio.fail_after(HANG_GUARD):
            await scenario()
        if backend == "anyio-trio":
            _assert_no_asyncio_here()

    if backend == "asyncio":
        asyncio.run(guarded())
    elif backend == "anyio-asyncio":
        anyio.run(guarded, backend="asyncio")
    else:
        anyio.run(guarded, backend="trio", backend_options={"strict_exception_groups": True})


def _assert_no_asyncio_here() -> None:
    assert sniffio.current_async_library() == "trio"
    assert asyncio._get_running_loop() is None
    # No asyncio loop was created or set for this thread behind the trio app's back.
    policy = asyncio.get_event_loop_policy()
    assert getattr(policy._local, "_loop", None) is None  # type: ignore[attr-defined]


def is_trio(backend: str) -> bool:
    return backend == "anyio-trio"


class Seen:
    """What handlers observed, and events the scenario waits on (made inside the run)."""

    def __init__(self) -> None:
        self.libraries: set[str] = set()
        self.cancelled: list[type[BaseException]] = []
        self.closed: list[str] = []
        self.notes: list[Any] = []
        self.loops: list[Any] = []

    def enter(self) -> None:
        self.libraries.add(sniffio.current_async_library())
        self.loops.append(asyncio._get_running_loop())

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(5):
            while not predicate():
                await anyio.sleep(0.005)


def make_service(ctx: Any, seen: Seen, **kwargs: Any) -> RPCService:
    service = RPCService(context=ctx, **kwargs)

    @service.register
    async def echo(x: Any = None, *, suffix: str = "") -> Any:
        seen.enter()
        await anyio.sleep(0)
        return x + suffix if suffix else x

    @service.register
    def add(a: int, b: int) -> int:
        return a + b

    @service.register(name="math.mul")
    async def mul(a: int, b: int) -> int:
        return a * b

    @service.register
    async def fail(message: str) -> None:
        raise ValueError(message)

    @service.register
    async def slow(seconds: float) -> str:
        seen.enter()
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class() as exc:
            seen.cancelled.append(type(exc))
            raise
        return "done"

    @service.register
    async def who() -> str:
        return current_call().method

    @service.register
    async def note(x: Any) -> None:
        seen.notes.append(x)

    @service.register
    async def count(n: int) -> Any:
        seen.enter()
        try:
            for i in range(n):
                yield i
                await anyio.sleep(0)
        finally:
            seen.closed.append("count")

    @service.register
    async def ticks() -> Any:
        try:
            i = 0
            while True:
                yield i
                i += 1
                await anyio.sleep(0.02)
        finally:
            seen.closed.append("ticks")

    @service.register
    def count_sync(n: int) -> Any:
        try:
            yield from range(n)
        finally:
            seen.closed.append("count_sync")

    @service.register
    async def doubler() -> Any:
        seen.enter()
        x = yield "ready"
        try:
            while True:
                try:
                    x = yield x * 2
                except KeyError as exc:
                    x = yield f"caught {exc.args[0]}"
        finally:
            seen.closed.append("doubler")

    return service


def check_handlers(backend: str, seen: Seen) -> None:
    """Handlers ran on the backend of the run that serves them."""
    if is_trio(backend):
        assert seen.libraries == {"trio"}, seen.libraries
        assert seen.loops and all(loop is None for loop in seen.loops)
    else:
        assert seen.libraries <= {"asyncio"}, seen.libraries


# ----------------------------------------------------------------------------- scenarios


def test_calls_and_errors(backend: str, ctx: Any) -> None:
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                assert await client.echo("hi") == "hi"
                assert await client.echo("a", suffix="b") == "ab"
                assert await client.add(2, 3) == 5
                assert await client.math.mul(4, 5) == 20
                assert await client.call("echo", [1, 2], timeout=2.0) == [1, 2]
                assert await client.who() == "who"
                with pytest.raises(ValueError, match="boom") as info:
                    await client.fail("boom")
                assert isinstance(info.value, RemoteRPCError)
                with pytest.raises(MethodNotFoundError):
                    await client.nope()
                methods = await client.methods()
                assert "echo" in methods and "math.mul" in methods
                # Many calls at once, from many tasks.
                results: list[Any] = []

                async def one(i: int) -> None:
                    results.append(await client.echo(i))

                async with anyio.create_task_group() as tg:
                    for i in range(50):
                        tg.start_soon(one, i)
                assert sorted(results) == list(range(50))
                assert client.pending == 0
        check_handlers(backend, seen)

    run(backend, scenario)


def test_streams_async_for(backend: str, ctx: Any) -> None:
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0, window=8) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                assert [x async for x in client.count(1000)] == list(range(1000))
                assert [x async for x in client.count_sync(300)] == list(range(300))
                # Leaving early closes the generator on the service.
                async for x in client.count(10_000):
                    if x == 5:
                        break
                await seen.until(lambda: seen.closed.count("count") == 2)
                gen = await client.count(20)
                assert isinstance(gen, RemoteGenerator)
                async with gen:
                    assert [x async for x in gen] == list(range(20))
                assert client.open_streams == 0
        check_handlers(backend, seen)

    run(backend, scenario)


def test_streams_lockstep(backend: str, ctx: Any) -> None:
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                gen = await client.doubler()
                assert await gen.__anext__() == "ready"
                assert await gen.asend(3) == 6
                assert await gen.asend(5) == 10
                assert await gen.athrow(KeyError("k")) == "caught k"
                assert await gen.asend(1) == 2
                await gen.aclose()
                assert "doubler" in seen.closed  # aclose() waits for the finally block
                with pytest.raises(StopAsyncIteration):
                    await gen.asend(1)
                # A remote generator that raises.
                gen = await client.doubler()
                assert await gen.asend(None) == "ready"
                with pytest.raises(RemoteRPCError):
                    await gen.asend(None)  # None * 2: a TypeError on the service
                assert client.open_streams == 0
        check_handlers(backend, seen)

    run(backend, scenario)


def test_stream_as_anyio_receive_stream(backend: str, ctx: Any) -> None:
    """A RemoteGenerator is an anyio ObjectReceiveStream: receive() until EndOfStream."""
    seen = Seen()

    async def consume(stream: anyio.abc.ObjectReceiveStream[int]) -> list[int]:
        out = []
        async with stream:
            while True:
                try:
                    out.append(await stream.receive())
                except anyio.EndOfStream:
                    return out

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                gen = await client.count(50)
                assert isinstance(gen, anyio.abc.ObjectReceiveStream)
                assert await consume(gen) == list(range(50))
                gen = await client.count(10_000)
                assert await gen.receive() == 0
                await gen.aclose()
                await seen.until(lambda: seen.closed.count("count") == 2)

    run(backend, scenario)


def test_cancel_scope_cancels_remote_handler(backend: str, ctx: Any) -> None:
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                with anyio.move_on_after(0.2) as scope:
                    await client.slow(30)
                assert scope.cancelled_caught
                assert client.pending == 0
                await seen.until(lambda: len(seen.cancelled) == 1)
                # A cancelled stream step closes the stream on the service too.
                gen = await client.doubler()
                assert await gen.asend(None) == "ready"
                # Already cancelled: trio checks before sending, asyncio at the first await
                # (the call may then start on the service, and is cancelled there).
                async with anyio.create_task_group() as tg:
                    tg.cancel_scope.cancel()
                    await client.slow(30)
                assert await client.echo("still fine") == "still fine"
                await gen.aclose()
                await seen.until(lambda: service.active_calls == 0)
        # The handler saw its own backend's cancellation: trio's under trio.
        if is_trio(backend):
            assert seen.cancelled == [trio.Cancelled]
        else:
            assert set(seen.cancelled) == {asyncio.CancelledError}
        check_handlers(backend, seen)

    run(backend, scenario)


def test_timeouts(backend: str, ctx: Any) -> None:
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=0.3) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                with pytest.raises(RPCTimeoutError):
                    await client.slow(30)
                await seen.until(lambda: len(seen.cancelled) == 1)
                with pytest.raises(RPCTimeoutError) as info:
                    await client.call("slow", 30, timeout=0.1)
                assert isinstance(info.value, TimeoutError)
                await seen.until(lambda: len(seen.cancelled) == 2)
                assert await client.with_options(timeout=2.0).slow(0.05) == "done"
        check_handlers(backend, seen)

    run(backend, scenario)


def test_oneway(backend: str, ctx: Any) -> None:
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                assert await client.with_options(oneway=True).note("n1") is None
                assert await client.call("note", "n2", oneway=True) is None
                await seen.until(lambda: sorted(seen.notes) == ["n1", "n2"])

    run(backend, scenario)


def test_graceful_stop(backend: str, ctx: Any) -> None:
    seen = Seen()

    async def scenario() -> None:
        service = make_service(ctx, seen)
        port = service.bind_ports("127.0.0.1")
        service.start()
        async with RPCClient(context=ctx, timeout=5.0) as client:
            client.connect(f"tcp://127.0.0.1:{port}")
            assert await client.echo(1) == 1
            results: list[Any] = []

            async def in_flight() -> None:
                results.append(await client.slow(0.3))

            async with anyio.create_task_group() as tg:
                tg.start_soon(in_flight)
                await seen.until(lambda: service.active_calls == 1)
                await service.stop(grace=5.0)  # the call in flight finishes first
            assert results == ["done"]
            assert service.closed
            with pytest.raises((ServiceStoppingError, ConnectionLostError, RPCTimeoutError)):
                await client.call("echo", 1, timeout=0.3)
        # A call still running at the end of the grace period is cancelled.
        service = make_service(ctx, seen)
        port = service.bind_ports("127.0.0.1")
        async with RPCClient(context=ctx, timeout=5.0) as client:
            client.connect(f"tcp://127.0.0.1:{port}")
            async with anyio.create_task_group() as tg:
                tg.start_soon(service.serve)
                await seen.until(lambda: service.active_calls == 0 and not service.closed)
                refused: list[BaseException] = []

                async def too_slow() -> None:
                    try:
                        await client.slow(30)
                    except ServiceStoppingError as exc:
                        refused.append(exc)

                async with anyio.create_task_group() as calls:
                    calls.start_soon(too_slow)
                    await seen.until(lambda: service.active_calls == 1)
                    await service.stop(grace=0.1)
                assert len(refused) == 1
            await seen.until(lambda: len(seen.cancelled) == 1)
            assert service.closed

    run(backend, scenario)


def test_serve_in_a_task_group(backend: str, ctx: Any) -> None:
    """serve() runs until stop(); cancelling a task group running it is fine too."""
    seen = Seen()

    async def scenario() -> None:
        service = make_service(ctx, seen)
        port = service.bind_ports("127.0.0.1")
        async with RPCClient(context=ctx, timeout=5.0) as client:
            client.connect(f"tcp://127.0.0.1:{port}")
            async with anyio.create_task_group() as tg:
                tg.start_soon(service.serve)
                assert await client.echo("x") == "x"
                tg.cancel_scope.cancel()
            if not service.closed:  # asyncio's serve() leaves the service to its owner
                await service.stop()
            assert service.closed

    run(backend, scenario)


def test_clients_in_several_tasks_share_one_client(backend: str, ctx: Any) -> None:
    """Streams and calls interleave on one client from many tasks."""
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                totals: list[int] = []

                async def reader(n: int) -> None:
                    totals.append(sum([x async for x in client.count(n)]))

                async def caller() -> None:
                    for i in range(20):
                        assert await client.echo(i) == i

                async with anyio.create_task_group() as tg:
                    for n in (100, 200, 300):
                        tg.start_soon(reader, n)
                    for _ in range(5):
                        tg.start_soon(caller)
                assert sorted(totals) == [4950, 19900, 44850]

    run(backend, scenario)


def test_cancel_scope_around_a_stream(backend: str, ctx: Any) -> None:
    """A scope expiring in the middle of ``async for`` closes the generator on the service."""
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                got = []
                with anyio.move_on_after(0.3):
                    async for x in client.ticks():
                        got.append(x)
                assert got and got == list(range(len(got)))
                await seen.until(lambda: "ticks" in seen.closed)
                await seen.until(lambda: service.active_streams == 0)
                assert client.open_streams == 0

    run(backend, scenario)


def test_client_close_fails_calls_in_flight(backend: str, ctx: Any) -> None:
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            client = RPCClient(context=ctx, timeout=5.0)
            client.connect(f"tcp://127.0.0.1:{port}")
            assert await client.echo(1) == 1
            errors: list[BaseException] = []

            async def call() -> None:
                try:
                    await client.slow(30)
                except ClientClosedError as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(call)
                await seen.until(lambda: service.active_calls == 3)
                await client.aclose()
            assert len(errors) == 3
            with pytest.raises(ClientClosedError):
                await client.echo(1)
            await seen.until(lambda: service.active_calls == 0)

    run(backend, scenario)


def test_testing_pair(backend: str, ctx: Any) -> None:
    """netcall.testing.service_client_pair works on every runner."""
    seen = Seen()

    async def scenario() -> None:
        async with service_client_pair(make_service(ctx, seen), timeout=5.0) as client:
            assert await client.echo("hi") == "hi"
            assert [x async for x in client.count(3)] == [0, 1, 2]

    run(backend, scenario)


def test_calls_spawned_as_tasks(backend: str, ctx: Any) -> None:
    """``tg.start_soon(client.name, x)``: a call is a coroutine a task group can run."""
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                async with anyio.create_task_group() as tg:
                    for i in range(10):
                        tg.start_soon(client.note, i)
                    tg.start_soon(client.slow, 0.01)
                await seen.until(lambda: sorted(seen.notes) == list(range(10)))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.slow, 30)
                    await seen.until(lambda: service.active_calls == 1)
                    tg.cancel_scope.cancel()  # the spawned call is cancelled remotely too
                await seen.until(lambda: len(seen.cancelled) == 1)
                if not is_trio(backend):
                    assert await asyncio.create_task(client.echo("task")) == "task"
                assert client.pending == 0

    run(backend, scenario)


def test_random_cancellations_leave_nothing_behind(backend: str, ctx: Any) -> None:
    """Many tasks, calls and streams, cancel scopes expiring at random points: every call
    ends, and nothing stays pending on either side."""
    seen = Seen()

    async def scenario() -> None:
        async with make_service(ctx, seen) as service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                done = []

                async def worker(i: int) -> None:
                    rnd = random.Random(i)
                    for _ in range(10):
                        with anyio.move_on_after(rnd.choice([0.0, 0.005, 0.02, 2.0])):
                            if rnd.random() < 0.2:
                                async for _ in client.ticks():
                                    if rnd.random() < 0.3:
                                        break
                            else:
                                await client.slow(rnd.choice([0.0, 0.001, 0.01]))
                    done.append(i)

                async with anyio.create_task_group() as tg:
                    for i in range(30):
                        tg.start_soon(worker, i)
                assert sorted(done) == list(range(30))
                assert client.pending == 0 and client.open_streams == 0
                await seen.until(lambda: service.active_calls == 0)
                await seen.until(lambda: service.active_streams == 0)

    run(backend, scenario)


def test_curve(backend: str, ctx: Any) -> None:
    """CURVE works the same on every runner: the caller's key, and a stranger refused."""
    from netcall import AuthenticationError
    from netcall.security import Curve, Keypair

    server, alice = Keypair.generate(), Keypair.generate()
    service = RPCService(context=ctx, security=Curve.server(server, allow=[alice.public]))

    @service.register
    async def whoami() -> Any:
        await anyio.sleep(0)
        return current_call().peer_key

    async def scenario() -> None:
        port = service.bind_ports("127.0.0.1")
        async with service:
            url = f"tcp://127.0.0.1:{port}"
            as_alice = Curve.client(server.public, keypair=alice)
            async with RPCClient(context=ctx, timeout=5.0, security=as_alice) as client:
                client.connect(url)
                assert await client.whoami() == alice.public.decode()
            stranger = Curve.client(server.public)
            async with RPCClient(context=ctx, timeout=5.0, security=stranger) as client:
                client.connect(url)
                with pytest.raises(AuthenticationError):
                    await client.whoami()

    run(backend, scenario)


# ----------------------------------------------------------------------------- trio only


def test_import_under_trio_needs_no_asyncio_loop() -> None:
    """``import netcall`` inside a trio app (and using it) needs no running asyncio loop, and
    importing netcall does not import trio."""
    code = """
import sys
import trio

async def main():
    import netcall
    assert "asyncio" not in sys.modules or __import__("asyncio")._get_running_loop() is None
    service = netcall.RPCService()

    @service.register
    async def echo(x):
        await trio.sleep(0)
        return x

    port = service.bind_ports("127.0.0.1")
    async with service:
        async with netcall.RPCClient(timeout=5) as client:
            client.connect(f"tcp://127.0.0.1:{port}")
            assert await client.echo("hi") == "hi"
    print("ok")

trio.run(main, strict_exception_groups=True)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], env=netcall_env(), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    out = subprocess.run(
        [sys.executable, "-c", "import sys, netcall; assert 'trio' not in sys.modules"],
        env=netcall_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr


def test_trio_handler_may_use_trio_primitives(ctx: Any) -> None:
    """Handlers are trio code: nurseries, trio.sleep, memory channels, move_on_after."""
    service = RPCService(context=ctx)

    @service.register
    async def fan_out(n: int) -> list[int]:
        send, receive = trio.open_memory_channel[int](n)
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(send.send, i)
        return sorted([receive.receive_nowait() for _ in range(n)])

    @service.register
    async def bounded() -> str:
        with trio.move_on_after(0.05):
            await trio.sleep(10)
            return "slept"
        return "moved on"

    async def scenario() -> None:
        async with service:
            port = service.bind_ports("127.0.0.1")
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{port}")
                assert await client.fan_out(5) == [0, 1, 2, 3, 4]
                assert await client.bounded() == "moved on"

    run("anyio-trio", scenario)


def test_through_a_broker(backend: str, ctx: Any) -> None:
    """A service connecting out to a broker (asyncio, in its own thread) and a client of its
    frontend, both on ``backend``; a method registered after start is announced."""
    from netcall import Broker

    ready = threading.Event()
    stop = threading.Event()
    front, back = free_tcp_endpoint(), free_tcp_endpoint()

    def run_broker() -> None:
        async def main() -> None:
            async with Broker(front, back, context=ctx):
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.01)

        asyncio.run(main())

    thread = threading.Thread(target=run_broker, daemon=True)
    thread.start()
    seen = Seen()
    try:
        assert ready.wait(10)

        async def scenario() -> None:
            service = make_service(ctx, seen)
            service.connect(back)
            async with service, RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(front)
                await until_methods(client, {"echo"})
                assert await client.echo("via broker") == "via broker"
                assert [x async for x in client.count(5)] == [0, 1, 2, 3, 4]
                service.register(lambda: "late", name="late")
                await until_methods(client, {"late"})
                assert await client.late() == "late"
            check_handlers(backend, seen)

        run(backend, scenario)
    finally:
        stop.set()
        thread.join(10)


async def until_methods(client: RPCClient, names: set[str]) -> None:
    with anyio.fail_after(5):
        while not names <= set(await client.methods()):
            await anyio.sleep(0.02)


def test_trio_client_against_asyncio_service_in_a_thread(ctx: Any) -> None:
    """A trio client and an asyncio service in another thread of the same process."""
    ready = threading.Event()
    stop = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            service = RPCService(context=ctx)

            @service.register
            async def echo(x: Any) -> Any:
                return (x, sniffio.current_async_library())

            box["port"] = service.bind_ports("127.0.0.1")
            async with service:
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.01)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)

        async def scenario() -> None:
            async with RPCClient(context=ctx, timeout=5.0) as client:
                client.connect(f"tcp://127.0.0.1:{box['port']}")
                assert await client.echo("x") == ("x", "asyncio")

        run("anyio-trio", scenario)
    finally:
        stop.set()
        thread.join(10)
