"""Calls not yet made: ``client.name`` (:class:`Method`), ``client.name(...)`` (:class:`Call`,
awaitable, or ``async for`` over a stream), ``client.with_options(...)`` (:class:`Options`).

They hold only an :data:`Invoke` function (the client's way to make a call), never the client.
"""

from __future__ import annotations

import asyncio
import numbers
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from threading import get_ident
from typing import Any, TypeVar

from .._context import CallContext, _current
from ..errors import RPCError, RPCTimeoutError
from .generator import RemoteGenerator

__all__ = ["UNSET", "Call", "Invoke", "Method", "Options", "checked_name", "checked_timeout"]

#: ``timeout`` not given: the client's default applies.
UNSET: Any = object()

T = TypeVar("T")

#: ``invoke(method, args, kwargs, timeout, oneway, prefetch, metadata, parent)`` makes one call
#: and returns its result (a :class:`RemoteGenerator` for a stream; ``prefetch``: open it
#: prefetching; ``parent``: the call being served where this one was made, or ``None``).
Invoke = Callable[..., Awaitable[Any]]

_Metadata = Mapping[str, str] | None


def checked_timeout(timeout: Any) -> Any:
    """``timeout`` as given: :data:`UNSET`, ``None`` or a number of seconds.

    Raises:
        TypeError: it is not a number (a bool is not one).
        ValueError: it is NaN.
    """
    kind = type(timeout)
    if kind is float or kind is int or timeout is UNSET or timeout is None:
        if timeout != timeout:
            raise ValueError("timeout must be a number of seconds or None, not NaN")
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {kind.__name__}")
    return checked_timeout(float(timeout))


def checked_name(name: Any) -> str:
    """``name``, a method's name.

    Raises:
        TypeError: it is not a ``str``.
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name is a str, not {type(name).__name__}")
    return name


class Options:
    """``client.with_options(...)``: calls through it carry these options."""

    __slots__ = ("_invoke", "_metadata", "_oneway", "_timeout")

    def __init__(self, invoke: Invoke, timeout: Any, oneway: bool, metadata: _Metadata) -> None:
        self._invoke = invoke
        self._timeout = checked_timeout(timeout)
        self._oneway = oneway
        self._metadata = metadata

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return Method(self._invoke, name, self._timeout, self._oneway, self._metadata)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Call:
        name = checked_name(name)
        return Call(self._invoke, name, args, kwargs, self._timeout, self._oneway, self._metadata)

    def typed(self, protocol: Callable[..., T]) -> T:
        """This view, typed as ``protocol`` (see :meth:`netcall.RPCClient.typed`)."""
        return self  # type: ignore[return-value]


class Method:
    """``client.name``: call it; its attributes are dotted sub-names."""

    __slots__ = ("_invoke", "_metadata", "_name", "_oneway", "_timeout")

    def __init__(
        self, invoke: Invoke, name: str, timeout: Any, oneway: bool, metadata: _Metadata = None
    ) -> None:
        self._invoke = invoke
        self._name = name
        self._timeout = timeout
        self._oneway = oneway
        self._metadata = metadata

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return Method(
            self._invoke, f"{self._name}.{name}", self._timeout, self._oneway, self._metadata
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Call:
        return Call(
            self._invoke, self._name, args, kwargs, self._timeout, self._oneway, self._metadata
        )

    def __repr__(self) -> str:
        return f"<remote method {self._name!r}>"


class Call:
    """A call not yet made: ``await`` it for the result, or ``async for`` over a stream.

    It is also a coroutine, so it can be spawned: ``task_group.start_soon(client.name, x)``
    (anyio, trio) or ``asyncio.create_task(client.name(x))``.
    """

    __slots__ = (
        "_args",
        "_coro",
        "_invoke",
        "_kwargs",
        "_metadata",
        "_name",
        "_oneway",
        "_parent",
        "_thread",
        "_timeout",
    )
    _coro: Generator[Any, Any, Any]  # set only when driven as a coroutine

    def __init__(
        self,
        invoke: Invoke,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Any,
        oneway: bool,
        metadata: _Metadata = None,
    ) -> None:
        self._invoke = invoke
        self._name = name
        self._args = args
        self._kwargs = kwargs
        self._timeout = timeout
        self._oneway = oneway
        self._metadata = metadata
        # The call being served here, if any (read now: a bridge awaits in another thread).
        parent = self._parent = _current.get()
        self._thread = get_ident() if parent is not None else 0

    def _make(self, prefetch: bool) -> Awaitable[Any]:
        call = self._invoke(
            self._name,
            self._args,
            self._kwargs,
            self._timeout,
            self._oneway,
            prefetch,
            self._metadata,
            self._parent,
        )
        parent = self._parent
        if parent is not None and parent._task is not None and self._thread != get_ident():
            # Made for a handler from another thread (a blocking client in an executor
            # thread): nothing would cancel it with the handler's task; the link does.
            return _linked(call, parent, self._name)
        return call

    def __await__(self) -> Generator[Any, None, Any]:
        return self._make(False).__await__()

    def __aiter__(self) -> StreamIterator:
        return StreamIterator(self)

    # Driven as a coroutine (a task runs it): the call's own coroutine, made on first use.
    # Awaiting it never comes here, so the common path keeps no extra state.
    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, *exc: Any) -> Any:
        return self._coroutine().throw(*exc)

    def close(self) -> None:
        coro = getattr(self, "_coro", None)
        if coro is not None:
            coro.close()

    def _coroutine(self) -> Generator[Any, Any, Any]:
        try:
            return self._coro
        except AttributeError:
            coro = self._coro = self.__await__()
            return coro

    def __repr__(self) -> str:
        return f"<call {self._name}(...)>"


Coroutine.register(Call)


class StreamIterator:
    """``async for x in client.stream(...)``: opens the stream with a prefetch window."""

    __slots__ = ("_call", "_gen")

    def __init__(self, call: Call) -> None:
        self._call = call
        self._gen: Any = None  # the stream (a RemoteGenerator, or a middleware's wrapper)

    def __aiter__(self) -> StreamIterator:
        return self

    def __anext__(self) -> Awaitable[Any]:
        gen = self._gen
        if gen is None:
            return self._open_and_next()
        return gen.__anext__()  # type: ignore[no-any-return]

    async def _open_and_next(self) -> Any:
        gen = self._gen
        if gen is None:
            c = self._call
            c._oneway = False
            result = await c._make(True)
            if not isinstance(result, RemoteGenerator) and not hasattr(result, "__anext__"):
                raise TypeError(f"{c._name!r} returned a value, not a stream")
            gen = self._gen = result
        return await gen.__anext__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()


async def _linked(call: Awaitable[Any], parent: CallContext, name: str) -> Any:
    """``call``, cancelled if the served call's task is cancelled first. The served call may
    run on another loop (a blocking client's calls run on netcall's own loop thread).

    Raises:
        RPCTimeoutError: the served call's deadline passed, so this call was cancelled.
        RPCError: the served call was cancelled, so this one was (on the service too).
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # Read on the served call's loop: while the handler's first step runs (an eager start)
    # this is a TaskStarting, and the service records the task before that loop moves on.
    served = parent._task
    if served is None:  # the served call ended meanwhile: nothing left to tie this one to
        return await call
    served_loop = served.get_loop()
    linked: list[asyncio.Future[Any]] = []  # the served call's task, once linked
    served_cancelled: list[bool] = []

    def cancel(served: asyncio.Future[Any]) -> None:  # on the served call's loop
        if served.cancelled():
            served_cancelled.append(True)
            try:
                loop.call_soon_threadsafe(_cancel, task)
            except RuntimeError:  # our loop is closed: nothing left to cancel
                pass

    def link(add: bool) -> None:  # on the served call's loop
        if add:
            now = parent._task
            if isinstance(now, asyncio.Future):
                linked.append(now)
                now.add_done_callback(cancel)
        elif linked:
            linked.pop().remove_done_callback(cancel)

    _on_loop(served_loop, loop, link, True)
    try:
        return await call
    except asyncio.CancelledError:
        if not served_cancelled:
            raise
        if hasattr(task, "uncancel"):
            task.uncancel()
        if parent.deadline is not None and parent.deadline.expired:
            raise RPCTimeoutError(
                f"{name!r}: the deadline of the call being served passed"
            ) from None
        raise RPCError(f"{name!r} was cancelled: the call being served was cancelled") from None
    finally:
        _on_loop(served_loop, loop, link, False)


def _on_loop(
    target: asyncio.AbstractEventLoop,
    here: asyncio.AbstractEventLoop,
    fn: Callable[[Any], Any],
    arg: Any,
) -> None:
    if target is here:
        fn(arg)
        return
    try:
        target.call_soon_threadsafe(fn, arg)
    except RuntimeError:  # that loop is closed: its task will never be cancelled now
        pass


def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
