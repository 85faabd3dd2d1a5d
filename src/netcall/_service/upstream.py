"""A service's connections *out*: to a broker's backend, or to a client that binds.

The service's ROUTER connects and names the peer itself (``ZMQ_CONNECT_ROUTING_ID``), with a
random id that no client can guess: a message from that id comes from the peer this service
chose to connect to (the hook for trusting a broker's word about its caller's key). The peer
cannot see the service until it speaks, so on every successful handshake (the socket monitor's
``EVENT_HANDSHAKE_SUCCEEDED``, which also follows each reconnection: a restarted broker learns
about the service again) the service sends a HELLO with its methods and ``max_concurrent``; it
sends HELLO again when its methods change, and BYE when it stops. After each HELLO and BYE
it sends a PING: a peer that answers it (a broker, or a client that binds) sends a call this
service refuses as busy to another service, and confirms that it read the BYE (see
:meth:`Upstreams.reroutes` and :meth:`Upstreams.bye_read`).

A connection that breaks ends the calls and streams that came through it: their answers could
only reach the peer's next incarnation, which knows nothing of them.

A refused handshake is logged as a warning, once until the next success (ZeroMQ keeps
retrying). A peer that hangs up mid-handshake (``HANDSHAKE_FAILED_NO_DETAIL``: a CURVE broker
reading a plain service's greeting does, and a plain one a CURVE service's) is asked which
mechanism it speaks (:mod:`netcall._greeting`), at most once per :data:`RECHECK_MECHANISM`
seconds; a mismatch is logged each time it is found, so once per that period while it lasts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq
import zmq.utils.monitor

from .. import protocol as p
from .._edge import endpoint_change, endpoints
from .._greeting import mismatch
from .._reactor import SocketDriver
from .._socket import connecting_out, monitor_socket, stop_monitor
from ..security import CurveClient, CurveServer, handshake_error
from .dispatch import Dispatcher
from .registry import HandlerRegistry
from .streams import Producers

__all__ = ["ServiceConnecting", "Upstreams"]

log = logging.getLogger("netcall")

#: Seconds between two questions to a peer that keeps hanging up mid-handshake about its
#: mechanism (and so between two warnings that it requires CURVE, or does not use it).
RECHECK_MECHANISM = 10.0

_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _FAILED


def _nothing() -> None:
    pass


def _ping_id() -> int:
    # Random and never 0 (a request id a peer ignores): no call of the peer's can have it.
    return int.from_bytes(os.urandom(8), "big") >> 1 | 1


class Upstreams:
    """The endpoints one service socket connects out to.

    Args:
        sock: gives the service's ROUTER socket (opening it on first use).
        hello: builds the service's HELLO (called for every announcement).
    """

    def __init__(
        self,
        sock: Callable[[], zmq.Socket[Any]],
        hello: Callable[[], p.Hello],
        own: CurveServer | None = None,
    ) -> None:
        self._sock = sock
        self._hello = hello
        self._own = own  # the socket's security for its binds, restored after a CURVE connect
        self._secure: set[bytes] = set()
        self._failed: dict[bytes, str] = {}  # the last handshake failure logged, per peer
        self._asked: dict[bytes, float] = {}  # when each peer was last asked its mechanism
        self._asking: dict[bytes, asyncio.Task[None]] = {}
        self._peers: dict[str, bytes] = {}  # url -> the routing id we gave that peer
        self._ids: set[bytes] = set()
        self._up: set[bytes] = set()
        self._monitor: zmq.Socket[Any] | None = None
        self._driver: SocketDriver | None = None
        #: Told of every monitor event (a socket has one monitor: this one is shared).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._send: Callable[[bytes, list[Any]], None] | None = None
        self._on_lost: Callable[[bytes], None] | None = None
        self._forget: Callable[[bytes], None] = lambda peer: None
        # Once the service runs: its socket driver checks EVENTS again (connect and disconnect
        # process the socket's pending commands, which can take the FD's edge).
        self._check: Callable[[], None] = _nothing
        self._announce_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plain = own is None  # no CURVE on this socket (own: its Curve.server)
        # The PING sent after each HELLO, by peer; the peers that answered it (brokers and
        # clients that bind, which send a call refused as busy to another service; not a
        # peer older than that).
        self._probes: dict[bytes, int] = {}
        self._rerouting: set[bytes] = set()
        # After BYE: the PING each of those must answer (by peer), and who waits for them.
        self._pinged: dict[bytes, int] = {}
        self._heard: asyncio.Event | None = None

    @property
    def connected(self) -> set[str]:
        """The endpoints connected to."""
        return set(self._peers)

    def is_upstream(self, peer: bytes) -> bool:
        """Whether ``peer`` is a routing id this service gave an endpoint it connected to."""
        return peer in self._ids

    def reroutes(self, peer: bytes) -> bool:
        """Whether ``peer`` answered the PING sent after the HELLO: a broker, or a client that
        binds, which sends a call this service refuses as busy to another service (a peer
        older than that answers no PING)."""
        return peer in self._rerouting

    def vouches(self, peer: bytes) -> bool:
        """Whether ``peer`` may tell this service who its caller is (a broker's word): a peer
        this service connected to, over a link without CURVE, or over one where this service
        is the CURVE client of the key it was given (``connect(url, security=...)``: the peer
        proved it holds that key). Where this service is the CURVE server, the link's own key
        is the caller's: a client that binds must not claim another key."""
        return peer in self._ids and (self._plain or peer in self._secure)

    def connect(self, urls: str | Iterable[str], security: CurveClient | None = None) -> None:
        """Connect out to ``urls`` (a broker's backend, or a client that binds), as a CURVE
        client with ``security``.

        Raises:
            TransportError: a malformed endpoint.
            TypeError: ``security`` is not ``Curve.client(...)``, or an endpoint not a ``str``.
        """
        if security is not None and not isinstance(security, CurveClient):
            raise TypeError(
                "service.connect(security=) takes Curve.client(<the peer's public key>, "
                f"keypair=...), not {type(security).__name__}"
            )
        for url in endpoints(urls):
            if url in self._peers:
                continue
            if self._monitor is None:
                # Before the first connect, so no handshake event is missed.
                self._monitor = monitor_socket(self._sock(), _EVENTS)
                if self._loop is not None:
                    self._watch(self._loop)
            peer = b"\x01up" + os.urandom(12)
            with (
                endpoint_change(f"cannot connect to {url!r}", self._check),
                connecting_out(self._sock()),
            ):
                self._sock().setsockopt(zmq.CONNECT_ROUTING_ID, peer)
                self._connect(url, security)
            self._peers[url] = peer
            if security is not None:
                self._secure.add(peer)
            self._ids.add(peer)
            if url.startswith("inproc://"):
                # inproc reports no handshake: the connection is as good as made.
                self._up.add(peer)
                self._greet(peer)

    def _connect(self, url: str, security: CurveClient | None) -> None:
        # ZeroMQ copies a socket's options into each connection (and each bind) when it is
        # made: the CURVE client options count for this connection only, then the socket's own
        # (a CURVE server for its binds, or none) come back.
        if security is None:
            self._sock().connect(url)
            return
        try:
            security.apply(self._sock())
            self._sock().connect(url)
        finally:
            if self._own is not None:
                self._sock().setsockopt(zmq.CURVE_SERVER, 1)
                self._sock().setsockopt(zmq.CURVE_SECRETKEY, self._own.keypair.secret)  # type: ignore[arg-type]
            else:
                self._sock().setsockopt(zmq.CURVE_SERVER, 0)  # back to the NULL mechanism

    def disconnect(self, url: str) -> None:
        """Stop connecting to ``url``; calls that came through it are ended."""
        peer = self._peers.pop(url, None)
        if peer is None:
            return
        try:
            self._sock().disconnect(url)
        except zmq.ZMQError:
            pass
        self._check()
        self._ids.discard(peer)
        self._failed.pop(peer, None)
        self._asked.pop(peer, None)
        asking = self._asking.pop(peer, None)
        if asking is not None:
            asking.cancel()
        self._lost(peer)

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[bytes, list[Any]], None],
        on_lost: Callable[[bytes], None],
        check: Callable[[], None],
        forget: Callable[[bytes], None] = lambda peer: None,
    ) -> None:
        """Begin announcing through ``send(peer, frames)``; ``on_lost(peer)`` is called when a
        connection out breaks; ``check()`` after each connect or disconnect (the socket's
        driver looks at it again); ``forget(peer)`` when a connection out is made or breaks
        (the peer there next must show again that it reads bundles)."""
        self._loop = loop
        self._send = send
        self._on_lost = on_lost
        self._check = check
        self._forget = forget
        if self._monitor is None:  # the disconnect watch needs it even with no connection out
            self._monitor = monitor_socket(self._sock(), _EVENTS)
        self._watch(loop)
        inproc = [peer for url, peer in self._peers.items() if url.startswith("inproc://")]
        for peer in inproc:
            self._greet(peer)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._driver is None and self._monitor is not None:
            self._driver = SocketDriver(self._monitor, loop, self._on_event)

    def _on_event(self, frames: list[Any]) -> None:
        try:
            event = zmq.utils.monitor.parse_monitor_message(frames)
        except Exception:  # pragma: no cover - libzmq's own format
            return
        for listener in self.listeners:
            listener(event)  # type: ignore[arg-type]
        endpoint = event["endpoint"]
        url = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        peer = self._peers.get(url)
        if peer is None:  # a client connected to one of the service's bound endpoints
            return
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._forget(peer)
            self._failed.pop(peer, None)
            self._up.add(peer)
            self._greet(peer)
        elif event["event"] & _FAILED:
            self._refused(peer, url, int(event["event"]), int(event["value"]))
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            self._forget(peer)
            self._lost(peer)

    def _refused(self, peer: bytes, url: str, event: int, value: int) -> None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self._loop is not None:
            # The peer hung up: ask it why (the answer is logged), unless asked lately.
            now = time.monotonic()
            if peer not in self._asking and now - self._asked.get(peer, -1e9) >= RECHECK_MECHANISM:
                self._asked[peer] = now
                self._asking[peer] = self._loop.create_task(self._ask(peer, url))
            return
        self._warn(peer, url, handshake_error(event, value, url, peer in self._secure))

    async def _ask(self, peer: bytes, url: str) -> None:
        secure = peer in self._secure
        try:
            error = await mismatch(url, secure)
        finally:
            self._asking.pop(peer, None)
        if self._peers.get(url) != peer or peer in self._up:
            return  # disconnected, or connected meanwhile
        if error is not None:
            self._warn(peer, url, error, again=True)
        else:  # the same mechanism: a CURVE service has the wrong key for the peer
            failed = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            self._warn(peer, url, handshake_error(failed, 0, url, secure))

    def _warn(self, peer: bytes, url: str, error: Exception | None, again: bool = False) -> None:
        # ZeroMQ retries every reconnect interval: say it once, until the next success (or,
        # ``again``, each time it is found: see RECHECK_MECHANISM).
        text = str(error) if error is not None else f"the handshake with {url} failed"
        text = text.replace(  # the client's advice, in the words of a service connecting out
            "give this client security=Curve.client(<the service's public key>)",
            "connect with security=Curve.client(<its public key>, keypair=...)",
        )
        text = text.replace("this client", "this service").replace("the service", "the peer")
        if again or self._failed.get(peer) != text:
            self._failed[peer] = text
            log.warning("a service's connection out: %s", text)

    def _lost(self, peer: bytes) -> None:
        self._answered(peer)
        self._probes.pop(peer, None)
        self._rerouting.discard(peer)  # its next incarnation may be another program
        if peer in self._up:
            self._up.discard(peer)
            if self._on_lost is not None:
                self._on_lost(peer)

    def _greet(self, peer: bytes) -> None:
        # HELLO, then a PING: a broker or a client that binds answers it (see reroutes); a
        # peer older than that ignores it.
        self._say(peer, self._hello().to_frames())
        if self._send is not None:
            rid = self._probes[peer] = _ping_id()
            self._say(peer, p.Ping(rid).to_frames())

    def _say(self, peer: bytes, frames: list[bytes]) -> None:
        if self._send is not None:
            self._send(peer, list(frames))

    def announce(self) -> None:
        """Send HELLO again to every connected peer (the methods changed). Coalesced: many
        registrations in a row send one HELLO."""
        if self._loop is None or self._announce_scheduled or not self._up:
            return
        self._announce_scheduled = True

        def run() -> None:
            self._announce_scheduled = False
            frames = self._hello().to_frames()
            for peer in self._up:
                self._say(peer, frames)

        # Thread-safe: handlers may be registered from the thread of a bridged service (gevent's
        # hub, a trio run) while the socket lives on netcall's loop thread.
        self._loop.call_soon_threadsafe(run)

    def bye(self) -> None:
        """Tell every connected peer that the service stops, then PING each that re-routes
        (:meth:`reroutes`): its PONG says it read the BYE (see :meth:`bye_read`)."""
        frames = p.Bye().to_frames()
        for peer in self._up:
            self._say(peer, frames)
            if peer in self._rerouting:
                rid = self._pinged[peer] = _ping_id()
                self._say(peer, p.Ping(rid).to_frames())

    async def bye_read(self, timeout: float) -> None:
        """Wait until every peer :meth:`bye` pinged (brokers, clients that bind) answered its
        PING, or lost its connection, for at most ``timeout`` seconds. A peer keeps the order
        of what it sends on one connection: once its PONG is here, so is every call it sent
        before it read the BYE. Peers older than that (they answered no PING after the HELLO)
        are not waited for. A blocking or gevent client that binds reads only while one of its
        threads calls (or a thread of netcall's own runs its loop): an idle one is waited for
        the whole ``timeout``."""
        if not self._pinged or timeout <= 0:
            return
        heard = self._heard = asyncio.Event()
        try:
            await asyncio.wait_for(heard.wait(), timeout)
        except asyncio.TimeoutError:
            log.debug("%d peers did not confirm the service's goodbye", len(self._pinged))
        finally:
            self._heard = None
            self._pinged.clear()

    def pong(self, peer: bytes, rid: int) -> bool:
        """A PONG from ``peer``: True if it is a peer this service connected to (a PONG from
        it is never a fault: it answers a PING of :meth:`_greet` or :meth:`bye`, or is
        ignored)."""
        if peer not in self._ids:
            return False
        if self._probes.get(peer) == rid:
            del self._probes[peer]
            self._rerouting.add(peer)
        elif self._pinged.get(peer) == rid:
            self._answered(peer)
        return True

    def _answered(self, peer: bytes) -> None:
        answered = self._pinged.pop(peer, None) is not None
        if answered and not self._pinged and self._heard is not None:
            self._heard.set()

    def close(self) -> None:
        for task in self._asking.values():
            task.cancel()
        self._asking.clear()
        if self._monitor is not None:  # first: see netcall._socket.stop_monitor
            stop_monitor(self._sock())
        if self._driver is not None:
            self._driver.close()
            self._driver = None
        elif self._monitor is not None and not self._monitor.closed:
            self._monitor.close(linger=0)
        self._monitor = None


