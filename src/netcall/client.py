"""The asyncio client, public face: one ROUTER socket, one connection per service, futures per
call. The work is done in rooms under :mod:`netcall._client` (see its docstring); this module
makes calls and routes replies to them.

Hooks for later work: :meth:`RPCClient._make_socket` is the one place the client's socket is
created (through :func:`netcall._socket.make_router`); :meth:`RPCClient._invoke` is the one
place a call is made.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypedDict

import zmq

from . import _backends
from . import protocol as p
from ._client.binding import ClientBinding
from ._client.calls import CallRegistry
from ._client.generator import RemoteGenerator, close_quietly
from ._client.inbox import Inbox
from ._client.outgoing import effective_timeout
from ._client.peers import Keepalive, Peer, PeerTable
from ._client.proxy import UNSET, checked_timeout
from ._client.sending import Sending
from ._client.sockets import ClientSockets, check_loop_left
from ._client.streams import ConsumerStreams
from ._client.surface import CallSurface
from ._context import CallContext
from ._middleware import ClientMiddleware, OutgoingCall
from ._reactor import SocketDriver
from ._socket import make_router
from ._socket import max_message_size as checked_max_message_size
from ._timers import TimeoutQueues
from .errors import ClientClosedError, RPCError
from .security import CurveClient, secure_socket
from .serializers import Serializer, get_serializer

__all__ = ["DEFAULT_TIMEOUT", "ClientOptions", "RPCClient", "RemoteGenerator"]

#: Seconds a call (or one stream step) may take unless told otherwise (``timeout=None`` is the
#: explicit opt-out): a call to an address where nothing listens fails instead of hanging.
DEFAULT_TIMEOUT = 30.0

log = logging.getLogger("netcall")
_running_loop = asyncio.get_running_loop


class ClientOptions(TypedDict, total=False):
    """:class:`RPCClient`'s keyword options, for the adapters that create one (the blocking and
    gevent clients take ``**options: Unpack[ClientOptions]`` and pass them through unchanged).
    A test checks that these are exactly the constructor's keyword parameters."""

    timeout: float | None
    context: zmq.Context[Any] | None
    window: int
    stream_buffer: int
    heartbeat: float | None
    security: CurveClient | None
    name: str | None
    middleware: Sequence[ClientMiddleware] | None
    propagate_deadline: bool
    max_message_size: int | None


