"""netcall under trio: the asyncio core runs on netcall's own loop thread; trio code reaches it
through the shims here.

Why not a trio implementation of the core (a backend interface with ``trio.lowlevel`` under
it)? Measured here (2 cores, Python 3.11, trio 0.35; ``benchmarks/trio_design.py``, figures in
``benchmarks/README.md``): trio itself costs a raw fd-driven ZeroMQ loop 11 % sequential and 32 %
at 64 in flight against the same loop on asyncio (5.3k vs 6.0k, 46k vs 68k calls/s), so a native
trio core could reach about 3.9k sequential and 27k at 64 in flight. This bridge measures 2.7k
sequential (two thread hops a call) and 27.3k at 64 in flight (calls in flight batch per hop):
~30 % behind on sequential calls, level under load. A backend interface would instead put an
indirection on every call_soon/call_later/future of the asyncio hot path (bound: within 5 %) and
give every core change two implementations; this way asyncio is untouched, and the hop is the
machinery the gevent and blocking adapters already use and test.

Rules of this file:

- Nothing here runs unless trio is running: this module is imported on first use under trio
  (``import netcall`` never imports trio, and never needs a running asyncio loop).
- A trio task waits for work on the loop thread with ``wait_task_rescheduled``; the asyncio
  task's done callback wakes it through the run's ``TrioToken``. No asyncio object is ever
  awaited, created or touched in the trio thread: what crosses is a coroutine object (created
  here, first run there) and, back, its finished task's outcome.
- Cancellation: a trio cancel cancels the asyncio task (the core then cancels the remote
  handler) and the trio task waits until that task has ended (``Abort.FAILED``), so by the
  time ``trio.Cancelled`` is raised the core has sent the CANCEL. A result that won the race
  is returned (trio raises the cancel at the next checkpoint).
- User code (handlers, generator steps) runs in the trio run, as system tasks in a cancel
  scope: cancelling the call on the asyncio side cancels that scope, and the handler sees
  ``trio.Cancelled``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import outcome
import trio

from . import _bridge
from . import protocol as p
from ._client.generator import ItemBatches, RemoteGenerator
from ._client.proxy import Method
from ._context import CallContext
from .client import RPCClient
from .errors import ClientClosedError
from .service import RPCService

__all__ = [
    "TrioClient",
    "TrioRemoteGenerator",
    "TrioRunner",
    "TrioService",
    "adopt_client",
    "adopt_service",
    "run_on_bridge",
]

T = TypeVar("T")


async def run_on_bridge(bridge: _bridge.Bridge, coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` as a task on the bridge loop; wait for it here, trio-natively.

    Raises:
        whatever ``coro`` raises; ``trio.Cancelled`` when this trio task is cancelled (the
        asyncio task is cancelled and has ended by then); ClientClosedError when the loop
        thread stopped.
    """
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    tasks: list[asyncio.Task[T]] = []
    cancel: list[Any] = []  # raise_cancel, once trio asked to abort

    def done(atask: asyncio.Task[T]) -> None:  # on the loop thread
        try:
            token.run_sync_soon(_resume, task, atask, cancel)
        except trio.RunFinishedError:  # nobody waits any more
            pass

    try:
        await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        coro.close()  # never started: nothing to cancel remotely
        raise
    bridge._start(coro, tasks, done)

    def abort(raise_cancel: Any) -> trio.lowlevel.Abort:
        cancel.append(raise_cancel)
        bridge.call_soon(_bridge.cancel_all, tasks)
        # Wait for the asyncio task to end: its cancellation reached the core (the remote
        # handler is being cancelled) before trio.Cancelled is raised here.
        return trio.lowlevel.Abort.FAILED

    result: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return result


