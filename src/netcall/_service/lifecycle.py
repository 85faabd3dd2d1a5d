"""What a service logs, in one place (the ``netcall`` logger), and the parts of starting and
stopping that are not state: a cancelled ``serve()``, IPC files removed.

Levels: binds, stops and closes at INFO; each call at DEBUG; a handler that raised at WARNING,
with the method, the peer and the traceback, at most :data:`FAILURES_PER_MINUTE` a minute
(then one line saying how many were left out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..service import RPCService

__all__ = [
    "FailureLog",
    "bound",
    "call",
    "closed",
    "stop_when_cancelled",
]

log = logging.getLogger("netcall")

#: Handler failures logged per minute and service; the rest are counted, then summarised.
FAILURES_PER_MINUTE = 20


def peer_name(peer: bytes) -> str:
    return peer.hex()


def bound(name: str, url: str) -> None:
    log.info("%s: bound %s", name, url)


def call(name: str, method: str, peer: bytes) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s: call %s from peer %s", name, method, peer_name(peer))


class FailureLog:
    """Logs handler failures at WARNING, at most ``per_minute`` a minute."""

    __slots__ = ("_left_out", "_logged", "_per_minute", "_window")

    def __init__(self, per_minute: int = FAILURES_PER_MINUTE) -> None:
        self._per_minute = per_minute
        self._window = 0.0
        self._logged = 0
        self._left_out = 0

    def __call__(self, name: str, method: str, peer: bytes, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._window >= 60.0:
            if self._left_out:
                log.warning("%s: %d more handler failures not logged", name, self._left_out)
            self._window, self._logged, self._left_out = now, 0, 0
        if self._logged >= self._per_minute:
            self._left_out += 1
            return
        self._logged += 1
        log.warning(
            "%s: %s(...) from peer %s raised %s",
            name,
            method,
            peer_name(peer),
            type(exc).__name__,
            exc_info=exc,
        )


async def stop_when_cancelled(service: RPCService, grace: float) -> None:
    """``serve()`` was cancelled (Ctrl-C under ``asyncio.run()``): stop gracefully. A second
    interrupt ends this early; ``serve()`` then closes the service at once."""
    try:
        busy = service.active_calls + service.active_streams
        log.info(
            "%s: stopping, waiting up to %g s for %d call%s; interrupt again to stop now",
            service.name,
            grace,
            busy,
            "" if busy == 1 else "s",
        )
        await service.stop()
    except (asyncio.CancelledError, KeyboardInterrupt):
        # The second interrupt: serve() closes the service and re-raises its cancellation,
        # and asyncio.run() raises KeyboardInterrupt as it does for any Ctrl-C.
        pass


def closed(name: str, endpoints: Iterable[str], started: bool) -> None:
    """The socket is closed: remove the files of its ``ipc://`` endpoints (libzmq removes
    them only if its I/O thread gets to it before the process exits)."""
    for url in endpoints:
        if url.startswith("ipc://") and not url.startswith("ipc://@"):
            remove_socket_file(url[len("ipc://") :])
    if started:
        log.info("%s: stopped", name)


def remove_socket_file(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass
