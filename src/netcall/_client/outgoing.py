"""What a call takes from where it is made: the client's middleware, the metadata, and the
deadline of the call being served (deadline propagation).

Inside a handler (its task, child tasks, shielded tasks, executor threads and greenlets that
run in a copy of its context), ``current_call()`` is set; a call made there is bounded by the
smaller of its own timeout and the served call's time remaining, unless the client was made
with ``propagate_deadline=False``. The served call is captured when the call object is
created, in the caller's thread, so the blocking and gevent clients propagate it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._context import CallContext
from .._middleware import ClientMiddleware, OutgoingCall, compose_client
from ..errors import RPCTimeoutError

__all__ = ["ClientChain", "effective_timeout"]


def effective_timeout(timeout: float | None, parent: CallContext | None) -> float | None:
    """``timeout``, or less: what the served call ``parent`` has left.

    Raises:
        RPCTimeoutError: the served call's deadline has passed (nothing is sent).
    """
    if parent is None:
        return timeout
    deadline = parent.deadline
    if deadline is None:
        return timeout
    left = deadline.remaining()
    if timeout is not None and timeout <= left:
        return timeout
    if left <= 0.0:
        raise RPCTimeoutError(
            f"the deadline of the call being served ({parent.method!r}) has passed"
        )
    return left


class ClientChain:
    """A client's middleware, composed once around ``endpoint`` (``None``: no middleware)."""

    __slots__ = ("endpoint", "middleware", "run")

    def __init__(
        self,
        endpoint: Callable[[OutgoingCall], Awaitable[Any]],
        middleware: Sequence[ClientMiddleware] = (),
    ) -> None:
        self.endpoint = endpoint
        self.middleware: tuple[ClientMiddleware, ...] = ()
        self.run: Callable[[OutgoingCall], Awaitable[Any]] | None = None
        for mw in middleware:
            self.add(mw, outermost=False)

    def add(self, mw: ClientMiddleware, outermost: bool) -> None:
        self.middleware = (mw, *self.middleware) if outermost else (*self.middleware, mw)
        self.run = compose_client(self.middleware, self.endpoint)
