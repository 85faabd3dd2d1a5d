"""One deadline, on this host's monotonic clock.

The wire carries the time a call has left (see :mod:`netcall.protocol`); each end turns it into
a :class:`Deadline` when it sends or receives, so the two hosts' clocks never need to agree.
The client, the service, streams and :class:`~netcall.CallContext` all carry this one object.
"""

from __future__ import annotations

import time

__all__ = ["MIN_REMAINING", "SPENT", "Deadline"]

_monotonic = time.monotonic

#: A call arriving with less time than this left is expired (a client whose time ran out
#: sends less: 0 on the wire means "no deadline").
MIN_REMAINING = 1e-6
#: What a CALL carries once its time is spent (never 0, which means "no deadline").
SPENT = MIN_REMAINING / 2


class Deadline:
    """A point in time on the monotonic clock after which nobody waits for the call."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """``seconds`` from now."""
        return cls(_monotonic() + seconds)

    @classmethod
    def from_timeout(cls, timeout: float | None) -> Deadline | None:
        """``timeout`` seconds from now; ``None`` (no deadline) for ``None`` or 0."""
        if not timeout:
            return None
        return cls(_monotonic() + timeout)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        left = self.at - _monotonic()
        return left if left > 0.0 else 0.0

    def for_wire(self) -> float:
        """The time remaining as a CALL carries it (:data:`SPENT` once expired)."""
        left = self.at - _monotonic()
        return left if left >= MIN_REMAINING else SPENT

    @property
    def expired(self) -> bool:
        return _monotonic() >= self.at

    def __repr__(self) -> str:
        return f"<Deadline in {self.at - _monotonic():.3f} s>"
