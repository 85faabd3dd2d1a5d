"""The asyncio client: one ROUTER socket, one connection per service, futures per call."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import types
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Generator, Iterable
from types import TracebackType
from typing import Any

import zmq
import zmq.utils.monitor

from . import protocol as p
from ._reactor import SocketDriver
from .errors import (
    ClientClosedError,
    ConnectionLostError,
    RPCError,
    RPCTimeoutError,
    SerializationError,
    exception_from_remote,
    exception_to_remote,
)
from .serializers import Serializer, get_serializer

__all__ = ["RPCClient", "RemoteGenerator"]

log = logging.getLogger("netcall")

_FIRST_CREDIT = 16
_UNSET: Any = object()


class _Service:
    """One connected endpoint, addressed by its own routing id."""

    __slots__ = ("inflight", "rid", "up", "url")

    def __init__(self, url: str, rid: bytes) -> None:
        self.url = url
        self.rid = rid
        self.inflight = 0
        # Learned from the socket monitor; inproc reports no events and is always up.
        self.up = url.startswith("inproc://")


class _Pending:
    __slots__ = ("future", "sent_up", "service", "timeout", "window")

    def __init__(
        self, future: asyncio.Future[Any], service: _Service, timeout: float | None, window: int
    ) -> None:
        self.future = future
        self.service = service
        self.timeout = timeout
        self.window = window
        # Sent on a live connection: lost if that connection breaks. A call sent while the
        # service is down waits in ZeroMQ's queue for a reconnection (or its timeout).
        self.sent_up = service.up


class RPCClient:
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
        timeout: default seconds a call (or one stream step) may take; ``None``: no limit.
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
        name: a label for logs.
    """

    def __init__(
        self,
        serializer: str | Serializer | None = None,
        *,
        timeout: float | None = None,
        context: zmq.Context[Any] | None = None,
        window: int = 1024,
        stream_buffer: int = 4 * 2**20,
        heartbeat: float | None = 2.0,
        name: str | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.serializer: Serializer = get_serializer(serializer)
        self.context: zmq.Context[Any] = context or zmq.Context.instance()
        self.timeout = timeout
        self.window = window
        self.stream_buffer = stream_buffer
        self.name = name or "RPCClient"
        self._services: dict[str, _Service] = {}
        self._order: list[_Service] = []
        self._rr = 0
        self._rids = itertools.count(1)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._streams: dict[int, _StreamState] = {}
        self._driver: SocketDriver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._keepalive_lease = float("inf")
        self._closed = False
        sock: zmq.Socket[Any] = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        if heartbeat:
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat * 3000))
        self.socket = sock
        # Connection events (before any connect, so none is missed): which services are up,
        # and which broke with calls in flight.
        self._monitor: zmq.Socket[Any] = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )
        self._monitor_driver: SocketDriver | None = None

    # -- endpoints ------------------------------------------------------------------------

    @property
    def connected(self) -> set[str]:
        """The endpoints this client is connected to."""
        return set(self._services)

    def connect(self, urls: str | Iterable[str], only: bool = False) -> None:
        """Connect to one or several service endpoints. Calls are spread across them.

        With ``only=True`` the client ends up connected to exactly ``urls``.

        Raises:
            zmq.ZMQError: a malformed endpoint.
            ClientClosedError: the client is closed.
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        wanted = [urls] if isinstance(urls, str) else list(urls)
        if only:
            for url in set(self._services) - set(wanted):
                self.disconnect(url)
        for url in wanted:
            if url in self._services:
                continue
            rid = b"s%d" % next(self._rids)
            self.socket.setsockopt(zmq.CONNECT_ROUTING_ID, rid)
            self.socket.connect(url)
            svc = _Service(url, rid)
            self._services[url] = svc
            self._order.append(svc)

    def disconnect(self, url: str) -> None:
        """Disconnect from ``url``; calls and streams in flight there fail at once with
        :class:`~netcall.errors.ConnectionLostError`."""
        svc = self._services.pop(url, None)
        if svc is None:
            return
        self._order.remove(svc)
        self._lost(svc, f"disconnected from {url}", every_call=True)
        try:
            self.socket.disconnect(url)
        except zmq.ZMQError:
            pass

    # -- state ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Calls waiting for an answer."""
        return len(self._pending)

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
            return driver
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._driver = SocketDriver(self.socket, loop, self._on_message, self._on_unreachable)
        self._monitor_driver = SocketDriver(self._monitor, loop, self._on_monitor_event)
        return self._driver

    def _pick(self) -> _Service:
        """The service for a new call: live ones first, then the fewest calls in flight, then
        round robin."""
        order = self._order
        n = len(order)
        if n == 1:
            return order[0]
        if n == 0:
            raise RPCError("the client is not connected to any service; call connect() first")
        self._rr = start = (self._rr + 1) % n
        best = order[start]
        for i in range(1, n):
            svc = order[(start + i) % n]
            if (svc.up, -svc.inflight) > (best.up, -best.inflight):
                best = svc
        return best

    def _on_monitor_event(self, frames: list[Any]) -> None:
        try:
            event = zmq.utils.monitor.parse_monitor_message(frames)
        except Exception:  # pragma: no cover - libzmq's own format
            return
        endpoint = event["endpoint"]
        url = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        svc = self._services.get(url)
        if svc is None:
            return
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            svc.up = True
        elif event["event"] == zmq.EVENT_DISCONNECTED:
            was_up, svc.up = svc.up, False
            if was_up:
                self._lost(svc, f"the connection to {url} broke")

    def _lost(self, svc: _Service, why: str, every_call: bool = False) -> None:
        """Fail every call and stream in flight on ``svc``: their answers cannot arrive (a new
        connection gives this client a new identity on the service). Calls sent while the
        service was down wait for a reconnection, unless ``every_call`` (disconnect())."""
        for rid, pend in list(self._pending.items()):
            if pend.service is svc and (pend.sent_up or every_call) and not pend.future.done():
                del self._pending[rid]
                pend.future.set_exception(ConnectionLostError(why))
        for stream in list(self._streams.values()):
            if stream.service is svc:
                stream.fail(ConnectionLostError(why))

    # -- calls ----------------------------------------------------------------------------

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        method = _Method(self, name, _UNSET, False)
        self.__dict__[name] = method
        return method

    def call(
        self,
        name: str,
        *args: Any,
        timeout: float | None = _UNSET,
        oneway: bool = False,
        **kwargs: Any,
    ) -> _Call:
        """Call ``name`` with these arguments: ``await client.call("echo", "hi", timeout=1)``.

        ``timeout`` and ``oneway`` are options, not arguments for the method; use
        :meth:`with_options` for methods taking keyword arguments of those names.
        """
        return _Call(self, name, args, kwargs, timeout, oneway)

    def _first_credit(self) -> int:
        """Credit a stream starts with, before its item size is known (slow start)."""
        return min(self.window, _FIRST_CREDIT)

    async def methods(self, timeout: float | None = _UNSET) -> dict[str, dict[str, str]]:
        """The service's methods: ``{name: {"signature": ..., "doc": ...}}``.

        Raises:
            RPCTimeoutError: no answer within the timeout.
        """
        result: dict[str, dict[str, str]] = await self.call("_netcall.methods", timeout=timeout)
        return result

    def with_options(self, *, timeout: float | None = _UNSET, oneway: bool = False) -> _Options:
        """A view of this client whose calls use these options: ``client.with_options(
        timeout=2).slow(x)``."""
        return _Options(self, timeout, oneway)

    async def _invoke(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        oneway: bool,
        window: int,
    ) -> Any:
        """Make one call; return its result, a RemoteGenerator, or raise.

        Raises:
            RemoteRPCError: the handler raised (a builtin type arrives as that type too).
            RPCTimeoutError: no answer within ``timeout``; the handler is cancelled.
            SerializationError: an argument cannot be serialized (nothing is sent).
            SerializerMismatchError: the service uses another serializer.
            ClientClosedError: the client was closed.
        """
        driver = self._start()
        if timeout is _UNSET:
            timeout = self.timeout
        dumps = self.serializer.dumps
        payload = dumps(list(args))
        kw_payload = dumps(kwargs) if kwargs else None
        rid = next(self._ids)
        svc = self._pick()
        deadline = time.time() + timeout if timeout is not None else 0.0
        # Everything that can fail (encoding) comes before any state is recorded.
        frames = [
            svc.rid,
            p.call_head(
                rid, method, self.serializer.name, deadline, p.FLAG_ONEWAY if oneway else 0, window
            ),
            payload,
        ]
        if kw_payload is not None:
            frames.append(kw_payload)
        loop = self._loop
        assert loop is not None
        fut = loop.create_future()
        self._pending[rid] = _Pending(fut, svc, timeout, window)
        svc.inflight += 1
        driver.send(frames)
        timer = loop.call_later(timeout, self._on_timeout, rid) if timeout is not None else None
        try:
            reply = await fut
        except asyncio.CancelledError:
            if rid in self._pending:
                self._send_cancel(svc, rid)
            elif fut.done() and not fut.cancelled() and isinstance(fut.result(), RemoteGenerator):
                # The stream opened just as we were cancelled: nobody will read it.
                fut.result()._state.close_remote()
            raise
        finally:
            self._pending.pop(rid, None)
            svc.inflight -= 1
            if timer is not None:
                timer.cancel()
        kind = type(reply)
        if kind is bytes:
            return self.serializer.loads(reply)
        if kind is p.Result:
            return self.serializer.loads(reply.payload)
        if kind is RemoteGenerator or kind is p.Ack:
            return None if kind is p.Ack else reply
        raise _error_from(reply, method)

    def _on_timeout(self, rid: int) -> None:
        pend = self._pending.pop(rid, None)
        if pend is None or pend.future.done():
            return
        pend.future.set_exception(RPCTimeoutError(f"no answer within {pend.timeout} s"))
        self._send_cancel(pend.service, rid)

    def _send_cancel(self, svc: _Service, rid: int) -> None:
        if self._driver is not None and not self._closed:
            self._driver.send([svc.rid, p.header(p.Kind.CANCEL, rid)])

    def _send(self, svc: _Service, frames: list[Any]) -> None:
        if self._driver is None or self._closed:
            raise ClientClosedError("the client is closed")
        frames.insert(0, svc.rid)
        self._driver.send(frames)

    # -- incoming -------------------------------------------------------------------------

    def _on_message(self, frames: list[Any]) -> None:
        if len(frames) == 2:
            fast = p.split_inline(frames[1])
            if fast is not None:
                kind, rid, payload = fast
                if kind == p.Kind.RESULT:
                    pend = self._pending.pop(rid, None)
                    if pend is not None and not pend.future.done():
                        pend.future.set_result(payload)  # bytes: a result's payload
                    return
                stream = self._streams.get(rid)
                if stream is not None:
                    stream.feed_item(payload)
                return
        try:
            msg = p.decode(frames[1:])
        except Exception as exc:
            log.warning("netcall: dropped a malformed message from a service: %s", exc)
            return
        rid = msg.id
        pend = self._pending.pop(rid, None)
        if pend is not None:
            fut = pend.future
            if type(msg) is p.StreamOpen:
                if fut.done():
                    # The caller gave up (cancelled, timed out) as the stream opened: close it.
                    self._send_cancel(pend.service, rid)
                    return
                state = _StreamState(self, pend.service, rid, msg.lease, pend.timeout, pend.window)
                self._streams[rid] = state
                self._schedule_keepalive(msg.lease)
                fut.set_result(RemoteGenerator(state))
            elif not fut.done():
                fut.set_result(msg)
            return
        stream = self._streams.get(rid)
        if stream is not None:
            stream.feed(msg)

    def _on_unreachable(self, rid: bytes) -> None:
        log.debug("netcall: service %r unreachable", rid)

    def _schedule_keepalive(self, lease: float) -> None:
        """Ping services holding our streams every third of the shortest lease seen."""
        if self._keepalive is not None:
            if lease >= self._keepalive_lease:
                return
            self._keepalive.cancel()  # a service with a shorter lease: ping sooner
        if self._loop is not None:
            self._keepalive_lease = lease
            self._keepalive = self._loop.call_later(lease / 3, self._ping)

    def _ping(self) -> None:
        self._keepalive = None
        if self._closed or not self._streams:
            return
        for svc in {s.service.rid: s.service for s in self._streams.values()}.values():
            if svc.url in self._services:
                self._send(svc, [p.header(p.Kind.PING, 0)])
        self._schedule_keepalive(self._keepalive_lease)

    def _stream_done(self, rid: int) -> None:
        self._streams.pop(rid, None)

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket and fail every call in flight with ClientClosedError.

        Call it from the client's event loop thread (or before any call was made).
        """
        if self._closed:
            return
        self._closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self._driver is not None:
            # Tell services to drop our calls and streams (best effort), then close.
            open_work = [(pend.service, rid) for rid, pend in self._pending.items()]
            open_work += [(state.service, state.rid) for state in self._streams.values()]
            for svc, rid in open_work:
                try:
                    self._driver.send([svc.rid, p.header(p.Kind.CANCEL, rid)])
                except Exception:
                    pass
            self._driver.close(linger=50)
        elif not self.socket.closed:
            self.socket.close(linger=0)
        if self._monitor_driver is not None:
            self._monitor_driver.close()
        elif not self._monitor.closed:
            self._monitor.close(linger=0)
        for pend in list(self._pending.values()):
            if not pend.future.done():
                pend.future.set_exception(ClientClosedError("the client was closed"))
        self._pending.clear()
        for state in list(self._streams.values()):
            state.fail(ClientClosedError("the client was closed"))
        self._streams.clear()

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
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {sorted(self._services)}>"


def _error_from(msg: Any, method: str) -> BaseException:
    if type(msg) is not p.Error:
        return RPCError(f"unexpected {type(msg).__name__} reply to {method!r}")
    return exception_from_remote(msg.type_name, msg.message, msg.traceback)


class _Options:
    """``client.with_options(...)``: calls through it carry these options."""

    __slots__ = ("_client", "_oneway", "_timeout")

    def __init__(self, client: RPCClient, timeout: float | None, oneway: bool) -> None:
        self._client = client
        self._timeout = timeout
        self._oneway = oneway

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self._client, name, self._timeout, self._oneway)

    def call(self, name: str, *args: Any, **kwargs: Any) -> _Call:
        return _Call(self._client, name, args, kwargs, self._timeout, self._oneway)


class _Method:
    """``client.name``: call it; its attributes are dotted sub-names."""

    __slots__ = ("_client", "_name", "_oneway", "_timeout")

    def __init__(self, client: RPCClient, name: str, timeout: Any, oneway: bool) -> None:
        self._client = client
        self._name = name
        self._timeout = timeout
        self._oneway = oneway

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self._client, f"{self._name}.{name}", self._timeout, self._oneway)

    def __call__(self, *args: Any, **kwargs: Any) -> _Call:
        return _Call(self._client, self._name, args, kwargs, self._timeout, self._oneway)

    def __repr__(self) -> str:
        return f"<remote method {self._name!r}>"


class _Call:
    """A call not yet made: ``await`` it for the result, or ``async for`` over a stream."""

    __slots__ = ("_args", "_client", "_kwargs", "_name", "_oneway", "_timeout")

    def __init__(
        self,
        client: RPCClient,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: Any,
        oneway: bool,
    ) -> None:
        self._client = client
        self._name = name
        self._args = args
        self._kwargs = kwargs
        self._timeout = timeout
        self._oneway = oneway

    def __await__(self) -> Generator[Any, None, Any]:
        return self._client._invoke(
            self._name, self._args, self._kwargs, self._timeout, self._oneway, 0
        ).__await__()

    def __aiter__(self) -> _StreamIterator:
        return _StreamIterator(self)

    def __repr__(self) -> str:
        return f"<call {self._name}(...)>"


class _StreamIterator:
    """``async for x in client.stream(...)``: opens the stream with a prefetch window."""

    __slots__ = ("_call", "_gen")

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._gen: RemoteGenerator | None = None

    def __aiter__(self) -> _StreamIterator:
        return self

    def __anext__(self) -> Awaitable[Any]:
        gen = self._gen
        if gen is None:
            return self._open_and_next()
        return gen.__anext__()

    async def _open_and_next(self) -> Any:
        gen = self._gen
        if gen is None:
            c = self._call
            result = await c._client._invoke(
                c._name, c._args, c._kwargs, c._timeout, False, c._client._first_credit()
            )
            if not isinstance(result, RemoteGenerator):
                raise TypeError(f"{c._name!r} returned a value, not a stream")
            gen = self._gen = result
            gen._state.prefetch = True
        return await gen.__anext__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()


class _StreamState:
    """Client-side state of one open stream, held by the client while the stream lives.

    The user holds a :class:`RemoteGenerator` wrapping it; when that is dropped, the stream is
    closed on the service.
    """

    __slots__ = (
        "buffer",
        "client",
        "consumed",
        "error",
        "finished",
        "granted",
        "item_size",
        "lease",
        "prefetch",
        "rid",
        "running",
        "service",
        "timeout",
        "waiters",
    )

    def __init__(
        self,
        client: RPCClient,
        service: _Service,
        rid: int,
        lease: float,
        timeout: float | None,
        window: int,
    ) -> None:
        self.client = client
        self.service = service
        self.rid = rid
        self.lease = lease
        self.timeout = timeout
        self.granted = window  # credit given so far (the CALL's window)
        self.prefetch = window > 0
        self.item_size = 64.0  # running average of payload sizes, for the byte budget
        self.buffer: deque[Any] = deque()
        # Everyone waiting on this stream (a step, and an aclose() from another task).
        self.waiters: list[asyncio.Future[None]] = []
        self.finished = False  # no more messages will come from the service
        self.error: BaseException | None = None  # raised once the buffer is drained
        self.consumed = 0
        self.running = False

    def _wake(self) -> None:
        for w in self.waiters:
            if not w.done():
                w.set_result(None)

    def feed_item(self, payload: bytes) -> None:
        self.buffer.append(payload)
        self.item_size += (len(payload) - self.item_size) * 0.125
        if self.waiters:
            self._wake()

    def feed(self, msg: Any) -> None:
        kind = type(msg)
        if kind is p.Item:
            self.feed_item(msg.payload)
            return
        elif kind is p.End:
            self._finish(StopAsyncIteration())
        elif kind is p.Error:
            self._finish(_error_from(msg, "stream"))
        else:
            return
        self._wake()

    def _finish(self, error: BaseException) -> None:
        if not self.finished:
            self.finished = True
            self.error = error
            self.client._stream_done(self.rid)

    def fail(self, error: BaseException) -> None:
        self._finish(error)
        self._wake()

    def send(self, frames: list[Any]) -> None:
        self.client._send(self.service, frames)

    async def wait(self) -> None:
        """Wait until something arrives, or the step's timeout passes (closing the stream)."""
        loop = self.client._loop
        assert loop is not None
        fut: asyncio.Future[None] = loop.create_future()
        self.waiters.append(fut)
        timer = (
            loop.call_later(self.timeout, _timeout_waiter, fut)
            if self.timeout is not None
            else None
        )
        try:
            await fut
        except RPCTimeoutError:
            self.close_remote()
            raise RPCTimeoutError(f"no stream item within {self.timeout} s") from None
        except asyncio.CancelledError:
            self.close_remote()
            raise
        finally:
            self.waiters.remove(fut)
            if timer is not None:
                timer.cancel()

    def take(self) -> Any:
        """The next buffered item (decoded), or raise the stream's end/error."""
        return self.client.serializer.loads(self.take_raw())

    def take_raw(self) -> bytes:
        """The next buffered item's payload, or raise the stream's end/error."""
        if self.buffer:
            payload = self.buffer.popleft()
            if self.prefetch and not self.finished:
                self.consumed += 1
                ahead = self.granted - self.consumed  # in flight or buffered
                client = self.client
                limit = min(client.window, max(1, int(client.stream_buffer / self.item_size)))
                if ahead * 2 <= limit:
                    self.granted += limit - ahead
                    self.send(p.Credit(self.rid, limit - ahead).to_frames())
            return payload  # type: ignore[no-any-return]
        error = self.error
        assert error is not None
        if not isinstance(error, StopAsyncIteration):
            # Raised once, like a generator's exception; after that the stream is exhausted.
            self.error = StopAsyncIteration()
        raise error

    def close_remote(self) -> None:
        """Ask the service to close the stream, without waiting (safe from finalizers)."""
        if not self.finished:
            self.fail(StopAsyncIteration())  # other waiters on this stream hear of it too
            try:
                self.send([p.header(p.Kind.CANCEL, self.rid)])
            except ClientClosedError:
                pass


