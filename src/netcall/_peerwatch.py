"""How a service learns that a client's connection closed, without waiting for a lease.

A ROUTER's socket monitor reports ``EVENT_DISCONNECTED`` but not *which* peer left (the event
carries the endpoint and a file descriptor, never a routing id), and ZMQ_ROUTER_NOTIFY needs a
draft build of libzmq. So on each disconnect the service *probes* the peers it holds state for:
it sends each a message it ignores (``PONG`` with request id 0) with ROUTER_MANDATORY set; the
send to a peer whose pipe is gone fails with ``EHOSTUNREACH`` and the socket driver reports
that peer as gone. The pipe is removed from the ROUTER a moment after the event (libzmq tears
it down between its threads), so a probe round runs a little after each event and again
later; rounds are coalesced, so a storm of connections and disconnections costs at most one
round per ``MIN_GAP`` seconds.


The service keeps ZeroMQ heartbeats off (see ``RPCService(heartbeat=...)``): with heartbeats
on, libzmq 4.3.5 aborts the process (``Assertion failed: !_io_error``) when a peer that had
filled its receive pipe disconnects, which any peer can arrange.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["DisconnectWatch"]

#: Probe rounds after a disconnect event, in seconds after it.
DELAYS = (0.02, 0.25, 1.0)
#: At most one probe round per this many seconds.
MIN_GAP = 0.05


class DisconnectWatch:
    """Calls ``probe()`` a few times after every disconnect (coalesced). Feed it the socket
    monitor's events with :meth:`on_event` (a socket has one monitor, shared with whoever
    else needs it).

    ``probe`` sends its probes through the service's driver; unreachable peers come back
    through the driver's ``on_unreachable``.
    """

    __slots__ = ("_due", "_last", "_loop", "_probe", "_timer", "events")

    def __init__(self, loop: asyncio.AbstractEventLoop, probe: Callable[[], None]) -> None:
        self._loop = loop
        self._probe = probe
        self._due: list[float] = []
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        #: Disconnect events seen.
        self.events = 0

    def on_event(self, event: dict[str, Any]) -> None:
        """A parsed monitor event (``zmq.utils.monitor.parse_monitor_message``)."""
        if event["event"] != zmq.EVENT_DISCONNECTED:
            return
        self.events += 1
        now = time.monotonic()
        due = sorted(set(self._due) | {now + d for d in DELAYS})
        # Coalesce: keep rounds at least MIN_GAP apart (the later one of two wins).
        kept: list[float] = []
        for t in due:
            if kept and t - kept[-1] < MIN_GAP:
                kept[-1] = t
            else:
                kept.append(t)
        self._due = kept
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._due:
            delay = max(0.0, self._due[0] - time.monotonic())
            self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.monotonic()
        while self._due and self._due[0] <= now + 0.001:
            self._due.pop(0)
        if now - self._last >= MIN_GAP:
            self._last = now
            self._probe()
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._due.clear()
