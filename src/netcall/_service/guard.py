"""What one client may cost a service, and what the service counts: the limits a hostile or
broken peer meets (:class:`Limits`), the per-client accounting behind them, the bounded-rate
log of malformed input, refusals and failures, and :meth:`Guard.stats`.

A client is *cut off* when it does not read its replies (the socket driver reports it); it is
*gone* when its connection closed (the driver finds it unreachable, probed after each
disconnect by :class:`~netcall._peerwatch.DisconnectWatch`). Either way its calls are cancelled
and its streams closed at once, so neither its work nor its buffers outlive it.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import zmq

from .. import protocol as p
from .._peerwatch import DisconnectWatch
from .._ratelog import DEFAULT_BURST, DEFAULT_INTERVAL, RateLimitedLog
from .._reactor import MAX_QUEUED, MAX_QUEUED_BYTES, OnMessage, SocketDriver

__all__ = ["Guard", "Limits"]

log = logging.getLogger("netcall")


@dataclasses.dataclass(frozen=True)
class Limits:
    """A service's limits per client (``RPCService(limits=Limits(...))``), each with a default.

    Attributes:
        max_per_client: calls (async handlers, executor calls) and streams running for one
            client at once; more are refused with :class:`~netcall.errors.ServiceBusyError`.
            A call that cannot suspend (a sync handler run inline, or an ``async def`` one
            with no ``await``, without middleware) never counts and is never refused.
        max_streams_per_client: streams open for one client at once (they count towards
            ``max_per_client`` too): the loop serves open streams in turn, so this bounds how
            long one client's streams can delay everyone else.
        max_stream_window: stream items sent to a client per message it sends: a stream sends
            at most this many after the CALL and after each CREDIT, whatever credit the client
            granted (more credit is kept, and used after its next CREDIT).
        max_stream_window_bytes: bytes of stream items sent to a client per message it sends:
            once this many went after the CALL or a CREDIT, a stream waits for the client's
            next message (one item always goes, whatever its size). A client grants its first
            16 items before it has seen one; this keeps 16 items of many MiB each from piling
            up in both processes (4 MiB, like the client's ``stream_buffer``). A CREDIT buys
            at least its count of items at the average size sent so far: the client sized it
            from the items it saw and its own ``stream_buffer``, which may be larger.
        send_hwm: messages ZeroMQ holds for one client before a send reports it busy (the
            socket's SNDHWM; a bundle of answers, up to 64 KiB, is one); then up to
            ``max_queued`` messages (a bundle's counted one by one) and ``max_queued_bytes``
            bytes wait in netcall's own queue for it. A client over either is *cut off*: what waits
            for it is dropped, its calls are cancelled, its streams closed; other clients are
            not affected. A stream waits while its client is backed up.
        receive_hwm: messages ZeroMQ reads ahead from one client (the socket's RCVHWM).
        log_burst: malformed messages, refusals and failures logged in full per kind and per
            ``log_interval`` seconds; the rest are counted and summarised once per interval.
    """

    max_per_client: int = 1024
    max_streams_per_client: int = 128
    max_stream_window: int = 4096
    send_hwm: int = 1000
    max_queued: int = MAX_QUEUED
    max_queued_bytes: int = MAX_QUEUED_BYTES
    receive_hwm: int = 100
    log_burst: int = DEFAULT_BURST
    log_interval: float = DEFAULT_INTERVAL
    max_stream_window_bytes: int = 4 * 2**20

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name == "log_burst" else 1
            if not isinstance(value, int | float) or math.isnan(value) or value < low:
                raise ValueError(f"Limits.{field.name} must be a number >= {low}, not {value!r}")
        if self.max_stream_window > p.MAX_COUNT:
            raise ValueError(f"Limits.max_stream_window must be at most {p.MAX_COUNT}")


class Guard:
    """Per-client accounting, counters and the rate-limited log of one service.

    ``calls`` is the dispatcher's table of running calls (by (peer, request id)) and
    ``close_streams(peer)`` closes a peer's streams: what is dropped when a client is cut off
    or gone.
    """

    __slots__ = (
        "_abandon",
        "_calls",
        "_close_streams",
        "_load",
        "_send",
        "_streams",
        "_watch",
        "counts",
        "is_upstream",
        "limits",
        "log",
    )

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.log = RateLimitedLog(log, burst=limits.log_burst, interval=limits.log_interval)
        self.counts = {"calls": 0, "errors": 0, "peers_gone": 0, "peers_cut_off": 0}
        self._load: collections.Counter[bytes] = collections.Counter()  # calls + streams
        self._streams: collections.Counter[bytes] = collections.Counter()
        self._calls: dict[tuple[bytes, int], asyncio.Future[Any]] = {}
        self._close_streams: Callable[[bytes], bool] = lambda peer: False
        self._abandon: Callable[[bytes, int], bool] = lambda peer, rid: False
        self._send: Callable[[bytes, list[Any]], None] = lambda peer, frames: None
        self._watch: DisconnectWatch | None = None
        #: Peers that are brokers this service connected to: many clients behind one routing
        #: id, so the per-client limits do not apply to them (max_concurrent still does).
        self.is_upstream: Callable[[bytes], bool] = lambda peer: False

    def attach(
        self,
        calls: dict[tuple[bytes, int], asyncio.Future[Any]],
        close_streams: Callable[[bytes], bool],
        abandon: Callable[[bytes, int], bool],
    ) -> None:
        self._calls = calls
        self._close_streams = close_streams
        self._abandon = abandon

    def start(
        self,
        sock: zmq.Socket[Any],
        loop: asyncio.AbstractEventLoop,
        on_message: OnMessage,
        send: Callable[[bytes, list[Any]], None],
        identify: bool = False,
        monitor_listeners: list[Callable[[dict[str, Any]], None]] | None = None,
        bundles: bool = False,
    ) -> SocketDriver:
        """The service socket's driver, with the per-client send bounds, and the watch that
        finds clients whose connection closed."""
        self._send = send
        lim = self.limits
        driver = SocketDriver(
            sock,
            loop,
            on_message,
            self.gone,
            identify,
            max_queued=lim.max_queued,
            max_queued_bytes=lim.max_queued_bytes,
            on_overflow=self.cut_off,
            unbounded=lambda peer: self.is_upstream(peer),
            bundles=bundles,
        )
        self._watch = DisconnectWatch(loop, self.probe)
        if monitor_listeners is not None:
            monitor_listeners.append(self._watch.on_event)
        return driver

    def probe(self) -> None:
        """After a disconnect: a message clients ignore (PONG 0) to each client with work
        open; a send to one that left fails, and the driver reports it (:meth:`gone`)."""
        for peer in list(self._load):
            self._send(peer, p.Pong(0).to_frames())

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.log.flush()

    # -- accounting -----------------------------------------------------------------------

    def over_limit(self, peer: bytes) -> bool:
        return self._load.get(peer, 0) >= self.limits.max_per_client and not self.is_upstream(peer)

    def streams_full(self, peer: bytes) -> bool:
        return self._streams.get(
            peer, 0
        ) >= self.limits.max_streams_per_client and not self.is_upstream(peer)

    def loaded(self, peer: bytes, stream: bool = False) -> None:
        self._load[peer] += 1
        if stream:
            self._streams[peer] += 1

    def unloaded(self, peer: bytes, stream: bool = False) -> None:
        load = self._load
        if load[peer] <= 1:
            load.pop(peer, None)
        else:
            load[peer] -= 1
        if stream:
            streams = self._streams
            if streams[peer] <= 1:
                streams.pop(peer, None)
            else:
                streams[peer] -= 1

    # -- what happens ---------------------------------------------------------------------

    def malformed(self, peer: bytes, what: object) -> None:
        self.log("malformed", logging.WARNING, "malformed message from %r: %s", peer, what)

    def refused(self, type_name: str, message: str) -> None:
        self.log("refused", logging.DEBUG, "refused (%s): %s", type_name, message)

    def failed(self, msg: str, *args: Any, exc: BaseException | None = None) -> None:
        self.log("failure", logging.ERROR, msg, *args, exc_info=exc)

    def cut_off(self, peer: bytes) -> None:
        """The driver cut ``peer`` off: it does not read what it is sent."""
        self.counts["peers_cut_off"] += 1
        self.log(
            "cut off",
            logging.WARNING,
            "cut off client %r: it does not read its replies",
            peer,
        )
        self._forget(peer)

    def gone(self, peer: bytes) -> None:
        """``peer``'s connection closed (a send to it found it unreachable)."""
        if self._forget(peer):
            self.counts["peers_gone"] += 1

    def _forget(self, peer: bytes) -> bool:
        had_streams = self._close_streams(peer)
        keys = [key for key in self._calls if key[0] == peer] if self._load.get(peer) else []
        for key in keys:
            self._abandon(*key)
        return had_streams or bool(keys)

    def stats(self) -> dict[str, int]:
        """``calls`` run, ``errors`` (handlers and generators that raised), ``refused``
        (answered with an error instead of a handler), ``malformed`` (messages dropped or
        refused as malformed), ``peers_cut_off`` (clients that did not read), ``peers_gone``
        (clients whose connection closed with work open)."""
        counts = self.log.counts
        return {
            "calls": self.counts["calls"],
            "errors": self.counts["errors"],
            "refused": counts.get("refused", 0),
            "malformed": counts.get("malformed", 0),
            "peers_cut_off": self.counts["peers_cut_off"],
            "peers_gone": self.counts["peers_gone"],
        }
