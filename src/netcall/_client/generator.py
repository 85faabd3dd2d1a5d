"""The user's handle on a stream, :class:`RemoteGenerator` (an async generator driven over the
wire), and :class:`ItemBatches`, the one place the bridges batch stream items."""

from __future__ import annotations

import types
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Generator
from types import TracebackType
from typing import Any

from anyio import EndOfStream
from anyio.abc import ObjectReceiveStream

from .. import protocol as p
from .._edge import serializer_error
from ..errors import StreamBusyError, exception_to_remote
from ..protocol.session import first_credit
from .streams import ConsumerStream

__all__ = ["ItemBatches", "RemoteGenerator", "close_quietly", "ready"]

_C = p.ClientStreamState
_LOCKSTEP = _C.LOCKSTEP
_PREFETCH = _C.PREFETCH
_DONE = _C.DONE


@types.coroutine
def ready(value: Any) -> Generator[Any, None, Any]:
    """An awaitable that is already done with ``value``."""
    return value
    yield  # type: ignore[unreachable]  # makes this a generator


class RemoteGenerator(ObjectReceiveStream[Any], AsyncIterator[Any]):
    """A generator running on a service, driven from here.

    ``asend``, ``athrow``, ``__anext__`` are lock-step: one round trip each, exactly the
    generator's semantics. ``async for`` switches to prefetch: the service runs up to the
    client's ``window`` items ahead, and ``asend``/``athrow`` are no longer allowed.
    ``aclose()`` (or leaving ``async with``, or dropping the last reference) closes the
    generator on the service, running its ``finally`` blocks.

    Each step has the call's timeout; a step that times out raises
    :class:`~netcall.errors.RPCTimeoutError` and closes the stream.

    Every step (``__anext__``, ``asend``, ``athrow``) raises ``StopAsyncIteration`` at the end,
    the generator's own exception as :class:`~netcall.errors.RemoteRPCError` (a builtin type
    arrives as that type too), :class:`~netcall.errors.RPCTimeoutError`,
    :class:`~netcall.errors.ConnectionLostError` or :class:`~netcall.errors.ClientClosedError`
    when the stream broke, and :class:`~netcall.errors.StreamBusyError` (a RuntimeError) when
    another step is running.

    It is also an anyio :class:`~anyio.abc.ObjectReceiveStream`: :meth:`receive` gives the next
    item (prefetching, like ``async for``) and raises :class:`anyio.EndOfStream` at the end, so
    it plugs into anyio code that takes a receive stream.
    """

    __slots__ = ("_state",)  # anyio's bases already give a __dict__ and __weakref__

    def __init__(self, state: ConsumerStream) -> None:
        self._state = state

    def __aiter__(self) -> RemoteGenerator:
        st = self._state
        if st.state is _LOCKSTEP:
            credit = first_credit(st.table.window)
            st.granted = st.consumed
            st.grant(credit)
        return self

    # anyio declares a coroutine; a buffered item returns a ready awaitable instead (no coroutine
    # and no loop turn per item).
    def __anext__(self) -> Awaitable[Any]:  # type: ignore[override]
        st = self._state
        if st.state is _PREFETCH and st.buffer and not st.running:
            # The item is already here: no coroutine, no loop turn.
            return ready(st.take())
        return self._anext()

    async def _anext(self) -> Any:
        st = self._state
        if st.state is not _PREFETCH:
            return await self._step(None, None)
        if st.running:
            raise StreamBusyError("anext(): the stream is already being read")
        st.running = True
        try:
            while not st.buffer and st.state is not _DONE:
                await st.wait()
            return st.take()
        finally:
            st.running = False

    async def _anext_payloads(self, limit: int) -> list[bytes]:
        """The next item's payload of a prefetching stream, with those already buffered
        behind it (at most ``limit``), undecoded (see :class:`ItemBatches`).

        Raises what ``__anext__`` raises when nothing is left.
        """
        st = self._state
        if st.running:
            raise StreamBusyError("anext(): the stream is already being read")
        st.running = True
        try:
            while not st.buffer and st.state is not _DONE:
                await st.wait()
            out = [st.take_raw()]
            while st.buffer and len(out) < limit:
                out.append(st.take_raw())
            return out
        finally:
            st.running = False

    async def receive(self) -> Any:
        """The next item, for anyio code: switches the stream to prefetching (like ``async
        for``).

        Raises:
            anyio.EndOfStream: the generator is exhausted (or closed).
            RPCError: as ``__anext__`` (the remote error, a timeout, a lost connection).
        """
        self.__aiter__()
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise EndOfStream from None

    async def asend(self, value: Any) -> Any:
        """Send ``value`` into the generator; return what it yields next.

        Raises:
            StopAsyncIteration: the generator is exhausted (or closed).
            RemoteRPCError: the generator raised.
            RPCTimeoutError: no answer within the timeout (the stream is closed).
            SerializationError: ``value`` cannot be serialized (nothing is sent).
            StreamBusyError: the stream is being iterated with ``async for`` (prefetching), or
                another step is running (also a RuntimeError).
            ConnectionLostError, ClientClosedError: the stream broke.
        """
        return await self._step(value, None)

    async def athrow(
        self,
        typ: type[BaseException] | BaseException,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> Any:
        """Throw an exception into the generator at its ``yield``; return what it yields next.

        The exception travels as type name and message; builtin types arrive as themselves.

        Raises:
            the generator's exception as :class:`~netcall.errors.RemoteRPCError`, or what
            :meth:`asend` raises.
        """
        exc = typ if isinstance(typ, BaseException) else (typ(val) if val is not None else typ())
        return await self._step(None, exc)

    async def _step(self, value: Any, exc: BaseException | None) -> Any:
        st = self._state
        if st.state is _PREFETCH:
            raise StreamBusyError(
                "this stream is prefetching (iterated with async for): asend/athrow unavailable"
            )
        if st.state is _DONE:
            return st.take()  # what is left, then the stream's error or end
        if st.state is _C.CLOSING:
            raise StopAsyncIteration
        if st.running:
            raise StreamBusyError("asend(): the remote generator is already running")
        st.running = True
        try:
            if exc is None:
                try:
                    buffers: list[Any] = []
                    payload = st.table.dump(value, buffers)
                except Exception as err:
                    raise serializer_error(err, "cannot serialize the value sent") from err
                st._send(p.Next(st.rid, payload, buffers))
            else:
                st._send(p.Throw(st.rid, *exception_to_remote(exc)))
            while not st.buffer and st.state is not _DONE:
                await st.wait()
            return st.take()
        finally:
            st.running = False

    async def aclose(self) -> None:
        """Close the generator on the service and wait until its ``finally`` blocks ran.

        Raises:
            RPCTimeoutError: the service did not confirm within the timeout (it still closes
                the stream when the message arrives, or when the lease expires).
            ClientClosedError: the client is closed.
        """
        st = self._state
        if st.state is _DONE:
            return
        st.cancel()
        try:
            while st.state is not _DONE:
                await st.wait()
        finally:
            st.fail(StopAsyncIteration())

    async def __aenter__(self) -> RemoteGenerator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        st = self._state
        if st.state is _DONE:
            return
        loop = st.table.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(st.close_remote)
        except RuntimeError:
            pass


def close_quietly(gen: RemoteGenerator) -> None:
    """Close a stream nobody will read (its call was cancelled as it opened)."""
    gen._state.close_remote()


class ItemBatches:
    """Stream item batching for the bridges (threads, greenlets), in one place: a prefetching
    stream crosses to the loop once per batch of buffered items, not once per item, and the
    batch is decoded on the reader's side, one item per :meth:`pop`."""

    __slots__ = ("_batch", "_gen", "load", "loads")

    def __init__(self, gen: Any) -> None:
        # A middleware's wrapper of a stream is stepped item by item (no batches).
        self._gen = gen if isinstance(gen, RemoteGenerator) else None
        self._batch: deque[bytes] = deque()
        self.loads = gen._state.table.serializer.loads if self._gen is not None else None
        self.load = gen._state.table.load if self._gen is not None else None  # out-of-band items

    def __bool__(self) -> bool:
        return bool(self._batch)

    def pop(self) -> Any:
        """The next item of the current batch, decoded."""
        raw = self._batch.popleft()
        return self.loads(raw) if type(raw) is bytes else self.load(raw)  # type: ignore[misc]

    def fetch(self, limit: int) -> Awaitable[list[bytes]] | None:
        """On the loop: the next batch (at most ``limit``) of a prefetching stream, for
        :meth:`fill`; ``None`` for a lock-step stream (step it with ``__anext__``)."""
        gen = self._gen
        if gen is not None and gen._state.state is _PREFETCH:
            return gen._anext_payloads(limit)
        return None

    def fill(self, payloads: list[bytes]) -> None:
        self._batch.extend(payloads)

    def clear(self) -> None:
        self._batch.clear()
