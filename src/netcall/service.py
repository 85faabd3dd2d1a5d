"""The asyncio service, public face: lifecycle, endpoints, registration. The work is done in
rooms under :mod:`netcall._service` (see its docstring); this module routes messages to them.

Hooks for later work: :func:`netcall._socket.make_router` is the one place the ROUTER socket is
created and configured (called from :meth:`RPCService._make_socket`); ``handler_runner`` (a
constructor argument) is where sync handlers run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import zmq

from . import _backends
from . import protocol as p
from ._middleware import ServiceMiddleware, check_middleware
from ._reactor import STOP_LINGER as _STOP_LINGER
from ._reactor import SocketDriver
from ._service import lifecycle
from ._service.binding import ServiceBinding
from ._service.dispatch import Dispatcher
from ._service.guard import Guard, Limits
from ._service.inbox import Inbox
from ._service.pongs import HookedPongs
from ._service.registering import ServiceRegistering
from ._service.registry import METHODS_NAME, HandlerRegistry, public_names
from ._service.replies import Replies
from ._service.runner import HandlerRunner, Runner
from ._service.streams import Producers
from ._service.upstream import ServiceConnecting, Upstreams
from ._socket import IpcFiles, make_router
from ._socket import max_message_size as checked_max_message_size
from .client import RPCClient
from .security import CurveServer, secure_socket
from .serializers import Serializer, get_serializer

__all__ = ["RESERVED_NAMES", "HandlerRunner", "Limits", "RPCService"]


F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("netcall")
Keys = Iterable[Any] | None  # CURVE public keys (Z85 bytes or text, or Keypairs)


class RPCService(ServiceRegistering, ServiceBinding, ServiceConnecting):
    """An RPC service: register handlers, bind endpoints, serve.

    Sync handlers run inline on the event loop (keep them short), or in ``executor`` when one is
    given. Async handlers run as tasks. A handler that returns a generator or an async generator
    opens a stream.

    Args:
        serializer: ``None`` (msgpack), ``"json"``, ``"pickle"`` (trusted networks only) or a
            serializer object. Clients must use the same one.
        context: the ZeroMQ context (default: ``zmq.Context.instance()``).
        executor: run sync handlers and sync generator steps in this executor instead of inline.
        max_message_size: bytes an incoming message may have (default ``None`` or ``-1``: no
            limit). On the ``tcp`` and ``ipc`` endpoints the service binds, ZeroMQ drops a
            single frame larger than this and disconnects its sender (ZMQ_MAXMSGSIZE, which
            bounds each frame); a message whose frames add up to more (out-of-band buffers),
            or any larger message on ``inproc`` or on a connection the service made
            (:meth:`connect`: a broker, a client that binds; there libzmq would end the
            connection for good), is dropped by the service, and the call refused with
            :class:`~netcall.errors.RemoteProtocolError`. Such a message is read whole first:
            behind a broker, give the broker a ``max_message_size`` too, to bound memory.
        stream_lease: seconds a stream survives without hearing from its client (clients ping
            every third of it), after which the generator is closed.
        grace: default seconds :meth:`stop` lets in-flight calls finish.
        tracebacks: send handler tracebacks to clients (default True).
        heartbeat: seconds between ZeroMQ heartbeats; a client connection silent for three of
            them is dropped. Default ``None``, off: with them libzmq 4.3.5 aborts the process
            when a peer that filled its pipe disconnects, which any peer can arrange. Closed
            connections are seen without them; silent stream clients by ``stream_lease``.
        limits: what one client may cost (:class:`~netcall.Limits`: calls and streams running,
            stream window, queued replies...), each with a default.
        max_concurrent: at most this many calls running (async handlers and executor calls)
            plus streams open at once; further calls are refused at once with
            :class:`~netcall.errors.ServiceBusyError` instead of queueing without bound
            (``None``: no limit). A call that cannot suspend is never counted nor refused: a
            sync handler running inline, or an ``async def`` one with no ``await`` in its
            body (without middleware, a loop task factory or trio, which give it a task);
            each finishes before the next message is read. An async handler that
            finishes in its first step all the same (Python 3.11+: that step runs at once)
            may be refused, but never counts.
        security: ``Curve.server(keypair, allow=...)`` from :mod:`netcall.security`: CURVE
            encryption, the clients let in, and each caller's key in ``current_call()``.
        name: a label for logs.
        handler_runner: run sync handlers and sync generator steps through this hook (an async
            callable taking a zero-argument function; see
            :data:`~netcall._service.runner.HandlerRunner`) instead of inline or in
            ``executor``. The gevent service plugs in here. A hook with a true ``one_thread``
            attribute (it runs every handler on one thread, as gevent's hub) has a broker's
            PING answered once a no-op has run through it: stuck, it gets no new calls.
        middleware: ``async def mw(ctx, call_next)`` functions run around every call and
            stream opening, outermost first (see :meth:`add_middleware`).

    Raises:
        ValueError: ``stream_lease`` is not positive, or ``max_message_size`` is not a
            positive number of bytes (``None`` or ``-1``: no limit).
        TypeError: a middleware is not callable.
        RPCError: ZeroMQ could not create the socket.
        TypeError: ``security`` is not ``Curve.server(...)``.
        RuntimeError: another ZAP handler (zmq.auth) is bound in ``context``.
    """

    # Instance attributes (public, so their names are reserved for handlers).
    serializer: Serializer
    context: zmq.Context[Any]
    name: str
    security: CurveServer | None

    def __init__(
        self,
        serializer: str | Serializer | None = None,
        *,
        context: zmq.Context[Any] | None = None,
        executor: concurrent.futures.Executor | None = None,
        max_message_size: int | None = None,
        stream_lease: float = 30.0,
        grace: float = 5.0,
        tracebacks: bool = True,
        heartbeat: float | None = None,
        max_concurrent: int | None = None,
        security: CurveServer | None = None,
        limits: Limits | None = None,
        name: str | None = None,
        handler_runner: HandlerRunner | None = None,
        middleware: Sequence[ServiceMiddleware] | None = None,
    ) -> None:
        if stream_lease <= 0:
            raise ValueError("stream_lease must be positive")
        self.serializer = get_serializer(serializer)
        self.context = context or zmq.Context.instance()
        self.name = name or type(self).__name__
        self._grace = grace
        self._bound: set[str] = set()
        self._ipc = IpcFiles()
        self._driver: SocketDriver | None = None
        self._stopped: asyncio.Event | None = None
        self._closed = False
        self.security = security
        self._registry = HandlerRegistry(RESERVED_NAMES)
        self._guard = guard = Guard(limits or Limits())
        self._replies = Replies(tracebacks, guard)
        runner = self._user_code = Runner(executor, handler_runner)
        self._producers = Producers(self._replies, self.serializer, runner, float(stream_lease))
        self._dispatch = Dispatcher(
            self._registry,
            self._replies,
            runner,
            self._producers,
            self.serializer,
            max_concurrent,
            check_middleware(middleware),
        )
        self._dispatch.name = self.name
        guard.attach(self._dispatch.calls, self._producers.close_peer, self._dispatch.cancel)
        # The socket opens when first needed (bind, start): an unused service holds none.
        self._socket: zmq.Socket[Any] | None = None
        self._zap: Any = None  # the ZAP handler secure_socket() starts with the socket
        self._socket_options = (heartbeat, checked_max_message_size(max_message_size))
        self._registry.add_subclass_methods(self, RPCService)
        self._registry.add_builtin(METHODS_NAME, self.methods)
        self._max_concurrent = max_concurrent
        self._upstreams = Upstreams(lambda: self.socket, self._hello, self.security)
        self._hooked_pongs: HookedPongs | None = None  # see start()

    def _make_socket(
        self, heartbeat: float | None, max_message_size: int | None
    ) -> zmq.Socket[Any]:
        """The service's socket (a hook: security options go to :func:`make_router`)."""
        lim = self._guard.limits
        sock = make_router(
            self.context,
            server=True,
            heartbeat=heartbeat,
            max_message_size=max_message_size,
            send_hwm=lim.send_hwm,
            receive_hwm=lim.receive_hwm,
        )
        # Closed after the socket: a CURVE socket whose context has no ZAP handler admits all.
        self._zap = secure_socket(sock, self.security, server=True, name=self.name)
        if self._zap is not None:
            # The socket's monitor (Upstreams') replaces the ZAP handler's (libzmq keeps one per
            # socket): the failed handshakes it reports are logged through this one instead.
            self._upstreams.listeners.append(self._zap.on_monitor_event)
        return sock

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The ZeroMQ ROUTER socket, opened on first use (RuntimeError once closed)."""
        if self._socket is None:
            if self._closed:
                raise RuntimeError("the service is closed")
            self._socket = self._make_socket(*self._socket_options)
        return self._socket

    # -- registration ---------------------------------------------------------------------

    # -- running --------------------------------------------------------------------------

    @property
    def active_calls(self) -> int:
        """Calls running right now (async handlers, executor and runner calls)."""
        return sum(1 for task in self._dispatch.calls.values() if not task.done())

    @property
    def active_streams(self) -> int:
        """Streams open right now."""
        return len(self._producers)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """Counts since the service was made (see :meth:`netcall._service.guard.Guard.stats`)
        and ``active_calls``, ``active_streams`` right now."""
        out = self._guard.stats()
        out["active_calls"] = self.active_calls
        out["active_streams"] = self.active_streams
        return out

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin serving on ``loop`` (default: the running loop). Returns at once.

        Raises:
            RuntimeError: no loop is running and none was given, or the service is closed.
        """
        if self._closed:
            raise RuntimeError("the service is closed")
        if self._driver is not None:
            return
        if loop is None and _backends.adopt_service(self):  # under trio: see netcall._trio
            return
        loop = loop or asyncio.get_running_loop()
        self._dispatch.loop = loop
        self._dispatch.refusing = None
        self._producers.start(loop)
        up = self._upstreams
        pongs = None
        if self._user_code.one_thread:  # a broker hears from it once its hub or trio run is free
            pongs = HookedPongs(loop, self._user_code, up.is_upstream, self._replies.send)
        self._hooked_pongs = pongs
        inbox = Inbox(
            self._dispatch,
            self._producers,
            self._replies,
            up.vouches,
            up.pong,
            pongs,
            max_size=self._socket_options[1],
        )
        self._dispatch.reroutes = up.reroutes
        secure = self.security is not None  # then each message's sender key is read
        self._guard.is_upstream = self._upstreams.is_upstream
        driver = self._guard.start(
            self.socket,
            loop,
            inbox.on_message,
            self._replies.send,
            identify=secure,
            monitor_listeners=self._upstreams.listeners,
            bundles=p.bundles_allowed(self._socket_options[1]),
        )
        self._replies.driver = self._driver = self._dispatch.keys = driver
        inbox.bundle_to(driver, self._upstreams.is_upstream)
        self._upstreams.start(
            loop, self._replies.send, self._upstream_lost, driver.check_soon, driver.forget
        )

    async def serve(self) -> None:
        """Serve until :meth:`stop` (or :meth:`close`) is called. Cancelling it (Ctrl-C under
        ``asyncio.run()`` does) stops the service gracefully, as :meth:`stop`, then re-raises;
        if that stop is interrupted too (a second Ctrl-C), the service closes at once.

        Raises:
            RuntimeError: the service was closed before it ever started.
        """
        if self._closed and self._driver is not None:
            return  # started, then stopped before this got here (a stop() from another thread)
        self.start()
        await self._until_stopped()

    def _core_stop(self) -> Awaitable[None]:
        # The core's stop, whatever front a subclass puts on stop() (trio's runs elsewhere).
        return RPCService.stop(self)

    async def _until_stopped(self) -> None:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        if self._closed:
            return
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            try:
                await lifecycle.stop_when_cancelled(self, self._grace, self._core_stop)
            finally:
                RPCService.close(self)  # also when that stop is interrupted (a second Ctrl-C)
            raise

    async def __aenter__(self) -> RPCService:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: refuse new calls, give in-flight calls ``grace`` seconds (default:
        the constructor's) to finish, cancel the rest, close open streams (their generators'
        ``finally`` blocks run; their clients get
        :class:`~netcall.errors.ServiceStoppingError`), then close the socket. Every answer
        given before then is written: to a client that does not read, for at most 0.2 s more,
        then ZeroMQ has 0.2 s (the close's linger) to deliver what it holds.

        Behind a broker, or connected out to a client that binds (:meth:`connect`), the
        service says BYE (the peer sends it no new calls) and keeps reading until the peer
        confirms it read the BYE (it answers a PING), for at most ``min(grace, 1)`` seconds of
        the grace. The calls the peer sent before then never started: they are refused as
        busy (:class:`~netcall.errors.ServiceBusyError`) and the peer sends them to another
        service (a client that binds: to one that has the method; with none left, its caller
        gets :class:`~netcall.errors.ServiceStoppingError`). A peer that answered no PING
        after the service's HELLO (a broker or a client older than this) is not waited for,
        and its calls are refused with :class:`~netcall.errors.ServiceStoppingError`, as
        before. A client connected directly gets :class:`~netcall.errors.ServiceStoppingError`
        for a new call, as for a call cancelled at the end of the grace (through a broker or
        a client that binds too: it may have had effects, and is not sent elsewhere).
        """
        if self._closed:
            return
        calls = self._dispatch.calls
        self._refuse_calls()
        self._upstreams.bye()  # a broker sends no new calls
        grace = self._grace if grace is None else grace
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        await self._upstreams.bye_read(min(grace, 1.0))
        if calls and grace > 0:
            await asyncio.wait(list(calls.values()), timeout=max(0.0, until - loop.time()))
        for task in list(calls.values()):
            task.cancel()
        # Streams' tasks must be collected before closing them takes them off the registry:
        # stop() waits for their generators' finally blocks.
        pending: list[asyncio.Future[Any]] = list(calls.values())
        pending += self._producers.close_all(refuse=(p.ERR_SERVICE_STOPPING, "the service stopped"))
        if pending:
            await asyncio.wait(pending, timeout=max(1.0, grace))
        if self._driver is not None:
            # Every answer given so far leaves before the socket closes: the corked outbox,
            # and what waits for a peer whose pipe is full, for as long as the close lingers.
            await self._driver.drain(_STOP_LINGER / 1000)
        self._close(linger=_STOP_LINGER)

    def close(self) -> None:
        """Close at once: cancel everything running and close the socket (linger 0)."""
        if self._closed:
            return
        self._refuse_calls()
        self._replies.driver = None  # nothing more is sent
        for task in list(self._dispatch.calls.values()):
            task.cancel()
        self._producers.close_all()
        self._close(linger=0)

    def shutdown(self) -> None:
        """:meth:`close` (the 2014 spelling)."""
        self.close()

    def _refuse_calls(self) -> None:
        # New calls are refused from now on, as the service is stopping (where every stop
        # starts; ``netcall serve`` also calls it from a signal handler, while a handler holds
        # the loop, so that the handler it interrupts is answered ServiceStoppingError).
        self._dispatch.refusing = "the service is stopping"

    def _close(self, linger: int) -> None:
        log.info("%s stopped", self.name)
        self._closed = True
        self._refuse_calls()
        self._replies.driver = None
        self._producers.shutdown()
        if self._hooked_pongs is not None:
            self._hooked_pongs.close()
        self._upstreams.close()
        self._guard.close()
        if self._driver is not None:
            self._driver.close(linger=linger, queued=True)
        elif self._socket is not None and not self._socket.closed:
            self._socket.close(linger=linger)
        if self._zap is not None:
            self._zap.close()
        self._ipc.remove_all()
        if self._stopped is not None:
            self._stopped.set()


#: Names a handler cannot take: the public attributes of the service and client classes (so a
#: handler can never shadow ``client.name``, ``service.stop`` and the like), and the names
#: netcall 0.4.2 reserved (``proc``, ``reset``), so that code written for it registers the same.
RESERVED_NAMES: frozenset[str] = public_names(RPCService, RPCClient) | {"join", "proc", "reset"}
