"""The peer table: the services a client is connected to, which one gets a new call, which are
up or refused us (from the socket monitor), and the keepalive pings that hold stream leases.

A service that refuses our handshake (CURVE: key not allowed, wrong service key, only one side
secure) fails the calls in flight there and new calls at once with AuthenticationError. ZeroMQ
does not retry a refused handshake, so the first call at least :data:`RETRY_REFUSED` seconds
after a refusal reconnects and tries again (an allowlist may have changed meanwhile). A CURVE
service often hangs up on a plain client before saying it wants CURVE, and a plain service on
a CURVE client (the monitor then reports a handshake that failed with no detail, as for a
CURVE client with the wrong service key, and ZeroMQ retries): the client asks the service for
its mechanism on a connection of its own (:mod:`netcall._greeting`), and a mismatch is a
refusal like the others (ZeroMQ's retries are stopped).

A client may also *bind*: services then connect to it and announce themselves (HELLO: their
methods, and BYE when they stop). Such a peer is known by the routing id this socket gave its
connection; it is gone when a send to it fails (``ROUTER_MANDATORY``), which the client
provokes with a PING to every announced peer whenever the monitor sees a connection on a bound
endpoint break. The client answers such a service's PINGs (one after each HELLO and BYE), as a
broker does: the service then refuses a call it gets after its BYE as busy (it never started),
and the client sends it to another service (:meth:`Sending._refused
<netcall._client.sending.Sending._refused>`); it also waits for the PONG to its BYE before it
closes, so no call sent before the client read the BYE is lost."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq
import zmq.utils.monitor

from .. import protocol as p
from .._edge import endpoint_change, endpoints
from .._greeting import mismatch
from .._reactor import SocketDriver
from .._socket import IpcFiles, bound_endpoint, connecting_out
from ..errors import AuthenticationError, ConnectionLostError, RPCError, exception_from_remote
from ..security import handshake_error, warn_if_exposed

__all__ = ["Keepalive", "Peer", "PeerTable", "close_sockets"]

RETRY_REFUSED = 1.0  # seconds before a call may try a refused service's handshake again
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
OnLost = Callable[["Peer", str, bool, type[RPCError]], None]
#: What the client's socket monitor reports (see ClientSockets): up, down, refused.
MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED | _HANDSHAKE_FAILED


class Peer:
    """One service: an endpoint the client connected to, or a service that connected to the
    client and announced itself; addressed by its routing id."""

    __slots__ = (
        "connection",
        "draining",
        "inflight",
        "methods",
        "probed_at",
        "refused",
        "refused_at",
        "rid",
        "up",
        "url",
    )

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
        self.probed_at = -RETRY_REFUSED  # when the client last asked the service's mechanism
        # What an announced service said it has (None: unknown, any method may be there).
        self.methods: frozenset[str] | None = None
        self.draining = False  # it said BYE: no new calls


class PeerTable:
    """The connections of one client socket. ``on_lost(peer, why, every_call, error)`` is told
    when a connection breaks or is refused (every_call: also calls sent while it was down, for
    disconnect(); error: the exception class to fail them with). ``security`` and
    ``serializer`` are the client's, for warnings and for telling refusals apart."""

    def __init__(
        self,
        socket: Callable[[], zmq.Socket[Any]],
        on_lost: OnLost,
        security: object | None = None,
        serializer: str = "",
    ) -> None:
        self._socket = socket  # opens the socket (and its monitor) on first use
        self._on_lost = on_lost
        self._security = security
        self._serializer = serializer
        self.by_url: dict[str, Peer] = {}
        self.order: list[Peer] = []
        self._rr = 0
        self._rids = itertools.count(1)
        self.bound: set[str] = set()
        self.ipc = IpcFiles()  # the socket files of the ipc endpoints bound
        self.announced: dict[bytes, Peer] = {}  # services that connected to us, by routing id
        self._send: Callable[[list[Any]], None] | None = None
        self._blocked: Callable[[bytes], bool] = lambda rid: False
        self._check: Callable[[], None] | None = None
        self._connected: set[bytes] = set()  # the routing ids of the services connected to
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe_again: asyncio.TimerHandle | None = None
        self._asking: dict[Peer, asyncio.Task[None]] = {}  # services asked for their mechanism
        self._forget: Callable[[bytes], None] = lambda rid: None
        self._learn: Callable[[bytes], None] = lambda rid: None

    def start(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[list[Any]], None],
        check: Callable[[], None],
        blocked: Callable[[bytes], bool] = lambda rid: False,
        forget: Callable[[bytes], None] = lambda rid: None,
        learn: Callable[[bytes], None] = lambda rid: None,
    ) -> None:
        """The client's socket is driven: ``send(frames)`` sends one message, routing id first;
        ``check()`` has the driver look at the socket again (see :meth:`_changed`);
        ``blocked(rid)`` tells whether what is sent to ``rid`` waits behind a full pipe;
        ``forget(rid)``: a new connection under ``rid`` must show it reads bundles again;
        ``learn(rid)``: a service that connected to us said it reads them."""
        self._loop = loop
        self._send = send
        self._check = check
        self._blocked = blocked
        self._forget = forget
        self._learn = learn

    def _changed(self) -> None:
        # connect/bind/unbind/disconnect process the socket's pending commands, which can take
        # the ZeroMQ FD's edge while a reply waits: the driver must check EVENTS again.
        if self._check is not None:
            self._check()

    def probe(self) -> None:
        """PING every service that connected to us: a send to one that is gone fails, and
        :meth:`gone` ends its calls (again shortly after, for a pipe not yet torn down)."""
        send, loop = self._send, self._loop
        if send is None or loop is None:
            return
        for rid in list(self.announced):
            send([rid, *p.Ping(0).to_frames()])
        if self._probe_again is None:
            self._probe_again = loop.call_later(0.2, self._probe_later)

    def _probe_later(self) -> None:
        self._probe_again = None
        if self._send is not None:
            for rid in list(self.announced):
                self._send([rid, *p.Ping(0).to_frames()])

    def close(self) -> None:
        self._send = self._check = None
        if self._probe_again is not None:
            self._probe_again.cancel()
            self._probe_again = None
        for task in self._asking.values():
            task.cancel()
        self._asking.clear()

    def connect(self, urls: str | Iterable[str], only: bool) -> None:
        wanted = endpoints(urls)
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
        with (
            endpoint_change(f"cannot connect to {url!r}", self._check),
            connecting_out(self._socket()),
        ):
            self._socket().setsockopt(zmq.CONNECT_ROUTING_ID, rid)
            self._socket().connect(url)
        self._connected.add(rid)
        return rid

    def disconnect(self, url: str) -> None:
        peer = self.by_url.pop(url, None)
        if peer is None:
            return
        self._connected.discard(peer.rid)
        self._forget(peer.rid)
        self.order.remove(peer)
        self._on_lost(peer, f"disconnected from {url}", True, ConnectionLostError)
        try:
            self._socket().disconnect(url)
        except zmq.ZMQError:
            pass
        self._changed()

    def pick(self, method: str) -> Peer:
        """The service for a new call: one that may have ``method`` (an announced service that
        lists it, or any service connected to), live ones first, then one known to have it (a
        client that both connects and binds sends a method an announced service lists there,
        not to a service whose methods it does not know), then the fewest calls in flight,
        then round robin.

        Raises:
            RPCError: no service at all.
            ServiceStoppingError: only announced services, and every one that has ``method``
                said BYE (it is stopping).
            MethodNotFoundError: only announced services, and none has ``method``.
            AuthenticationError: every service refused our handshake (within the last second).
        """
        order = self.order
        n = len(order)
        if n == 1 and order[0].methods is None:
            best = order[0]
        elif n == 0:
            raise RPCError(
                "the client is not connected to any service; call connect() first"
                if not self.bound
                else "no service has connected to this client yet"
            )
        else:
            self._rr = start = (self._rr + 1) % n
            found: Peer | None = None
            stopping = False  # a service has the method, but said BYE
            for i in range(n):
                peer = order[(start + i) % n]
                if peer.methods is not None and (
                    peer.draining or (method not in peer.methods and not method.startswith("_"))
                ):
                    stopping = stopping or (peer.draining and method in peer.methods)
                    continue
                if found is None or (
                    peer.refused is None,
                    peer.up,
                    peer.methods is not None and method in peer.methods,
                    -peer.inflight,
                ) > (
                    found.refused is None,
                    found.up,
                    found.methods is not None and method in found.methods,
                    -found.inflight,
                ):
                    found = peer
            if found is None and stopping:
                raise exception_from_remote(
                    p.ERR_SERVICE_STOPPING,
                    f"every service connected to this client that has {method!r} is stopping",
                    method=method,
                )
            if found is None:
                raise exception_from_remote(
                    p.ERR_METHOD_NOT_FOUND,
                    f"no service connected to this client has {method!r}",
                    method=method,
                )
            best = found
        if best.refused is not None:
            self._retry(best)
        return best

    def _retry(self, peer: Peer) -> None:
        """A call for a service that refused us: fail it, or (after RETRY_REFUSED) reconnect
        for a new handshake, which the call waits for."""
        if time.monotonic() - peer.refused_at < RETRY_REFUSED:
            raise AuthenticationError(peer.refused)
        try:
            self._socket().disconnect(peer.url)
        except zmq.ZMQError:
            pass
        peer.rid = self._connect(peer.url)
        peer.refused = None
        peer.up = False

    # -- services that connect to this client ---------------------------------------------

    def bind(self, urls: str | Iterable[str], only: bool) -> None:
        wanted = endpoints(urls)
        if only:
            for url in self.bound - set(wanted):
                self.unbind(url)
        for url in wanted:
            if url not in self.bound:
                with endpoint_change(f"cannot bind {url!r}", self._check):
                    self._socket().bind(url)
                asked, url = url, bound_endpoint(self._socket(), url)  # what services can use
                self.ipc.bound(url, asked)
                self.bound.add(url)

    def unbind(self, url: str) -> None:
        if url in self.bound:
            self.bound.discard(url)
            try:
                self._socket().unbind(url)
            except zmq.ZMQError:
                pass
            self.ipc.remove(url)
            self._changed()

    def bind_ports(self, ip: str, port: int, min_port: int, max_port: int) -> int:
        if port:
            self.bind(f"tcp://{ip}:{port}", False)
            return port
        with endpoint_change(f"cannot bind tcp://{ip}", self._check):
            chosen = self._socket().bind_to_random_port(f"tcp://{ip}", min_port, max_port)
        self.bound.add(f"tcp://{ip}:{chosen}")
        return chosen

    def on_announce(self, rid: bytes, msg: p.Hello | p.Bye | p.Ping) -> None:
        """A service that connected to us said HELLO (add or update it), BYE, or PING (after
        a HELLO or a BYE): the PONG tells it that this client read what came before, and that
        it sends a call the service refuses as busy to another service (see
        :meth:`netcall.RPCService.stop`)."""
        if rid in self._connected:
            return  # a service this client connected to is not one that announces itself
        peer = self.announced.get(rid)
        if isinstance(msg, p.Ping):
            # One PONG at a time: a peer that sends PINGs and reads nothing fills its pipe,
            # and then gets none (else they would queue here without bound).
            if peer is not None and self._send is not None and not self._blocked(rid):
                self._send([rid, *p.Pong(msg.id).to_frames()])
            return
        if isinstance(msg, p.Bye):
            if peer is not None:
                peer.draining = True
            return
        if peer is None:
            peer = self.announced[rid] = Peer(f"peer:{rid.hex()}", rid)
            peer.up = True
            self.order.append(peer)
        peer.methods = frozenset(msg.methods)
        peer.draining = False
        if msg.flags & p.HELLO_BUNDLES:
            self._learn(rid)

    def gone(self, rid: bytes) -> None:
        """A send to ``rid`` failed: the connection is gone. An announced service is dropped
        and its calls and streams fail."""
        peer = self.announced.pop(rid, None)
        if peer is not None:
            self.order.remove(peer)
            why = "the service that connected to this client went away"
            self._on_lost(peer, why, True, ConnectionLostError)

    def on_monitor_event(self, frames: list[Any]) -> None:
        try:
            event = zmq.utils.monitor.parse_monitor_message(frames)
        except Exception:  # pragma: no cover - libzmq's own format
            return
        endpoint = event["endpoint"]
        url = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        peer = self.by_url.get(url)
        if peer is None:
            # A connection to one of our bound endpoints: if it broke, find which service.
            if event["event"] == zmq.EVENT_DISCONNECTED and self.announced:
                self.probe()
            return
        kind = event["event"]
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._forget(peer.rid)  # (the service there now may be an older netcall)
            peer.connection += 1
            peer.up = True
            peer.refused = None
        elif kind & _HANDSHAKE_FAILED:
            if kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                if peer.refused is not None:  # ZeroMQ retried: the same refusal again
                    self._refused(peer, peer.refused)
                    return
                if self._ask_mechanism(peer):
                    return  # the answer tells which refusal it was
            error = handshake_error(kind, event["value"], url, self._security is not None)
            if error is not None:
                self._refused(peer, str(error))
        elif kind == zmq.EVENT_DISCONNECTED:
            was_up, peer.up = peer.up, False
            if was_up:
                self._on_lost(peer, f"the connection to {url} broke", False, ConnectionLostError)
            # After what the connection left was read (a bundle there teaches it again): calls
            # made now wait for the next connection, maybe to an older netcall.
            self._forget(peer.rid)

    def _refused(self, peer: Peer, why: str) -> None:
        peer.refused, peer.refused_at = why, time.monotonic()
        self._on_lost(peer, why, True, AuthenticationError)

    def _ask_mechanism(self, peer: Peer) -> bool:
        """A handshake ended with no detail (the service hung up): ask the service which
        mechanism it speaks (at most once per :data:`RETRY_REFUSED` seconds). Returns whether
        an answer is awaited."""
        if peer in self._asking:
            return True
        now = time.monotonic()
        if self._loop is None or now - peer.probed_at < RETRY_REFUSED:
            return False
        peer.probed_at = now
        self._asking[peer] = self._loop.create_task(self._check_mechanism(peer, peer.rid))
        return True

    async def _check_mechanism(self, peer: Peer, rid: bytes) -> None:
        secure = self._security is not None
        try:
            error = await mismatch(peer.url, secure)
        finally:
            self._asking.pop(peer, None)
        if (
            self.by_url.get(peer.url) is not peer
            or peer.rid != rid  # reconnected meanwhile: that handshake will tell
            or peer.up
            or peer.refused is not None
        ):
            return
        if error is None:  # the same mechanism: a CURVE client has the wrong service key
            error = handshake_error(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0, peer.url, secure)
            if error is not None:
                self._refused(peer, str(error))
            return
        # ZeroMQ retries a handshake that ended this way: stop it, as after a mismatch it saw.
        try:
            self._socket().disconnect(peer.url)
        except zmq.ZMQError:
            pass
        self._changed()
        self._refused(peer, str(error))


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
    socket: zmq.Socket[Any] | None,
    monitor_driver: SocketDriver | None,
    monitor: zmq.Socket[Any] | None,
    farewell: list[list[Any]],
) -> None:
    """Close the client's socket and its monitor (either may never have been opened); when the
    socket is being driven, first send the ``farewell`` messages (best effort) and let them go
    out (linger 50 ms)."""
    if driver is not None:
        # After the held calls are dropped, not through send(): at 32 messages that writes the
        # burst, and what the pipe does not take would wait behind the held calls, and go
        # with them (the CANCELs of the calls the service has, the oldest, first).
        driver.close(linger=50, last=farewell)
    elif socket is not None and not socket.closed:
        socket.close(linger=0)
    if monitor_driver is not None:
        monitor_driver.close()
    elif monitor is not None and not monitor.closed:
        monitor.close(linger=0)
