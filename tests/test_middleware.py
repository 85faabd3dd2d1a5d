"""Middleware on real sockets: service side (around calls and stream openings) and client side
(around calls, retries, stream wrapping)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from netcall import (
    CallContext,
    OutgoingCall,
    RemoteRPCError,
    RPCClient,
    RPCService,
    current_call,
)

Next = Callable[[], Awaitable[Any]]
ClientNext = Callable[[OutgoingCall], Awaitable[Any]]


@pytest.fixture
def pair(make_service: Any, make_client: Any, make_url: Any) -> Any:
    """``pair(service_kwargs, client_kwargs)`` -> (service, client), started and connected."""

    def make(
        service: dict[str, Any] | None = None, client: dict[str, Any] | None = None
    ) -> tuple[RPCService, RPCClient]:
        url = make_url("inproc")
        svc = make_service(**(service or {}))

        @svc.register
        async def echo(x: Any = None) -> Any:
            return x

        @svc.register
        async def count(n: int) -> Any:
            for i in range(n):
                yield i

        @svc.register
        def sync_count(n: int) -> Any:
            yield from range(n)

        svc.bind(url)
        svc.start()
        cli = make_client(**(client or {}))
        cli.connect(url)
        return svc, cli

    return make


# -- service side -----------------------------------------------------------------------------


async def test_service_middleware_order_and_context(pair: Any) -> None:
    log: list[Any] = []

    def named(name: str) -> Any:
        async def mw(ctx: CallContext, call_next: Next) -> Any:
            assert current_call() is ctx
            log.append((name, ctx.method, list(ctx.args), dict(ctx.kwargs), dict(ctx.metadata)))
            result = await call_next()
            log.append((name, "after", result))
            return result

        return mw

    svc, cli = pair(service={"middleware": [named("a"), named("b")]})
    assert await cli.call("echo", x=5, metadata={"k": "v"}) == 5
    assert log == [
        ("a", "echo", [], {"x": 5}, {"k": "v"}),
        ("b", "echo", [], {"x": 5}, {"k": "v"}),
        ("b", "after", 5),
        ("a", "after", 5),
    ]
    log.clear()
    svc.add_middleware(named("outer"), outermost=True)
    svc.add_middleware(named("inner"))
    assert await cli.echo(1) == 1
    assert [entry[0] for entry in log[:4]] == ["outer", "a", "b", "inner"]


async def test_service_middleware_errors_reach_the_caller(pair: Any) -> None:
    async def guard(ctx: CallContext, call_next: Next) -> Any:
        if ctx.metadata.get("authorization") != "secret":
            raise PermissionError("who are you?")
        return await call_next()

    async def twice(ctx: CallContext, call_next: Next) -> Any:
        if ctx.method == "echo" and ctx.args == [2]:
            await call_next()
            return await call_next()
        return await call_next()

    ran: list[int] = []
    svc, cli = pair(service={"middleware": [guard, twice]})

    @svc.register
    async def touch() -> None:
        ran.append(1)

    with pytest.raises(PermissionError) as err:
        await cli.touch()
    assert isinstance(err.value, RemoteRPCError) and "who are you?" in str(err.value)
    assert ran == []  # the handler never ran
    ok = cli.with_options(metadata={"authorization": "secret"})
    await ok.touch()
    assert ran == [1]
    with pytest.raises(RuntimeError, match="only once"):
        await ok.echo(2)
    assert await ok.echo(3) == 3  # the service goes on


async def test_service_middleware_sees_and_translates_handler_errors(pair: Any) -> None:
    seen: list[str] = []

    async def translate(ctx: CallContext, call_next: Next) -> Any:
        try:
            return await call_next()
        except KeyError as exc:
            seen.append(repr(exc))
            raise LookupError(f"no such thing: {exc}") from exc

    svc, cli = pair(service={"middleware": [translate]})

    @svc.register
    def lookup(key: str) -> Any:
        return {}[key]

    with pytest.raises(LookupError, match="no such thing"):
        await cli.lookup("x")
    assert seen == ["KeyError('x')"]


async def test_service_middleware_may_answer_without_the_handler(pair: Any) -> None:
    async def cached(ctx: CallContext, call_next: Next) -> Any:
        if ctx.method == "echo":
            return "cached"
        return await call_next()

    _, cli = pair(service={"middleware": [cached]})
    assert await cli.echo("x") == "cached"
    assert [x async for x in cli.count(2)] == [0, 1]


@pytest.mark.parametrize("executor", [False, True])
async def test_service_middleware_wraps_streams(pair: Any, executor: bool) -> None:
    seen: list[Any] = []

    async def watch(ctx: CallContext, call_next: Next) -> Any:
        stream = await call_next()
        if not hasattr(stream, "__anext__"):
            return stream

        async def wrapped() -> AsyncIterator[Any]:
            async for item in stream:
                seen.append((ctx.method, item))
                yield item * 10
            seen.append((ctx.method, "end"))

        return wrapped()

    kwargs: dict[str, Any] = {"middleware": [watch]}
    pool = concurrent.futures.ThreadPoolExecutor(2) if executor else None
    if pool is not None:
        kwargs["executor"] = pool
    try:
        _, cli = pair(service=kwargs)
        assert [x async for x in cli.count(3)] == [0, 10, 20]
        assert [x async for x in cli.sync_count(2)] == [0, 10]
        gen = await cli.count(2)  # lock-step
        assert await gen.asend(None) == 0
        assert await gen.asend(None) == 10
        with pytest.raises(StopAsyncIteration):
            await gen.asend(None)
        assert await cli.echo(4) == 4  # not a stream: untouched
    finally:
        if pool is not None:
            pool.shutdown(wait=False)
    assert seen == [
        ("count", 0),
        ("count", 1),
        ("count", 2),
        ("count", "end"),
        ("sync_count", 0),
        ("sync_count", 1),
        ("sync_count", "end"),
        ("count", 0),
        ("count", 1),
        ("count", "end"),
    ]


async def test_a_wrapped_stream_closes_the_handlers_generator(pair: Any) -> None:
    closed: list[str] = []

    async def forgetful(ctx: CallContext, call_next: Next) -> Any:
        stream = await call_next()

        async def wrapped() -> AsyncIterator[Any]:
            async for item in stream:  # never closes ``stream`` itself
                yield item

        return wrapped() if hasattr(stream, "__anext__") else stream

    svc, cli = pair(service={"middleware": [forgetful]})

    @svc.register
    def endless() -> Any:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append("sync")

    @svc.register
    async def aendless() -> Any:
        try:
            while True:
                yield 1
        finally:
            closed.append("async")

    for name in ("endless", "aendless"):
        gen = await cli.call(name)
        await gen.asend(None)
        await gen.aclose()
    assert closed == ["sync", "async"]
    assert svc.active_streams == 0


async def test_stream_middleware_error_reaches_the_caller(pair: Any) -> None:
    async def fail_at_two(ctx: CallContext, call_next: Next) -> Any:
        stream = await call_next()
        if not hasattr(stream, "__anext__"):
            return stream

        async def wrapped() -> AsyncIterator[Any]:
            async for item in stream:
                if item == 2:
                    raise OverflowError("too many")
                yield item

        return wrapped()

    _, cli = pair(service={"middleware": [fail_at_two]})
    got: list[int] = []
    with pytest.raises(OverflowError, match="too many"):
        async for x in cli.count(5):
            got.append(x)
    assert got == [0, 1]


# -- client side ------------------------------------------------------------------------------


async def test_client_middleware_changes_the_call(pair: Any) -> None:
    log: list[str] = []

    async def token(call: OutgoingCall, call_next: ClientNext) -> Any:
        log.append(f"token {call.method}")
        call.metadata["authorization"] = "t0k"
        return await call_next(call)

    async def rename(call: OutgoingCall, call_next: ClientNext) -> Any:
        log.append("rename")
        if call.method == "shout":
            call.method, call.args = "echo", (call.args[0].upper(),)
        return await call_next(call)

    svc, cli = pair(client={"middleware": [token, rename]})

    @svc.register
    def whoami() -> str:
        return current_call().metadata["authorization"]

    assert await cli.whoami() == "t0k"
    assert await cli.shout("hi") == "HI"
    assert log == ["token whoami", "rename", "token shout", "rename"]


async def test_retries_as_client_middleware(pair: Any) -> None:
    attempts: list[int] = []

    async def retry(call: OutgoingCall, call_next: ClientNext) -> Any:
        for attempt in range(5):
            try:
                return await call_next(call)
            except ConnectionError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.01)
        raise AssertionError("unreachable")

    svc, cli = pair(client={"middleware": [retry]})

    @svc.register
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return "ok"

    assert await cli.flaky() == "ok"
    assert len(attempts) == 3


async def test_client_middleware_wraps_streams(pair: Any) -> None:
    seen: list[Any] = []

    async def watch(call: OutgoingCall, call_next: ClientNext) -> Any:
        result = await call_next(call)
        if not hasattr(result, "__anext__"):
            return result

        async def wrapped() -> AsyncIterator[Any]:
            async for item in result:
                seen.append(item)
                yield item
            seen.append("end")

        return wrapped()

    _, cli = pair(client={"middleware": [watch]})
    assert [x async for x in cli.count(3)] == [0, 1, 2]
    assert seen == [0, 1, 2, "end"]
    seen.clear()
    gen = await cli.count(2)
    assert [x async for x in gen] == [0, 1]
    assert seen == [0, 1, "end"]
    assert await cli.echo(1) == 1


async def test_client_middleware_timeout_and_outermost(pair: Any) -> None:
    from netcall import RPCTimeoutError

    order: list[str] = []

    async def short(call: OutgoingCall, call_next: ClientNext) -> Any:
        order.append("short")
        call.timeout = 0.05
        return await call_next(call)

    async def first(call: OutgoingCall, call_next: ClientNext) -> Any:
        order.append("first")
        return await call_next(call)

    svc, cli = pair()

    @svc.register
    async def nap() -> None:
        await asyncio.sleep(5)

    cli.add_middleware(short)
    cli.add_middleware(first, outermost=True)
    with pytest.raises(RPCTimeoutError):
        await cli.nap()
    assert order == ["first", "short"]


def test_middleware_must_be_callables() -> None:
    with pytest.raises(TypeError):
        RPCService(middleware=[1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        RPCClient(middleware=lambda c, n: n(c))  # type: ignore[arg-type]


async def test_handler_errors_are_logged_rate_limited(pair: Any, caplog: Any) -> None:
    import logging

    svc, cli = pair()

    @svc.register
    def broken() -> None:
        raise ZeroDivisionError("nope")

    with caplog.at_level(logging.WARNING, logger="netcall"):
        for _ in range(20):
            with pytest.raises(ZeroDivisionError):
                await cli.broken()
    lines = [r for r in caplog.records if "broken" in r.getMessage()]
    assert 1 <= len(lines) <= 6
    first = lines[0]
    assert first.levelno == logging.WARNING
    assert "ZeroDivisionError" in first.getMessage() and "client" in first.getMessage()
    assert first.exc_info is not None and first.exc_info[0] is ZeroDivisionError


async def test_service_middleware_sees_the_callers_curve_key(
    make_service: Any, make_client: Any, make_url: Any
) -> None:
    from netcall.security import Curve, Keypair

    server, alice = Keypair.generate(), Keypair.generate()
    seen: list[Any] = []

    async def who(ctx: CallContext, call_next: Next) -> Any:
        seen.append(ctx.peer_key)
        if ctx.peer_key != alice.public.decode():
            raise PermissionError("not alice")
        return await call_next()

    url = make_url("tcp")
    svc = make_service(security=Curve.server(server), middleware=[who])

    @svc.register
    async def hello() -> str:
        return "hi alice"

    svc.bind(url)
    svc.start()
    cli = make_client(security=Curve.client(server.public, keypair=alice))
    cli.connect(url)
    assert await cli.hello() == "hi alice"
    stranger = make_client(security=Curve.client(server.public))
    stranger.connect(url)
    with pytest.raises(PermissionError):
        await stranger.hello()
    assert seen[0] == alice.public.decode() and seen[1] != seen[0]
