"""Calls not yet made: ``client.name`` (:class:`Method`), ``client.name(...)`` (:class:`Call`,
awaitable, or ``async for`` over a stream), ``client.with_options(...)`` (:class:`Options`).

They hold only an :data:`Invoke` function (the client's way to make a call), never the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import Any

from .generator import RemoteGenerator

__all__ = ["UNSET", "Call", "Invoke", "Method", "Options"]

#: ``timeout`` not given: the client's default applies.
UNSET: Any = object()

#: ``invoke(method, args, kwargs, timeout, oneway, prefetch)`` makes one call and returns its
#: result (a :class:`RemoteGenerator` for a stream; ``prefetch``: open it prefetching).
Invoke = Callable[[str, tuple[Any, ...], dict[str, Any], Any, bool, bool], Awaitable[Any]]


class Options:
    """``client.with_options(...)``: calls through it carry these options."""

    __slots__ = ("_invoke", "_oneway", "_timeout")

    def __init__(self, invoke: Invoke, timeout: Any, oneway: bool) -> None:
        self._invoke = invoke
        self._timeout = timeout
        self._oneway = oneway

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return Method(self._invoke, name, self._timeout, self._oneway)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Call:
        return Call(self._invoke, name, args, kwargs, self._timeout, self._oneway)


class Method:
    """``client.name``: call it; its attributes are dotted sub-names."""

    __slots__ = ("_invoke", "_name", "_oneway", "_timeout")

    def __init__(self, invoke: Invoke, name: str, timeout: Any, oneway: bool) -> None:
        self._invoke = invoke
        self._name = name
        self._timeout = timeout
        self._oneway = oneway

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return Method(self._invoke, f"{self._name}.{name}", self._timeout, self._oneway)

    def __call__(self, *args: Any, **kwargs: Any) -> Call:
        return Call(self._invoke, self._name, args, kwargs, self._timeout, self._oneway)

    def __repr__(self) -> str:
        return f"<remote method {self._name!r}>"


class Call:
    """A call not yet made: ``await`` it for the result, or ``async for`` over a stream."""

    __slots__ = ("_args", "_invoke", "_kwargs", "_name", "_oneway", "_timeout")

    def __init__(
        self,
        invoke: Invoke,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Any,
        oneway: bool,
    ) -> None:
        self._invoke = invoke
        self._name = name
        self._args = args
        self._kwargs = kwargs
        self._timeout = timeout
        self._oneway = oneway

    def __await__(self) -> Generator[Any, None, Any]:
        return self._invoke(
            self._name, self._args, self._kwargs, self._timeout, self._oneway, False
        ).__await__()

    def __aiter__(self) -> StreamIterator:
        return StreamIterator(self)

    def __repr__(self) -> str:
        return f"<call {self._name}(...)>"


class StreamIterator:
    """``async for x in client.stream(...)``: opens the stream with a prefetch window."""

    __slots__ = ("_call", "_gen")

    def __init__(self, call: Call) -> None:
        self._call = call
        self._gen: RemoteGenerator | None = None

    def __aiter__(self) -> StreamIterator:
        return self

    def __anext__(self) -> Awaitable[Any]:
        gen = self._gen
        if gen is None:
            return self._open_and_next()
        return gen.__anext__()

    async def _open_and_next(self) -> Any:
        gen = self._gen
        if gen is None:
            c = self._call
            result = await c._invoke(c._name, c._args, c._kwargs, c._timeout, False, True)
            if not isinstance(result, RemoteGenerator):
                raise TypeError(f"{c._name!r} returned a value, not a stream")
            gen = self._gen = result
        return await gen.__anext__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()
