"""The one way a service's messages leave: frames to a peer, refusals, reported exceptions."""

from __future__ import annotations

import asyncio
import traceback as _traceback
from typing import Any

from .. import protocol as p
from .._reactor import SocketDriver
from ..errors import handler_exception_to_remote
from .guard import Guard

__all__ = ["Replies"]


class Replies:
    """Sends to peers through the service's socket driver (a no-op before start and after
    close). ``tracebacks``: include handler tracebacks in ERROR messages."""

    __slots__ = ("driver", "guard", "tracebacks")

    def __init__(self, tracebacks: bool, guard: Guard) -> None:
        self.driver: SocketDriver | None = None
        self.tracebacks = tracebacks
        self.guard = guard

    def send(self, peer: bytes, frames: list[Any]) -> None:
        driver = self.driver
        if driver is not None:
            frames.insert(0, peer)
            driver.send(frames)

    def refuse(self, peer: bytes, rid: int, type_name: str, message: str) -> None:
        """An ERROR netcall itself sends (``type_name`` is one of ``protocol.ERR_*``)."""
        self.guard.refused(type_name, message)
        self.send(peer, p.Error(rid, type_name, message, "").to_frames())

    def error(self, peer: bytes, rid: int, exc: BaseException) -> None:
        """An ERROR reporting ``exc``, raised by a handler or a generator."""
        type_name, message = handler_exception_to_remote(exc)
        text = ""
        if self.tracebacks and exc.__traceback__ is not None:
            text = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.send(peer, p.Error(rid, type_name, message, text).to_frames())

    def is_blocked(self, peer: bytes) -> bool:
        """The socket's queue to ``peer`` is backed up: producers should wait."""
        driver = self.driver
        return driver is not None and driver.is_blocked(peer)

    async def wait_unblocked(self, peer: bytes) -> None:
        """Until nothing waits for ``peer`` any more (sent, cut off, gone or closed)."""
        driver = self.driver
        if driver is not None:
            await driver.wait_unblocked(peer)
        else:
            await asyncio.sleep(0)
