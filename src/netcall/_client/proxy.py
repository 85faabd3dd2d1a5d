"""Calls not yet made: ``client.name`` (:class:`Method`), ``client.name(...)`` (:class:`Call`,
awaitable, or ``async for`` over a stream), ``client.with_options(...)`` (:class:`Options`).

They hold only an :data:`Invoke` function (the client's way to make a call), never the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, TypeVar

from .._context import _current
from .generator import RemoteGenerator

__all__ = ["UNSET", "Call", "Invoke", "Method", "Options"]

#: ``timeout`` not given: the client's default applies.
UNSET: Any = object()

T = TypeVar("T")

#: ``invoke(method, args, kwargs, timeout, oneway, prefetch, metadata, parent)`` makes one call
#: and returns its result (a :class:`RemoteGenerator` for a stream; ``prefetch``: open it
#: prefetching; ``parent``: the call being served where this one was made, or ``None``).
Invoke = Callable[..., Awaitable[Any]]

_Metadata = Mapping[str, str] | None


class Options:
    """``client.with_options(...)``: calls through it carry these options."""

    __slots__ = ("_invoke", "_metadata", "_oneway", "_timeout")

    def __init__(self, invoke: Invoke, timeout: Any, oneway: bool, metadata: _Metadata) -> None:
        self._invoke = invoke
        self._timeout = timeout
        self._oneway = oneway
        self._metadata = metadata

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return Method(self._invoke, name, self._timeout, self._oneway, self._metadata)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Call:
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
    """A call not yet made: ``await`` it for the result, or ``async for`` over a stream."""

    __slots__ = (
        "_args",
        "_invoke",
        "_kwargs",
        "_metadata",
        "_name",
        "_oneway",
        "_parent",
        "_timeout",
    )

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
        self._parent = _current.get()

    def _make(self, prefetch: bool) -> Awaitable[Any]:
        return self._invoke(
            self._name,
            self._args,
            self._kwargs,
            self._timeout,
            self._oneway,
            prefetch,
            self._metadata,
            self._parent,
        )

    def __await__(self) -> Generator[Any, None, Any]:
        return self._make(False).__await__()

    def __aiter__(self) -> StreamIterator:
        return StreamIterator(self)

    def __repr__(self) -> str:
        return f"<call {self._name}(...)>"


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
