"""A broker: one well-known address for many services, which connect out to it.

::

    broker = Broker(frontend="tcp://0.0.0.0:5555", backend="tcp://0.0.0.0:5556")
    await broker.serve()                 # or: async with broker: ...

Clients connect to the *frontend* as to one service; services ``connect()`` to the *backend*
and announce their methods. The routing itself (request ids rewritten per service, routing by
method name to the least-loaded service, a bounded queue, sticky streams) is the sans-IO
:class:`netcall._broker.routing.Router`; this module owns the two ROUTER sockets, their
monitors and the timers.

Liveness: ZeroMQ heartbeats on both sockets (every ``heartbeat`` seconds, a peer silent for
three of them is disconnected). A disconnect seen by a socket monitor makes the broker probe
that side's peers at once (a message sent with ``ROUTER_MANDATORY`` to a peer whose connection
is gone fails with ``EHOSTUNREACH``), and services are pinged every ``heartbeat`` seconds. A
service killed outright is noticed within milliseconds; a silent link loss within
``4 * heartbeat`` seconds (4 s by default). A service whose loop is stuck (a handler blocking
it) still holds its connection, since libzmq's own thread answers ZeroMQ's heartbeats: one that
answers none of two pings in a row gets no new calls (they go to the others, or wait) until it
speaks again. A gevent or trio service reads its socket on netcall's own loop thread and answers
a ping only once its hub or trio run has run a no-op, so one whose hub or trio thread is stuck
is seen too. A service with an ``executor`` answers from its loop: one stuck thread of its pool
does not stop the others (a pool stuck in every thread is not seen).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import zmq
import zmq.utils.monitor

from . import protocol as p
from ._broker.routing import Router
from ._edge import map_exceptions
from ._reactor import MAX_QUEUED, MAX_QUEUED_BYTES, STOP_LINGER, SocketDriver
from ._socket import make_router, monitor_socket
from ._socket import max_message_size as checked_max_message_size
from .security import CurveServer, secure_socket

__all__ = ["Broker"]

log = logging.getLogger("netcall.broker")

_TICK = 0.05  # seconds between queue upkeeps while calls wait
_REPROBE = 0.2  # a second probe after a disconnect, for a pipe libzmq had not yet torn down


def _urls(spec: str | Iterable[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


class Broker:
    """Routes calls from clients (on ``frontend``) to services (connected to ``backend``).

    Args:
        frontend: endpoint(s) clients connect to.
        backend: endpoint(s) services connect to (``service.connect(url)``).
        context: the ZeroMQ context (default: ``zmq.Context.instance()``).
        heartbeat: seconds between ZeroMQ heartbeats and service pings; a peer silent for
            three of them is dropped (default 1 s: a silent link loss is found within 4 s). A
            service that answers none of two pings in a row (its loop is stuck, or a gevent
            service's hub, a trio service's run: a handler blocks it) gets no new calls until
            it sends something again; its calls in flight stay with it. ``stats()`` shows it
            (``"responsive": False``, and ``errors["services_unresponsive"]`` counts such
            episodes).
        max_queue: calls that may wait for a free service at once (default 1000); beyond
            that, calls fail at once with :class:`~netcall.errors.ServiceBusyError`.
        max_per_client: calls and streams one client may have open or waiting at once
            (default 10000).
        max_message_size: bytes per frame (ZMQ_MAXMSGSIZE, which bounds each frame, not a
            whole message): a peer sending a larger frame is disconnected by ZeroMQ. Default
            ``None``: no limit. A message has at most ``protocol.MAX_FRAMES`` (68) frames, so
            this bounds a message too; services bound whole messages.
        max_queued: messages that may wait at the broker for one peer (a client or a service)
            whose ZeroMQ pipe is full (beyond the socket's 10,000 messages); default 10,000,
            as a service's ``Limits.max_queued``.
        max_queued_bytes: bytes that may wait so (default 4 MiB). A peer over either is *cut
            off*: what waits for it is dropped; a client is then forgotten as if it had
            disconnected (its calls and streams are cancelled on the services); a service has
            its calls and streams failed with :class:`~netcall.errors.ConnectionLostError` and
            gets no new calls until it sends something again (it answers the broker's pings
            once it reads), when those streams are cancelled on it. Counted in
            ``stats()["errors"]`` (``clients_cut_off``, ``services_cut_off``).
        startup_grace: seconds after start during which a call for a method no service has
            announced yet waits (within its deadline) instead of failing at once with
            :class:`~netcall.errors.MethodNotFoundError` (default 1.5 s: services reconnecting
            to a restarted broker announce themselves within a few hundred milliseconds). It
            ends 0.3 s after the first service joins. The same grace is given to a method whose
            last service leaves (a worker restarting, a stuck one killed, a rolling restart of
            the only service): its calls, queued or new, wait for one to come back.
        security: ``Curve.server(keypair, allow=...)`` from :mod:`netcall.security`: CURVE on
            the frontend (clients use ``Curve.client(broker_public_key, ...)``; only allowed
            keys connect). The broker then tells each service the caller's key, so
            ``current_call().peer_key`` on the service is the client's key (and
            ``register(allow=...)`` applies to it).
        backend_security: ``Curve.server(keypair, allow=...)`` for the backend: CURVE between
            the broker and its services, which connect with
            ``service.connect(url, security=Curve.client(<backend public key>, keypair=...))``;
            with ``allow``, only those services' keys may join. Without it the backend is
            plain: keep it on a private network (or ipc).
        grace: default seconds :meth:`stop` lets calls in flight (and queued) finish
            (default 5).
        name: a label for logs.

    Raises:
        TransportError: an endpoint cannot be bound (also a ``zmq.ZMQError``).
        ValueError: ``heartbeat``, ``max_queued`` or ``max_queued_bytes`` is not positive, or
            ``max_message_size`` is not a positive number of bytes (``None`` or ``-1``: no
            limit).
    """

    def __init__(
        self,
        frontend: str | Iterable[str],
        backend: str | Iterable[str],
        *,
        context: zmq.Context[Any] | None = None,
        heartbeat: float = 1.0,
        max_queue: int = 1000,
        max_per_client: int = 10000,
        max_message_size: int | None = None,
        max_queued: int = MAX_QUEUED,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
        startup_grace: float = 1.5,
        security: CurveServer | None = None,
        backend_security: CurveServer | None = None,
        grace: float = 5.0,
        name: str | None = None,
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be positive")
        if max_queued < 1 or max_queued_bytes < 1:
            raise ValueError("max_queued and max_queued_bytes must be positive")
        self._max_queued = max_queued
        self._max_queued_bytes = max_queued_bytes
        self.context: zmq.Context[Any] = context or zmq.Context.instance()
        self.name = name or "Broker"
        self.heartbeat = float(heartbeat)
        self.grace = float(grace)
        self._startup_grace = startup_grace
        self._max_queue = max_queue
        self._max_per_client = max_per_client
        self.frontend_urls = _urls(frontend)
        self.backend_urls = _urls(backend)
        self.security = security
        max_message_size = checked_max_message_size(max_message_size)
        self._bundles = p.bundles_allowed(max_message_size)
        self._frontend = self._socket(max_message_size)
        self._zap = secure_socket(
            self._frontend, security, server=True, name=f"{self.name} frontend"
        )
        self.backend_security = backend_security
        try:
            self._backend = self._socket(max_message_size)
            self._backend_zap = secure_socket(
                self._backend, backend_security, server=True, name=f"{self.name} backend"
            )
        except BaseException:
            self._frontend.close(linger=0)
            if self._zap is not None:
                self._zap.close()
            raise
        self._sockets = [self._frontend, self._backend]
        # Disconnections (probe who is gone), and the failed handshakes the ZAP handler's own
        # monitor would have logged (libzmq keeps one monitor per socket: this one replaces it).
        events = (
            zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        self._monitors = [monitor_socket(s, events) for s in self._sockets]
        try:
            for sock, urls in (
                (self._frontend, self.frontend_urls),
                (self._backend, self.backend_urls),
            ):
                for url in urls:
                    with map_exceptions(f"cannot bind {url!r}"):
                        sock.bind(url)
        except BaseException:
            self._close_sockets()
            raise
        self.router: Router | None = None
        self._drivers: list[SocketDriver] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Event | None = None
        self._closed = False

    def _socket(self, max_message_size: int | None) -> zmq.Socket[Any]:
        """One of the two sockets (a hook: security options go to :func:`make_router`)."""
        return make_router(
            self.context, server=True, heartbeat=self.heartbeat, max_message_size=max_message_size
        )

    # -- running --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start routing on ``loop`` (default: the running loop). Returns at once.

        Raises:
            RuntimeError: the broker is closed, or no loop runs and none was given.
        """
        if self._closed:
            raise RuntimeError("the broker is closed")
        if self.router is not None:
            return
        loop = self._loop = loop or asyncio.get_running_loop()
        secure = self.security is not None  # then each client message's sender key is read
        # What waits for one peer is bounded on both sides: a client that does not read its
        # replies, or a service that does not read its calls, is cut off (see max_queued).
        bounds: dict[str, Any] = {
            "max_queued": self._max_queued,
            "max_queued_bytes": self._max_queued_bytes,
        }
        front = SocketDriver(
            self._frontend,
            loop,
            self._on_client,
            self._client_unreachable,
            secure,
            on_overflow=self._client_cut_off,
            bundles=self._bundles,
            **bounds,
        )
        back = SocketDriver(
            self._backend,
            loop,
            self._on_service,
            self._service_unreachable,
            on_overflow=self._service_cut_off,
            bundles=self._bundles,
            **bounds,
        )
        self.router = Router(
            front.send,
            back.send,
            max_queue=self._max_queue,
            max_per_client=self._max_per_client,
            startup_grace=self._startup_grace,
            caller_key=(lambda: front.peer_key) if secure else None,
            client_bundles=front.told,
            service_bundles=back.learn,
        )
        self._drivers = [
            front,
            back,
            SocketDriver(self._monitors[0], loop, self._on_frontend_event),
            SocketDriver(self._monitors[1], loop, self._on_backend_event),
        ]
        self._tick_handle = loop.call_later(_TICK, self._tick)
        self._ping_handle = loop.call_later(self.heartbeat, self._ping)

    async def serve(self) -> None:
        """Route until :meth:`stop` or :meth:`close` is called."""
        self.start()
        if self._stopped is None:
            self._stopped = asyncio.Event()
        if self._closed:
            return
        await self._stopped.wait()

    async def __aenter__(self) -> Broker:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def drain(self, grace: float | None = None) -> bool:
        """Stop taking calls (new ones fail at once with
        :class:`~netcall.errors.ServiceStoppingError`) and wait up to ``grace`` seconds
        (default: the constructor's) for the calls in flight, open streams and queued calls to
        finish; answers keep flowing meanwhile. Returns whether they all did. The broker goes
        on routing what it has until :meth:`close`."""
        grace = self.grace if grace is None else grace
        router = self.router
        if router is None or self._closed:
            return True
        self.refuse_calls()
        deadline = time.monotonic() + grace
        while router.routes or router.queued:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def refuse_calls(self) -> None:
        """:meth:`drain`'s first step, taken now (from the broker's loop thread): new calls
        fail at once with :class:`~netcall.errors.ServiceStoppingError`. A signal handler
        takes it before the stop it starts gets to run, so that no call read meanwhile
        starts."""
        if self.router is not None and not self._closed:
            self.router.refusing = "the broker is stopping"

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: :meth:`drain` for ``grace`` seconds (default: the constructor's),
        then close both sockets. Calls still in flight after that get no answer through this
        broker: their clients see the connection break (ConnectionLostError). Answers
        forwarded before then are written first: to a peer that does not read, for at most
        0.2 s more, then ZeroMQ has 0.2 s (the close's linger) to deliver them."""
        await self.drain(grace)
        for driver in list(self._drivers):
            await driver.drain(STOP_LINGER / 1000)
        self._close(STOP_LINGER)

    def close(self) -> None:
        """Close at once (from the broker's loop thread, or before :meth:`start`)."""
        self._close(0)

    def _close(self, linger: int) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in (self._tick_handle, self._ping_handle, *self._timers):
            if handle is not None:
                handle.cancel()
        self._timers.clear()
        if self.router is not None:
            self.router.flush_logs()
        for driver in self._drivers:
            driver.close(linger=linger, queued=True)
        self._drivers = []
        self._close_sockets()
        if self._stopped is not None:
            self._stopped.set()

    def _close_sockets(self) -> None:
        # The sockets first: closing one stops its monitor before the PAIR goes (see
        # netcall._socket.stop_monitor).
        for sock in (*getattr(self, "_sockets", ()), *getattr(self, "_monitors", ())):
            if not sock.closed:
                sock.close(linger=0)
        for attr in ("_zap", "_backend_zap"):
            zap = getattr(self, attr, None)
            if zap is not None:
                zap.close()

    def stats(self) -> dict[str, Any]:
        """A snapshot: ``services`` (each with its methods, calls in flight, limit), the union
        of ``methods``, ``in_flight``, ``streams``, ``queued``, ``clients`` and ``errors``
        counters (malformed, not_found, busy, timeouts, connection_lost)."""
        if self.router is None:
            return {
                "services": [],
                "methods": [],
                "in_flight": 0,
                "streams": 0,
                "queued": 0,
                "clients": 0,
                "errors": {},
            }
        out = self.router.stats()
        out["frontend"] = list(self.frontend_urls)
        out["backend"] = list(self.backend_urls)
        return out

    # -- events ---------------------------------------------------------------------------

    def _on_client(self, frames: list[Any]) -> None:
        assert self.router is not None
        self.router.on_frontend(frames)

    def _on_service(self, frames: list[Any]) -> None:
        assert self.router is not None
        self.router.on_backend(frames)

    def _client_unreachable(self, peer: bytes) -> None:
        if self.router is not None:
            self.router.client_gone(peer)

    def _service_unreachable(self, peer: bytes) -> None:
        if self.router is not None:
            self.router.service_gone(peer, "the connection to the service broke")

    # A cut-off is reported from inside a send (which may be inside the router's own moves):
    # the router forgets the peer on the loop's next turn, not re-entered.

    def _client_cut_off(self, peer: bytes) -> None:
        if self.router is not None and self._loop is not None and not self._closed:
            self._loop.call_soon(self._forget, self.router.client_cut_off, peer)

    def _service_cut_off(self, peer: bytes) -> None:
        if self.router is not None and self._loop is not None and not self._closed:
            self._loop.call_soon(self._forget, self.router.service_cut_off, peer)

    def _forget(self, how: Any, peer: bytes) -> None:
        if not self._closed:
            how(peer)

    def _on_frontend_event(self, frames: list[Any]) -> None:
        if self._on_event(frames, self._zap):
            self._probe_clients()
            self._later(_REPROBE, self._probe_clients)

    def _on_backend_event(self, frames: list[Any]) -> None:
        if self._on_event(frames, self._backend_zap):
            self._probe_services()
            self._later(_REPROBE, self._probe_services)

    @staticmethod
    def _on_event(frames: list[Any], zap: Any) -> bool:
        """Log a failed handshake through the socket's ZAP registration; True for a
        disconnection."""
        try:
            event = zmq.utils.monitor.parse_monitor_message(frames)
        except Exception:  # pragma: no cover - libzmq's own format
            return False
        if zap is not None:
            zap.on_monitor_event(event)
        return bool(event["event"] == zmq.EVENT_DISCONNECTED)

    def _later(self, delay: float, fn: Any) -> None:
        if self._loop is None or self._closed:
            return
        self._timers = [
            t for t in self._timers if not t.cancelled() and t.when() > self._loop.time()
        ]
        self._timers.append(self._loop.call_later(delay, fn))

    def _probe_clients(self) -> None:
        # A PONG with request id 0 is ignored by a client; to a client that is gone the send
        # fails with EHOSTUNREACH, which ends its calls (see _client_unreachable).
        if self.router is None or self._closed:
            return
        send = self._drivers[0].send
        pong = p.Pong(0).to_frames()[0]
        for client in self.router.clients:
            send([client, pong])

    def _probe_services(self) -> None:
        if self.router is None or self._closed:
            return
        self._send_pings([svc.peer for svc in self.router.services])

    def _send_pings(self, peers: list[bytes]) -> None:
        send = self._drivers[1].send
        ping = p.Ping(0).to_frames()[0]
        for peer in peers:
            send([peer, ping])

    def _tick(self) -> None:
        if self._closed or self._loop is None:
            return
        assert self.router is not None
        self.router.tick()
        self._tick_handle = self._loop.call_later(_TICK, self._tick)

    def _ping(self) -> None:
        # Keeps streams' leases alive on the services, and finds services that went away.
        if self._closed or self._loop is None:
            return
        if self.router is not None:
            # (ping_round notes the services that did not answer the last round)
            self._send_pings(self.router.ping_round())
            self.router.flush_logs()  # the summaries of suppressed log lines
        self._ping_handle = self._loop.call_later(self.heartbeat, self._ping)

    def __repr__(self) -> str:
        return f"<Broker frontend={self.frontend_urls} backend={self.backend_urls}>"
