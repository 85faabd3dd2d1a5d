"""netcall for plain threads, under the 2014 names: a service whose sync handlers run in a
thread pool, and the blocking client.

::

    from netcall.threading import ThreadingRPCService, ThreadingRPCClient

    service = ThreadingRPCService()

    @service.register
    def echo(s):
        return s

    service.bind("tcp://127.0.0.1:5555")
    service.start()                 # returns at once; or service.serve() to block

    client = ThreadingRPCClient()
    client.connect("tcp://127.0.0.1:5555")
    client.echo("hi")               # -> "hi", blocking only this thread

Both are the core's: the service's socket lives on netcall's own asyncio loop thread (see
:mod:`netcall._bridge`), sync handlers and sync generator steps run in the service's
``executor`` (a thread pool; ``async def`` handlers run on the loop thread itself), and
:class:`ThreadingRPCClient` is :class:`~netcall.sync.SyncRPCClient`.

Under ``gevent.monkey.patch_all()`` the pool's threads are greenlets of the hub of the thread
that starts the service: jobs are handed to the pool from that hub.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _hub
from ._bridged import BridgedService
from .client import ClientOptions
from .errors import ClientClosedError
from .serializers import Serializer
from .sync import SyncRPCClient

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["DEFAULT_THREADS", "ThreadingRPCClient", "ThreadingRPCService"]

T = TypeVar("T")

#: Threads of the pool a :class:`ThreadingRPCService` makes when it is given no executor
#: (0.4.2's limit): at most this many sync handlers run at once, further calls queue.
DEFAULT_THREADS = 128


class ThreadingRPCService(BridgedService):
    """A service for threaded programs: sync handlers run in a thread pool, the socket on
    netcall's loop thread. :meth:`start` returns at once; :meth:`serve` blocks the calling
    thread until :meth:`stop` or :meth:`close` (or :meth:`shutdown`).

    Args:
        executor: the pool sync handlers run in (a :class:`concurrent.futures.Executor`);
            by default one of :data:`DEFAULT_THREADS` threads, shut down by :meth:`close`.
            A given executor is left running.
        others: as :class:`~netcall.RPCService`.
    """

    def __init__(
        self,
        serializer: str | Serializer | None = None,
        *,
        executor: concurrent.futures.Executor | None = None,
        **kwargs: Any,
    ) -> None:
        self._own_pool = executor is None
        pool = executor or concurrent.futures.ThreadPoolExecutor(
            DEFAULT_THREADS, thread_name_prefix="netcall-handler"
        )
        self._pool = pool
        self._runner = _PoolRunner(pool)
        try:
            super().__init__(serializer, handler_runner=self._runner, **kwargs)
        except BaseException:
            if self._own_pool:
                pool.shutdown(wait=False)
            raise

    def start(self, loop: Any = None) -> None:
        """Start serving on netcall's loop thread and return at once (``loop`` is ignored).

        Raises:
            RuntimeError: the service is closed.
        """
        if not self._bridge.in_loop_thread():  # (the core's serve() calls start() there)
            self._runner.port = _patched_port()
        self._start_on_loop()

    def serve(self) -> None:  # type: ignore[override]
        """Serve until :meth:`stop` or :meth:`close`, blocking the calling thread. An
        exception here (``KeyboardInterrupt``) closes the service."""
        try:
            if not (self.closed and self._driver is not None):  # else: stopped already
                self.start()
            # The core's serve(), on the loop thread, calls start() again (a no-op there).
            self._bridge.run(super(BridgedService, self).serve())
        except ClientClosedError:
            if self._released:
                # stop() from another thread finished first and released netcall's loop
                # thread, which ended this wait: the service stopped, as asked.
                return
            self.close()
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close at once: cancel running calls (a handler already running in a thread runs to
        its end; its result is dropped), close the socket."""
        super().close()

    def _on_finished(self) -> None:
        if self._own_pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ThreadingRPCService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ThreadingRPCClient(SyncRPCClient):
    """The blocking client (:class:`~netcall.sync.SyncRPCClient`) under its 2014 name.

    ``executor`` is accepted for 0.4.2 code and unused: the client's work runs on netcall's
    loop thread, each call blocking only its caller.
    """

    def __init__(
        self,
        serializer: str | Serializer | None = None,
        *,
        executor: Any = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(serializer, **options)


def _patched_port() -> _hub.HubPort | None:
    """The calling thread's hub port when ``threading`` is monkey-patched (the pool's threads
    are then greenlets of that hub), else ``None``."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    import gevent

    return _hub.port_for(gevent.get_hub())


class _PoolRunner:
    """The service's ``handler_runner``: a sync call runs in the pool, submitted from the loop
    thread, or, under monkey-patching, from the hub whose greenlets the pool's threads are."""

    __slots__ = ("pool", "port")

    def __init__(self, pool: concurrent.futures.Executor) -> None:
        self.pool = pool
        self.port: _hub.HubPort | None = None  # set by start()

    async def __call__(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()  # current_call() inside the handler
        port = self.port
        if port is None:
            return await loop.run_in_executor(self.pool, ctx.run, _no_stop_iteration, fn)
        fut: asyncio.Future[T] = loop.create_future()
        job: list[concurrent.futures.Future[T]] = []

        def submit() -> None:  # in a greenlet: starting a pool thread waits for it
            if fut.done():
                return
            try:
                cf = self.pool.submit(ctx.run, _no_stop_iteration, fn)
            except RuntimeError:
                # The pool shut down (the service closed) before this greenlet ran: what is
                # left is closing generators, whose finally blocks run here instead.
                cf = concurrent.futures.Future()
                try:
                    cf.set_result(ctx.run(_no_stop_iteration, fn))
                except BaseException as exc:
                    cf.set_exception(exc)
            job.append(cf)
            cf.add_done_callback(functools.partial(_settle_on, loop, fut))

        port.submit(lambda: _spawn(submit))
        try:
            return await fut
        except asyncio.CancelledError:
            port.submit(lambda: _spawn(lambda: [cf.cancel() for cf in job]))
            raise


def _settle_on(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[T], cf: Any) -> None:
    try:
        loop.call_soon_threadsafe(_settle, fut, cf)
    except RuntimeError:  # the loop is closed (the service too): nobody waits for the answer
        pass


def _spawn(fn: Callable[[], Any]) -> None:
    import gevent

    gevent.spawn(fn)


def _no_stop_iteration(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except StopIteration:
        # StopIteration cannot be put in a Future: a handler that raises it gets an error.
        raise RuntimeError("the handler raised StopIteration") from None


def _settle(fut: asyncio.Future[T], cf: concurrent.futures.Future[T]) -> None:
    if fut.done():
        return
    if cf.cancelled():
        fut.cancel()
        return
    exc = cf.exception()
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(cf.result())
