"""An ``async def`` handler with no ``await`` in its body ends in its first step: the service
runs it there and then, like a ``def`` handler, with no task (Handler.never_suspends). Everything
a caller sees is as for any other handler; one with an ``await`` still gets its task."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import types
from typing import Any

import pytest

from netcall import RemoteRPCError, current_call
from netcall._service.registry import never_suspends

pytestmark = pytest.mark.timeout(20)

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def no_await(x: Any) -> Any:
    return x


async def with_await(x: Any) -> Any:
    await asyncio.sleep(0)
    return x


async def with_async_for(xs: Any) -> Any:
    return [x async for x in xs]


async def with_async_with(lock: Any) -> None:
    async with lock:
        pass


async def with_an_inner_await() -> Any:
    async def inner() -> None:  # defined, never awaited here: the outer cannot suspend
        await asyncio.sleep(0)

    return inner


async def gen() -> Any:
    yield 1


def plain(x: Any) -> Any:
    return x


class Methods:
    async def method(self) -> int:
        return 1

    async def waits(self) -> int:
        await asyncio.sleep(0)
        return 1

    @staticmethod
    async def static() -> int:
        return 2


def test_which_handlers_never_suspend() -> None:
    assert never_suspends(no_await)
    assert never_suspends(with_an_inner_await)
    assert never_suspends(Methods().method)
    assert never_suspends(Methods.static)
    assert not never_suspends(with_await)
    assert not never_suspends(with_async_for)
    assert not never_suspends(with_async_with)
    assert not never_suspends(Methods().waits)
    assert not never_suspends(gen)  # an async generator is a stream, not a coroutine
    assert not never_suspends(plain)
    assert not never_suspends(functools.partial(no_await, 1))  # not looked into: a task
    assert not never_suspends(lambda: no_await(1))


async def test_results_errors_and_the_call_context(service: Any, client: Any) -> None:
    seen: list[Any] = []

    @service.register
    async def quick(x: int) -> int:
        seen.append((current_call().method, asyncio.current_task()))
        return x + 1

    @service.register
    async def fails() -> None:
        raise ValueError("bad value")

    @service.register
    async def waits(x: int) -> int:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        return x

    assert await client.quick(1) == 2
    assert await client.quick(2) == 3
    (m1, host), (m2, host2) = seen[:2]
    del seen[:2]
    # No task of its own: the loop's host task, finished, the same for every such call.
    assert m1 == m2 == "quick" and host is host2
    assert isinstance(host, asyncio.Task) and host.get_name() == "netcall: handler with no await"
    with pytest.raises(RemoteRPCError) as info:
        await client.fails()
    assert isinstance(info.value, ValueError) and "bad value" in str(info.value)
    with pytest.raises(RemoteRPCError) as info:
        await client.quick()  # a missing argument: the caller's mistake, named as such
    assert info.value.type_name == "TypeError"
    assert await client.waits(3) == 3
    task = seen.pop(0)
    assert isinstance(task, asyncio.Task) and task is not host  # one that awaits: its own task
    assert await client.quick(5) == 6  # the service goes on after all of it


async def test_a_context_variable_set_inside_stays_inside(service: Any, client: Any) -> None:
    """Each call runs in a copy of the context, as a task would: what a handler sets is not
    seen by the next call."""

    @service.register
    async def set_and_read(value: str) -> str:
        before = var.get()
        var.set(value)
        return before

    assert await client.set_and_read("first") == "unset"
    assert await client.set_and_read("second") == "unset"
    assert var.get() == "unset"


async def test_what_a_sync_handler_sets_stays_in_its_call(service: Any, client: Any) -> None:
    """A sync handler run inline runs in a copy of the context too: a value it sets is not
    seen by the calls after it, another caller's included (it was, before session 16)."""

    @service.register
    def set_sync(value: str) -> str:
        before = var.get()
        var.set(value)
        return before

    @service.register
    def read_sync() -> str:
        return var.get()

    @service.register
    async def read_async() -> str:
        return var.get()

    assert await client.set_sync("caller one's secret") == "unset"
    assert await client.read_sync() == "unset"
    assert await client.read_async() == "unset"
    assert await client.set_sync("again") == "unset"


