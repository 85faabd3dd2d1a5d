"""Drives one ZeroMQ socket from an asyncio loop.

Why not ``zmq.asyncio``: its per-operation Future dominates under load. Here one reader callback
on the socket's file descriptor drains every ready message without blocking, and sends are
plain non-blocking calls. Rules this file keeps:

- The ZeroMQ FD is edge-triggered: after every batch of sends or receives ``EVENTS`` is
  checked again (scheduled once per loop iteration), or a message could sit unseen.
- ``EAGAIN`` on send is "try again" (the peer's pipe is full, or libzmq throttled command
  processing), never a failure: the message is queued for that peer, in order, and retried.
- ``EHOSTUNREACH`` (ROUTER_MANDATORY: the peer is gone) drops the message and reports the peer.
- What waits for one peer is bounded (``max_queued`` messages, ``max_queued_bytes``): a peer
  that does not read fills its ZeroMQ pipe (SNDHWM), then this queue, then is *cut off*: its
  queue is dropped, ``on_overflow`` reports it, and what is sent to it is dropped until it
  sends again; so it cannot grow our memory, and other peers are not affected. Producers
  (streams) wait with :meth:`SocketDriver.wait_unblocked` instead of polling.
- Sends are corked: queued, then written in one burst at the end of the current wake-up (or
  on the loop's next turn when sent from a task), or at once when the burst reaches 1 MiB or
  1024 messages (a fast producer must not fill the outbox unseen). A burst keeps libzmq's I/O
  thread busy with one activation instead of one wake-up per message, which is most of the
  cost under load.
- Everything runs on the loop's thread; only :meth:`SocketDriver.close` may be called from
  elsewhere through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from . import _malloc
from ._ratelog import RateLimitedLog
from .protocol import MAX_FRAMES as MAX_MESSAGE_FRAMES

log = logging.getLogger("netcall")
# A hostile peer may send such messages endlessly: a few lines, then a summary now and then.
_dropped = RateLimitedLog(log)

_BATCH = 512  # messages handled per wake-up before yielding to other callbacks
#: ``bytes`` frames at least this large are sent without copying (``copy=False``). Measured
#: (benchmarks/cpu.py, CPU time per 1 MiB / 16 MiB echo, both ends in one process):
#: pyzmq's zero-copy bookkeeping (a Frame, and its release through pyzmq's garbage-collector
#: thread) cost more than copying a 1 MiB frame, and less than copying a 16 MiB one. Other
#: buffers (bytearray, arrays) are always copied into the message when sent: the sender could
#: change them before libzmq's I/O thread reads them.
ZERO_COPY_MIN = 2 << 20
#: Frames after the head at least this large are received as memoryviews over the ZeroMQ
#: message (no copy; out-of-band buffers are copied at most once, into ``bytes``, after).
VIEW_MIN = 65536
#: Frames of one message beyond this are read and thrown away, and the message is dropped
#: (routing id + the largest message the protocol allows).
MAX_FRAMES = MAX_MESSAGE_FRAMES + 1

# Plain ints: pyzmq's enum flags cost an enum operation per frame on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

# The socket methods without pyzmq's Python-level wrappers (the sugar layer only adds
# routing_id/group handling, which netcall does not use).
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get


def send_frames(sock: zmq.Socket[Any], frames: list[Any]) -> None:
    """Send one multipart message without blocking.

    Raises:
        zmq.Again: on the first frame, when the peer's pipe is full (nothing was sent).
        zmq.ZMQError: EHOSTUNREACH for an unknown peer (ROUTER_MANDATORY), and the like.
    """
    last = len(frames) - 1
    _send(sock, frames[0], _MORE_NOBLOCK)
    for i in range(1, last):
        frame = frames[i]
        if type(frame) is bytes and len(frame) >= ZERO_COPY_MIN:
            _send(sock, frame, _MORE_NOBLOCK, copy=False)
        else:
            _send(sock, frame, _MORE_NOBLOCK)
    tail = frames[last]
    if type(tail) is bytes and len(tail) >= ZERO_COPY_MIN:
        _send(sock, tail, _NOBLOCK, copy=False)
    else:
        _send(sock, tail, _NOBLOCK)


def recv_frames(sock: zmq.Socket[Any], frame: Any = None) -> list[Any] | None:
    """Receive one multipart message without blocking (``frame``: its first frame, when the
    caller received it already): ``bytes`` frames, except that frames
    after the head of at least :data:`VIEW_MIN` bytes are memoryviews over the ZeroMQ
    message (not copied). ``None`` for a message of more than :data:`MAX_FRAMES` frames (read
    to its end, and dropped).

    Frames are received as ``zmq.Frame`` to read ``more`` from the message itself: asking the
    socket (``RCVMORE``) costs pyzmq an enum lookup per frame.

    Raises:
        zmq.Again: nothing is waiting.
    """
    if frame is None:
        frame = _recv(sock, _NOBLOCK, copy=False)
    frames: list[Any] = [frame.bytes]
    if not frame.more:
        return frames
    frame = _recv(sock, _NOBLOCK, copy=False)
    frames.append(frame.bytes)  # the head
    while frame.more:
        frame = _recv(sock, _NOBLOCK, copy=False)
        if len(frame) >= VIEW_MIN:
            if not _malloc_tuned:
                _tune_malloc()
            frames.append(frame.buffer)
        else:
            frames.append(frame.bytes)
        if len(frames) > MAX_FRAMES:
            while frame.more:  # a hostile peer: read the rest, keep nothing
                frame = _recv(sock, _NOBLOCK, copy=False)
            _dropped(
                "frames", logging.WARNING, "dropped a message of more than %d frames", MAX_FRAMES
            )
            return None
    return frames


_malloc_tuned = False


def _tune_malloc() -> None:
    # The first large frame this process receives: glibc settings for large messages (once).
    global _malloc_tuned
    _malloc_tuned = True
    _malloc.tune()


# The outbox is written at once when it holds this much (else at the end of the wake-up).
_OUTBOX_BYTES = 1 << 20
_OUTBOX_MESSAGES = 1024

_RETRY_MIN = 0.0005
_RETRY_MAX = 0.02

OnMessage = Callable[[list[Any]], None]
OnUnreachable = Callable[[bytes], None]


def _size(frames: list[Any]) -> int:
    return sum(len(f) for f in frames)


class SocketDriver:
    """Reads and writes one ROUTER socket on an asyncio loop (see the module docstring)."""

    __slots__ = (
        "_blocked",
        "_blocked_bytes",
        "_check_scheduled",
        "_closed",
        "_cut",
        "_fd",
        "_flush_scheduled",
        "_in_ready",
        "_loop",
        "_on_message",
        "_on_overflow",
        "_on_unreachable",
        "_outbox",
        "_outbox_bytes",
        "_recv",
        "_retry_delay",
        "_retry_handle",
        "_waiters",
        "cut_off",
        "max_queued",
        "max_queued_bytes",
        "peer_key",
        "sock",
    )

    def __init__(
        self,
        sock: zmq.Socket[Any],
        loop: asyncio.AbstractEventLoop,
        on_message: OnMessage,
        on_unreachable: OnUnreachable | None = None,
        identify: bool = False,
        *,
        max_queued: int | None = None,
        max_queued_bytes: int | None = None,
        on_overflow: OnUnreachable | None = None,
    ) -> None:
        self.sock = sock
        # With identify (a CURVE service), each message's sender key (its User-Id property)
        # is in peer_key while on_message runs; without, nothing reads it.
        self.peer_key: str | None = None
        self._recv = self._recv_identified if identify else recv_frames
        self._loop = loop
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_overflow = on_overflow
        #: Per-peer bounds on what waits behind a full pipe (``None``: unbounded).
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        #: Peers cut off for not reading, so far.
        self.cut_off = 0
        self._blocked: dict[bytes, deque[list[Any]]] = {}
        self._blocked_bytes: dict[bytes, int] = {}
        self._cut: set[bytes] = set()  # peers cut off, until they send again
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_MIN
        self._check_scheduled = False
        self._outbox: list[list[Any]] = []
        self._outbox_bytes = 0  # payload bytes in the outbox (last frames)
        self._flush_scheduled = False
        self._in_ready = False
        self._closed = False
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        loop.add_reader(self._fd, self._on_ready)
        # Messages may already be queued (the FD edge came before we listened).
        self._schedule_check()

    def _recv_identified(self, sock: zmq.Socket[Any]) -> list[Any] | None:
        frame = _recv(sock, _NOBLOCK, copy=False)
        try:
            self.peer_key = str(frame.get("User-Id"))
        except zmq.ZMQError:  # inproc: no security mechanism, no key
            self.peer_key = None
        return recv_frames(sock, frame)

    def is_blocked(self, peer: bytes) -> bool:
        """Whether messages to ``peer`` are queued behind a full pipe."""
        return peer in self._blocked

    def wait_unblocked(self, peer: bytes) -> asyncio.Future[None]:
        """A future done once nothing waits for ``peer`` any more: its queue was sent, it was
        cut off, it is gone, or the driver closed (done at once when not blocked)."""
        fut: asyncio.Future[None] = self._loop.create_future()
        if peer in self._blocked and not self._closed:
            self._waiters.setdefault(peer, []).append(fut)
        else:
            fut.set_result(None)
        return fut

    def _release(self, peer: bytes) -> None:
        self._blocked_bytes.pop(peer, None)
        for fut in self._waiters.pop(peer, ()):
            if not fut.done():
                fut.set_result(None)

    def _enqueue(self, queue: deque[list[Any]], frames: list[Any]) -> None:
        peer = frames[0]
        queue.append(frames)
        size = self._blocked_bytes[peer] = self._blocked_bytes.get(peer, 0) + _size(frames)
        limit, limit_bytes = self.max_queued, self.max_queued_bytes
        if (limit is not None and len(queue) > limit) or (
            limit_bytes is not None and size > limit_bytes
        ):
            self._cut_off(peer)

    def _cut_off(self, peer: bytes) -> None:
        """``peer`` does not read: drop what waits for it and report it."""
        self._blocked.pop(peer, None)
        self._cut.add(peer)
        self._release(peer)
        self.cut_off += 1
        if self._on_overflow is not None:
            self._on_overflow(peer)

    def send(self, frames: list[Any]) -> None:
        """Queue ``frames`` (routing id first) for the next burst; never blocks."""
        if self._closed:
            return
        self._outbox.append(frames)
        self._outbox_bytes += len(frames[-1])
        if self._outbox_bytes >= _OUTBOX_BYTES or len(self._outbox) >= _OUTBOX_MESSAGES:
            # A burst this big goes out now: what cannot go is queued per peer (and bounded),
            # and producers see that peer blocked before they make more.
            self._flush_outbox()
            return
        if not self._flush_scheduled and not self._in_ready:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        # The burst of this loop turn. After sends EVENTS must be checked again (the FD is
        # edge-triggered): doing it now, not on the next turn, saves a turn of the loop (an
        # epoll_wait) per burst, which is most of what a sequential call waits for.
        self._flush_scheduled = False
        self._on_ready()

    def _flush_outbox(self) -> None:
        """Write the outbox now (it is full), and check EVENTS on the loop's next turn."""
        self._write_outbox()
        self._schedule_check()

    def _write_outbox(self) -> None:
        outbox = self._outbox
        if not outbox or self._closed:
            return
        self._outbox = []
        self._outbox_bytes = 0
        for frames in outbox:
            self._send_now(frames)

    def _send_now(self, frames: list[Any]) -> None:
        if self._cut and frames[0] in self._cut:
            return
        if self._blocked:
            queue = self._blocked.get(frames[0])
            if queue is not None:
                self._enqueue(queue, frames)
                return
        try:
            send_frames(self.sock, frames)
        except zmq.Again:
            self._blocked[frames[0]] = deque([frames])
            self._blocked_bytes[frames[0]] = _size(frames)
            self._schedule_retry()
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._unreachable(frames[0])
            elif exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                self._closed = True
            else:
                raise

    def _unreachable(self, peer: bytes) -> None:
        self._blocked.pop(peer, None)
        self._release(peer)
        if self._on_unreachable is not None:
            self._on_unreachable(peer)

    def _schedule_check(self) -> None:
        if not self._check_scheduled and not self._closed:
            self._check_scheduled = True
            self._loop.call_soon(self._on_ready)

    def _schedule_retry(self) -> None:
        if self._retry_handle is None and not self._closed:
            self._retry_handle = self._loop.call_later(self._retry_delay, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        flushed = self._flush()
        self._schedule_check()  # the sends may have taken the FD's edge: EVENTS again
        if flushed:
            self._retry_delay = _RETRY_MIN
        else:
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)
            self._schedule_retry()

    def _flush(self) -> bool:
        """Try to send every queued message; True when nothing is left queued."""
        sock = self.sock
        for peer in list(self._blocked):
            queue = self._blocked.get(peer)
            if queue is None:  # cut off or gone meanwhile
                continue
            while queue:
                try:
                    send_frames(sock, queue[0])
                except zmq.Again:
                    break
                except zmq.ZMQError as exc:
                    if exc.errno == errno.EHOSTUNREACH:
                        self._unreachable(peer)
                        break
                    if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                        self._closed = True
                        return True
                    raise
                sent = queue.popleft()
                self._blocked_bytes[peer] -= _size(sent)
            else:
                del self._blocked[peer]
                self._release(peer)
        return not self._blocked

    def _on_ready(self) -> None:
        self._check_scheduled = False
        if self._closed:
            return
        if self._outbox:
            self._write_outbox()
        sock = self.sock
        on_message = self._on_message
        recv = self._recv
        handled = 0
        self._in_ready = True
        try:
            while True:
                while _get(sock, _EVENTS) & _POLLIN:  # type: ignore[operator]
                    while handled < _BATCH:
                        try:
                            frames = recv(sock)
                        except zmq.Again:
                            break
                        handled += 1
                        if frames is None:
                            continue
                        if self._cut:
                            self._cut.discard(frames[0])
                        try:
                            on_message(frames)
                        except Exception:  # a handler bug must never kill the reader
                            log.exception("error while handling a message")
                    if handled >= _BATCH:
                        # Let other callbacks run; come back for the rest.
                        self._schedule_check()
                        break
                    if sock.closed:  # a handler closed us
                        return
                if handled >= _BATCH or not self._outbox:
                    break
                # What the handlers sent goes out in one burst now; then EVENTS again.
                self._write_outbox()
        except zmq.ZMQError as exc:
            if exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                self._closed = True
                return
            raise
        finally:
            self._in_ready = False
        if self._outbox:
            self._flush_outbox()
        if self._blocked and self._retry_handle is None:
            self._schedule_retry()

    def close(self, linger: int = 0) -> None:
        """Stop reading and close the socket (on the loop's thread)."""
        if self._closed and self.sock.closed:
            return
        self._closed = True
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        try:
            self._loop.remove_reader(self._fd)
        except Exception:  # the loop may already be closed
            pass
        self._blocked.clear()
        for peer in list(self._waiters):
            self._release(peer)
        outbox, self._outbox = self._outbox, []
        self._outbox_bytes = 0
        if linger and not self.sock.closed:
            # A graceful close still sends what was queued (then lingers to deliver it).
            for frames in outbox:
                try:
                    send_frames(self.sock, frames)
                except zmq.ZMQError:
                    pass
        if not self.sock.closed:
            self.sock.close(linger=linger)
