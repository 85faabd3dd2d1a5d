"""The per-call context a handler can read with :func:`netcall.current_call`."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ._deadline import Deadline

__all__ = ["CallContext", "current_call"]

_NO_METADATA: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a handler knows about the call it is serving.

    Attributes:
        method: the name the client called.
        peer: the client's ZeroMQ routing id on this service.
        deadline: when the client stops waiting (a :class:`~netcall._deadline.Deadline` on
            this host's monotonic clock), or ``None``.
        oneway: the client does not wait for a result.
        metadata: string pairs the client sent with the call (read-only; empty by default).
        peer_key: the caller's CURVE public key (Z85 text) on a service with
            ``security=Curve.server(...)``; ``None`` without CURVE (and through ``inproc://``).
    """

    method: str
    peer: bytes
    deadline: Deadline | None
    oneway: bool = False
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA)
    peer_key: str | None = None

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline.remaining()


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
