"""A CALL arrives: admission (stopping, serializer, method, deadline, request id, limit),
the call's :class:`~netcall.CallContext`, running the handler, and its answer.

Two hooks for later work live here, each in exactly one place: :meth:`Dispatcher.context`
builds every CallContext (streams reuse the call's), and :meth:`Dispatcher.invoke` is the
only place a handler is called (middleware, thread offload).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import types
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .. import protocol as p
from .._context import CallContext, TaskStarting, _current
from .._deadline import MIN_REMAINING, Deadline
from .._eager import eager, reraise, run_to_end, start_task
from .._metadata import check_metadata
from .._middleware import ServiceMiddleware
from .._payload import buffers_loader, dumper
from .._ratelog import RateLimitedLog
from .._reactor import SocketDriver
from .._timers import TimeoutQueues
from ..errors import SerializationError, remote_type_name
from ..serializers import Serializer
from .chain import ServiceChain, is_stream
from .registry import Handler, HandlerRegistry
from .replies import Replies
from .runner import Runner
from .streams import Producers, close_generator_soon, is_generator

__all__ = ["Dispatcher"]

log = logging.getLogger("netcall")
_debug = log.isEnabledFor
_current_task = asyncio.current_task

# What inspect.isgenerator / isasyncgen test, as one lookup (neither type can be subclassed).
_GENERATORS = frozenset({types.GeneratorType, types.AsyncGeneratorType})
_SEQUENCES = (list, tuple)  # arguments (a tuple, not list | tuple: built once, checked faster)


class Dispatcher:
    """Runs calls for one service. ``calls`` holds the running ones by (peer, request id)."""

    def __init__(
        self,
        registry: HandlerRegistry,
        replies: Replies,
        runner: Runner,
        producers: Producers,
        serializer: Serializer,
        max_concurrent: int | None,
        middleware: Sequence[ServiceMiddleware] = (),
    ) -> None:
        self._registry = registry
        self._replies = replies
        self._runner = runner
        self._producers = producers
        self._open_streams = producers.by_key
        self._handlers = registry.by_name
        self._serializer = serializer
        self._load = buffers_loader(serializer)
        self._dump = dumper(serializer)
        self._max_concurrent = max_concurrent
        #: The service's middleware (empty: handlers are called directly).
        self.chain = ServiceChain(runner, middleware)
        # Handler errors are logged, but a client cannot flood the log with them.
        self.log = producers.log = RateLimitedLog(log)
        self.calls: dict[tuple[bytes, int], asyncio.Future[Any]] = {}
        # Calls the client cancelled: their task may already be done, its done-callback not yet
        # run (cancel() is then a no-op): that callback must not answer or open a stream.
        self._abandoned: set[tuple[bytes, int]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        # Handler deadlines (a handler still running at its deadline is cancelled).
        self._timeouts: TimeoutQueues | None = None
        # The socket driver: a CURVE service's holds the key of the message being handled.
        self.keys: SocketDriver | None = None
        self.refusing: str | None = None  # why new calls are refused (the service is stopping)
        #: Whether a peer (a broker, a client that binds) sends a call refused as busy to
        #: another service (then a call refused while stopping is refused as busy).
        self.reroutes: Callable[[bytes], bool] = lambda peer: False
        self.name = "RPCService"  # the service's label in logs

    # -- hooks ----------------------------------------------------------------------------

    def context(
        self, peer: bytes, msg: p.Call, deadline: Deadline | None, args: Any, kwargs: Any
    ) -> CallContext:
        """The one place a call's context is built."""
        key = self.peer_key(msg)
        return CallContext(msg.method, peer, deadline, msg.oneway, msg.metadata, key, args, kwargs)

    def peer_key(self, msg: p.Call) -> str | None:
        """The CURVE key of the caller whose message is being handled (None without CURVE):
        the one a broker this service connected to vouches for (the inbox removes that
        metadata from anyone else), else the key of the connection itself."""
        metadata = msg.metadata
        if metadata and p.META_PEER_KEY in metadata:
            return metadata[p.META_PEER_KEY]
        keys = self.keys
        return None if keys is None else keys.peer_key

    def invoke(
        self,
        handler: Handler,
        args: Any,
        kwargs: dict[str, Any],
        ctx: CallContext,
        to_end: bool = False,
    ) -> Any:
        """The one place a handler is called: its result (sync handler run inline; with
        ``to_end``, an async handler that never suspends, run to its end here), or an
        awaitable for it (async handler, sync handler sent to the runner, middleware).
        ``on_call`` runs it in a copy of the context when it runs the handler inline."""
        if self.chain.middleware:
            return self.chain.run(handler, args, kwargs, ctx)
        runner = self._runner
        if handler.is_async:
            if to_end:
                return run_to_end(self.loop, handler.fn(*args, **kwargs))  # type: ignore[arg-type]
            if runner.async_hook is None:
                return handler.fn(*args, **kwargs)
            return runner.async_hook(functools.partial(handler.fn, *args, **kwargs))
        if runner.inline:
            return handler.fn(*args, **kwargs)
        return runner.run(functools.partial(handler.fn, *args, **kwargs))

    # -- admission ------------------------------------------------------------------------

    def at_limit(self, peer: bytes, rid: int) -> bool:
        """Refuse the call (and say so) when max_concurrent calls and streams are running, or
        the client's own limit of them (Limits.max_per_client)."""
        limit = self._max_concurrent
        if limit is not None and len(self.calls) + len(self._producers) >= limit:
            self._replies.refuse(peer, rid, p.ERR_BUSY, f"the service is at its limit of {limit}")
            return True
        guard = self._replies.guard
        if guard.over_limit(peer):
            self._replies.refuse(
                peer,
                rid,
                p.ERR_BUSY,
                f"this client has {guard.limits.max_per_client} calls and streams running",
            )
            return True
        return False

    def _streams_full(self, peer: bytes, rid: int) -> bool:
        """Refuse a stream beyond the client's own limit (Limits.max_streams_per_client)."""
        guard = self._replies.guard
        if not guard.streams_full(peer):
            return False
        limit = guard.limits.max_streams_per_client
        self._replies.refuse(peer, rid, p.ERR_BUSY, f"this client has {limit} streams open")
        return True

    def on_call(self, peer: bytes, msg: p.Call) -> None:
        rid = msg.id
        replies = self._replies
        reason = self._admit(peer, msg)
        if reason is not None:
            replies.refuse(peer, rid, *reason)
            return
        handler = self._handlers[msg.method]
        if handler.allow is not None and not handler.permits(self.peer_key(msg)):
            replies.refuse(peer, rid, "PermissionError", f"this caller may not call {msg.method!r}")
            return
        deadline = None
        if msg.timeout:  # the deadline starts now, on this host's clock (_admit: not spent)
            deadline = Deadline.after(msg.timeout)
        guard = replies.guard
        try:
            if msg.buffers:
                args = self._load(msg.args, msg.buffers)
                kwargs = self._load(msg.kwargs, msg.buffers) if msg.kwargs is not None else {}
            else:
                loads = self._serializer.loads
                args = loads(msg.args)
                kwargs = loads(msg.kwargs) if msg.kwargs is not None else {}
        except SerializationError as exc:
            guard.malformed(peer, f"bad arguments: {exc}")
            replies.refuse(peer, rid, p.ERR_SERIALIZATION, f"bad arguments: {exc}")
            return
        if (
            not isinstance(args, _SEQUENCES)
            or not isinstance(kwargs, dict)
            or (kwargs and not all(isinstance(k, str) for k in kwargs))
        ):
            guard.malformed(peer, "arguments are not a list and a map")
            replies.refuse(peer, rid, p.ERR_PROTOCOL, "arguments must be a list and a map")
            return
        if msg.flags & p.FLAG_ONEWAY:
            replies.send(peer, p.Ack(rid).to_frames())
        middleware = self.chain.middleware
        runner = self._runner
        if handler.is_async:
            # One with no await cannot suspend: run to its end here, as a def handler is (no
            # task; under a host task: see _eager.run_to_end), unless a task is current or
            # the loop has a task factory (which sees every handler's task, as on 3.11).
            inline = to_end = (
                handler.never_suspends
                and runner.async_hook is None
                and not middleware
                and _current_task(self.loop) is None
                and self.loop.get_task_factory() is None  # type: ignore[union-attr]
            )
        else:
            inline = runner.inline and not middleware
            to_end = False
        if not inline and self.at_limit(peer, rid):
            return
        guard.counts["calls"] += 1
        ctx = self.context(peer, msg, deadline, args, kwargs)
        if _debug(logging.DEBUG):
            log.debug("call %s from %s", msg.method, peer.hex())
        token = _current.set(ctx)
        try:
            if inline:
                # A handler run here (sync, or async with no await) runs in a copy of this
                # context, as a task or a thread would run it: what it sets there must not
                # reach the calls after it (other callers'). So does the task of an awaitable
                # a sync one returns: one call, one context.
                call_context = contextvars.copy_context()
                result = call_context.run(self.invoke, handler, args, kwargs, ctx, to_end)
                if to_end or not inspect.isawaitable(result):  # the fast path: no task
                    self._finish(peer, msg, ctx, result)
                    return
                task = call_context.run(_start_task, self.loop, result, ctx)  # type: ignore[arg-type]
            else:
                # The task runs in a copy of this context, where current_call() is this call.
                result = self.invoke(handler, args, kwargs, ctx)
                task = _start_task(self.loop, result, ctx)  # type: ignore[arg-type]
        except Exception as exc:
            ctx._task = None
            self._handler_failed(peer, msg, handler, args, kwargs, exc)
            return
        except asyncio.CancelledError:  # from a handler run here: as for a cancelled task
            ctx._task = None
            if self.refusing is not None:
                replies.refuse(peer, rid, p.ERR_SERVICE_STOPPING, self.refusing)
            return
        except BaseException as exc:
            # KeyboardInterrupt or SystemExit from a handler run here (inline, or the eager
            # first step on 3.12+): answered now, then raised from the loop's next turn, as
            # from a task's step (the answer leaves with this wake-up's burst first). Any
            # other (GeneratorExit, a BaseException of the user's) ends there, as in a task.
            ctx._task = None
            replies.refuse(peer, rid, remote_type_name(exc), "the handler was interrupted")
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                self.loop.call_soon(reraise, exc)  # type: ignore[union-attr]
            return
        finally:
            _current.reset(token)
        if task.done():
            # Its first step, run at once (an eager start), finished the handler: answer now.
            # Nothing recorded, no done-callback (a turn of the loop) and no deadline timer.
            self._call_done(peer, msg, ctx, handler, args, kwargs, None, task)
            return
        ctx._task = task
        timer = None
        if deadline is not None:
            timeouts = self._timeouts
            if timeouts is None or timeouts.loop is not self.loop:
                assert self.loop is not None
                timeouts = self._timeouts = TimeoutQueues(self.loop, _running, _cancel)
            # From the deadline counted at arrival: the handler is cancelled before its own
            # nested calls (bound by that same deadline) time out.
            if not timeouts.add(msg.timeout, weakref.ref(task), deadline.remaining()):
                timer = timeouts.loop.call_later(deadline.remaining(), task.cancel)
        self.calls[(peer, rid)] = task
        guard.loaded(peer)
        task.add_done_callback(
            functools.partial(self._call_done, peer, msg, ctx, handler, args, kwargs, timer)
        )

    def _admit(self, peer: bytes, msg: p.Call) -> tuple[str, str] | None:
        """Why the call is refused (error name, message), or None to run it."""
        if self.refusing is not None:
            # A broker, or a client that binds, sends a call refused as busy to another
            # service: this one never started (the peer sent it before it read the BYE).
            busy = self.reroutes(peer)
            return (p.ERR_BUSY if busy else p.ERR_SERVICE_STOPPING), self.refusing
        if msg.serializer != self._serializer.name:
            return (
                p.ERR_SERIALIZER_MISMATCH,
                f"the service uses the {self._serializer.name!r} serializer, "
                f"the client sent {msg.serializer!r}",
            )
        if msg.method not in self._handlers:
            return p.ERR_METHOD_NOT_FOUND, f"no method named {msg.method!r}"
        if msg.timeout and msg.timeout < MIN_REMAINING:
            # A client whose time ran out sends a remaining time below a microsecond.
            return p.ERR_TIMEOUT, "the call's deadline passed before it ran"
        key = (peer, msg.id)
        if key in self.calls or key in self._open_streams:
            return p.ERR_PROTOCOL, f"request id {msg.id} is in use"
        if msg.metadata:
            try:
                check_metadata(msg.metadata)
            except ValueError as exc:  # a client that skipped its own checks
                return p.ERR_PROTOCOL, f"bad metadata: {exc}"
        return None

    def cancel(self, peer: bytes, rid: int) -> bool:
        """CANCEL for a running call: cancel its task; False when there is none."""
        key = (peer, rid)
        task = self.calls.get(key)
        if task is None:
            return False
        task.cancel()
        self._abandoned.add(key)
        return True

    # -- answers --------------------------------------------------------------------------

    def _call_done(
        self,
        peer: bytes,
        msg: p.Call,
        ctx: CallContext,
        handler: Handler,
        args: Any,
        kwargs: dict[str, Any],
        timer: asyncio.TimerHandle | None,
        task: asyncio.Future[Any],
    ) -> None:
        """A handler task ended (also when it was cancelled before it ever ran, or ended in
        its eager first step, before anything was recorded): forget it and answer."""
        ctx._task = None  # the task's context holds ctx: no reference cycle left behind
        key = (peer, msg.id)
        if self.calls.pop(key, None) is not None:
            self._replies.guard.unloaded(peer)
        if timer is not None:
            timer.cancel()
        if key in self._abandoned:
            self._abandoned.discard(key)
            if not task.cancelled() and task.exception() is None and self._is_stream(task.result()):
                close_generator_soon(task.result())
            return
        if task.cancelled():
            if self.refusing is not None:
                self._replies.refuse(
                    peer,
                    msg.id,
                    p.ERR_SERVICE_STOPPING,
                    "the service stopped before the call finished",
                )
            # Otherwise the client cancelled or the deadline passed: nobody waits for a reply.
            return
        exc = task.exception()
        if exc is not None:
            if isinstance(exc, Exception):
                self._handler_failed(peer, msg, handler, args, kwargs, exc)
            else:  # KeyboardInterrupt, SystemExit, GeneratorExit from a killed greenlet...
                self._replies.refuse(
                    peer, msg.id, remote_type_name(exc), "the handler was interrupted"
                )
            return
        self._finish(peer, msg, ctx, task.result())

    def _handler_failed(
        self,
        peer: bytes,
        msg: p.Call,
        handler: Handler,
        args: Any,
        kwargs: dict[str, Any],
        exc: Exception,
    ) -> None:
        self._replies.guard.counts["errors"] += 1
        if not msg.oneway and isinstance(exc, TypeError) and not _binds(handler.fn, args, kwargs):
            self._replies.refuse(
                peer, msg.id, "TypeError", f"bad arguments for {handler.name!r}: {exc}"
            )
            return
        # A handler interrupted (Ctrl-C or exit in its greenlet) is not a handler bug: the
        # interruption is reported where it lands (serve()); here it is only a DEBUG line.
        cause = exc.__cause__
        interrupted = cause is not None and not isinstance(cause, Exception)
        self.log(
            "handler error",
            logging.DEBUG if interrupted else logging.WARNING,
            "%s%s raised %s (client %s)",
            "one-way call " if msg.oneway else "",
            handler.name,
            type(exc).__name__,
            peer.hex(),
            exc_info=exc,
        )
        if not msg.oneway:
            self._replies.error(peer, msg.id, exc)

    def _is_stream(self, result: Any) -> bool:
        return is_generator(result) or (bool(self.chain.middleware) and is_stream(result))

    def _finish(self, peer: bytes, msg: p.Call, ctx: CallContext, result: Any) -> None:
        if type(result) in _GENERATORS or (self.chain.middleware and is_stream(result)):
            if msg.oneway or self.at_limit(peer, msg.id) or self._streams_full(peer, msg.id):
                close_generator_soon(result)
                return
            # A stream's steps have no deadline of their own (each client step has a timeout).
            self._producers.open(peer, msg, result, ctx.without_deadline())
            return
        if msg.flags & p.FLAG_ONEWAY:
            return
        try:
            buffers: list[Any] = []
            payload = self._dump(result, buffers)
        except SerializationError as exc:
            self._replies.refuse(
                peer,
                msg.id,
                p.ERR_SERIALIZATION,
                f"cannot serialize the result of {msg.method!r}: {exc}",
            )
            return
        self._replies.send(peer, p.payload_frames(p.Kind.RESULT, msg.id, payload, buffers))


