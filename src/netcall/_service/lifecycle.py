"""The parts of starting and stopping a service that are not state: a cancelled ``serve()``
(a graceful stop, logged)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..service import RPCService

__all__ = ["stop_when_cancelled"]

log = logging.getLogger("netcall")


async def stop_when_cancelled(
    service: RPCService, grace: float, stop: Callable[[], Awaitable[None]]
) -> None:
    """``serve()`` was cancelled (Ctrl-C under ``asyncio.run()``): stop gracefully with the
    core's own ``stop`` (this runs on the core's loop, also for a service served from trio). A
    second interrupt ends this early; ``serve()`` then closes the service at once."""
    restore = _second_interrupt_cancels()
    try:
        busy = service.active_calls + service.active_streams
        log.info(
            "%s: stopping, waiting up to %g s for %d call%s; interrupt again to stop now",
            service.name,
            grace,
            busy,
            "" if busy == 1 else "s",
        )
        await stop()
    except (asyncio.CancelledError, KeyboardInterrupt):
        # The second interrupt: serve() closes the service and re-raises its cancellation,
        # and asyncio.run() raises KeyboardInterrupt as it does for any Ctrl-C.
        pass
    finally:
        restore()


def _second_interrupt_cancels() -> Callable[[], None]:
    """Python 3.10's asyncio.run() installs no SIGINT handler: a second Ctrl-C would raise
    KeyboardInterrupt wherever the loop happens to be (inside asyncio's own code, leaving
    half-made coroutines behind). While the graceful stop runs, make it cancel this task
    instead, as 3.11+ does. Returns the function that puts the previous handler back."""
    if (
        sys.version_info >= (3, 11)
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        return lambda: None
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is None:
        return lambda: None
    previous = signal.signal(signal.SIGINT, lambda *_: loop.call_soon_threadsafe(task.cancel))

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    return restore
