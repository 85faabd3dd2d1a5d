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
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import zmq

from . import _bridge
from .serializers import Serializer
from .service import RPCService
from .sync import SyncRPCClient

__all__ = ["ThreadingRPCClient", "ThreadingRPCService"]

#: Threads of the pool a :class:`ThreadingRPCService` makes when it is given no executor
#: (0.4.2's limit): at most this many sync handlers run at once, further calls queue.
DEFAULT_THREADS = 128


class ThreadingRPCService(RPCService):
    """A service for threaded programs: sync handlers run in a thread pool, the socket on
    netcall's loop thread. :meth:`start` returns at once; :meth:`serve` blocks the calling
    thread until :meth:`stop` or :meth:`close`.

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
        context: zmq.Context[Any] | None = None,
        executor: concurrent.futures.Executor | None = None,
        **kwargs: Any,
    ) -> None:
        self._own_executor = executor is None
        if executor is None:
            executor = concurrent.futures.ThreadPoolExecutor(
                DEFAULT_THREADS, thread_name_prefix="netcall-handler"
            )
        super().__init__(serializer, context=context, executor=executor, **kwargs)
        self._bridge = _bridge.acquire()
        self._bridge.closers[id(self)] = super().close
        self._released = False

    # -- endpoints (the socket belongs to the loop thread) ----------------------------------

    def bind(self, urls: str | Iterable[str], only: bool = False) -> None:
        self._bridge.call(super().bind, urls, only)

    def unbind(self, url: str) -> None:
        self._bridge.call(super().unbind, url)

    def bind_ports(
        self, ip: str = "127.0.0.1", port: int = 0, *, min_port: int = 49152, max_port: int = 65535
    ) -> int:
        return self._bridge.call(super().bind_ports, ip, port, min_port=min_port, max_port=max_port)

    # -- running --------------------------------------------------------------------------

    def start(self, loop: Any = None) -> None:
        """Start serving on netcall's loop thread and return at once (``loop`` is ignored).

        Raises:
            RuntimeError: the service is closed.
        """
        if self._bridge.in_loop_thread():  # from the core's serve()
            super().start(self._bridge.loop)
        else:
            self._bridge.call(super().start, self._bridge.loop)

    def serve(self) -> None:  # type: ignore[override]
        """Serve until :meth:`stop` or :meth:`close`, blocking the calling thread. An
        exception here (``KeyboardInterrupt``) closes the service."""
        try:
            self.start()
            self._bridge.run(super().serve())
        except BaseException:
            self.close()
            raise

    def stop(self, grace: float | None = None) -> None:  # type: ignore[override]
        """Stop gracefully (see :meth:`RPCService.stop`), blocking until done."""
        if not self._released and self._bridge.alive and not self.closed:
            self._bridge.run(super().stop(grace))
        self._finished()

    def close(self) -> None:
        """Close at once: cancel running calls (a handler already running in a thread runs to
        its end; its result is dropped), close the socket."""
        if not self._released and self._bridge.alive and not self.closed:
            self._bridge.call(super().close)
        self._finished()

    shutdown = close  # the 2014 spelling

    def _finished(self) -> None:
        if self._released:
            return
        self._released = True
        self._bridge.closers.pop(id(self), None)
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        _bridge.release(self._bridge)

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

    def __init__(self, *args: Any, executor: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
