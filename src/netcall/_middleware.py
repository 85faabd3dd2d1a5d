"""Middleware: the chain runner, the outgoing call a client middleware sees, stream observers.

Pure: no sockets, no event loop of its own. The core calls :func:`compose_client` once per
client (and again when its middleware changes) and :func:`run_service_chain` once per call or
stream opening; neither is on the path of a client or service without middleware.

Rules of the chain:

* Middleware runs in the order given, outermost first: ``[a, b]`` runs ``a``'s code before
  ``call_next``, then ``b``'s, then the call, then ``b``'s code after it, then ``a``'s.
* Service side, ``await call_next()`` runs the rest of the chain and the handler once; a second
  call raises ``RuntimeError``. What it returns (or raises) is the call's result (or error),
  and a middleware may return something else, or raise: the caller gets that.
* Client side, ``await call_next(call)`` makes the call (through the inner middleware) and
  returns its result. Each ``call_next(call)`` makes a new attempt, so a retry is a loop around
  it; each returned awaitable is awaited once.
* For a stream, the result is the stream: an async iterator with the generator protocol
  (``asend``/``athrow``/``aclose``). :func:`observe_stream` wraps one to see its items and end.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._context import CallContext

__all__ = [
    "ClientMiddleware",
    "OutgoingCall",
    "ServiceMiddleware",
    "compose_client",
    "observe_stream",
    "run_service_chain",
]


class OutgoingCall:
    """A call on its way out, as client middleware sees it; every field may be changed.

    Attributes:
        method: the remote method's name (``"math.add"``).
        args: positional arguments.
        kwargs: keyword arguments.
        metadata: the call's metadata (``str`` keys and values); add or change entries here.
            It is checked against the limits when the call is sent (``ValueError`` then).
        timeout: seconds the call may take (``None``: no limit); within a handler the call
            still ends by the current call's deadline, unless the client opted out.
        oneway: the client does not wait for a result.
    """

    __slots__ = (
        "_parent",
        "_prefetch",
        "args",
        "kwargs",
        "metadata",
        "method",
        "oneway",
        "timeout",
    )

    def __init__(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        metadata: dict[str, str],
        timeout: float | None,
        oneway: bool = False,
        prefetch: bool = False,
        parent: CallContext | None = None,
    ) -> None:
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.metadata = metadata
        self.timeout = timeout
        self.oneway = oneway
        # Private to the core: open a stream prefetching (``async for``), and the call being
        # served where this call was made (captured in the caller's thread), for its deadline.
        self._prefetch = prefetch
        self._parent = parent

    def __repr__(self) -> str:
        return f"<OutgoingCall {self.method}(...) timeout={self.timeout} metadata={self.metadata}>"


#: ``async def mw(call, call_next)``; ``call_next(call)`` makes the call.
ClientMiddleware = Callable[
    [OutgoingCall, Callable[[OutgoingCall], Awaitable[Any]]],
    Awaitable[Any],
]

#: ``async def mw(ctx, call_next)``; ``await call_next()`` runs the handler.
ServiceMiddleware = Callable[["CallContext", Callable[[], Awaitable[Any]]], Awaitable[Any]]


def check_middleware(middleware: Sequence[Any] | None) -> tuple[Any, ...]:
    """The middleware as a tuple, checked to be callables.

    Raises:
        TypeError: an entry is not callable (or ``middleware`` is a single callable).
    """
    if middleware is None:
        return ()
    if callable(middleware):
        raise TypeError("middleware takes a list of callables, not a single one")
    items = tuple(middleware)
    for mw in items:
        if not callable(mw):
            raise TypeError(f"middleware must be callables, got {mw!r}")
    return items


# -- client side ---------------------------------------------------------------------------


class _ClientLink:
    """One middleware with the rest of the chain as its ``call_next``."""

    __slots__ = ("mw", "rest")

    def __init__(self, mw: ClientMiddleware, rest: Callable[[OutgoingCall], Awaitable[Any]]):
        self.mw = mw
        self.rest = rest

    def __call__(self, call: OutgoingCall) -> Awaitable[Any]:
        return self.mw(call, self.rest)


def compose_client(
    middleware: Sequence[ClientMiddleware], endpoint: Callable[[OutgoingCall], Awaitable[Any]]
) -> Callable[[OutgoingCall], Awaitable[Any]]:
    """The chain as one callable: ``await chain(call)`` runs ``middleware`` (outermost first)
    around ``endpoint``. Built once; calling it allocates nothing but the middleware's own
    coroutines."""
    chain = endpoint
    for mw in reversed(middleware):
        chain = _ClientLink(mw, chain)
    return chain


# -- service side --------------------------------------------------------------------------


class _ServiceLink:
    """``call_next`` for the middleware at ``index``: may be called once."""

    __slots__ = ("ctx", "endpoint", "index", "middleware", "used")

    def __init__(
        self,
        middleware: Sequence[ServiceMiddleware],
        index: int,
        ctx: CallContext,
        endpoint: Callable[[], Awaitable[Any]],
    ) -> None:
        self.middleware = middleware
        self.index = index
        self.ctx = ctx
        self.endpoint = endpoint
        self.used = False

    def __call__(self) -> Awaitable[Any]:
        if self.used:
            raise RuntimeError("call_next() runs the handler and may be called only once")
        self.used = True
        i = self.index
        if i == len(self.middleware):
            return self.endpoint()
        return self.middleware[i](
            self.ctx, _ServiceLink(self.middleware, i + 1, self.ctx, self.endpoint)
        )


def service_chain_step(
    middleware: Sequence[ServiceMiddleware],
    ctx: CallContext,
    endpoint: Callable[[], Awaitable[Any]],
) -> Awaitable[Any]:
    """The awaitable that runs ``middleware`` (outermost first) around ``endpoint`` (the
    handler) for ``ctx``: the outermost middleware's.

    Raises:
        TypeError: the outermost middleware did not return an awaitable (an inner one that
            does not is reported when awaited).
    """
    step = _ServiceLink(middleware, 0, ctx, endpoint)()
    if not hasattr(step, "__await__"):
        raise TypeError(
            f"middleware {middleware[0]!r} returned {type(step).__name__}, not an awaitable; "
            "middleware must be async def (ctx, call_next)"
        )
    return step


async def run_service_chain(
    middleware: Sequence[ServiceMiddleware],
    ctx: CallContext,
    endpoint: Callable[[], Awaitable[Any]],
) -> Any:
    """Run ``middleware`` (outermost first) around ``endpoint`` (the handler) for ``ctx``.

    Raises:
        whatever the middleware or the handler raise; ``TypeError`` if a middleware does not
        return an awaitable.
    """
    return await service_chain_step(middleware, ctx, endpoint)


# -- streams -------------------------------------------------------------------------------


class _Stepper(Protocol):
    def __call__(self) -> contextlib.AbstractContextManager[Any]: ...


class ObservedStream(AsyncIterator[Any]):
    """A stream seen through ``on_item`` and ``on_end``; everything else is passed through.

    ``on_item(item)`` runs for each item the stream produces (``__anext__``, ``asend``,
    ``athrow``); ``on_end(error)`` runs exactly once, when the stream ends: ``None`` when it
    was exhausted or closed, else the exception that ended it (a cancellation included). If
    the wrapper is dropped unfinished, ``on_end(None)`` runs when it is collected. ``around``,
    if given, returns a context manager entered around each step (to make a span current while
    the producer runs, for instance).
    """

    __slots__ = ("_around", "_ended", "_inner", "_on_end", "_on_item")

    def __init__(
        self,
        stream: Any,
        on_item: Callable[[Any], None] | None = None,
        on_end: Callable[[BaseException | None], None] | None = None,
        around: _Stepper | None = None,
    ) -> None:
        self._inner = stream
        self._on_item = on_item
        self._on_end = on_end
        self._around = around
        self._ended = False

    @property
    def inner(self) -> Any:
        """The stream being observed."""
        return self._inner

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._on_end is not None:
            self._on_end(error)

    async def _step(self, step: Callable[[], Awaitable[Any]]) -> Any:
        if self._ended:
            # Whatever the inner stream says now (normally StopAsyncIteration).
            return await step()
        try:
            if self._around is None:
                item = await step()
            else:
                with self._around():
                    item = await step()
        except (StopAsyncIteration, GeneratorExit):
            self._end(None)
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        if self._on_item is not None:
            self._on_item(item)
        return item

    def __aiter__(self) -> ObservedStream:
        aiter = getattr(self._inner, "__aiter__", None)
        if aiter is not None:
            # A remote generator switches to prefetching here; keep stepping what it returns.
            self._inner = aiter()
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._step(self._inner.__anext__)

    async def asend(self, value: Any) -> Any:
        """Send ``value`` into the stream; return its next item."""
        return await self._step(lambda: self._inner.asend(value))

    async def athrow(self, *exc: Any) -> Any:
        """Throw into the stream at its current item; return its next item."""
        return await self._step(lambda: self._inner.athrow(*exc))

    async def aclose(self) -> None:
        """Close the stream (its ``finally`` blocks run); ``on_end(None)`` runs."""
        try:
            if self._around is None or self._ended:
                await self._inner.aclose()
            else:
                with self._around():
                    await self._inner.aclose()
        finally:
            self._end(None)

    async def __aenter__(self) -> ObservedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not getattr(self, "_ended", True):
            try:
                self._end(None)
            except Exception:  # a finalizer never raises
                pass

    def __repr__(self) -> str:
        return f"<observed {self._inner!r}>"


def observe_stream(
    stream: Any,
    on_item: Callable[[Any], None] | None = None,
    on_end: Callable[[BaseException | None], None] | None = None,
    around: _Stepper | None = None,
) -> ObservedStream:
    """Wrap ``stream`` (an async generator, or a remote generator) to see its items and end;
    see :class:`ObservedStream`. Return the wrapper from a middleware in place of the stream."""
    return ObservedStream(stream, on_item, on_end, around)
