"""Service middleware: the chain around a handler (calls and stream openings).

With middleware, a call runs as ``run_service_chain(middleware, ctx, endpoint)`` in the call's
task, where ``endpoint`` (:meth:`ServiceChain.endpoint`) runs the handler where it would run
without middleware (its task, the executor, the handler runner). A handler that returns a
stream gives the middleware an async stream: an async generator as is, a sync generator as a
:class:`SyncStream` whose steps still run through the runner. A middleware may return another
stream wrapping it; the producer streams whatever the chain returned, and closes the
handler's own generator too when it ends.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, Awaitable, Generator, Sequence
from typing import Any

from .._context import CallContext
from .._middleware import ServiceMiddleware, service_chain_step
from .registry import Handler
from .runner import Runner
from .streams import sync_step

__all__ = ["ServiceChain", "SyncStream", "Tied", "is_stream"]


class ServiceChain:
    """The service's middleware (outermost first) and how to run a call through it."""

    __slots__ = ("middleware", "runner")

    def __init__(self, runner: Runner, middleware: Sequence[ServiceMiddleware] = ()) -> None:
        self.runner = runner
        self.middleware: tuple[ServiceMiddleware, ...] = tuple(middleware)

    def add(self, mw: ServiceMiddleware, outermost: bool) -> None:
        self.middleware = (mw, *self.middleware) if outermost else (*self.middleware, mw)

    async def run(
        self, handler: Handler, args: Any, kwargs: dict[str, Any], ctx: CallContext
    ) -> Any:
        """The call through the middleware: its result, or the stream to produce (a plain
        generator again when no middleware wrapped it)."""
        origin: list[Any] = []
        endpoint = functools.partial(self.endpoint, handler, args, kwargs, origin)
        result = await service_chain_step(self.middleware, ctx, endpoint)
        if not origin or not is_stream(result):
            return result
        gen = origin[0]
        if result is gen:  # an async generator nobody wrapped
            return gen
        if isinstance(result, SyncStream) and result.gen is gen:
            return gen  # the producer's own fast path for plain generators
        return Tied(result, gen, self.runner)

    async def endpoint(
        self, handler: Handler, args: Any, kwargs: dict[str, Any], origin: list[Any]
    ) -> Any:
        """The innermost link: run the handler; a sync generator comes back as a SyncStream.
        The handler's own generator goes into ``origin``."""
        runner = self.runner
        if handler.is_async:
            result = await handler.fn(*args, **kwargs)
        elif runner.inline:
            result = handler.fn(*args, **kwargs)
            if inspect.isawaitable(result):  # e.g. a Tornado coroutine
                result = await result
        else:
            result = await runner.run(functools.partial(handler.fn, *args, **kwargs))
        if inspect.isgenerator(result):
            origin.append(result)
            return SyncStream(result, runner)
        if inspect.isasyncgen(result):
            origin.append(result)
        return result


def is_stream(value: Any) -> bool:
    """Whether a middleware chain's result is a stream (anything with the async generator
    protocol: the handler's async generator, a SyncStream, a middleware's wrapper)."""
    return (
        inspect.isasyncgen(value)
        or isinstance(value, SyncStream)
        or (hasattr(value, "__anext__") and hasattr(value, "aclose"))
    )


class SyncStream:
    """A sync generator seen as an async one; each step runs through the service's runner
    (inline, executor, greenlet), as it would without middleware."""

    __slots__ = ("gen", "runner")

    def __init__(self, gen: Generator[Any, Any, Any], runner: Runner) -> None:
        self.gen = gen
        self.runner = runner

    @property
    def gi_running(self) -> bool:
        return bool(getattr(self.gen, "gi_running", False))

    def __aiter__(self) -> SyncStream:
        return self

    async def _run(self, fn: Any, value: Any) -> Any:
        step = functools.partial(sync_step, fn, value)
        done, item = step() if self.runner.inline else await self.runner.run(step)
        if done:
            raise StopAsyncIteration
        return item

    def __anext__(self) -> Awaitable[Any]:
        return self._run(self.gen.send, None)

    def asend(self, value: Any) -> Awaitable[Any]:
        return self._run(self.gen.send, value)

    def athrow(self, exc: Any, *_: Any) -> Awaitable[Any]:
        return self._run(self.gen.throw, exc)

    async def aclose(self) -> None:
        if self.runner.inline:
            self.gen.close()
        else:
            await self.runner.run(self.gen.close)

    def __repr__(self) -> str:
        return f"<stream of {self.gen!r}>"


class Tied:
    """A middleware's stream, tied to the handler's own generator: closing it also closes the
    handler's (a wrapper that forgets to close what it wraps cannot leak it)."""

    __slots__ = ("gen", "origin", "runner")

    def __init__(
        self,
        stream: Any,
        origin: Generator[Any, Any, Any] | AsyncGenerator[Any, Any],
        runner: Runner,
    ) -> None:
        self.gen = stream
        self.origin = origin
        self.runner = runner

    @property
    def gi_running(self) -> bool:
        return bool(getattr(self.origin, "gi_running", False))

    def __aiter__(self) -> Tied:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self.gen.__anext__()  # type: ignore[no-any-return]

    def asend(self, value: Any) -> Awaitable[Any]:
        return self.gen.asend(value)  # type: ignore[no-any-return]

    def athrow(self, exc: Any, *_: Any) -> Awaitable[Any]:
        return self.gen.athrow(exc)  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        try:
            await self.gen.aclose()
        finally:
            origin = self.origin
            if not isinstance(origin, Generator):
                await origin.aclose()
            elif inspect.getgeneratorstate(origin) != inspect.GEN_CLOSED:  # the wrapper did not
                await SyncStream(origin, self.runner).aclose()
