"""The middleware chain runner, stream observer and metadata checks, without sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from netcall._context import CallContext
from netcall._metadata import MAX_METADATA_BYTES, MAX_METADATA_ITEMS, check_metadata
from netcall._middleware import (
    OutgoingCall,
    check_middleware,
    compose_client,
    observe_stream,
    run_service_chain,
)


def _ctx() -> CallContext:
    return CallContext("echo", b"peer", None)


def _call(**kw: Any) -> OutgoingCall:
    return OutgoingCall("echo", ("hi",), {}, kw.pop("metadata", {}), kw.pop("timeout", 1.0))


# -- service chain ----------------------------------------------------------------------------


async def test_service_chain_runs_outermost_first() -> None:
    log: list[str] = []

    def mw(name: str) -> Any:
        async def m(ctx: CallContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
            log.append(f"{name} before {ctx.method}")
            result = await call_next()
            log.append(f"{name} after")
            return [*result, name]

        return m

    async def handler() -> list[str]:
        log.append("handler")
        return []

    result = await run_service_chain([mw("a"), mw("b"), mw("c")], _ctx(), handler)
    assert result == ["c", "b", "a"]
    assert log == [
        "a before echo",
        "b before echo",
        "c before echo",
        "handler",
        "c after",
        "b after",
        "a after",
    ]


async def test_service_chain_without_middleware_runs_the_handler() -> None:
    async def handler() -> int:
        return 7

    assert await run_service_chain([], _ctx(), handler) == 7


async def test_service_call_next_only_once() -> None:
    runs = 0

    async def handler() -> int:
        nonlocal runs
        runs += 1
        return runs

    async def twice(ctx: CallContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        await call_next()
        return await call_next()

    with pytest.raises(RuntimeError, match="only once"):
        await run_service_chain([twice], _ctx(), handler)
    assert runs == 1


async def test_service_middleware_may_short_circuit_and_raise() -> None:
    async def handler() -> str:
        raise AssertionError("never runs")

    async def deny(ctx: CallContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        raise PermissionError("no")

    async def answer(ctx: CallContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        return "cached"

    with pytest.raises(PermissionError):
        await run_service_chain([deny], _ctx(), handler)
    assert await run_service_chain([answer], _ctx(), handler) == "cached"


async def test_service_middleware_sees_handler_errors() -> None:
    seen: list[BaseException] = []

    async def handler() -> None:
        raise KeyError("k")

    async def watch(ctx: CallContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await call_next()
        except Exception as exc:
            seen.append(exc)
            raise

    with pytest.raises(KeyError):
        await run_service_chain([watch], _ctx(), handler)
    assert isinstance(seen[0], KeyError)


async def test_sync_middleware_is_a_clear_error() -> None:
    async def handler() -> None:
        return None

    def not_async(ctx: CallContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        return 1

    with pytest.raises(TypeError, match="async def"):
        await run_service_chain([not_async], _ctx(), handler)


def test_check_middleware() -> None:
    async def m(ctx: Any, call_next: Any) -> Any:
        return await call_next()

    assert check_middleware(None) == ()
    assert check_middleware([m]) == (m,)
    with pytest.raises(TypeError):
        check_middleware(m)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        check_middleware([m, 3])


# -- client chain -----------------------------------------------------------------------------


async def test_client_chain_order_and_mutation() -> None:
    log: list[str] = []
    sent: list[OutgoingCall] = []

    async def endpoint(call: OutgoingCall) -> Any:
        sent.append(call)
        return (call.method, dict(call.metadata), call.timeout)

    async def token(call: OutgoingCall, call_next: Callable[[OutgoingCall], Awaitable[Any]]) -> Any:
        log.append("token")
        call.metadata["authorization"] = "t"
        return await call_next(call)

    async def shorter(
        call: OutgoingCall, call_next: Callable[[OutgoingCall], Awaitable[Any]]
    ) -> Any:
        log.append("shorter")
        call.timeout = 0.5
        result = await call_next(call)
        log.append("shorter after")
        return result

    chain = compose_client([token, shorter], endpoint)
    assert await chain(_call()) == ("echo", {"authorization": "t"}, 0.5)
    assert log == ["token", "shorter", "shorter after"]
    # Composed once, run many times.
    assert await chain(_call(metadata={"x": "1"})) == (
        "echo",
        {"x": "1", "authorization": "t"},
        0.5,
    )
    assert compose_client([], endpoint) is endpoint


async def test_retries_as_client_middleware() -> None:
    attempts = 0

    async def flaky(call: OutgoingCall) -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("try again")
        return "ok"

    async def retry(call: OutgoingCall, call_next: Callable[[OutgoingCall], Awaitable[Any]]) -> Any:
        for attempt in range(5):
            try:
                return await call_next(call)
            except ConnectionError:
                if attempt == 4:
                    raise
        raise AssertionError

    assert await compose_client([retry], flaky)(_call()) == "ok"
    assert attempts == 3


# -- streams ----------------------------------------------------------------------------------


async def _count(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def test_observe_stream_items_and_end() -> None:
    items: list[int] = []
    ends: list[BaseException | None] = []
    stream = observe_stream(_count(3), items.append, ends.append)
    assert [x async for x in stream] == [0, 1, 2]
    assert items == [0, 1, 2]
    assert ends == [None]
    await stream.aclose()
    assert ends == [None]


async def test_observe_stream_error_and_close() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ValueError("bad")

    ends: list[BaseException | None] = []
    stream = observe_stream(broken(), on_end=ends.append)
    assert await stream.__anext__() == 1
    with pytest.raises(ValueError):
        await stream.__anext__()
    assert len(ends) == 1 and isinstance(ends[0], ValueError)

    closed: list[str] = []

    async def endless() -> AsyncIterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.append("finally")

    ends.clear()
    stream = observe_stream(endless(), on_end=ends.append)
    assert await stream.asend(None) == 1
    await stream.aclose()
    assert closed == ["finally"] and ends == [None]


async def test_observe_stream_passes_asend_athrow_and_runs_around() -> None:
    async def echo() -> AsyncIterator[Any]:
        value = None
        while True:
            try:
                value = yield value
            except KeyError as exc:
                value = f"caught {exc.args[0]}"

    entered: list[str] = []

    class Around:
        def __enter__(self) -> None:
            entered.append("in")

        def __exit__(self, *exc: object) -> None:
            entered.append("out")

    stream = observe_stream(echo(), around=Around)
    assert await stream.asend(None) is None
    assert await stream.asend(5) == 5
    assert await stream.athrow(KeyError("k")) == "caught k"
    await stream.aclose()
    assert entered == ["in", "out"] * 4


async def test_observe_stream_cancelled_step_ends_with_the_cancel() -> None:
    async def slow() -> AsyncIterator[int]:
        await asyncio.sleep(10)
        yield 1

    ends: list[BaseException | None] = []
    stream = observe_stream(slow(), on_end=ends.append)
    task = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(ends) == 1 and isinstance(ends[0], asyncio.CancelledError)


async def test_observe_stream_dropped_unfinished_ends_once() -> None:
    ends: list[BaseException | None] = []
    stream = observe_stream(_count(5), on_end=ends.append)
    assert await stream.__anext__() == 0
    inner = stream.inner
    del stream
    assert ends == [None]
    await inner.aclose()


# -- metadata ---------------------------------------------------------------------------------


def test_metadata_accepts_tokens_and_copies() -> None:
    md = {"request-id": "42", "authorization": "Bearer x", "x_b3.id~": "", "k": "é" * 10}
    out = check_metadata(md)
    assert out == md and out is not md
    assert check_metadata(None) == {}
    assert check_metadata({}) == {}


@pytest.mark.parametrize(
    "bad",
    [
        {"Request-Id": "1"},  # uppercase
        {"": "1"},
        {"a b": "1"},
        {"é": "1"},
        {"a:b": "1"},
        {1: "1"},
        {"k": 1},
        {"k": b"bytes"},
        {"k": None},
        {"k": "\ud800"},  # not encodable
        {"k" * 300: "1"},
    ],
)
def test_metadata_rejects_bad_entries(bad: dict[Any, Any]) -> None:
    with pytest.raises(ValueError):
        check_metadata(bad)


def test_metadata_limits() -> None:
    check_metadata({f"k{i}": "v" for i in range(MAX_METADATA_ITEMS)})
    with pytest.raises(ValueError, match="entries"):
        check_metadata({f"k{i}": "v" for i in range(MAX_METADATA_ITEMS + 1)})
    check_metadata({"k": "v" * (MAX_METADATA_BYTES - 1)})
    with pytest.raises(ValueError, match="bytes"):
        check_metadata({"k": "v" * MAX_METADATA_BYTES})
    with pytest.raises(ValueError, match="bytes"):  # counted in UTF-8
        check_metadata({"k": "é" * (MAX_METADATA_BYTES // 2)})
    with pytest.raises(ValueError):
        check_metadata([("k", "v")])  # type: ignore[arg-type]