def _running(ref: weakref.ref[asyncio.Future[Any]]) -> bool:
    task = ref()
    return task is not None and not task.done()


def _cancel(ref: weakref.ref[asyncio.Future[Any]]) -> None:
    task = ref()
    if task is not None:
        task.cancel()


def _start_task(
    loop: asyncio.AbstractEventLoop, work: Awaitable[Any], ctx: CallContext
) -> asyncio.Future[Any]:
    # A coroutine's task runs its first step now (_eager): a handler that never suspends
    # completes without a trip through the loop. Meanwhile the call's task is "starting" (a
    # thread the step starts may make nested calls tied to it: see TaskStarting).
    if inspect.iscoroutine(work):
        if eager(loop):
            ctx._task = _starting(loop)
        return start_task(loop, work)
    return asyncio.ensure_future(work, loop=loop)


_last_starting: TaskStarting | None = None


def _starting(loop: asyncio.AbstractEventLoop) -> TaskStarting:
    # One per loop, not one per call (it holds nothing but the loop).
    global _last_starting
    starting = _last_starting
    if starting is None or starting.loop is not loop:
        starting = _last_starting = TaskStarting(loop)
    return starting


def _binds(fn: Callable[..., Any], args: Any, kwargs: dict[str, Any]) -> bool:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError:
        return False
    except ValueError:
        return True
    return True
