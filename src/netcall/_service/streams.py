"""The producer side of streams: a generator running for one client, driven by the client's
NEXT/THROW/CREDIT/CANCEL (state rules in :mod:`netcall.protocol.session`), and the lease
reaper that closes streams whose client went silent."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

from .. import protocol as p
from .._buffers import nbytes
from .._context import CallContext, _current
from .._payload import dumper, loader
from .._ratelog import RateLimitedLog
from ..errors import ProtocolError, SerializationError, exception_for_throw
from ..protocol.session import (
    SERVICE_STREAM,
    add_credit,
    byte_allowance,
    may_send,
    service_stream_next,
)
from ..serializers import Serializer
from .replies import Replies
from .runner import Runner

log = logging.getLogger("netcall")

__all__ = ["Producers", "close_generator_soon", "is_generator", "sync_step"]

_STREAM_YIELD_EVERY = 64  # a flowing stream yields to the loop this often (sync or async)
STREAM_KINDS: dict[type, p.Kind] = {
    p.Next: p.Kind.NEXT,
    p.Throw: p.Kind.THROW,
    p.Credit: p.Kind.CREDIT,
}
_S = p.StreamState


def is_generator(value: Any) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


class _Stream:
    """A generator being streamed to one client."""

    __slots__ = (
        "allowance",
        "bytes_out",
        "commands",
        "context",
        "credit",
        "gen",
        "is_async",
        "items_out",
        "key",
        "method",
        "peer",
        "rid",
        "sent",
        "sent_bytes",
        "state",
        "task",
        "waiter",
    )

    def __init__(
        self,
        peer: bytes,
        msg: p.Call,
        gen: Any,
        context: CallContext,
        window: int,
        max_bytes: float,
    ) -> None:
        self.peer = peer
        self.rid = msg.id
        self.key = (peer, msg.id)
        self.method = msg.method
        self.gen = gen
        self.context = context
        # An async generator, or a middleware's stream (anything but a plain generator).
        self.is_async = not inspect.isgenerator(gen)
        # The client's credit (all of it, never capped), and the items (and their bytes) sent
        # since its CALL or last CREDIT: at most Limits.max_stream_window items, and no more
        # once ``allowance`` bytes went: Limits.max_stream_window_bytes, or what a CREDIT
        # buys at the items' average size (see protocol.session.may_send, byte_allowance).
        self.credit = window
        self.sent = 0
        self.sent_bytes = 0
        self.allowance = max_bytes
        self.items_out = 0  # items sent on credit so far, and their bytes
        self.bytes_out = 0
        self.state = _S.FLOWING if window else _S.IDLE
        self.commands: list[tuple[str, Any]] = []
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class Producers:
    """The open streams of one service, keyed by (peer, request id)."""

    def __init__(
        self, replies: Replies, serializer: Serializer, runner: Runner, lease: float
    ) -> None:
        self._replies = replies
        # Where a generator's error is logged (rate-limited; the dispatcher shares its own).
        self.log = RateLimitedLog(log)
        self._serializer = serializer
        self._load = loader(serializer)
        self._dump = dumper(serializer)
        self._runner = runner
        self.lease = lease
        #: The open streams by (peer, request id).
        self.by_key: dict[tuple[bytes, int], _Stream] = {}
        self._seen: dict[bytes, float] = {}
        self._reaper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self.by_key)

    def __contains__(self, key: tuple[bytes, int]) -> bool:
        return key in self.by_key

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def touch(self, peer: bytes) -> None:
        """``peer`` was heard from: its streams' leases start again."""
        self._seen[peer] = time.monotonic()

    # -- client messages ------------------------------------------------------------------

    def open(self, peer: bytes, msg: p.Call, gen: Any, context: CallContext) -> None:
        """The call ``msg`` returned ``gen``: tell the client, start producing."""
        assert self._loop is not None
        guard = self._replies.guard
        stream = _Stream(peer, msg, gen, context, msg.window, guard.limits.max_stream_window_bytes)
        self.by_key[stream.key] = stream
        guard.loaded(peer, stream=True)
        self.touch(peer)
        self._replies.send(peer, p.StreamOpen(msg.id, self.lease).to_frames())
        if stream.state is _S.CLOSED:
            # That send completed a burst, whose write cut the client off (it does not read):
            # the stream is closed already, and nothing will ever step it.
            close_generator_soon(gen)
            return
        stream.task = self._loop.create_task(self._run(stream))
        self._schedule_reaper()

    def on_message(self, peer: bytes, msg: p.Next | p.Throw | p.Credit) -> None:
        """A NEXT, THROW or CREDIT for one of our streams."""
        stream = self.by_key.get((peer, msg.id))
        replies = self._replies
        if stream is None:
            # The stream ended (or never was): tell the client so it does not wait.
            if type(msg) is not p.Credit:
                replies.refuse(peer, msg.id, p.ERR_STREAM_CLOSED, "no such open stream")
            return
        try:
            state = service_stream_next(stream.state, STREAM_KINDS[type(msg)])
        except ProtocolError as exc:
            replies.guard.malformed(peer, exc)
            self._close(stream, reply=False)
            replies.refuse(peer, msg.id, p.ERR_PROTOCOL, str(exc))
            return
        if type(msg) is p.Credit:
            stream.credit = add_credit(stream.credit, msg.count)
            stream.sent = 0
            stream.sent_bytes = 0
            stream.allowance = byte_allowance(
                replies.guard.limits.max_stream_window_bytes,
                msg.count,
                stream.bytes_out,
                stream.items_out,
            )
        elif type(msg) is p.Next:
            try:
                value = self._load(msg)
            except SerializationError as exc:
                self._close(stream, reply=False)
                replies.refuse(peer, msg.id, p.ERR_SERIALIZATION, str(exc))
                return
            stream.commands.append(("send", value))
        else:
            assert type(msg) is p.Throw
            stream.commands.append(("throw", exception_for_throw(msg.type_name, msg.message)))
        stream.state = state
        stream.wake()

    def cancel(self, peer: bytes, rid: int) -> bool:
        """CANCEL: close the stream, confirming with END; False when there is none."""
        stream = self.by_key.get((peer, rid))
        if stream is None:
            return False
        self._close(stream, reply=True)
        return True

    def close_peer(self, peer: bytes) -> bool:
        """Close ``peer``'s streams (it left, or was cut off); whether it had any."""
        streams = [s for s in self.by_key.values() if s.peer == peer]
        for stream in streams:
            self._close(stream, reply=False)
        self._seen.pop(peer, None)
        return bool(streams)

    def close_all(self, refuse: tuple[str, str] | None = None) -> list[asyncio.Task[None]]:
        """Close every stream (and stop reaping); with ``refuse``, tell each client why.
        Returns the streams' tasks, which end once the generators' ``finally`` blocks ran."""
        tasks = []
        for stream in list(self.by_key.values()):
            if stream.task is not None:
                tasks.append(stream.task)
            self._close(stream, reply=False)
            if refuse is not None:
                self._replies.refuse(stream.peer, stream.rid, *refuse)
        return tasks

    def shutdown(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None

    # -- producing ------------------------------------------------------------------------

    async def _step(self, stream: _Stream, op: str, value: Any) -> tuple[bool, Any]:
        """Advance the generator once: ``(False, item)``, or ``(True, None)`` when exhausted."""
        gen = stream.gen
        if stream.is_async:
            step = gen.asend if op == "send" else gen.athrow
            hook = self._runner.async_hook
            try:
                if hook is not None:
                    return False, await hook(functools.partial(step, value))
                return False, await step(value)
            except StopAsyncIteration:
                return True, None
        fn = functools.partial(sync_step, gen.send if op == "send" else gen.throw, value)
        if self._runner.inline:
            return fn()
        return await self._runner.run(fn)

    async def _run(self, stream: _Stream) -> None:
        loop = self._loop
        assert loop is not None
        dump = self._dump
        replies = self._replies
        max_window = replies.guard.limits.max_stream_window
        produced = 0
        _current.set(stream.context)
        try:
            while True:
                if stream.commands:
                    op, value = stream.commands.pop(0)
                    lockstep = True
                elif stream.state is _S.FLOWING and may_send(
                    stream.credit, stream.sent, max_window, stream.sent_bytes, stream.allowance
                ):
                    # Also wait while the socket is backed up for this peer: bounded memory.
                    if replies.is_blocked(stream.peer):
                        await replies.wait_unblocked(stream.peer)
                        continue
                    op, value, lockstep = "send", None, False
                    stream.credit -= 1
                    stream.sent += 1
                else:
                    stream.waiter = loop.create_future()
                    await stream.waiter
                    stream.waiter = None
                    continue
                try:
                    done, item = await self._step(stream, op, value)
                    if done:
                        replies.send(stream.peer, p.End(stream.rid).to_frames())
                        return
                except Exception as exc:
                    replies.guard.counts["errors"] += 1
                    self.log(
                        "handler error",
                        logging.WARNING,
                        "stream %s raised %s (client %s)",
                        stream.method,
                        type(exc).__name__,
                        stream.peer.hex(),
                        exc_info=exc,
                    )
                    replies.error(stream.peer, stream.rid, exc)
                    return
                try:
                    buffers: list[Any] = []
                    payload = dump(item, buffers)
                except SerializationError as exc:
                    replies.refuse(
                        stream.peer,
                        stream.rid,
                        p.ERR_SERIALIZATION,
                        f"cannot serialize an item of {stream.method!r}: {exc}",
                    )
                    return
                replies.send(
                    stream.peer, p.payload_frames(p.Kind.ITEM, stream.rid, payload, buffers)
                )
                if lockstep:  # STEPPING -> IDLE (a flowing stream stays FLOWING)
                    stream.state = SERVICE_STREAM.get((stream.state, p.Kind.ITEM), stream.state)
                else:
                    size = len(payload) + sum(map(nbytes, buffers)) if buffers else len(payload)
                    stream.sent_bytes += size
                    stream.bytes_out += size
                    stream.items_out += 1
                produced += 1
                if produced % _STREAM_YIELD_EVERY == 0:
                    # Fairness: a generator that never awaits must not hold the loop.
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            if stream.state is not _S.CLOSED:
                # Cancelled where it ran, not closed by this service (``netcall serve``
                # interrupting a step that still holds the loop at the end of the grace, or
                # the loop's own end): told as close_all() tells the others.
                replies.refuse(
                    stream.peer, stream.rid, p.ERR_SERVICE_STOPPING, "the service stopped"
                )
        finally:
            stream.state = _S.CLOSED
            self._forget(stream)
            await self._finalize(stream)

    async def _finalize(self, stream: _Stream) -> None:
        """Run the generator's ``finally`` blocks (aclose/close)."""
        gen = stream.gen
        try:
            # A step cancelled while it ran in an executor thread is still running there (a
            # thread cannot be interrupted): close only once it is done, or close() fails.
            while getattr(gen, "gi_running", False):
                await asyncio.sleep(0.005)
            if stream.is_async and self._runner.async_hook is not None:
                await self._runner.async_hook(gen.aclose)
            elif stream.is_async:
                await gen.aclose()
            elif self._runner.inline:
                gen.close()
            else:
                await self._runner.run(gen.close)
        except BaseException as exc:  # a finally block may raise anything
            if isinstance(exc, asyncio.CancelledError):
                return
            self._replies.guard.failed("stream %s raised while closing: %r", stream.method, exc)

    def _close(self, stream: _Stream, reply: bool) -> None:
        """Close a stream: its task ends and the generator is finalised."""
        replies = self._replies
        end = p.End(stream.rid)
        if stream.state is _S.CLOSED and self.by_key.get(stream.key) is not stream:
            if reply:
                replies.send(stream.peer, end.to_frames())
            return
        self._forget(stream)
        stream.state = _S.CLOSED
        task = stream.task
        if task is not None and not task.done():
            if reply:
                task.add_done_callback(lambda _t: replies.send(stream.peer, end.to_frames()))
            task.cancel()
        elif reply:
            replies.send(stream.peer, end.to_frames())

    def _forget(self, stream: _Stream) -> None:
        # By identity: a peer may already reuse the id for a new stream.
        if self.by_key.get(stream.key) is stream:
            del self.by_key[stream.key]
            self._replies.guard.unloaded(stream.peer, stream=True)

    # -- the lease ------------------------------------------------------------------------

    def _schedule_reaper(self) -> None:
        if self._reaper is None and self._loop is not None and not self._closed:
            self._reaper = self._loop.call_later(self.lease / 4, self._reap)

    def _reap(self) -> None:
        """Close streams whose client has been silent for longer than the lease."""
        self._reaper = None
        now = time.monotonic()
        live_peers = set()
        for stream in list(self.by_key.values()):
            if now - self._seen.get(stream.peer, now) > self.lease:
                self._replies.guard.log(
                    "lease",
                    logging.INFO,
                    "closing stream %s: its client went silent",
                    stream.method,
                )
                self._close(stream, reply=False)
            else:
                live_peers.add(stream.peer)
        for peer in list(self._seen):
            if peer not in live_peers:
                del self._seen[peer]
        if self.by_key:
            self._schedule_reaper()


def sync_step(step: Callable[[Any], Any], value: Any) -> tuple[bool, Any]:
    # StopIteration must not escape into a coroutine (PEP 479) or a Future: report it.
    try:
        return False, step(value)
    except StopIteration:
        return True, None


_closing: set[asyncio.Task[Any]] = set()


def close_generator_soon(gen: Generator[Any, Any, Any] | AsyncGenerator[Any, Any]) -> None:
    """Nobody will read ``gen`` (a one-way or abandoned call returned it): close it."""
    if isinstance(gen, Generator):
        gen.close()
    else:
        task = asyncio.ensure_future(gen.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