class ServiceConnecting:
    """The public ``connect``/``disconnect``/``connected`` of :class:`~netcall.RPCService`
    (mixed into it)."""

    _upstreams: Upstreams
    _closed: bool
    _dispatch: Dispatcher
    _producers: Producers
    _registry: HandlerRegistry
    _max_concurrent: int | None
    _socket_options: tuple[float | None, int | None]

    @property
    def connected(self) -> set[str]:
        """The endpoints this service connected out to (see :meth:`connect`)."""
        return self._upstreams.connected

    def connect(self, urls: str | Iterable[str], security: CurveClient | None = None) -> None:
        """Connect out to a broker's backend, or to a client that binds (a service may both
        bind and connect). On every (re)connection the service announces its methods and
        ``max_concurrent`` (again when its methods change); calls from that peer are served
        like any other. A connection that breaks ends the calls and streams that came through
        it.

        ``security``: ``Curve.client(<the peer's public key>, keypair=<this service's>)``
        from :mod:`netcall.security`: on this connection the service is the CURVE *client*
        (for a broker started with ``backend_security=Curve.server(...)``, whose allowlist
        holds the service's public key). It applies to ``urls`` only: the service's own
        ``security=`` (``Curve.server``) stays on its bound endpoints. A refused handshake is
        logged as a warning (ZeroMQ keeps retrying).

        Raises:
            TransportError: a malformed endpoint (also a ``zmq.ZMQError``).
            TypeError: ``security`` is not ``Curve.client(...)``, or an endpoint not a ``str``.
            RuntimeError: the service is closed.
        """
        if self._closed:
            raise RuntimeError("the service is closed")
        self._upstreams.connect(urls, security)

    def disconnect(self, url: str) -> None:
        """Stop connecting out to ``url``."""
        self._upstreams.disconnect(url)

    def _hello(self) -> p.Hello:
        flags = p.HELLO_BUNDLES if p.bundles_allowed(self._socket_options[1]) else 0
        return p.Hello(self._registry.describe(), self._max_concurrent, flags)

    def _upstream_lost(self, peer: bytes) -> None:
        # Answers to that peer's calls could only reach its next incarnation: end them.
        for key in [k for k in self._dispatch.calls if k[0] == peer]:
            self._dispatch.cancel(*key)
        self._producers.close_peer(peer)