class RPCClient(CallSurface, ClientBinding, Sending):
    """An RPC client. Connect it to one or several services and call their methods.

    ``await client.name(*args, **kwargs)`` calls ``name`` on a service; dotted names work
    (``client.math.add(1, 2)``). A method that returns a generator gives a stream: iterate it
    with ``async for`` (prefetching up to ``window`` items), or ``await`` it for a
    :class:`RemoteGenerator` driven in lock-step with ``asend``/``athrow``/``aclose``.

    With several endpoints, each call goes to the connected service with the fewest calls in
    flight (round robin among equals); every message of a stream goes to the service that
    started it.

    The client belongs to the event loop of its first call; use it from that loop only (the
    :mod:`netcall.sync` and :mod:`netcall.green` clients wrap it for threads and greenlets).

    Args:
        serializer: must match the service's (``None``: msgpack).
        timeout: default seconds a call (or one stream step) may take (default
            :data:`DEFAULT_TIMEOUT`, 30); ``None``: no limit, an explicit opt-out.
        context: the ZeroMQ context (default: ``zmq.Context.instance()``).
        window: at most this many stream items in flight or buffered for ``async for``
            (at least 1). The client grants the service credit as it consumes, starting at
            16 items and growing to ``window``, but never more than ``stream_buffer`` bytes'
            worth at the item size it sees: a slow consumer never makes either side buffer
            without bound, and a fast one is not held to a round trip per item.
        stream_buffer: the byte budget above, per stream (default 4 MiB).
        heartbeat: seconds between ZeroMQ heartbeats on each connection; a peer silent for
            three of them counts as gone (``None``: no heartbeats). A connection that breaks
            fails the calls and streams in flight on it with
            :class:`~netcall.errors.ConnectionLostError` at once, instead of at their timeout,
            and new calls prefer the services that are connected.
        security: ``Curve.client(server_public, keypair=...)`` from :mod:`netcall.security`
            (CURVE). A service that refuses the handshake fails calls with AuthenticationError.
        name: a label for logs.
        middleware: ``async def mw(call, call_next)`` functions run around every call and
            stream opening, outermost first (see :meth:`add_middleware`).
        propagate_deadline: inside a handler, bound each call by the time the served call has
            left (default). ``False``: this client's calls keep their own timeouts.
        max_message_size: bytes an incoming answer or stream item may have, all its frames
            together (default ``None`` or ``-1``: no limit), against a service that sends more
            than this client means to hold. A larger one is dropped as it arrives, and its
            call or stream fails with :class:`~netcall.errors.ProtocolError` (a stream is
            closed); nothing else is affected. A service's HELLO (to a client that binds) is
            bounded by the protocol instead (1 MiB). On the ``tcp`` and ``ipc`` endpoints the
            client binds, ZeroMQ also refuses a single frame over the limit (or over 1 MiB,
            for the HELLO) before it takes it (ZMQ_MAXMSGSIZE) and breaks that connection:
            every call in flight on it fails with
            :class:`~netcall.errors.ConnectionLostError`, and the service connects again. Not
            on the endpoints it connects to: there libzmq would end the connection for good,
            so a message is read whole before it is refused.
    Raises:
        ValueError: ``window`` is below 1, ``timeout`` is NaN, or ``max_message_size`` is not
            a positive number of bytes, ``None`` or -1.
        TypeError: a middleware is not callable, or ``timeout`` not a number or ``None``.
        TransportError: ZeroMQ could not create the socket.
        TypeError: ``security`` is not ``Curve.client(...)``.
    """

    # Instance attributes (public, so their names are reserved for handlers).
    serializer: Serializer
    context: zmq.Context[Any]
    timeout: float | None
    window: int
    stream_buffer: int
    name: str
    security: CurveClient | None

    def __init__(
        self,
        serializer: str | Serializer | None = None,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        context: zmq.Context[Any] | None = None,
        window: int = 1024,
        stream_buffer: int = 4 * 2**20,
        heartbeat: float | None = 2.0,
        security: CurveClient | None = None,
        name: str | None = None,
        middleware: Sequence[ClientMiddleware] | None = None,
        propagate_deadline: bool = True,
        max_message_size: int | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._max_size = checked_max_message_size(max_message_size)
        # Answers may come in bundles, unless they could be over max_message_size.
        self._call_flags = p.FLAG_BUNDLES if p.bundles_allowed(self._max_size) else 0
        self._init_chain(middleware)
        self._propagate = propagate_deadline
        self.serializer = get_serializer(serializer)
        self.context = context or zmq.Context.instance()
        self.timeout = checked_timeout(timeout)
        self.window = window
        self.stream_buffer = stream_buffer
        self.name = name or "RPCClient"
        self._ids = itertools.count(1)
        self._driver: SocketDriver | None = None
        self._monitor_driver: SocketDriver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: TimeoutQueues | None = None
        self._closed = False
        self.security = security
        # Sockets open when first needed (connect, a call): an unused client holds none.
        self._sockets = ClientSockets(lambda: self._make_socket(heartbeat))
        self._peers = PeerTable(lambda: self.socket, self._lost, security, self.serializer.name)
        self._calls = CallRegistry(self._send_cancel)
        self._streams = ConsumerStreams(self._send, self.serializer, window, stream_buffer)
        self._keepalive = Keepalive(self._ping)
        _backends.adopt_client(self)  # made in a trio run: it lives on netcall's loop thread

    def _make_socket(self, heartbeat: float | None) -> zmq.Socket[Any]:
        """The client's socket (a hook: security options go to :func:`make_router`)."""
        # ZeroMQ's per-frame limit (on the endpoints the client binds) leaves room for a
        # service's HELLO, which the protocol bounds itself (MAX_HELLO_BYTES).
        frame_limit = self._max_size
        if frame_limit is not None:
            frame_limit = max(frame_limit, p.MAX_HELLO_BYTES + p.HEADER_SIZE)
        sock = make_router(
            self.context, server=False, heartbeat=heartbeat, max_message_size=frame_limit
        )
        secure_socket(sock, self.security, server=False, name=self.name)
        return sock

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The ZeroMQ ROUTER socket, opened on first use (ClientClosedError once closed)."""
        if self._closed and self._sockets.socket is None:
            raise ClientClosedError("the client is closed")
        return self._sockets.open()

    # -- endpoints ------------------------------------------------------------------------

    @property
    def connected(self) -> set[str]:
        """The endpoints this client is connected to."""
        return set(self._peers.by_url)

    def connect(self, urls: str | Iterable[str], only: bool = False) -> None:
        """Connect to one or several service endpoints. Calls are spread across them.

        With ``only=True`` the client ends up connected to exactly ``urls``.

        Raises:
            TransportError: a malformed endpoint (also a ``zmq.ZMQError``).
            TypeError: an endpoint is not a ``str``.
            ClientClosedError: the client is closed.
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        self._peers.connect(urls, only)
        log.info("%s connected to %s", self.name, urls)

    def disconnect(self, url: str) -> None:
        """Disconnect from ``url``; calls and streams in flight there fail at once with
        :class:`~netcall.errors.ConnectionLostError`."""
        self._peers.disconnect(url)

    # -- state ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Calls waiting for an answer."""
        return len(self._calls)

    @property
    def open_streams(self) -> int:
        """Streams not yet finished or closed."""
        return len(self._streams)

    @property
    def closed(self) -> bool:
        return self._closed

    def _start(self) -> SocketDriver:
        if self._closed:
            raise ClientClosedError("the client is closed")
        driver = self._driver
        if driver is not None:
            if not self._loop.is_closed():  # type: ignore[union-attr]
                return driver
            check_loop_left(len(self._calls) + len(self._streams))  # a new asyncio.run()
            self._keepalive.cancel()
        loop = asyncio.get_running_loop()
        self._loop = self._streams.loop = loop
        if self._timeouts is not None:
            self._timeouts.clear()
        self._timeouts = TimeoutQueues(loop, self._calls.by_id.__contains__, self._calls.expire)
        opened = functools.partial(self._keepalive.schedule, loop)  # a stream opened: its lease
        peers = self._peers
        inbox = Inbox(
            self._calls,
            self._streams,
            self._send_cancel,
            opened,
            peers.on_announce,
            self._refused,
            self._max_size,
        )
        self._driver = SocketDriver(
            self.socket, loop, inbox.handler, peers.gone, bundles=bool(self._call_flags)
        )
        monitor = self._sockets.monitor
        assert monitor is not None
        self._monitor_driver = SocketDriver(monitor, loop, peers.on_monitor_event)
        peers.start(
            loop,
            self._driver.send,
            self._driver.check_soon,
            self._driver.is_blocked,
            self._driver.forget,
            self._driver.learn,
        )
        return self._driver

    def _lost(self, peer: Peer, why: str, every_call: bool, error: type[RPCError]) -> None:
        """Fail every call and stream in flight on ``peer`` (see CallRegistry.fail_peer).
        When the monitor says the connection broke (not ``every_call``), what already
        arrived is read first: a reply that came before the break answers its call (the
        monitor's event and the reply are on two sockets, and the loop may run their readers
        in either order)."""
        if not every_call and self._driver is not None:
            self._driver.read_waiting()
        log.info("%s lost %s: %s", self.name, peer.url, why)
        self._calls.fail_peer(peer, why, every_call, error)
        self._streams.fail_peer(peer, error(why))

    # -- calls ----------------------------------------------------------------------------

    async def _invoke(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        oneway: bool,
        prefetch: bool,
        metadata: Mapping[str, str] | None = None,
        parent: CallContext | None = None,
        chained: bool = False,
    ) -> Any:
        """Make one call; return its result, a RemoteGenerator, or raise (see :meth:`call`).
        ``parent``: the call being served where this one was made (its deadline applies)."""
        if self._driver is None and _backends.adopt_client(self):  # under trio: netcall._trio
            return await self._invoke(
                method, args, kwargs, timeout, oneway, prefetch, metadata, parent, chained
            )
        if timeout is UNSET:
            timeout = self.timeout
        run = self._chain.run
        if run is not None and not chained:
            md = dict(metadata) if metadata else {}
            return await run(
                OutgoingCall(method, args, kwargs, md, timeout, oneway, prefetch, parent)
            )
        driver = self._driver
        first = driver is None
        if driver is None or self._closed or _running_loop() is not self._loop:
            driver = self._start()  # (also: closed, or a new asyncio.run())
        if first and self._peers.bound and not self._peers.order:
            # A client bound before its loop ran reads from its first call on: let the
            # announcements already waiting on the socket arrive before picking a service.
            await asyncio.sleep(0)
        if parent is not None and self._propagate:
            timeout = effective_timeout(timeout, parent)
        fut, rid, pend, timer = self._send_call(
            driver, method, args, kwargs, timeout, oneway, prefetch, metadata
        )
        calls = self._calls.by_id
        try:
            reply = await fut
        except asyncio.CancelledError:
            if rid in calls:
                self._send_cancel(pend.peer, rid)
            elif fut.done() and not fut.cancelled() and isinstance(fut.result(), RemoteGenerator):
                # The stream opened just as we were cancelled: nobody will read it.
                close_quietly(fut.result())
            raise
        finally:
            self._call_over(rid, pend, timer)
        return self._reply_value(reply, method)

    def _ping(self) -> bool:
        connected, announced = self._peers.by_url, self._peers.announced
        return not self._closed and self._streams.ping(
            lambda peer: peer.url in connected or peer.rid in announced
        )

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket and fail every call in flight with ClientClosedError.

        Call it from the client's event loop thread (or before any call was made).
        """
        if self._closed:
            return
        self._closed = True
        self._keepalive.cancel()
        self._peers.close()
        # Tell services to drop our calls and streams (best effort), then close.
        open_work = [(pend.peer, rid) for rid, pend in self._calls.by_id.items()]
        farewell = [[peer.rid, *p.Cancel(rid).to_frames()] for peer, rid in open_work]
        farewell += [
            [peer.rid, *p.Cancel(rid).to_frames()] for peer, rid in self._streams.open_ids()
        ]
        self._sockets.close(self._driver, self._monitor_driver, farewell)
        self._peers.ipc.remove_all()
        closed = lambda: ClientClosedError("the client was closed")  # noqa: E731
        self._calls.fail_all(closed)
        self._streams.fail_all(closed)
        if self._timeouts is not None:
            self._timeouts.clear()

    def shutdown(self) -> None:
        """:meth:`close` (the 2014 spelling)."""
        self.close()

    async def aclose(self) -> None:
        """Close the client (see :meth:`close`)."""
        self.close()

    async def __aenter__(self) -> RPCClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {sorted(self._peers.by_url)}>"