async def test_a_sync_handler_that_returns_a_coroutine_passes_its_context_on(
    service: Any, client: Any
) -> None:
    """A sync decorator that sets up per-call state and returns the coroutine: the coroutine's
    task runs in the context the sync part set (one call, one context), and the next call
    starts afresh."""

    def with_request_id(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            var.set(f"req-{current_call().method}")
            return fn(*args, **kwargs)

        return wrapper

    @service.register
    @with_request_id
    async def decorated() -> str:
        await asyncio.sleep(0)
        return var.get()

    @service.register
    def read_sync() -> str:
        return var.get()

    assert await client.decorated() == "req-decorated"
    assert await client.read_sync() == "unset"


async def test_many_in_flight_and_streams_beside_them(service: Any, client: Any) -> None:
    @service.register
    async def square(x: int) -> int:
        return x * x

    @service.register
    async def numbers(n: int) -> Any:
        for i in range(n):
            yield i

    results = await asyncio.gather(*(client.square(i) for i in range(500)))
    assert results == [i * i for i in range(500)]
    assert [x async for x in client.numbers(50)] == list(range(50))
    assert service._dispatch.calls == {}


async def test_a_stream_returned_by_one_is_streamed(service: Any, client: Any) -> None:
    """An ``async def`` that returns a generator (no await) opens a stream, as before."""

    async def items() -> Any:
        yield "a"
        yield "b"

    @service.register
    async def make_stream() -> Any:
        return items()

    assert [x async for x in client.make_stream()] == ["a", "b"]


async def test_with_middleware_it_runs_through_the_chain(
    make_service: Any, make_client: Any, endpoint: str
) -> None:
    order: list[str] = []

    async def mw(ctx: Any, call_next: Any) -> Any:
        order.append("before")
        result = await call_next()
        order.append("after")
        return result

    svc = make_service(middleware=[mw])

    @svc.register
    async def quick() -> str:
        order.append("handler")
        return "ok"

    svc.bind(endpoint)
    svc.start()
    cli = make_client()
    cli.connect(endpoint)
    assert await cli.quick() == "ok"
    assert order == ["before", "handler", "after"]


async def test_what_needs_a_current_task_finds_one(service: Any, client: Any) -> None:
    """sniffio (and so anyio's primitives) and asyncio.current_task() work inside."""
    sniffio = pytest.importorskip("sniffio")
    anyio = pytest.importorskip("anyio")

    @service.register
    async def which() -> list[Any]:
        event = anyio.Event()  # asks sniffio which library runs
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the host is done: nothing happens
        return [sniffio.current_async_library(), event.is_set(), anyio.get_current_task().name]

    assert await client.which() == ["asyncio", False, "netcall: handler with no await"]
    assert await client.which() == ["asyncio", False, "netcall: handler with no await"]


_ran: list[int] = []


async def _edited(x: int) -> int:
    return x


async def _after_the_edit(x: int) -> int:
    _ran.append(x)
    await asyncio.sleep(0)
    return x * 2


async def test_a_handler_whose_code_is_swapped_for_one_that_awaits(
    service: Any, client: Any
) -> None:
    """A reload that replaces ``__code__`` (IPython's autoreload, jurigged) and adds an await:
    the handler then runs as a task, once, as its new code says."""
    _ran.clear()
    handler = types.FunctionType(_edited.__code__, globals(), "edited")  # (one to edit)
    service.register(handler, name="edited")
    assert await client.edited(1) == 1
    handler.__code__ = _after_the_edit.__code__
    assert await client.edited(2) == 4
    assert _ran == [2]


async def test_generator_exit_inside_is_answered_and_nothing_more(
    service: Any, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A BaseException that is neither KeyboardInterrupt nor SystemExit ends in the call, as
    in a task: answered, and not raised again from the loop (no "Exception in callback")."""

    class Abort(BaseException):
        pass

    @service.register
    async def genexit() -> None:
        raise GeneratorExit

    @service.register
    async def abort() -> None:
        raise Abort

    for method in ("genexit", "abort"):
        with pytest.raises(RemoteRPCError) as info:
            await client.call(method)
        assert "the handler was interrupted" in str(info.value)
    await asyncio.sleep(0.05)  # the loop's next turns, where a re-raise would land
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_a_loop_task_factory_still_sees_the_handler(
    make_service: Any, make_client: Any, endpoint: str
) -> None:
    made: list[str] = []
    loop = asyncio.get_running_loop()

    def factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
        made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    svc = make_service()

    @svc.register
    async def quick() -> int:
        return 1

    svc.bind(endpoint)
    svc.start()
    cli = make_client()
    cli.connect(endpoint)
    loop.set_task_factory(factory)
    try:
        assert await cli.quick() == 1
    finally:
        loop.set_task_factory(None)
    assert any(name.endswith("quick") for name in made), made


async def test_the_host_task_keeps_no_call(service: Any, client: Any) -> None:
    """The host task outlives the calls; made in an empty context, it holds none of them."""
    import gc

    from netcall import CallContext

    @service.register
    async def first(blob: bytes) -> int:
        return len(blob)

    assert await client.first(b"x" * 1000) == 1000  # (the host is made during this call)
    assert await client.first(b"y") == 1
    gc.collect()
    held = [o for o in gc.get_objects() if type(o) is CallContext and o.method == "first"]
    assert held == [], "a call's context is still held"
