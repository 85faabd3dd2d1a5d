"""The consumer side of streams: what happens when an ITEM, END or ERROR arrives, when to grant
credit, waiting for the next item. The user's handle is
:class:`~netcall._client.generator.RemoteGenerator`. State rules and credit arithmetic are the
protocol's (:mod:`netcall.protocol.session`)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import protocol as p
from .._payload import dumper, loader
from ..errors import (
    ClientClosedError,
    ProtocolError,
    RPCError,
    RPCTimeoutError,
    exception_from_remote,
)
from ..protocol.session import (
    client_stream_next,
    credit_limit,
    credit_to_grant,
    credit_when_starved,
    update_item_size,
)
from ..serializers import Serializer
from .peers import Peer

__all__ = ["ConsumerStream", "ConsumerStreams", "error_from"]

_C = p.ClientStreamState
_LOCKSTEP = _C.LOCKSTEP
_PREFETCH = _C.PREFETCH
_DONE = _C.DONE


def error_from(msg: Any, method: str) -> BaseException:
    """The exception an ERROR reply stands for (or an unexpected reply)."""
    if type(msg) is not p.Error:
        return RPCError(f"unexpected {type(msg).__name__} reply to {method!r}")
    return exception_from_remote(msg.type_name, msg.message, msg.traceback, method=method)


class ConsumerStreams:
    """The open streams of one client, by request id (``by_id``), and what they share: the
    send function, the serializer, the window and byte budget, the loop."""

    def __init__(
        self,
        send: Callable[[Peer, list[Any]], None],
        serializer: Serializer,
        window: int,
        stream_buffer: int,
    ) -> None:
        self.send = send
        self.serializer = serializer
        self.dump = dumper(serializer)  # value -> payload and out-of-band buffers
        self.load = loader(serializer)  # payload (bytes, or a message with buffers) -> value
        self.window = window
        self.stream_buffer = stream_buffer
        self.loop: asyncio.AbstractEventLoop | None = None
        self.by_id: dict[int, ConsumerStream] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    def open(self, peer: Peer, rid: int, timeout: float | None, window: int) -> ConsumerStream:
        stream = ConsumerStream(self, peer, rid, timeout, window)
        self.by_id[rid] = stream
        return stream

    def done(self, rid: int) -> None:
        self.by_id.pop(rid, None)

    def ping(self, connected: Callable[[Peer], bool]) -> bool:
        """Ping the (still connected) services holding our streams, so that their leases do
        not expire; False when there is no stream to keep alive."""
        if not self.by_id:
            return False
        for peer in {s.peer.rid: s.peer for s in self.by_id.values()}.values():
            if connected(peer):
                self.send(peer, p.Ping().to_frames())
        return True

    def fail_peer(self, peer: Peer, error: BaseException) -> None:
        for stream in list(self.by_id.values()):
            if stream.peer is peer:
                stream.fail(error)

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        for stream in list(self.by_id.values()):
            stream.fail(error())
        self.by_id.clear()

    def open_ids(self) -> list[tuple[Peer, int]]:
        return [(s.peer, s.rid) for s in self.by_id.values()]


class ConsumerStream:
    """Client-side state of one open stream, held by the table while the stream lives. The
    user holds a :class:`RemoteGenerator` wrapping it; when that is dropped, the stream is
    closed on the service."""

    __slots__ = (
        "allowed",
        "buffer",
        "consumed",
        "credited_at",
        "error",
        "granted",
        "item_size",
        "peer",
        "received",
        "rid",
        "running",
        "state",
        "table",
        "timeout",
        "waiters",
    )

    def __init__(
        self, table: ConsumerStreams, peer: Peer, rid: int, timeout: float | None, window: int
    ) -> None:
        self.table = table
        self.peer = peer
        self.rid = rid
        self.timeout = timeout
        self.granted = window  # credit given so far (the CALL's window)
        # Items the service may send in all (the window, every credit and lock-step step) and
        # items received: one more than allowed ends the stream with a ProtocolError, so a
        # hostile service cannot make this client buffer without bound.
        self.allowed = window
        self.received = 0
        self.state = _PREFETCH if window > 0 else _LOCKSTEP
        self.item_size = 64.0  # running average of payload sizes, for the byte budget
        self.buffer: deque[Any] = deque()
        # Everyone waiting on this stream (a step, and an aclose() from another task).
        self.waiters: list[asyncio.Future[None]] = []
        self.error: BaseException | None = None  # raised once the buffer is drained
        self.consumed = 0
        self.credited_at = 0  # items consumed when the last CREDIT was sent
        self.running = False  # one step (or anext) at a time

    @property
    def finished(self) -> bool:
        return self.state is _DONE

    def _wake(self) -> None:
        for w in self.waiters:
            if not w.done():
                w.set_result(None)

    def feed_item(self, payload: bytes) -> None:
        # ITEM never changes the state (see CLIENT_STREAM): no lookup on the hot path.
        self.received += 1
        if self.received > self.allowed:
            self.close_remote(
                ProtocolError(f"the service sent more stream items than the {self.allowed} asked")
            )
            return
        self.buffer.append(payload)
        self.item_size = update_item_size(self.item_size, len(payload))
        if self.waiters:
            self._wake()

    def feed(self, msg: Any) -> None:
        kind = type(msg)
        if kind is p.Item:
            if msg.buffers:  # kept whole: decoded with its buffers when taken
                self.buffer.append(msg)
                size = len(msg.payload) + sum(len(b) for b in msg.buffers)
                self.item_size = update_item_size(self.item_size, size)
                if self.waiters:
                    self._wake()
            else:
                self.feed_item(msg.payload)
        elif kind is p.End:
            self.fail(StopAsyncIteration())
        elif kind is p.Error:
            self.fail(exception_from_remote(msg.type_name, msg.message, msg.traceback))

    def fail(self, error: BaseException) -> None:
        """END, ERROR, or a local failure: the stream is done; ``error`` is raised once the
        buffer is drained."""
        if self.state is not _DONE:
            self.state = _DONE
            self.error = error
            self.table.done(self.rid)
        self._wake()

    def _send(self, msg: p.Credit | p.Cancel | p.Next | p.Throw) -> None:
        if type(msg) is p.Next or type(msg) is p.Throw:
            self.allowed += 1  # a lock-step step asks for one item
        self.table.send(self.peer, msg.to_frames())

    def grant(self, count: int) -> None:
        """Send CREDIT (switching a lock-step stream to prefetching)."""
        self.state = client_stream_next(self.state, p.Kind.CREDIT)
        self.credited_at = self.consumed
        self.granted += count
        self.allowed += count
        self._send(p.Credit(self.rid, count))

    def cancel(self) -> None:
        """Send CANCEL: the service closes the stream and confirms with END."""
        self.state = client_stream_next(self.state, p.Kind.CANCEL)
        self.buffer.clear()
        self._send(p.Cancel(self.rid))

    async def wait(self) -> None:
        """Wait until something arrives, or the step's timeout passes (closing the stream).
        A prefetching stream that consumed items since its last CREDIT sends one first (see
        :func:`~netcall.protocol.session.credit_when_starved`)."""
        loop = self.table.loop
        assert loop is not None
        if self.state is _PREFETCH and self.consumed > self.credited_at and not self.buffer:
            table = self.table
            limit = credit_limit(table.window, table.stream_buffer, self.item_size, self.consumed)
            self.grant(credit_when_starved(self.granted, self.consumed, limit))
        fut: asyncio.Future[None] = loop.create_future()
        self.waiters.append(fut)
        timer = (
            loop.call_later(self.timeout, _timeout_waiter, fut)
            if self.timeout is not None
            else None
        )
        try:
            await fut
        except RPCTimeoutError:
            self.close_remote()
            raise RPCTimeoutError(f"no stream item within {self.timeout} s") from None
        except asyncio.CancelledError:
            self.close_remote()
            raise
        finally:
            self.waiters.remove(fut)
            if timer is not None:
                timer.cancel()

    def take(self) -> Any:
        """The next buffered item (decoded), or raise the stream's end/error."""
        raw = self.take_raw()
        if type(raw) is bytes:  # the commonest case, without the loader's extra call
            return self.table.serializer.loads(raw)
        return self.table.load(raw)

    def take_raw(self) -> bytes:
        """The next buffered item's payload, or raise the stream's end/error."""
        if self.buffer:
            payload = self.buffer.popleft()
            if self.state is _PREFETCH:
                self.consumed += 1
                table = self.table
                limit = credit_limit(
                    table.window, table.stream_buffer, self.item_size, self.consumed
                )
                more = credit_to_grant(self.granted, self.consumed, limit)
                if more:
                    self.grant(more)
            return payload  # type: ignore[no-any-return]
        error = self.error
        assert error is not None
        if not isinstance(error, StopAsyncIteration):
            # Raised once, like a generator's exception; after that the stream is exhausted.
            self.error = StopAsyncIteration()
        raise error

    def close_remote(self, error: BaseException | None = None) -> None:
        """Ask the service to close the stream, without waiting (safe from finalizers); the
        stream ends with ``error`` once its buffer is drained (default: exhausted)."""
        if self.state is not _DONE:
            # other waiters on this stream hear of it too
            self.fail(error if error is not None else StopAsyncIteration())
            try:
                self._send(p.Cancel(self.rid))
            except ClientClosedError:
                pass


def _timeout_waiter(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(RPCTimeoutError())
