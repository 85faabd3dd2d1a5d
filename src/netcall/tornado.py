"""netcall on Tornado's IOLoop. Tornado (5 and later) runs on asyncio, so these are the core
classes; only starting and serving are adapted to the IOLoop.

::

    from netcall.tornado import TornadoRPCService

    echo = TornadoRPCService()

    @echo.task
    def echo(s):
        return s

    echo.bind("tcp://127.0.0.1:5555")
    echo.start()
    echo.serve()            # runs IOLoop.current() until the service stops

Handlers may be plain functions, ``async def`` coroutines or ``@tornado.gen.coroutine``
functions. :class:`TornadoRPCClient` is awaited from Tornado coroutines and ``RequestHandler``
methods like the core client (``await client.echo("hi")``, ``async for x in client.count(3)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Awaitable
from typing import Any

from tornado.ioloop import IOLoop

from .client import RPCClient
from .service import RPCService

__all__ = ["TornadoRPCClient", "TornadoRPCService"]


class TornadoRPCService(RPCService):
    """An :class:`~netcall.RPCService` that runs on Tornado's IOLoop."""

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Begin serving on ``loop``, else the running loop, else ``IOLoop.current()``'s
        (which need not be running yet). Returns at once."""
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = _current_loop()
        super().start(loop)

    def serve(self) -> Any:
        """Serve until :meth:`stop` or :meth:`close`.

        Outside a running loop this starts ``IOLoop.current()`` and returns when the service
        has stopped (the IOLoop is stopped then too). Inside a coroutine it returns an
        awaitable: ``await service.serve()``.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            return super().serve()
        _current_loop()
        ioloop = IOLoop.current()
        self.start(ioloop.asyncio_loop)  # type: ignore[attr-defined]
        serving: Awaitable[None] = super().serve()
        task = ioloop.asyncio_loop.create_task(serving)  # type: ignore[attr-defined]
        task.add_done_callback(lambda _t: ioloop.stop())
        try:
            ioloop.start()
        finally:
            if not task.done():  # the IOLoop was stopped by someone else, or interrupted
                self.close()
                task.cancel()
                with contextlib.suppress(BaseException):
                    ioloop.asyncio_loop.run_until_complete(task)  # type: ignore[attr-defined]
        if not task.cancelled():
            task.result()
        return None


def _current_loop() -> asyncio.AbstractEventLoop:
    """The loop ``IOLoop.current()`` runs on, outside a running loop, made and set as the
    thread's current loop if there is none yet. ``IOLoop.current()`` would do the same through
    ``asyncio.get_event_loop()``, which warns about it from Python 3.12 (a DeprecationWarning
    that ``-W error`` turns into a failure) for this 2014 pattern: start, then run the IOLoop."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:  # no current loop, and the policy will not make one
            loop = None
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
    return IOLoop.current().asyncio_loop  # type: ignore[attr-defined, no-any-return]


class TornadoRPCClient(RPCClient):
    """An :class:`~netcall.RPCClient` for Tornado code: await its calls from coroutines and
    ``RequestHandler`` methods running on the IOLoop."""
