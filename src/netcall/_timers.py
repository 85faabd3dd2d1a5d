"""Timeouts for many short-lived things (calls in flight), for less than a loop timer each.

A loop timer costs a heap push, a cancel and, later, a heap pop with its comparisons: about
a fifth of a call's CPU in the client, and as much again in the service. But calls made with
the same timeout end in the order they were made, so they wait in one FIFO of ``(deadline,
item)`` per timeout value, and one loop timer per FIFO fires at its earliest deadline.

- A thing that ends in time is not looked for: its entry is skipped when it reaches the head
  (``alive(item)`` is false), and a FIFO much longer than its live entries is compacted, so
  memory stays proportional to the things alive.
- At most :data:`MAX_QUEUES` timeout values have a FIFO at once; :meth:`TimeoutQueues.add`
  returns False for another value, and the caller gives that thing a timer of its own.
- Everything runs on the loop's thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_QUEUES", "TimeoutQueues"]

#: Timeout values with a FIFO of their own at once (the rest get a loop timer each).
MAX_QUEUES = 8
#: A FIFO is compacted when longer than twice its live entries plus this.
_SLACK = 1024


class _Fifo:
    __slots__ = ("entries", "handle", "limit")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, Any]] = deque()
        self.handle: asyncio.TimerHandle | None = None
        self.limit = _SLACK


class TimeoutQueues:
    """``fire(item)`` once ``timeout`` seconds after ``add(timeout, item)``, unless
    ``alive(item)`` is false by then."""

    __slots__ = ("_alive", "_fifos", "_fire", "loop")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        alive: Callable[[Any], bool],
        fire: Callable[[Any], None],
    ) -> None:
        self.loop = loop
        self._alive = alive
        self._fire = fire
        self._fifos: dict[float, _Fifo] = {}

    def add(self, timeout: float, item: Any, delay: float | None = None) -> bool:
        """Fire ``item`` after ``timeout`` seconds (or ``delay``: what is left of ``timeout``
        counted from an earlier start, so that the items of one ``timeout`` still come in the
        order they expire); False (nothing recorded) when :data:`MAX_QUEUES` other timeout
        values are waiting."""
        fifo = self._fifos.get(timeout)
        if fifo is None:
            if len(self._fifos) >= MAX_QUEUES:
                return False
            fifo = self._fifos[timeout] = _Fifo()
        deadline = self.loop.time() + (timeout if delay is None else delay)
        entries = fifo.entries
        entries.append((deadline, item))
        if fifo.handle is None:
            fifo.handle = self.loop.call_at(deadline, self._expire, timeout)
        elif len(entries) > fifo.limit:
            alive = self._alive
            fifo.entries = entries = deque([entry for entry in entries if alive(entry[1])])
            fifo.limit = 2 * len(entries) + _SLACK
        return True

    def _expire(self, timeout: float) -> None:
        fifo = self._fifos.get(timeout)
        if fifo is None:
            return
        fifo.handle = None
        now = self.loop.time()
        entries, alive = fifo.entries, self._alive
        due = []
        while entries:
            deadline, item = entries[0]
            if alive(item):
                if deadline > now:
                    break
                due.append(item)
            entries.popleft()
        if entries:
            fifo.handle = self.loop.call_at(entries[0][0], self._expire, timeout)
        else:
            del self._fifos[timeout]
        for item in due:  # last: firing may add to this FIFO
            self._fire(item)

    def clear(self) -> None:
        """Forget every timeout (the owner closed)."""
        for fifo in self._fifos.values():
            if fifo.handle is not None:
                fifo.handle.cancel()
        self._fifos.clear()

    def __len__(self) -> int:
        """Entries held (live or not yet skipped)."""
        return sum(len(fifo.entries) for fifo in self._fifos.values())
