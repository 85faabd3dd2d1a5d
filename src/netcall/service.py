"""The asyncio service: owns a ROUTER socket, runs handlers, streams generators."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import sys
import time
import traceback as _traceback
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, TypeVar, overload

import zmq

from . import protocol as p
from ._context import CallContext, _current
from ._reactor import SocketDriver
from .errors import (
    SerializationError,
    exception_for_throw,
    exception_to_remote,
    remote_type_name,
)
from .serializers import Serializer, get_serializer

__all__ = ["RESERVED_NAMES", "RPCService"]

log = logging.getLogger("netcall")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: Runs a zero-argument callable somewhere and returns its result (adapters plug in here).
SyncRunner = Callable[[Callable[[], Any]], Awaitable[Any]]

#: Names a handler cannot take: they are the service's or the client's own attributes.
RESERVED_NAMES: frozenset[str] = frozenset(
    {
        "bind",
        "bind_ports",
        "bound",
        "unbind",
        "connect",
        "connected",
        "disconnect",
        "register",
        "register_object",
        "task",
        "start",
        "stop",
        "serve",
        "close",
        "aclose",
        "call",
        "methods",
        "with_options",
        "active_calls",
        "active_streams",
        "pending",
        "open_streams",
        "context",
        "serializer",
        "socket",
        "join",
        "closed",
    }
)

_STREAM_YIELD_EVERY = 64  # a flowing sync generator yields to the loop this often
_STREAM_KINDS: dict[type, p.Kind] = {
    p.Next: p.Kind.NEXT,
    p.Throw: p.Kind.THROW,
    p.Credit: p.Kind.CREDIT,
}


class _Handler:
    __slots__ = ("doc", "fn", "is_async", "name")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        self.doc = inspect.getdoc(fn) or ""


class _Stream:
    """A generator being streamed to one client (service side)."""

    __slots__ = (
        "commands",
        "credit",
        "gen",
        "is_async",
        "key",
        "method",
        "peer",
        "rid",
        "state",
        "task",
        "waiter",
    )

    def __init__(self, peer: bytes, rid: int, method: str, gen: Any, credit: int) -> None:
        self.peer = peer
        self.rid = rid
        self.key = (peer, rid)
        self.method = method
        self.gen = gen
        self.is_async = inspect.isasyncgen(gen)
        self.credit = credit
        self.state = p.StreamState.FLOWING if credit else p.StreamState.IDLE
        self.commands: list[tuple[str, Any]] = []
        self.waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class RPCService:
    """An RPC service: register handlers, bind endpoints, serve.

    Sync handlers run inline on the event loop (keep them short), or in ``executor`` when one is
    given. Async handlers run as tasks. A handler that returns a generator or an async generator
    opens a stream.

    Args:
        serializer: ``None`` (msgpack), ``"json"``, ``"pickle"`` (trusted networks only) or a
            serializer object. Clients must use the same one.
        context: the ZeroMQ context (default: ``zmq.Context.instance()``).
        executor: run sync handlers and sync generator steps in this executor instead of inline.
        max_message_size: drop incoming messages larger than this many bytes (ZMQ_MAXMSGSIZE;
            a peer that sends one is disconnected by ZeroMQ).
        stream_lease: seconds a stream survives without hearing from its client (clients ping
            every third of it), after which the generator is closed.
        grace: default seconds :meth:`stop` lets in-flight calls finish.
        tracebacks: send handler tracebacks to clients (default True).
        heartbeat: seconds between ZeroMQ heartbeats; a client connection silent for three of
            them is dropped (``None``: no heartbeats).
        max_concurrent: at most this many calls running (async handlers and executor calls)
            plus streams open at once; further calls are refused at once with
            :class:`~netcall.errors.ServiceBusyError` instead of queueing without bound
            (``None``: no limit). Sync handlers running inline never count: they finish before
            the next message is read.
        name: a label for logs.
    """

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
        heartbeat: float | None = 2.0,
        max_concurrent: int | None = None,
        name: str | None = None,
    ) -> None:
        if stream_lease <= 0:
            raise ValueError("stream_lease must be positive")
        self.serializer: Serializer = get_serializer(serializer)
        self.context: zmq.Context[Any] = context or zmq.Context.instance()
        self.name = name or type(self).__name__
        self._executor = executor
        self._sync_runner: SyncRunner | None = None
        self._stream_lease = float(stream_lease)
        self._grace = grace
        self._max_concurrent = max_concurrent
        self._tracebacks = tracebacks
        self._handlers: dict[str, _Handler] = {}
        self._bound: set[str] = set()
        self._calls: dict[tuple[bytes, int], asyncio.Future[Any]] = {}
        # Calls the client cancelled: their task may already be done, its done-callback not yet
        # run (cancel() is then a no-op): that callback must not answer or open a stream.
        self._abandoned: set[tuple[bytes, int]] = set()
        self._streams: dict[tuple[bytes, int], _Stream] = {}
        self._seen: dict[bytes, float] = {}
        self._driver: SocketDriver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._stopping = False
        self._closed = False
        self._reaper: asyncio.TimerHandle | None = None
        sock: zmq.Socket[Any] = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        if max_message_size is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_size))
        if heartbeat:
            sock.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat * 1000))
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat * 3000))
        self.socket = sock
        self._register_own_methods()
        # Built-in introspection, under a name no user handler can take.
        self._handlers["_netcall.methods"] = _Handler("_netcall.methods", self.methods)

    # -- registration ---------------------------------------------------------------------

    def _register_own_methods(self) -> None:
        """A subclass's public methods are handlers."""
        cls = type(self)
        if cls is RPCService:
            return
        base_names = set(dir(RPCService))
        for klass in cls.__mro__:
            if klass is RPCService or not issubclass(klass, RPCService):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_") or attr in base_names or attr in self._handlers:
                    continue
                if callable(value) or isinstance(value, staticmethod | classmethod):
                    self._add(attr, getattr(self, attr))

    def _add(self, name: str, fn: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a handler needs a non-empty name")
        parts = name.split(".")
        if any(not part or part.startswith("_") for part in parts):
            raise ValueError(f"invalid handler name {name!r}")
        if parts[0] in RESERVED_NAMES:
            raise ValueError(f"{parts[0]!r} is a reserved name and cannot be registered")
        if not callable(fn):
            raise TypeError(f"handler {name!r} is not callable")
        self._handlers[name] = _Handler(name, fn)

    @overload
    def register(self, fn: F, *, name: str | None = None) -> F: ...

    @overload
    def register(self, fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...

    def register(self, fn: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
        """Register a handler: ``@service.register``, ``@service.register(name="x")`` or
        ``service.register(fn, name="x")``. Returns the function unchanged.

        Raises:
            ValueError: the name is reserved (see :data:`RESERVED_NAMES`), empty, or private.
            TypeError: ``fn`` is not callable.
        """
        if fn is None:

            def decorator(f: F) -> F:
                self._add(name or f.__name__, f)
                return f

            return decorator
        if isinstance(fn, str):
            raise TypeError("use register(name=...) to give a name")
        self._add(name or str(getattr(fn, "__name__", "")), fn)
        return fn

    task = register  # the 2014 spelling

    def register_object(
        self, obj: Any, namespace: str | None = None, restricted: Iterable[str] = ()
    ) -> list[str]:
        """Expose ``obj``'s public callables as ``namespace.name`` (or ``name``).

        Names starting with ``_`` and names in ``restricted`` are not exposed. Returns the
        registered names.

        Raises:
            ValueError: a resulting name is reserved.
        """
        deny = set(restricted)
        prefix = f"{namespace}." if namespace else ""
        added = []
        for attr in dir(obj):
            if attr.startswith("_") or attr in deny:
                continue
            try:
                value = getattr(obj, attr)
            except Exception:
                continue
            if callable(value) and not isinstance(value, type):
                self._add(prefix + attr, value)
                added.append(prefix + attr)
        return added

    def methods(self) -> dict[str, dict[str, str]]:
        """The registered handlers: ``{name: {"signature": ..., "doc": ...}}``."""
        out = {}
        for name, h in sorted(self._handlers.items()):
            if name.startswith("_"):
                continue
            try:
                sig = str(inspect.signature(h.fn))
            except (TypeError, ValueError):
                sig = "(...)"
            out[name] = {"signature": sig, "doc": h.doc}
        return out

    # -- endpoints ------------------------------------------------------------------------

    @property
    def bound(self) -> set[str]:
        """The endpoints this service is bound to."""
        return set(self._bound)

    def bind(self, urls: str | Iterable[str], only: bool = False) -> None:
        """Bind to one or several endpoints (``tcp://``, ``ipc://``, ``inproc://``).

        With ``only=True`` the service ends up bound to exactly ``urls``: others are unbound.

        Raises:
            zmq.ZMQError: an endpoint cannot be bound (address in use, bad address).
        """
        wanted = [urls] if isinstance(urls, str) else list(urls)
        if only:
            for url in self._bound - set(wanted):
                self.unbind(url)
        for url in wanted:
            if url not in self._bound:
                self.socket.bind(url)
                self._bound.add(url)

    def unbind(self, url: str) -> None:
        """Stop listening on ``url``."""
        if url in self._bound:
            self._bound.discard(url)
            try:
                self.socket.unbind(url)
            except zmq.ZMQError:
                pass

    def bind_ports(
        self, ip: str = "127.0.0.1", port: int = 0, *, min_port: int = 49152, max_port: int = 65535
    ) -> int:
        """Bind ``tcp://ip:port``; with ``port=0`` pick a free port in [min_port, max_port].
        Returns the port.

        Raises:
            zmq.ZMQError: the port is taken, or no free port was found.
        """
        if port:
            self.bind(f"tcp://{ip}:{port}")
            return port
        chosen = self.socket.bind_to_random_port(f"tcp://{ip}", min_port, max_port)
        self._bound.add(f"tcp://{ip}:{chosen}")
        return chosen

    # -- running --------------------------------------------------------------------------

    @property
    def active_calls(self) -> int:
        """Calls running right now (async handlers, executor and runner calls)."""
        return sum(1 for task in self._calls.values() if not task.done())

    @property
    def active_streams(self) -> int:
        """Streams open right now."""
        return len(self._streams)

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin serving on ``loop`` (default: the running loop). Returns at once.

        Raises:
            RuntimeError: no loop is running and none was given, or the service is closed.
        """
        if self._closed:
            raise RuntimeError("the service is closed")
        if self._driver is not None:
            return
        self._loop = loop or asyncio.get_running_loop()
        self._stopping = False
        self._driver = SocketDriver(self.socket, self._loop, self._on_message, self._on_gone)

    async def serve(self) -> None:
        """Serve until :meth:`stop` (or :meth:`close`) is called."""
        self.start()
        if self._stopped is None:
            self._stopped = asyncio.Event()
        if self._closed:
            return
        await self._stopped.wait()

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
        :class:`~netcall.errors.ServiceStoppingError`), then close the socket.
        """
        if self._closed:
            return
        self._stopping = True
        grace = self._grace if grace is None else grace
        if self._calls and grace > 0:
            await asyncio.wait(list(self._calls.values()), timeout=grace)
        for task in list(self._calls.values()):
            task.cancel()
        # Streams' tasks must be collected before closing them takes them off the registry:
        # stop() waits for their generators' finally blocks.
        pending: list[asyncio.Future[Any]] = list(self._calls.values())
        for stream in list(self._streams.values()):
            if stream.task is not None:
                pending.append(stream.task)
            self._close_stream(stream, reply=False)
            self._refuse(stream.peer, stream.rid, "netcall.ServiceStopping", "the service stopped")
        if pending:
            await asyncio.wait(pending, timeout=max(1.0, grace))
        self._close(linger=200)

    def close(self) -> None:
        """Close at once: cancel everything running and close the socket (linger 0)."""
        if self._closed:
            return
        for task in list(self._calls.values()):
            task.cancel()
        for stream in list(self._streams.values()):
            self._close_stream(stream, reply=False)
        self._close(linger=0)

    def _close(self, linger: int) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if self._driver is not None:
            self._driver.close(linger=linger)
        elif not self.socket.closed:
            self.socket.close(linger=linger)
        if self._stopped is not None:
            self._stopped.set()

    # -- incoming -------------------------------------------------------------------------

    def _send(self, peer: bytes, frames: list[Any]) -> None:
        if self._driver is not None:
            frames.insert(0, peer)
            self._driver.send(frames)

    def _send_error(self, peer: bytes, rid: int, exc: BaseException) -> None:
        type_name, message = exception_to_remote(exc)
        text = ""
        if self._tracebacks and exc.__traceback__ is not None:
            text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        self._send(peer, p.Error(rid, type_name, message, text).to_frames())

    def _refuse(self, peer: bytes, rid: int, type_name: str, message: str) -> None:
        self._send(peer, p.Error(rid, type_name, message, "").to_frames())

    def _on_gone(self, peer: bytes) -> None:
        for stream in [s for s in self._streams.values() if s.peer == peer]:
            self._close_stream(stream, reply=False)

    def _on_message(self, frames: list[Any]) -> None:
        peer = frames[0]
        body = frames[1:]
        if self._streams:
            self._seen[peer] = time.monotonic()
        try:
            msg = p.decode(body)
        except Exception as exc:  # ProtocolError; anything else would be our bug
            rid = p.request_id_of(body)
            log.warning("netcall: dropped a malformed message from %r: %s", peer, exc)
            if rid is not None:
                self._refuse(peer, rid, "netcall.ProtocolError", str(exc))
            return
        kind = type(msg)
        if kind is p.Call:
            self._on_call(peer, msg)  # type: ignore[arg-type]
        elif kind is p.Cancel:
            key = (peer, msg.id)
            task = self._calls.get(key)
            if task is not None:
                task.cancel()
                self._abandoned.add(key)
            stream = self._streams.get(key)
            if stream is not None:
                self._close_stream(stream, reply=True)
            elif task is None:
                # Closing an unknown or finished stream: confirm, so aclose() never waits.
                self._send(peer, p.End(msg.id).to_frames())
        elif kind is p.Ping:
            self._seen[peer] = time.monotonic()
            self._send(peer, p.Pong(msg.id).to_frames())
        elif kind in _STREAM_KINDS:
            self._on_stream_message(peer, msg)
        else:
            log.warning("netcall: unexpected %s message from a client", kind.__name__)
            self._refuse(
                peer, msg.id, "netcall.ProtocolError", f"a client may not send {kind.__name__}"
            )

    def _on_call(self, peer: bytes, msg: p.Call) -> None:
        rid = msg.id
        if self._stopping or self._closed:
            self._refuse(peer, rid, "netcall.ServiceStopping", "the service is stopping")
            return
        if msg.serializer != self.serializer.name:
            self._refuse(
                peer,
                rid,
                "netcall.SerializerMismatch",
                f"the service uses the {self.serializer.name!r} serializer, "
                f"the client sent {msg.serializer!r}",
            )
            return
        handler = self._handlers.get(msg.method)
        if handler is None:
            self._refuse(peer, rid, "netcall.MethodNotFound", f"no method named {msg.method!r}")
            return
        deadline = msg.deadline or None
        if deadline is not None and deadline <= time.time():
            self._refuse(peer, rid, "netcall.Timeout", "the call's deadline passed before it ran")
            return
        key = (peer, rid)
        if key in self._calls or key in self._streams:
            self._refuse(peer, rid, "netcall.ProtocolError", f"request id {rid} is in use")
            return
        try:
            loads = self.serializer.loads
            args = loads(msg.args)
            kwargs = loads(msg.kwargs) if msg.kwargs is not None else {}
        except SerializationError as exc:
            self._refuse(peer, rid, "netcall.SerializationError", f"bad arguments: {exc}")
            return
        if (
            not isinstance(args, list | tuple)
            or not isinstance(kwargs, dict)
            or not all(isinstance(k, str) for k in kwargs)
        ):
            self._refuse(peer, rid, "netcall.ProtocolError", "arguments must be a list and a map")
            return
        if msg.oneway:
            self._send(peer, p.Ack(rid).to_frames())
        inline = not handler.is_async and self._executor is None and self._sync_runner is None
        if not inline and self._at_limit(peer, rid):
            return
        ctx = CallContext(msg.method, peer, deadline, msg.oneway)
        token = _current.set(ctx)
        try:
            if handler.is_async:
                # Creating the coroutine binds the arguments (TypeError here) but runs nothing.
                work: Awaitable[Any] = handler.fn(*args, **kwargs)
            elif inline:
                # Fast path: a sync handler runs inline, no task.
                result = handler.fn(*args, **kwargs)
                if not inspect.isawaitable(result):
                    self._finish(peer, msg, result)
                    return
                work = result
            else:
                work = self._run_sync(functools.partial(handler.fn, *args, **kwargs))
            # The task runs in a copy of this context, where current_call() is this call.
            task = _start_task(self._loop, work)  # type: ignore[arg-type]
        except Exception as exc:
            self._handler_failed(peer, msg, handler, args, kwargs, exc)
            return
        finally:
            _current.reset(token)
        timer = None
        if deadline is not None:
            assert self._loop is not None
            timer = self._loop.call_later(deadline - time.time(), task.cancel)
        self._calls[key] = task
        task.add_done_callback(
            functools.partial(self._call_done, peer, msg, handler, args, kwargs, timer)
        )

    async def _run_sync(self, fn: Callable[[], T]) -> T:
        if self._sync_runner is not None:
            return await self._sync_runner(fn)  # type: ignore[no-any-return]
        if self._executor is not None:
            assert self._loop is not None
            ctx = contextvars.copy_context()
            return await self._loop.run_in_executor(self._executor, ctx.run, fn)
        return fn()

    def _call_done(
        self,
        peer: bytes,
        msg: p.Call,
        handler: _Handler,
        args: Any,
        kwargs: dict[str, Any],
        timer: asyncio.TimerHandle | None,
        task: asyncio.Future[Any],
    ) -> None:
        """A handler task ended (also when it was cancelled before it ever ran)."""
        key = (peer, msg.id)
        self._calls.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._abandoned:
            self._abandoned.discard(key)
            if not task.cancelled() and task.exception() is None:
                result = task.result()
                if inspect.isgenerator(result) or inspect.isasyncgen(result):
                    _close_generator_soon(result)
            return
        if task.cancelled():
            if self._stopping:
                self._refuse(
                    peer,
                    msg.id,
                    "netcall.ServiceStopping",
                    "the service stopped before the call finished",
                )
            # Otherwise the client cancelled or the deadline passed: nobody waits for a reply.
            return
        exc = task.exception()
        if exc is not None:
            if isinstance(exc, Exception):
                self._handler_failed(peer, msg, handler, args, kwargs, exc)
            else:  # KeyboardInterrupt, SystemExit, GeneratorExit from a killed greenlet...
                self._refuse(peer, msg.id, remote_type_name(exc), "the handler was interrupted")
            return
        self._finish(peer, msg, task.result())

    def _handler_failed(
        self,
        peer: bytes,
        msg: p.Call,
        handler: _Handler,
        args: Any,
        kwargs: dict[str, Any],
        exc: Exception,
    ) -> None:
        if msg.oneway:
            log.error("netcall: one-way call %s failed", handler.name, exc_info=exc)
            return
        if isinstance(exc, TypeError) and not _binds(handler.fn, args, kwargs):
            self._refuse(peer, msg.id, "TypeError", f"bad arguments for {handler.name!r}: {exc}")
            return
        self._send_error(peer, msg.id, exc)

    def _finish(self, peer: bytes, msg: p.Call, result: Any) -> None:
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            if msg.oneway:
                _close_generator_soon(result)
                return
            self._open_stream(peer, msg, result)
            return
        if msg.oneway:
            return
        try:
            payload = self.serializer.dumps(result)
        except SerializationError as exc:
            self._refuse(
                peer,
                msg.id,
                "netcall.SerializationError",
                f"cannot serialize the result of {msg.method!r}: {exc}",
            )
            return
        self._send(peer, p.payload_frames(p.Kind.RESULT, msg.id, payload))

    # -- streams --------------------------------------------------------------------------

    def _at_limit(self, peer: bytes, rid: int) -> bool:
        """Refuse the call (and say so) when max_concurrent calls and streams are running."""
        limit = self._max_concurrent
        if limit is None or len(self._calls) + len(self._streams) < limit:
            return False
        self._refuse(peer, rid, "netcall.Busy", f"the service is at its limit of {limit}")
        return True

    def _open_stream(self, peer: bytes, msg: p.Call, gen: Any) -> None:
        assert self._loop is not None
        if self._at_limit(peer, msg.id):
            _close_generator_soon(gen)
            return
        stream = _Stream(peer, msg.id, msg.method, gen, msg.window)
        self._streams[stream.key] = stream
        self._seen[peer] = time.monotonic()
        self._send(peer, p.StreamOpen(msg.id, self._stream_lease).to_frames())
        stream.task = self._loop.create_task(self._run_stream(stream))
        self._schedule_reaper()

    def _on_stream_message(self, peer: bytes, msg: Any) -> None:
        stream = self._streams.get((peer, msg.id))
        if stream is None:
            # The stream ended (or never was): tell the client so it does not wait.
            if type(msg) is not p.Credit:
                self._refuse(peer, msg.id, "netcall.StreamClosed", "no such open stream")
            return
        kind = _STREAM_KINDS[type(msg)]
        if kind not in p.STREAM_ACCEPTS[stream.state]:
            self._close_stream(stream, reply=False)
            self._refuse(
                peer,
                msg.id,
                "netcall.ProtocolError",
                f"{kind.name} not allowed while the stream is {stream.state.value}",
            )
            return
        if kind is p.Kind.CREDIT:
            stream.credit = min(stream.credit + msg.count, p.MAX_COUNT)
            stream.state = p.StreamState.FLOWING
        elif kind is p.Kind.NEXT:
            try:
                value = self.serializer.loads(msg.payload)
            except SerializationError as exc:
                self._close_stream(stream, reply=False)
                self._refuse(peer, msg.id, "netcall.SerializationError", str(exc))
                return
            stream.commands.append(("send", value))
            stream.state = p.StreamState.STEPPING
        else:
            stream.commands.append(("throw", exception_for_throw(msg.type_name, msg.message)))
            stream.state = p.StreamState.STEPPING
        stream.wake()

    async def _step(self, stream: _Stream, op: str, value: Any) -> tuple[bool, Any]:
        """Advance the generator once: ``(False, item)``, or ``(True, None)`` when exhausted."""
        gen = stream.gen
        if stream.is_async:
            try:
                if op == "send":
                    return False, await gen.asend(value)
                return False, await gen.athrow(value)
            except StopAsyncIteration:
                return True, None
        fn = functools.partial(_sync_step, gen.send if op == "send" else gen.throw, value)
        if self._sync_runner is None and self._executor is None:
            return fn()
        return await self._run_sync(fn)

    async def _run_stream(self, stream: _Stream) -> None:
        assert self._loop is not None
        loop = self._loop
        dumps = self.serializer.dumps
        produced = 0
        ctx = CallContext(stream.method, stream.peer, None)
        _current.set(ctx)
        try:
            while True:
                if stream.commands:
                    op, value = stream.commands.pop(0)
                    lockstep = True
                elif stream.state is p.StreamState.FLOWING and stream.credit > 0:
                    # Also wait while the socket is backed up for this peer: bounded memory.
                    if self._driver is not None and self._driver.is_blocked(stream.peer):
                        await asyncio.sleep(0.001)
                        continue
                    op, value, lockstep = "send", None, False
                    stream.credit -= 1
                else:
                    stream.waiter = loop.create_future()
                    await stream.waiter
                    stream.waiter = None
                    continue
                try:
                    done, item = await self._step(stream, op, value)
                    if done:
                        self._send(stream.peer, p.End(stream.rid).to_frames())
                        return
                except Exception as exc:
                    self._send_error(stream.peer, stream.rid, exc)
                    return
                try:
                    payload = dumps(item)
                except SerializationError as exc:
                    self._refuse(
                        stream.peer,
                        stream.rid,
                        "netcall.SerializationError",
                        f"cannot serialize an item of {stream.method!r}: {exc}",
                    )
                    return
                self._send(stream.peer, p.payload_frames(p.Kind.ITEM, stream.rid, payload))
                if lockstep:
                    stream.state = p.StreamState.IDLE
                produced += 1
                if not stream.is_async and produced % _STREAM_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass
        finally:
            stream.state = p.StreamState.CLOSED
            self._forget(stream)
            await self._finalize(stream)

    async def _finalize(self, stream: _Stream) -> None:
        """Run the generator's ``finally`` blocks (aclose/close)."""
        gen = stream.gen
        try:
            # A step cancelled while it ran in an executor thread is still running there (a
            # thread cannot be interrupted): close only once it is done, or close() fails.
            while getattr(gen, "gi_running", False):
                await asyncio.sleep(0.005)
            if stream.is_async:
                await gen.aclose()
            elif self._sync_runner is None and self._executor is None:
                gen.close()
            else:
                await self._run_sync(gen.close)
        except BaseException as exc:  # a finally block may raise anything
            if isinstance(exc, asyncio.CancelledError):
                return
            log.warning("netcall: stream %s raised while closing: %r", stream.method, exc)

    def _close_stream(self, stream: _Stream, reply: bool) -> None:
        """Close a stream: its task ends and the generator is finalised."""
        if stream.state is p.StreamState.CLOSED and self._streams.get(stream.key) is not stream:
            if reply:
                self._send(stream.peer, p.End(stream.rid).to_frames())
            return
        self._forget(stream)
        stream.state = p.StreamState.CLOSED
        task = stream.task
        if task is not None and not task.done():
            if reply:
                task.add_done_callback(
                    lambda _t: self._send(stream.peer, p.End(stream.rid).to_frames())
                )
            task.cancel()
        elif reply:
            self._send(stream.peer, p.End(stream.rid).to_frames())

    def _forget(self, stream: _Stream) -> None:
        # By identity: a peer may already reuse the id for a new stream.
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]

    def _schedule_reaper(self) -> None:
        if self._reaper is None and self._loop is not None and not self._closed:
            self._reaper = self._loop.call_later(self._stream_lease / 4, self._reap)

    def _reap(self) -> None:
        """Close streams whose client has been silent for longer than the lease."""
        self._reaper = None
        now = time.monotonic()
        limit = self._stream_lease
        live_peers = set()
        for stream in list(self._streams.values()):
            if now - self._seen.get(stream.peer, now) > limit:
                log.info("netcall: closing stream %s: its client went silent", stream.method)
                self._close_stream(stream, reply=False)
            else:
                live_peers.add(stream.peer)
        for peer in list(self._seen):
            if peer not in live_peers:
                del self._seen[peer]
        if self._streams:
            self._schedule_reaper()


if sys.version_info >= (3, 12):

    def _start_task(loop: asyncio.AbstractEventLoop, work: Awaitable[Any]) -> asyncio.Future[Any]:
        # An eager task runs its first step now: a handler that never suspends completes
        # without a trip through the loop.
        if inspect.iscoroutine(work):
            return asyncio.Task(work, loop=loop, eager_start=True)
        return asyncio.ensure_future(work, loop=loop)

else:

    def _start_task(loop: asyncio.AbstractEventLoop, work: Awaitable[Any]) -> asyncio.Future[Any]:
        if inspect.iscoroutine(work):
            return loop.create_task(work)
        return asyncio.ensure_future(work, loop=loop)


def _binds(fn: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> bool:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def _sync_step(step: Callable[[Any], Any], value: Any) -> tuple[bool, Any]:
    # StopIteration must not escape into a coroutine (PEP 479) or a Future: report it.
    try:
        return False, step(value)
    except StopIteration:
        return True, None


_closing: set[asyncio.Task[Any]] = set()


def _close_generator_soon(gen: Generator[Any, Any, Any] | AsyncGenerator[Any, Any]) -> None:
    """A one-way call returned a generator: nobody will read it, close it."""
    if isinstance(gen, Generator):
        gen.close()
    else:
        task = asyncio.ensure_future(gen.aclose())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
