"""The peer table: the services a client is connected to, which one gets a new call, which are
up (from the socket monitor), and the keepalive pings that hold stream leases."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import zmq
import zmq.utils.monitor

from .._edge import map_exceptions
from .._reactor import SocketDriver
from ..errors import RPCError

__all__ = ["Keepalive", "Peer", "PeerTable", "close_sockets"]


class Peer:
    """One connected endpoint, addressed by its own routing id."""

    __slots__ = ("connection", "inflight", "rid", "up", "url")

    def __init__(self, url: str, rid: bytes) -> None:
        self.url = url
        self.rid = rid
        self.inflight = 0
        # Connections made so far (handshakes seen): a call sent while connection N is up
        # travels on it; one sent while down waits in ZeroMQ's queue for connection N + 1.
        self.connection = 0
        # Learned from the socket monitor; inproc reports no events and is always up.
        self.up = url.startswith("inproc://")


class PeerTable:
    """The connections of one client socket. ``on_lost(peer, why, every_call)`` is told when a
    connection breaks (every_call: also calls sent while it was down, for disconnect())."""

    def __init__(self, socket: zmq.Socket[Any], on_lost: Callable[[Peer, str, bool], None]) -> None:
        self._socket = socket
        self._on_lost = on_lost
        self.by_url: dict[str, Peer] = {}
        self.order: list[Peer] = []
        self._rr = 0
        self._rids = itertools.count(1)

    def connect(self, urls: str | Iterable[str], only: bool) -> None:
        wanted = [urls] if isinstance(urls, str) else list(urls)
        if only:
            for url in set(self.by_url) - set(wanted):
                self.disconnect(url)
        for url in wanted:
            if url in self.by_url:
                continue
            rid = b"s%d" % next(self._rids)
            with map_exceptions(f"cannot connect to {url!r}"):
                self._socket.setsockopt(zmq.CONNECT_ROUTING_ID, rid)
                self._socket.connect(url)
            peer = Peer(url, rid)
            self.by_url[url] = peer
            self.order.append(peer)

    def disconnect(self, url: str) -> None:
        peer = self.by_url.pop(url, None)
        if peer is None:
            return
        self.order.remove(peer)
        self._on_lost(peer, f"disconnected from {url}", True)
        try:
            self._socket.disconnect(url)
        except zmq.ZMQError:
            pass

    def pick(self) -> Peer:
        """The service for a new call: live ones first, then the fewest calls in flight, then
        round robin.

        Raises:
            RPCError: not connected to any service.
        """
        order = self.order
        n = len(order)
        if n == 1:
            return order[0]
        if n == 0:
            raise RPCError("the client is not connected to any service; call connect() first")
        self._rr = start = (self._rr + 1) % n
        best = order[start]
        for i in range(1, n):
            peer = order[(start + i) % n]
            if (peer.up, -peer.inflight) > (best.up, -best.inflight):
                best = peer
        return best

    def monitor_socket(self) -> zmq.Socket[Any]:
        """The socket monitor's socket (open it before any connect, so no event is missed)."""
        return self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )

    def on_monitor_event(self, frames: list[Any]) -> None:
        try:
            event = zmq.utils.monitor.parse_monitor_message(frames)
        except Exception:  # pragma: no cover - libzmq's own format
            return
        endpoint = event["endpoint"]
        url = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        peer = self.by_url.get(url)
        if peer is None:
            return
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            peer.connection += 1
            peer.up = True
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            was_up, peer.up = peer.up, False
            if was_up:
                self._on_lost(peer, f"the connection to {url} broke", False)


class Keepalive:
    """Pings the services holding our streams every third of the shortest lease seen.
    ``ping()`` sends the pings and says whether to keep going."""

    __slots__ = ("_handle", "_lease", "_ping")

    def __init__(self, ping: Callable[[], bool]) -> None:
        self._ping = ping
        self._handle: asyncio.TimerHandle | None = None
        self._lease = float("inf")

    def schedule(self, loop: asyncio.AbstractEventLoop, lease: float) -> None:
        if self._handle is not None:
            if lease >= self._lease:
                return
            self._handle.cancel()  # a service with a shorter lease: ping sooner
        self._lease = lease
        self._handle = loop.call_later(lease / 3, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        if self._ping():
            self.schedule(loop, self._lease)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def close_sockets(
    driver: SocketDriver | None,
    socket: zmq.Socket[Any],
    monitor_driver: SocketDriver | None,
    monitor: zmq.Socket[Any],
    farewell: list[list[Any]],
) -> None:
    """Close the client's socket and its monitor; when the socket is being driven, first send
    the ``farewell`` messages (best effort) and let them go out (linger 50 ms)."""
    if driver is not None:
        for frames in farewell:
            try:
                driver.send(frames)
            except Exception:
                pass
        driver.close(linger=50)
    elif not socket.closed:
        socket.close(linger=0)
    if monitor_driver is not None:
        monitor_driver.close()
    elif not monitor.closed:
        monitor.close(linger=0)
