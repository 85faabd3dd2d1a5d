"""Drives one ZeroMQ socket from an asyncio loop.

Why not ``zmq.asyncio``: its per-operation Future dominates under load. Here one reader callback
on the socket's file descriptor drains every ready message without blocking, and sends are
plain non-blocking calls. Rules this file keeps:

- The ZeroMQ FD is edge-triggered: after every batch of sends or receives ``EVENTS`` is
  checked again (scheduled once per loop iteration), or a message could sit unseen; so after
  a ``connect``/``bind``/``unbind``/``disconnect`` on a driven socket, which process its
  commands too (:meth:`SocketDriver.check_soon`).
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
  32 messages. A burst keeps libzmq's I/O thread busy with one activation instead of one
  wake-up per message, which is most of the cost under load; capping it at 32 messages lets
  the peer start on the first ones while this end makes the rest, where a turn's whole burst
  (64 replies, 64 new calls) made the two ends take turns, each idle while the other worked
  (64 calls in flight, two processes: 28k -> 37k calls/s; ``benchmarks/README.md``, session 8).
  The exception: the first message since the last wake-up, sent by a task (a caller, a
  handler) that is the last callback of its turn (nothing else ready: a lone caller), or by a
  bridged client's inbox starting its one caller's call (``LONE_STARTS``), with nothing queued,
  goes out at once, as the fd loop's do: a sequential call then costs one turn of the loop
  less.
  A reader that goes on handling messages (a backlog of slow sync handlers, run inline) writes
  what it queued once it has run for ``_CORK_SECONDS`` too: else the first answer of a backlog
  of 100 ms handlers waited for 31 more (3.2 s), and the broker, hearing nothing from a service
  that answers a call every 100 ms, took it for stuck (``RouterCore.ping_round``).
- Within a burst, the small messages to a peer known to read bundles (:attr:`SocketDriver.readers`,
  see :mod:`netcall.protocol._bundle`) leave as one ZeroMQ message, and a bundle received is
  handed on message by message, as if each had come alone (a malformed one is dropped whole).
  Per message, ZeroMQ's send and receive and libzmq's I/O threads cost more than the bundling:
  64 calls in flight, two processes, 34.4k -> 49.6k calls/s (``benchmarks/README.md``,
  session 20).
- Everything runs on the loop's thread; only :meth:`SocketDriver.close` may be called from
  elsewhere through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ._frames import _NOBLOCK, _recv, recv_frames, recv_routed, send_frames, settle
from ._ratelog import RateLimitedLog
from .errors import ProtocolError
from .protocol import _bundle

__all__ = [
    "LONE_STARTS",
    "MAX_QUEUED",
    "MAX_QUEUED_BYTES",
    "STOP_LINGER",
    "OnMessage",
    "OnUnreachable",
    "SocketDriver",
    "recv_frames",
    "send_frames",
]

log = logging.getLogger("netcall")
_dropped = RateLimitedLog(log)  # a hostile peer may send malformed bundles endlessly

#: ms a graceful stop (a service's, a broker's) gives the answers it queued: to peers whose
#: pipe is full (drained for this long before closing), then to ZeroMQ to deliver them (the
#: close's linger).
STOP_LINGER = 200
#: The default bounds on what waits for one peer behind its full pipe (a service's
#: ``Limits.max_queued`` / ``max_queued_bytes``, a broker's ``max_queued`` /
#: ``max_queued_bytes``): messages, and bytes; a peer over either is cut off.
MAX_QUEUED = 10_000
MAX_QUEUED_BYTES = 4 * 2**20
_BATCH = 512  # messages handled per wake-up before yielding to other callbacks
_WAITING_BATCHES = 64  # read_waiting(): at most this many batches (32,768 messages)
# The first messages of a wake-up are each followed by a look at EVENTS; from this many on, the
# reader receives until ZeroMQ says EAGAIN. A look costs about 1.4 µs here, a receive that
# raises zmq.Again about 3.4 µs: a lone message (a sequential call) is read without raising,
# and a burst still costs one Again.
_PEEK = 3
# Plain ints and the socket's unwrapped method: this is the hot path (see _frames).
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_get = zmq.backend.Socket.get
_current_task = asyncio.current_task

#: Loops amid a callback that starts one lone caller's call (a bridged client's inbox, see
#: :mod:`netcall._bridge`): what it sends goes out at once, as a lone task's message does.
LONE_STARTS: set[asyncio.AbstractEventLoop] = set()

# The outbox is written at once when it holds this much (else at the end of the wake-up).
_OUTBOX_BYTES = 1 << 20
_OUTBOX_MESSAGES = 32
# ... or once the reader has gone on for this long (seconds) since it last wrote: quick handlers
# never reach it, slow ones inline do not hold answers behind the next ones.
_CORK_SECONDS = 0.005
_clock = time.monotonic

# Bundles (netcall.protocol._bundle): messages up to this size go into one; at most this many
# peers are remembered as reading them (a peer forgotten is learned again from its next call
# or bundle).
_BUNDLE_ITEM_MAX = 8192
_BUNDLE_BUDGET = _bundle.BUNDLE_MAX_BYTES - _bundle.BUNDLE_HEAD_SIZE
_BUNDLE_MESSAGES = _bundle.BUNDLE_MAX_MESSAGES
_BUNDLE_FRAMES = _bundle.BUNDLE_MAX_FRAMES + 1  # with the routing id
_BUNDLE_MAGIC = _bundle.BUNDLE_MAGIC
_MAX_READERS = 65536
_TOO_BIG = _BUNDLE_ITEM_MAX + 1
_bundle_of = _bundle.bundle
_unbundle = _bundle.unbundle

_RETRY_MIN = 0.0005
_RETRY_MAX = 0.02

OnMessage = Callable[[list[Any]], None]
OnUnreachable = Callable[[bytes], None]


def _size(frames: list[Any]) -> int:
    return sum(len(f) for f in frames)


class _Bundle(list):  # type: ignore[type-arg]
    """A bundle's frames (routing id, bundle), with the messages in it: one waiting behind a
    full pipe counts as that many against ``max_queued``."""

    __slots__ = ("run",)

    def __init__(self, run: list[list[Any]]) -> None:
        super().__init__((run[0][0], _bundle_of(run, 1)))
        self.run = run


def _count(frames: list[Any]) -> int:
    # Messages in what waits for a peer: a bundle's, or one.
    return len(frames.run) if type(frames) is _Bundle else 1


def _packed(run: list[list[Any]]) -> list[Any]:
    # One message as it is; several as one bundle to their peer.
    if len(run) == 1:
        return run[0]
    return _Bundle(run)


class SocketDriver:
    """Reads and writes one ROUTER socket on an asyncio loop (see the module docstring)."""

    __slots__ = (
        "_blocked",
        "_blocked_bytes",
        "_blocked_count",
        "_bundles",
        "_check_scheduled",
        "_closed",
        "_cut",
        "_fd",
        "_flush_scheduled",
        "_in_ready",
        "_leftover",
        "_loop",
        "_on_message",
        "_on_overflow",
        "_on_unreachable",
        "_outbox",
        "_outbox_bytes",
        "_recv",
        "_retry_delay",
        "_retry_handle",
        "_sent_alone",
        "_unbounded",
        "_waiters",
        "_writing",
        "cut_off",
        "max_queued",
        "max_queued_bytes",
        "peer_key",
        "readers",
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
        unbounded: Callable[[bytes], bool] | None = None,
        bundles: bool = False,
    ) -> None:
        self.sock = sock
        # With identify (a CURVE service), each message's sender key (its User-Id property)
        # is in peer_key while on_message runs; without, nothing reads it.
        self.peer_key: str | None = None
        if identify:
            self._recv: Callable[[zmq.Socket[Any]], list[Any] | None] = self._recv_identified
        elif sock.getsockopt(zmq.TYPE) == zmq.ROUTER:
            self._recv = recv_routed
        else:
            self._recv = recv_frames
            bundles = False
        # Whether this end sends bundles (to the peers in readers): a routed socket whose
        # owner accepts messages of BUNDLE_MAX_BYTES. Every routed driver reads them.
        self._bundles = bundles
        #: The peers known to read bundles (see :meth:`learn`).
        self.readers: set[bytes] = set()
        self._loop = loop
        self._on_message = on_message
        self._on_unreachable = on_unreachable
        self._on_overflow = on_overflow
        #: Per-peer bounds on what waits behind a full pipe (``None``: unbounded).
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        #: Peers those bounds do not apply to (a service's broker: what it waits for is
        #: bounded by the calls the broker sent, and cutting it off would lose them all).
        self._unbounded = unbounded
        #: Peers cut off for not reading, so far.
        self.cut_off = 0
        self._blocked: dict[bytes, deque[list[Any]]] = {}
        self._blocked_bytes: dict[bytes, int] = {}
        self._blocked_count: dict[bytes, int] = {}  # messages (a bundle's count as many)
        self._cut: set[bytes] = set()  # peers cut off, until they send again
        self._waiters: dict[bytes, list[asyncio.Future[None]]] = {}
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_MIN
        self._check_scheduled = False
        self._outbox: list[list[Any]] = []
        self._outbox_bytes = 0  # payload bytes in the outbox (last frames)
        self._flush_scheduled = False
        self._in_ready = False
        self._sent_alone = False  # a message went out at once since the last _on_ready
        self._writing = False  # a burst is being written (a callback may send meanwhile)
        self._leftover: list[list[Any]] | None = None
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

    def learn(self, peer: bytes) -> None:
        """``peer`` reads bundles (its call said so): what this end sends it may be bundled,
        when this end sends bundles at all."""
        if self._bundles and peer not in self.readers:
            readers = self.readers
            if len(readers) >= _MAX_READERS:  # peers that come and go cannot grow this
                readers.clear()
            readers.add(peer)

    def told(self, peer: bytes, reads: bool) -> None:
        """A call from ``peer`` says whether it reads bundles (``FLAG_BUNDLES``): each call is
        its sender's latest word (:meth:`learn` or :meth:`forget`)."""
        if reads:
            self.learn(peer)
        else:
            self.readers.discard(peer)

    def forget(self, peer: bytes) -> None:
        """``peer``'s connection changed: send it single messages until it shows again that
        it reads bundles (the new connection may be to an older netcall)."""
        self.readers.discard(peer)

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
        self._blocked_count.pop(peer, None)
        for fut in self._waiters.pop(peer, ()):
            if not fut.done():
                fut.set_result(None)

    def _enqueue(self, queue: deque[list[Any]], frames: list[Any]) -> None:
        peer = frames[0]
        queue.append(frames)
        size = self._blocked_bytes[peer] = self._blocked_bytes.get(peer, 0) + _size(frames)
        count = self._blocked_count[peer] = self._blocked_count.get(peer, 0) + _count(frames)
        limit, limit_bytes = self.max_queued, self.max_queued_bytes
        if (
            (limit is not None and count > limit)
            or (limit_bytes is not None and size > limit_bytes)
        ) and not (self._unbounded is not None and self._unbounded(peer)):
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
        for frame in frames:
            if type(frame) is not bytes:  # a buffer the sender could change: copied now
                frames = settle(frames)
                break
        else:
            if (
                not self._outbox
                and not self._in_ready
                and not self._writing
                and not self._sent_alone
                and not self._blocked
                and not self._cut
                and (
                    (
                        not getattr(self._loop, "_ready", True)  # (asyncio's; elsewhere: corked)
                        and _current_task(self._loop) is not None
                    )
                    or self._loop in LONE_STARTS
                )
            ):
                # A task (a caller, a handler), the last callback of this turn (nothing else
                # ready), nothing queued, and the first message since the last wake-up: a lone
                # caller's message leaves now, not a turn later. What the same callback sends
                # next is corked as usual; so is what a reader or timer callback sends (a
                # broker forwarding: other peers' messages keep their order with it). A
                # bridged client's inbox starting the call of its one caller counts as that
                # caller's task (LONE_STARTS). (Only bytes: nothing can fail after the first
                # frame.)
                try:
                    send_frames(self.sock, frames)
                except zmq.ZMQError:  # (full pipe, peer gone, closing: nothing was sent;
                    pass  # the burst below retries it and deals with the error, as for any)
                else:
                    try:  # (the send may have taken the FD's edge: EVENTS now)
                        taken = _get(self.sock, _EVENTS) & _POLLIN  # type: ignore[operator]
                    except zmq.ZMQError:
                        taken = True  # (closed meanwhile: the check finds out)
                    if taken:
                        self._schedule_check()
                    self._sent_alone = True
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
        if self.readers and len(outbox) > 1:
            outbox = self._coalesce(outbox)
        # on_unreachable may send (the broker's backend: service_gone -> dispatch) while the
        # rest of this burst waits in the local list: such a message must not go out at once.
        writing, self._writing = self._writing, True
        try:
            for frames in outbox:
                self._send_now(frames)
        finally:
            self._writing = writing

    def _coalesce(self, outbox: list[list[Any]]) -> list[list[Any]]:
        """``outbox`` with the small messages to each peer that reads bundles put in bundles,
        each peer's messages in their order (the order between peers may change)."""
        readers = self.readers
        runs: dict[bytes, list[list[Any]]] = {}
        sizes: dict[bytes, int] = {}
        out: list[list[Any]] = []
        for frames in outbox:
            peer = frames[0]
            if peer not in readers:
                out.append(frames)
                continue
            n = len(frames)
            if n == 2:  # an answer, a stream item (one frame): the commonest
                head = frames[1]
                size = 5 + len(head) if type(head) is bytes else _TOO_BIG
            elif n == 3:  # a call: head and arguments
                head, args = frames[1], frames[2]
                if type(head) is bytes and type(args) is bytes:
                    size = 9 + len(head) + len(args)
                else:
                    size = _TOO_BIG
            elif 3 < n <= _BUNDLE_FRAMES:
                size = 1
                for i in range(1, n):
                    frame = frames[i]
                    if type(frame) is not bytes:
                        size = _TOO_BIG
                        break
                    size += 4 + len(frame)
            else:
                size = _TOO_BIG
            run = runs.get(peer)
            if size > _BUNDLE_ITEM_MAX:  # goes alone, after what came before it
                if run is not None:
                    out.append(_packed(runs.pop(peer)))
                out.append(frames)
            elif run is None:
                runs[peer] = [frames]
                sizes[peer] = size
            elif sizes[peer] + size > _BUNDLE_BUDGET or len(run) >= _BUNDLE_MESSAGES:
                out.append(_packed(run))
                runs[peer] = [frames]
                sizes[peer] = size
            else:
                run.append(frames)
                sizes[peer] += size
        for run in runs.values():
            out.append(_packed(run))
        return out

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
            self._blocked_count[frames[0]] = _count(frames)
            self._schedule_retry()
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self._unreachable(frames[0])
            elif exc.errno in (zmq.ENOTSOCK, zmq.ETERM):
                self._closed = True
            else:
                raise

    def _unreachable(self, peer: bytes) -> None:
        self.readers.discard(peer)
        self._blocked.pop(peer, None)
        self._release(peer)
        if self._on_unreachable is not None:
            self._on_unreachable(peer)

    def check_soon(self) -> None:
        """Check ``EVENTS`` on the loop's next turn: call it after a ``connect``, ``bind``,
        ``unbind`` or ``disconnect`` on the socket. libzmq processes the socket's pending
        commands in those calls, as in a send, which can take the FD's edge while a message
        waits. A no-op once closed, or when the loop is closed; before the loop runs, the
        check runs when it starts."""
        if not self._loop.is_closed():
            self._schedule_check()

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
                self._blocked_count[peer] -= _count(sent)
            else:
                del self._blocked[peer]
                self._release(peer)
        return not self._blocked

    def _on_ready(self) -> None:
        self._check_scheduled = False
        self._sent_alone = False
        if self._closed:
            return
        if self._leftover is not None:  # the rest of a bundle a Ctrl-C cut short
            rest, self._leftover = self._leftover, None
            self._hand_on(rest)
        if self._outbox:
            self._write_outbox()
        sock = self.sock
        on_message = self._on_message
        recv = self._recv
        handled = 0
        written = _clock()
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
                        if frames is not None:
                            if self._cut:
                                self._cut.discard(frames[0])
                            if len(frames) == 2 and frames[1][:2] == _BUNDLE_MAGIC:
                                handled += self._take_bundle(frames)
                            else:
                                try:
                                    on_message(frames)
                                except Exception:  # a handler bug must never kill the reader
                                    log.exception("error while handling a message")
                            if self._outbox and _clock() - written >= _CORK_SECONDS:
                                # Slow handlers: what they answered leaves now, not after
                                # the next ones (EVENTS is read again below).
                                self._write_outbox()
                                written = _clock()
                        if handled < _PEEK:
                            break  # EVENTS again, rather than a receive that may raise
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

    def _take_bundle(self, frames: list[Any]) -> int:
        """Hand on each message of a bundle, as if it came alone; how many there were, after
        the first. A malformed bundle is dropped whole, and logged (at a bounded rate)."""
        peer = frames[0]
        if self._recv is recv_frames:  # (not routed: a monitor's event, never a bundle)
            try:
                self._on_message(frames)
            except Exception:  # a handler bug must never kill the reader
                log.exception("error while handling a message")
            return 0
        try:
            messages = _unbundle(frames[1], peer)
        except ProtocolError as exc:
            _dropped("bundle", logging.WARNING, "dropped a malformed bundle: %s", exc)
            return 0
        self.learn(peer)  # a peer that sends bundles reads them
        self._hand_on(messages)
        return len(messages) - 1

    def _hand_on(self, messages: list[list[Any]]) -> None:
        # A bundle's messages, in order. A KeyboardInterrupt in a handler (bridge-lead mode,
        # a loop that catches it) leaves the rest for the next wake-up, as it leaves messages
        # not yet read on the socket: they are not lost.
        on_message = self._on_message
        sock = self.sock
        written = _clock()
        for i, message in enumerate(messages):
            try:
                on_message(message)
            except Exception:  # a handler bug must never kill the reader
                log.exception("error while handling a message")
            except BaseException:
                if i + 1 < len(messages) and not sock.closed:
                    self._leftover = messages[i + 1 :]
                    self._schedule_check()
                raise
            if sock.closed:  # a handler closed us: the rest is dropped, as unread ones are
                break
            if self._outbox and _clock() - written >= _CORK_SECONDS:
                self._write_outbox()  # slow handlers: as in _on_ready
                written = _clock()

    def read_waiting(self) -> None:
        """Read what is waiting on the socket now, as the reader would (a no-op inside the
        reader itself, once closed, or when the loop is): a client told by its monitor that
        a connection broke reads the replies that came before the break first, wherever the
        loop put the two events. Not for use from inside this driver's own sends."""
        if self._in_ready or self._closed or self._loop.is_closed():
            return
        # All of it, not one batch: the caller fails what is still pending right after. What
        # waits is bounded by the socket's receive queue (RCVHWM); the cap is for a peer that
        # never stops sending.
        for _ in range(_WAITING_BATCHES):
            self._on_ready()
            if self._closed or not self._check_scheduled:  # (a full batch schedules a look)
                break

    async def drain(self, timeout: float) -> None:
        """Write what is queued (the outbox, then each peer's queue as far as the peer takes
        it), waiting up to ``timeout`` seconds for peers whose pipe is full: a graceful stop
        calls it before :meth:`close`. Shutdown only; nothing on the hot path."""
        if self._closed:
            return
        self._write_outbox()
        if self._blocked:
            self._flush()
        if not self._blocked:
            return
        if self._retry_handle is None:
            self._schedule_retry()
        waiting = [self.wait_unblocked(peer) for peer in list(self._blocked)]
        await asyncio.wait(waiting, timeout=timeout)
        for fut in waiting:
            fut.cancel()  # (a no-op when done; a pending one is dropped by _release)

    def _write_all_once(self) -> None:
        # Closing: the outbox behind each peer's queue, each queue in order, as far as its
        # peer takes it now; no callbacks, nothing scheduled (the loop may be closed).
        queues = self._blocked
        for frames in self._outbox:
            queue = queues.get(frames[0])
            if queue is not None:
                queue.append(frames)
            elif not (self._cut and frames[0] in self._cut):
                queues[frames[0]] = deque([frames])
        self._outbox = []
        sock = self.sock
        try:
            # libzmq learns that a full pipe has room again from a command, which a send
            # reads only now and then (it throttles them); EVENTS reads them all now.
            _get(sock, _EVENTS)
        except zmq.ZMQError:
            return
        for queue in queues.values():
            while queue:
                try:
                    send_frames(sock, queue[0])
                except zmq.ZMQError:  # full, gone or closed: the rest of it is dropped
                    break
                queue.popleft()

    def close(self, linger: int = 0, queued: bool = False, last: Sequence[list[Any]] = ()) -> None:
        """Stop reading and close the socket (on the loop's thread). With ``linger`` (ms),
        this turn's burst is written first, as far as each peer takes it now, and ZeroMQ has
        that long to deliver it; with ``queued`` too, what waits behind a full pipe goes
        first, in order (a service's graceful stop: answers it gave). Anything else is
        dropped: a client's calls held behind a full pipe were failed already, and must not
        run after it said it closed. ``last``: messages written after all that, as far as
        each peer takes them (a closing client's CANCELs, oldest calls first)."""
        if self._closed and self.sock.closed:
            return
        if linger and not self._closed and not self.sock.closed:
            # A graceful close sends what was queued, then lingers to deliver it.
            if not queued:
                self._blocked.clear()
            self._outbox.extend(last)
            self._write_all_once()
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
        self._outbox = []
        self._outbox_bytes = 0
        if not self.sock.closed:
            self.sock.close(linger=linger)
