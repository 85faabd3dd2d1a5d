"""The peer table: the services a client is connected to, which one gets a new call, which are
up or refused us (from the socket monitor), and the keepalive pings that hold stream leases.

A service that refuses our handshake (CURVE: key not allowed, wrong service key, only one side
secure) fails the calls in flight there and new calls at once with AuthenticationError. ZeroMQ
does not retry a refused handshake, so the first call at least :data:`RETRY_REFUSED` seconds
after a refusal reconnects and tries again (an allowlist may have changed meanwhile)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq
import zmq.utils.monitor

from .._edge import map_exceptions
from .._reactor import SocketDriver
from ..errors import AuthenticationError, ConnectionLostError, RPCError
from ..security import handshake_error, warn_if_exposed

__all__ = ["Keepalive", "Peer", "PeerTable", "close_sockets"]

RETRY_REFUSED = 1.0  # seconds before a call may try a refused service's handshake again
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
OnLost = Callable[["Peer", str, bool, type[RPCError]], None]


class Peer:
    """One connected endpoint, addressed by its own routing id."""

    __slots__ = ("connection", "inflight", "refused", "refused_at", "rid", "up", "url")

    def __init__(self, url: str, rid: bytes) -> None:
        self.url = url
        self.rid = rid
        self.inflight = 0
        # Connections made so far (handshakes seen): a call sent while connection N is up
        # travels on it; one sent while down waits in ZeroMQ's queue for connection N + 1.
        self.connection = 0
        # Learned from the socket monitor; inproc reports no events and is always up.
        self.up = url.startswith("inproc://")
        self.refused: str | None = None  # why the service refused our last handshake
        self.refused_at = 0.0


class PeerTable:
    """The connections of one client socket. ``on_lost(peer, why, every_call, error)`` is told
    when a connection breaks or is refused (every_call: also calls sent while it was down, for
    disconnect(); error: the exception class to fail them with). ``security`` and
    ``serializer`` are the client's, for warnings and for telling refusals apart."""

    def __init__(
        self,
        socket: zmq.Socket[Any],
        on_lost: OnLost,
        security: object | None = None,
        serializer: str = "",
    ) -> None:
        self._socket = socket
        self._on_lost = on_lost
        self._security = security
        self._serializer = serializer
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
            rid = self._connect(url)
            warn_if_exposed(url, self._serializer, self._security, "connected to")
            peer = Peer(url, rid)
            self.by_url[url] = peer
            self.order.append(peer)

    def _connect(self, url: str) -> bytes:
        """Connect ``url`` under a new routing id; return the id."""
        rid = b"s%d" % next(self._rids)
        with map_exceptions(f"cannot connect to {url!r}"):
            self._socket.setsockopt(zmq.CONNECT_ROUTING_ID, rid)
            self._socket.connect(url)
        return rid

    def disconnect(self, url: str) -> None:
        peer = self.by_url.pop(url, None)
        if peer is None:
            return
        self.order.remove(peer)
        self._on_lost(peer, f"disconnected from {url}", True, ConnectionLostError)
        try:
            self._socket.disconnect(url)
        except zmq.ZMQError:
            pass

    def pick(self) -> Peer:
        """The service for a new call: live ones first, then the fewest calls in flight, then
        round robin.

        Raises:
            RPCError: not connected to any service.
            AuthenticationError: every service refused our handshake (within the last second).
        """
        order = self.order
        n = len(order)
        if n == 1:
            best = order[0]
        elif n == 0:
            raise RPCError("the client is not connected to any service; call connect() first")
        else:
            self._rr = start = (self._rr + 1) % n
            best = order[start]
            for i in range(1, n):
                peer = order[(start + i) % n]
                if (peer.refused is None, peer.up, -peer.inflight) > (
                    best.refused is None,
                    best.up,
                    -best.inflight,
                ):
                    best = peer
        if best.refused is not None:
            self._retry(best)
        return best

    def _retry(self, peer: Peer) -> None:
        """A call for a service that refused us: fail it, or (after RETRY_REFUSED) reconnect
        for a new handshake, which the call waits for."""
        if time.monotonic() - peer.refused_at < RETRY_REFUSED:
            raise AuthenticationError(peer.refused)
        try:
            self._socket.disconnect(peer.url)
        except zmq.ZMQError:
            pass
        peer.rid = self._connect(peer.url)
        peer.refused = None
        peer.up = False

    def monitor_socket(self) -> zmq.Socket[Any]:
        """The socket monitor's socket (open it before any connect, so no event is missed)."""
        return self._socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED
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
        kind = event["event"]
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            peer.connection += 1
            peer.up = True
            peer.refused = None
        elif kind & _HANDSHAKE_FAILED:
            error = handshake_error(kind, event["value"], url, self._security is not None)
            if error is not None:
                peer.refused, peer.refused_at = str(error), time.monotonic()
                self._on_lost(peer, peer.refused, True, AuthenticationError)
        elif kind == zmq.EVENT_DISCONNECTED:
            was_up, peer.up = peer.up, False
            if was_up:
                self._on_lost(peer, f"the connection to {url} broke", False, ConnectionLostError)


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