@types.coroutine
def _ready(value: Any) -> Generator[Any, None, Any]:
    """An awaitable that is already done with ``value``."""
    return value
    yield  # type: ignore[unreachable]  # makes this a generator


def _timeout_waiter(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(RPCTimeoutError())


class RemoteGenerator(AsyncIterator[Any]):
    """A generator running on a service, driven from here.

    ``asend``, ``athrow``, ``__anext__`` are lock-step: one round trip each, exactly the
    generator's semantics. ``async for`` switches to prefetch: the service runs up to the
    client's ``window`` items ahead, and ``asend``/``athrow`` are no longer allowed.
    ``aclose()`` (or leaving ``async with``, or dropping the last reference) closes the
    generator on the service, running its ``finally`` blocks.

    Each step has the call's timeout; a step that times out raises
    :class:`~netcall.errors.RPCTimeoutError` and closes the stream.
    """

    __slots__ = ("__weakref__", "_state")

    def __init__(self, state: _StreamState) -> None:
        self._state = state

    def __aiter__(self) -> RemoteGenerator:
        st = self._state
        if not st.prefetch and not st.finished:
            st.prefetch = True
            credit = st.client._first_credit()
            st.granted = st.consumed + credit
            st.send(p.Credit(st.rid, credit).to_frames())
        return self

    def __anext__(self) -> Awaitable[Any]:
        st = self._state
        if st.prefetch and st.buffer and not st.running:
            # The item is already here: no coroutine, no loop turn.
            return _ready(st.take())
        return self._anext()

    async def _anext(self) -> Any:
        st = self._state
        if not st.prefetch:
            return await self._step(None, None)
        if st.running:
            raise RuntimeError("anext(): the stream is already being read")
        st.running = True
        try:
            while not st.buffer and not st.finished:
                await st.wait()
            return st.take()
        finally:
            st.running = False

    async def _anext_payloads(self, limit: int) -> list[bytes]:
        """For bridges (threads, greenlets): wait for the next item of a prefetching stream and
        return its payload with those already buffered behind it (at most ``limit``, undecoded:
        decode them with the client's serializer). One hop for a batch instead of one per item.

        Raises what ``__anext__`` raises when nothing is left.
        """
        st = self._state
        if st.running:
            raise RuntimeError("anext(): the stream is already being read")
        st.running = True
        try:
            while not st.buffer and not st.finished:
                await st.wait()
            out = [st.take_raw()]
            while st.buffer and len(out) < limit:
                out.append(st.take_raw())
            return out
        finally:
            st.running = False

    async def asend(self, value: Any) -> Any:
        """Send ``value`` into the generator; return what it yields next.

        Raises:
            StopAsyncIteration: the generator is exhausted (or closed).
            RemoteRPCError: the generator raised.
            RPCTimeoutError: no answer within the timeout (the stream is closed).
            RuntimeError: the stream is being iterated with ``async for`` (prefetching).
        """
        return await self._step(value, None)

    async def athrow(
        self,
        typ: type[BaseException] | BaseException,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> Any:
        """Throw an exception into the generator at its ``yield``; return what it yields next.

        The exception travels as type name and message; builtin types arrive as themselves.

        Raises:
            the generator's exception as :class:`~netcall.errors.RemoteRPCError`, or what
            :meth:`asend` raises.
        """
        exc = typ if isinstance(typ, BaseException) else (typ(val) if val is not None else typ())
        return await self._step(None, exc)

    async def _step(self, value: Any, exc: BaseException | None) -> Any:
        st = self._state
        if st.prefetch and not st.finished:
            raise RuntimeError(
                "this stream is prefetching (iterated with async for): asend/athrow unavailable"
            )
        if st.finished:
            return st.take()  # what is left, then the stream's error or end
        if st.running:
            raise RuntimeError("asend(): the remote generator is already running")
        st.running = True
        try:
            if exc is None:
                try:
                    payload = st.client.serializer.dumps(value)
                except SerializationError:
                    raise
                st.send(p.payload_frames(p.Kind.NEXT, st.rid, payload))
            else:
                type_name, message = exception_to_remote(exc)
                st.send(
                    [
                        p.header(p.Kind.THROW, st.rid),
                        type_name.encode(),
                        message.encode("utf-8", "replace"),
                    ]
                )
            while not st.buffer and not st.finished:
                await st.wait()
            return st.take()
        finally:
            st.running = False

    async def aclose(self) -> None:
        """Close the generator on the service and wait until its ``finally`` blocks ran.

        Raises:
            RPCTimeoutError: the service did not confirm within the timeout (it still closes
                the stream when the message arrives, or when the lease expires).
        """
        st = self._state
        if st.finished:
            return
        st.buffer.clear()
        st.prefetch = False
        st.send([p.header(p.Kind.CANCEL, st.rid)])
        try:
            while not st.finished:
                await st.wait()
        finally:
            st._finish(StopAsyncIteration())

    async def __aenter__(self) -> RemoteGenerator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        st = self._state
        if st.finished:
            return
        loop = st.client._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(st.close_remote)
        except RuntimeError:
            pass
