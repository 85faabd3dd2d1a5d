"""The per-call context a handler can read with :func:`netcall.current_call`."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ._deadline import Deadline

__all__ = ["CallContext", "TaskStarting", "current_call"]

_NO_METADATA: Mapping[str, str] = MappingProxyType({})


class CallContext:
    """What a handler (and a service middleware) knows about the call it is serving. Read it;
    do not change it.

    Attributes:
        method: the name the client called.
        peer: the client's ZeroMQ routing id on this service.
        deadline: when the client stops waiting (a :class:`~netcall._deadline.Deadline` on
            this host's monotonic clock), or ``None``.
        oneway: the client does not wait for a result.
        metadata: string pairs the client sent with the call (read-only; empty by default).
        peer_key: the caller's CURVE public key (Z85 text) on a service with
            ``security=Curve.server(...)``; ``None`` without CURVE (and through ``inproc://``).
        args: the call's positional arguments, as the handler gets them.
        kwargs: the call's keyword arguments, as the handler gets them.
    """

    # A plain class with slots, not a frozen dataclass: one is built per call, and a frozen
    # dataclass's __init__ costs about three times as much.
    __slots__ = (
        "_task",
        "args",
        "deadline",
        "kwargs",
        "metadata",
        "method",
        "oneway",
        "peer",
        "peer_key",
    )

    def __init__(
        self,
        method: str,
        peer: bytes,
        deadline: Deadline | None,
        oneway: bool = False,
        metadata: Mapping[str, str] = _NO_METADATA,
        peer_key: str | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] = _NO_METADATA,
    ) -> None:
        self.method = method
        self.peer = peer
        self.deadline = deadline
        self.oneway = oneway
        self.metadata = metadata
        self.peer_key = peer_key
        self.args = args
        self.kwargs = kwargs
        # The task running the handler (set by the service once it exists; a TaskStarting
        # while its first step runs): a call made for this one from another thread (blocking
        # client) is cancelled when it is.
        self._task: Any = None

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (never negative), or ``None`` without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline.remaining()

    def without_deadline(self) -> CallContext:
        """A copy with no deadline (a stream's, whose steps each have their own timeout)."""
        return CallContext(
            self.method,
            self.peer,
            None,
            self.oneway,
            self.metadata,
            self.peer_key,
            self.args,
            self.kwargs,
        )

    def __repr__(self) -> str:
        return (
            f"CallContext(method={self.method!r}, peer={self.peer!r}, "
            f"deadline={self.deadline!r}, oneway={self.oneway!r}, metadata={self.metadata!r}, "
            f"peer_key={self.peer_key!r})"
        )


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


class TaskStarting:
    """``CallContext._task`` while the handler's task is being made and its first step runs
    at once (an eager start): the task object does not exist yet, but a thread the step
    starts may already make a nested call that must be tied to it. Such a call reads the
    real task on :meth:`get_loop`, the service's loop, where the service has recorded it by
    then (see ``netcall._client.proxy._linked``)."""

    __slots__ = ("loop",)

    def __init__(self, loop: Any) -> None:
        self.loop = loop

    def get_loop(self) -> Any:
        return self.loop
