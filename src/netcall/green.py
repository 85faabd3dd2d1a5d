"""netcall for gevent: a client that blocks only the calling greenlet, and a service whose sync
handlers run as greenlets. Works with and without ``gevent.monkey.patch_all()``.

::

    from netcall.green import GeventRPCService, GeventRPCClient

    service = GeventRPCService()

    @service.register
    def echo(s):
        gevent.sleep(0.1)          # other handlers keep running
        return s

    service.bind("tcp://127.0.0.1:5555")
    service.start().join()         # or: service.serve()

    client = GeventRPCClient()
    client.connect("tcp://127.0.0.1:5555")
    client.echo("hi")              # -> "hi", blocking only this greenlet

Both sit on the asyncio core, on netcall's own loop (see :mod:`netcall._bridge`). A lone
greenlet calling runs that loop itself, a turn at a time; otherwise, and always once a
service uses it, netcall's own loop thread runs it: the service's socket lives there, and
each sync handler call or sync generator step is shipped to the gevent hub of the thread
that started the service, to run as a greenlet. ``async def`` handlers run on the loop
thread itself.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
import gevent.event

from . import _bridge
from ._bridged import BridgedService
from .client import ClientOptions
from .serializers import Serializer
from .sync import SyncRPCClient

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "GeventRPCClient",
    "GeventRPCService",
    "GreenRPCClient",
    "GreenRPCService",
    "check_green_env",
]

T = TypeVar("T")


#: The ``green_env`` values netcall 0.4.2 code may pass; only gevent is supported.
GREEN_ENVS = (None, "gevent")


def check_green_env(green_env: str | None) -> None:
    """Accept 0.4.2's ``green_env="gevent"`` (or ``None``).

    Raises:
        ValueError: any other backend (eventlet, greenhouse...): not supported.
    """
    if green_env not in GREEN_ENVS:
        raise ValueError(
            f"green_env={green_env!r} is not supported: netcall runs on gevent only "
            '(pass green_env="gevent", or nothing)'
        )


class GeventRPCClient(SyncRPCClient):
    """A client whose calls block only the calling greenlet (any number may call at once).

    The same API as :class:`~netcall.sync.SyncRPCClient`: ``client.name(...)``,
    ``client.call(name, ..., timeout=...)``, dotted names, ``connect``, ``close``; a remote
    generator is a real generator with ``next``, ``send``, ``throw`` and ``close``.

    ``green_env`` and ``executor`` are accepted for netcall 0.4.2 code: ``green_env`` must be
    ``"gevent"`` (or ``None``), ``executor`` is unused.

    Raises:
        ValueError: ``green_env`` names another backend.
    """

    _background = False  # a lone greenlet runs netcall's loop itself (netcall._bridge)

    def __init__(
        self,
        serializer: str | Serializer | None = None,
        *,
        green_env: str | None = None,
        executor: Any = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        check_green_env(green_env)
        super().__init__(serializer, **options)


class GeventRPCService(BridgedService):
    """A service for gevent programs: sync handlers (and sync generator steps) run as
    greenlets on the hub of the thread that calls :meth:`start`, so one handler's
    ``gevent.sleep`` never stalls another.

    Registration is the core's (``register``/``task``, ``register_object``, public methods of
    a subclass). :meth:`start` returns a greenlet that finishes when the service stops
    (``service.start().join()`` serves forever); :meth:`serve` blocks the calling greenlet
    until then; :meth:`stop` and :meth:`close` (or :meth:`shutdown`) block until done.

    ``green_env`` and ``executor`` are accepted for netcall 0.4.2 code: ``green_env`` must be
    ``"gevent"`` (or ``None``); ``executor`` is unused (each call runs as a greenlet).

    Raises:
        ValueError: ``green_env`` names another backend.
    """

    def __init__(
        self, *args: Any, green_env: str | None = None, executor: Any = None, **kwargs: Any
    ) -> None:
        check_green_env(green_env)
        # Sync handlers run as greenlets through the core's declared hook; the hub is known
        # only at start().
        self._runner = _GreenletRunner()
        super().__init__(*args, handler_runner=self._runner, **kwargs)
        self._serving: Any = None  # the greenlet start() returns
        self._done: Any = None  # gevent Event on the serving hub, set when the service stops
        self._port: _bridge.HubPort | None = None

    # -- running --------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> Any:
        """Start serving (handlers run on this thread's hub); return a greenlet that finishes
        when the service stops. Call it from a greenlet; ``loop`` is ignored.

        Raises:
            RuntimeError: the service is closed.
        """
        if self._serving is not None:
            return self._serving
        port = _bridge.port_for(gevent.get_hub())
        self._port = port
        self._runner.port = port
        self._done = gevent.event.Event()
        self._start_on_loop()
        self._serving = gevent.spawn(self._wait_stopped, port, self._done)
        return self._serving

    @staticmethod
    def _wait_stopped(port: _bridge.HubPort, done: Any) -> None:
        port.hold()  # a serving service keeps its hub running
        try:
            done.wait()
        finally:
            port.unhold()

    def serve(self) -> None:  # type: ignore[override]
        """Serve until :meth:`stop` or :meth:`close`, blocking the calling greenlet. An
        exception here (``KeyboardInterrupt``) closes the service."""
        try:
            self.start().get()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close at once: cancel running calls (their greenlets are killed), close the socket."""
        super().close()

    def _on_finished(self) -> None:
        if self._done is not None and self._port is not None:
            self._port.submit(self._done.set)

    def __enter__(self) -> GeventRPCService:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _GreenletRunner:
    """The service's ``handler_runner``: run a sync call as a greenlet on one hub (from the
    loop thread); cancelling the returned awaitable kills the greenlet."""

    __slots__ = ("port",)

    #: All on one hub: a broker's PING waits for a no-op to run there (see Runner.one_thread).
    one_thread = True

    def __init__(self) -> None:
        self.port: _bridge.HubPort | None = None  # set by start()

    async def __call__(self, fn: Callable[[], T]) -> T:
        port = self.port
        assert port is not None, "the service has not been started"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        ctx = contextvars.copy_context()  # current_call() inside the handler
        spawned: list[Any] = []

        def spawn() -> None:  # on the hub
            if not fut.done():
                spawned.append(gevent.spawn(_run_greenlet, fn, ctx, fut, loop))

        def kill() -> None:  # on the hub
            for g in spawned:
                g.kill(block=False)

        port.submit(spawn)
        try:
            return await fut
        except asyncio.CancelledError:
            port.submit(kill)
            raise


def _run_greenlet(
    fn: Callable[[], T],
    ctx: contextvars.Context,
    fut: asyncio.Future[T],
    loop: asyncio.AbstractEventLoop,
) -> None:
    system: BaseException | None = None
    try:
        outcome: tuple[bool, Any] = (True, ctx.run(fn))
    except StopIteration:
        # StopIteration cannot be put in a Future: a handler that raises it gets an error.
        outcome = (False, RuntimeError("the handler raised StopIteration"))
    except Exception as exc:
        outcome = (False, exc)
    except BaseException as exc:  # GreenletExit (killed), SystemExit...: still an answer
        err = RuntimeError(f"the handler's greenlet ended with {type(exc).__name__}")
        err.__cause__ = exc
        outcome = (False, err)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            system = exc
    try:
        loop.call_soon_threadsafe(_settle, fut, outcome)
    except RuntimeError:  # the loop is closed: nobody waits any more
        pass
    if system is not None:
        # A Ctrl-C (or exit) that landed in this handler is the program's, not the call's:
        # gevent's hub passes it on to the main greenlet (serve() then closes the service).
        raise system


def _settle(fut: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if fut.done():
        return
    ok, value = outcome
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


GreenRPCService = GeventRPCService
GreenRPCClient = GeventRPCClient
