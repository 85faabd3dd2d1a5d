"""The per-call context a handler can read with :func:`netcall.current_call`."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

__all__ = ["CallContext", "current_call"]


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about the call it is serving.

    Attributes:
        method: the name the client called.
        peer: the client's ZeroMQ routing id on this service.
        deadline: absolute UNIX time after which the client no longer waits, or ``None``.
        oneway: the client does not wait for a result.
    """

    method: str
    peer: bytes
    deadline: float | None
    oneway: bool = False

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.time())


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "netcall_call", default=None
)


def current_call() -> CallContext:
    """The :class:`CallContext` of the call being served.

    Raises:
        RuntimeError: called outside a netcall handler.
    """
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("current_call() used outside a netcall handler")
    return ctx