def _resume(task: Any, atask: asyncio.Task[Any], cancel: list[Any]) -> None:
    """In the trio run: wake ``task`` with ``atask``'s outcome."""
    if atask.cancelled():
        if cancel:
            trio.lowlevel.reschedule(task, outcome.capture(cancel[0]))
        else:
            err = ClientClosedError("the call was cancelled: the netcall loop stopped")
            trio.lowlevel.reschedule(task, outcome.Error(err))
        return
    exc = atask.exception()
    if exc is not None:
        trio.lowlevel.reschedule(task, outcome.Error(exc))
    else:
        trio.lowlevel.reschedule(task, outcome.Value(atask.result()))


# ----------------------------------------------------------------------------- service side


class TrioRunner:
    """Runs user code of a service (handlers, generator steps and closes) in a trio run, from
    the bridge loop: ``await runner(fn)`` there calls ``fn()`` as a trio system task (awaiting
    its result if it is awaitable) in a copy of the caller's context, in a cancel scope that
    cancelling the awaiting asyncio task cancels.

    Created in the trio run (it captures its token).
    """

    __slots__ = ("token",)

    #: All in one trio run: a broker's PING waits for a no-op to run there (Runner.one_thread).
    one_thread = True

    def __init__(self) -> None:
        self.token = trio.lowlevel.current_trio_token()

    async def __call__(self, fn: Callable[[], Any]) -> Any:  # on the bridge loop
        loop = asyncio.get_running_loop()
        # Settled once, by the trio side, when the user's code has ended (or never started).
        fut: asyncio.Future[Any] = loop.create_future()
        ctx = contextvars.copy_context()  # current_call() inside the handler
        scope = trio.CancelScope()

        def spawn() -> None:  # in the trio run
            if scope.cancel_called:  # cancelled before it started
                loop.call_soon_threadsafe(_settle, fut, False, None)
                return
            trio.lowlevel.spawn_system_task(
                _run_user_code, fn, scope, fut, loop, name=_name_of(fn), context=ctx
            )

        try:
            self.token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            raise ClientClosedError("the trio run serving this service has ended") from None
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not fut.done():
                try:
                    self.token.run_sync_soon(scope.cancel)
                except trio.RunFinishedError:
                    raise asyncio.CancelledError() from None
                # Wait until the trio side has unwound: the core may close a generator next,
                # which must not find it still running.
                try:
                    await asyncio.shield(fut)
                except BaseException:
                    pass
            raise


def _name_of(fn: Callable[[], Any]) -> str:
    inner = getattr(fn, "func", fn)
    return f"netcall handler {getattr(inner, '__qualname__', inner)!r}"


async def _run_user_code(
    fn: Callable[[], Any],
    scope: trio.CancelScope,
    fut: asyncio.Future[Any],
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A system task: never raises (an escaping exception would crash the trio run)."""
    ok, value = False, None
    with scope:
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
            ok = True
        except trio.Cancelled:  # from the core, or the run is ending: settled as cancelled
            value = None
        except StopIteration:  # cannot travel in a Future
            value = RuntimeError("the handler raised StopIteration")
        except BaseException as exc:  # KeyboardInterrupt, SystemExit...: still an answer
            value = exc
    try:
        loop.call_soon_threadsafe(_settle, fut, ok, value)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    elif value is None:
        fut.cancel()
    else:
        fut.set_exception(value)


# ----------------------------------------------------------------------------- client side

_BATCH = 256  # stream items a trio reader takes over from the loop thread at once


_classes: dict[tuple[type, type], type] = {}


def _adopted_class(mixin: type, cls: type) -> type:
    """``cls`` with ``mixin`` in front (a user's subclass keeps its own methods)."""
    if issubclass(cls, mixin):
        return cls
    key = (mixin, cls)
    sub = _classes.get(key)
    if sub is None:
        ns = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
        sub = _classes[key] = type(cls.__name__, (mixin, cls), ns)
    return sub


def adopt_client(client: RPCClient) -> None:
    """Move a client that was never used to netcall's loop thread; from now on its class has
    :class:`TrioClient` in front (called in the trio run: when the client is made there, or at
    its first call)."""
    bridge = _bridge.acquire()
    try:
        client._trio_bridge = bridge  # type: ignore[attr-defined]
        client.__class__ = _adopted_class(TrioClient, type(client))
        # Method proxies made so far hold the core's _invoke: make them again.
        for name in [k for k, v in vars(client).items() if isinstance(v, Method)]:
            del client.__dict__[name]
        bridge.call(RPCClient._start, client)
    except BaseException:
        _bridge.release(bridge)
        raise
    bridge.closers[id(client)] = functools.partial(RPCClient.close, client)


class TrioClient(RPCClient):
    """What an :class:`~netcall.RPCClient` made or first used under trio becomes (never
    constructed directly): the core client lives on netcall's loop thread, and every call
    hops there and back (:func:`run_on_bridge`). The public API is the core's."""

    _trio_bridge: _bridge.Bridge

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
        core = RPCClient._invoke(
            self, method, args, kwargs, timeout, oneway, prefetch, metadata, parent, chained
        )
        if chained:  # from the client's middleware: already on the loop thread
            return await core
        bridge = self._trio_bridge
        result = await run_on_bridge(bridge, core)
        if isinstance(result, RemoteGenerator):
            return TrioRemoteGenerator(result, bridge)
        return result

    def connect(self, urls: str | Iterable[str], only: bool = False) -> None:
        self._trio_bridge.call(super().connect, urls, only)

    def disconnect(self, url: str) -> None:
        self._trio_bridge.call(super().disconnect, url)

    def close(self) -> None:
        """Close the client (blocks this thread until the loop thread has closed it)."""
        bridge = self._trio_bridge
        if not self.closed and bridge.alive:
            bridge.call(super().close)
        self._release(bridge, wait=True)

    async def aclose(self) -> None:
        """Close the client."""
        bridge = self._trio_bridge
        if not self.closed and bridge.alive:
            with trio.CancelScope(shield=True):
                await run_on_bridge(bridge, _bridge._call_async(super().close, (), {}))
        self._release(bridge, wait=False)

    def _release(self, bridge: _bridge.Bridge, wait: bool) -> None:
        if bridge.closers.pop(id(self), None) is not None:
            _bridge.release(bridge, wait=wait)


def adopt_service(service: RPCService) -> None:
    """Serve ``service`` (never started) from netcall's loop thread, its handlers in this trio
    run; from now on its class has :class:`TrioService` in front."""
    bridge = _bridge.acquire()
    service._trio_bridge = bridge  # type: ignore[attr-defined]
    service.__class__ = _adopted_class(TrioService, type(service))
    bridge.closers[id(service)] = functools.partial(RPCService.close, service)


class TrioService(RPCService):
    """What an :class:`~netcall.RPCService` started under trio becomes (never constructed
    directly): its socket and protocol logic run on netcall's loop thread, every handler,
    generator step and generator close runs in the trio run that started it (a system task
    in a cancel scope: a cancelled call is ``trio.Cancelled`` in the handler).

    ``serve()`` cancelled (a nursery's scope) closes the service: structured concurrency
    leaves nothing running behind the scope.
    """

    _trio_bridge: _bridge.Bridge

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if self.closed:
            raise RuntimeError("the service is closed")
        if self._driver is not None:
            return
        runner = TrioRunner()
        # Sync handlers run in the trio run too, or in the service's executor when it has one,
        # from the loop thread as under asyncio: run_in_executor measured 53k no-op calls/s
        # with 64 in flight against 18-24k for anyio.to_thread.run_sync with a CapacityLimiter.
        self._user_code.plug(runner, runner)
        self._trio_bridge.call(super().start, self._trio_bridge.loop)

    async def _until_stopped(self) -> None:
        try:
            await run_on_bridge(self._trio_bridge, RPCService._until_stopped(self))
        except BaseException:  # cancelled: nothing keeps running behind the scope
            self.close()
            raise
        self._release()

    async def stop(self, grace: float | None = None) -> None:
        bridge = self._trio_bridge
        if not self.closed and bridge.alive:
            try:
                await run_on_bridge(bridge, super().stop(grace))
            except BaseException:
                self.close()
                raise
        self._release()

    def close(self) -> None:
        bridge = self._trio_bridge
        if bridge.in_loop_thread():  # from the core itself (a cancelled serve() closes)
            super().close()  # the trio side releases the bridge when its wait ends
            return
        if not self.closed and bridge.alive:
            bridge.call(super().close)
        self._release()

    def bind(self, urls: str | Iterable[str], only: bool = False) -> None:
        self._trio_bridge.call(super().bind, urls, only)

    def connect(self, urls: str | Iterable[str], *args: Any, **kwargs: Any) -> None:
        self._trio_bridge.call(super().connect, urls, *args, **kwargs)

    def disconnect(self, url: str) -> None:
        self._trio_bridge.call(super().disconnect, url)

    def unbind(self, url: str) -> None:
        self._trio_bridge.call(super().unbind, url)

    def bind_ports(
        self, ip: str = "127.0.0.1", port: int = 0, *, min_port: int = 49152, max_port: int = 65535
    ) -> int:
        return self._trio_bridge.call(
            super().bind_ports, ip, port, min_port=min_port, max_port=max_port
        )

    def _release(self) -> None:
        bridge = self._trio_bridge
        if bridge.closers.pop(id(self), None) is not None:
            _bridge.release(bridge, wait=False)


class TrioRemoteGenerator(RemoteGenerator):
    """A :class:`~netcall.RemoteGenerator` for trio code: the same object model, every step a
    hop to the core generator on the loop thread. A prefetching stream takes up to 256
    buffered items per hop (:class:`ItemBatches`) and decodes them here, one per step."""

    __slots__ = ("_batches", "_bridge", "_core")

    def __init__(self, core: RemoteGenerator, bridge: _bridge.Bridge) -> None:
        super().__init__(core._state)
        # The core generator closes the stream when dropped (its finalizer), with this one.
        self._core = core
        self._bridge = bridge
        self._batches = ItemBatches(core)

    def __aiter__(self) -> TrioRemoteGenerator:
        if self._state.state is p.ClientStreamState.LOCKSTEP:
            self._bridge.call(RemoteGenerator.__aiter__, self._core)
        return self

    def __anext__(self) -> Awaitable[Any]:  # type: ignore[override]
        return self._trio_anext()

    async def _trio_anext(self) -> Any:
        batches = self._batches
        if batches:
            await trio.lowlevel.checkpoint_if_cancelled()
            return batches.pop()
        payloads, item = await run_on_bridge(self._bridge, _next_on_loop(self._core, batches))
        if payloads is None:
            return item
        batches.fill(payloads)
        return batches.pop()

    async def asend(self, value: Any) -> Any:
        return await run_on_bridge(self._bridge, self._core.asend(value))

    async def athrow(
        self,
        typ: type[BaseException] | BaseException,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> Any:
        return await run_on_bridge(self._bridge, self._core.athrow(typ, val, tb))

    async def aclose(self) -> None:
        self._batches.clear()
        if self._state.state is p.ClientStreamState.DONE:
            return
        await run_on_bridge(self._bridge, self._core.aclose())

    def __del__(self) -> None:
        pass  # the core generator's finalizer closes the stream


async def _next_on_loop(gen: RemoteGenerator, batches: ItemBatches) -> tuple[Any, Any]:
    """On the loop: ``(payloads, None)`` for a prefetching stream, ``(None, item)`` for a
    lock-step one."""
    fetch = batches.fetch(_BATCH)
    if fetch is None:
        return None, await gen.__anext__()
    return await fetch, None
