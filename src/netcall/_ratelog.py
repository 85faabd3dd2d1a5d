"""Logging at a bounded rate, with counters: what a peer can trigger at will (malformed
messages, refusals, handler errors) must never write one line per message.

Each *kind* of event (a short key such as ``"malformed"``) has its own budget: in every window
of ``interval`` seconds the first ``burst`` events are logged in full; the rest are only
counted, and one summary line with their number is logged when the window is over (at the next
event of that kind, or at :meth:`RateLimitedLog.flush`). So a flood of any size writes at most
``burst + 1`` lines per kind per window. Every event is counted in :attr:`counts`, logged or
not, for statistics.

Not thread-safe: use one from a single thread (the event loop's).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_BURST", "DEFAULT_INTERVAL", "RateLimitedLog"]

#: Events of one kind logged in full per window.
DEFAULT_BURST = 5
#: Seconds per window.
DEFAULT_INTERVAL = 10.0


class _Window:
    __slots__ = ("logged", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.logged = 0
        self.suppressed = 0


class RateLimitedLog:
    """A logger front that logs each kind of event at a bounded rate and counts them all.

    Args:
        logger: where lines go.
        burst: events of one kind logged in full per window (0: only summaries).
        interval: the window, in seconds.
        clock: a monotonic clock (tests pass their own).
    """

    __slots__ = ("_clock", "_windows", "burst", "counts", "interval", "logger")

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 0 or interval <= 0:
            raise ValueError("burst must be >= 0 and interval > 0")
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        #: Events seen per kind since creation (logged or not).
        self.counts: dict[str, int] = {}

    def count(self, kind: str) -> int:
        """Events of ``kind`` seen so far."""
        return self.counts.get(kind, 0)

    def __call__(self, kind: str, level: int, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Count one event of ``kind``; log ``msg % args`` at ``level`` if the budget allows.
        Returns whether it was logged in full."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = self._clock()
        window = self._windows.get(kind)
        if window is None:
            window = self._windows[kind] = _Window(now)
        elif now - window.start >= self.interval:
            self._summarize(kind, window, level)
            window.start = now
            window.logged = 0
        if window.logged < self.burst:
            window.logged += 1
            self.logger.log(level, msg, *args, exc_info=exc_info)
            return True
        window.suppressed += 1
        return False

    def flush(self, level: int = logging.WARNING) -> None:
        """Log the summaries of windows that are over (call it now and then, and at exit)."""
        now = self._clock()
        for kind, window in self._windows.items():
            if window.suppressed and now - window.start >= self.interval:
                self._summarize(kind, window, level)
                window.start = now
                window.logged = 0

    def _summarize(self, kind: str, window: _Window, level: int) -> None:
        if window.suppressed:
            self.logger.log(
                level,
                "netcall: %d more %s event(s) in the last %.0f s were not logged "
                "(%d in all so far)",
                window.suppressed,
                kind,
                self._clock() - window.start,
                self.counts.get(kind, 0),
            )
            window.suppressed = 0
