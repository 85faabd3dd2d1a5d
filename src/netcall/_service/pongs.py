"""PONGs from the side where handlers run, for a service whose user code runs through a hook
that runs it all on one thread (a gevent hub, a trio run: :attr:`Runner.one_thread
<netcall._service.runner.Runner.one_thread>`).

Such a service's socket is read on netcall's own loop thread, which would answer a broker's
PING at once even while the hub or the trio thread is stuck (a handler in an unpatched
``time.sleep``, or a loop that never yields): the broker would keep sending it calls, which
time out. So a PING from a peer this service connected out to (a broker; a client that binds
too) is answered once a no-op job has run through that hook; at most one such job is pending
per peer (a hub stuck for an hour does not pile up a job per ping): the PINGs that come
meanwhile are answered by its PONG (a broker counts any message as heard). The job is no call:
no middleware, no stats, no limits. PINGs from anyone else (a client's stream leases and
liveness) are answered at once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from .. import protocol as p
from .runner import Runner

__all__ = ["HookedPongs"]

log = logging.getLogger("netcall")


class HookedPongs:
    """Defers the PONGs to the peers ``upstream(peer)`` names until ``runner`` has run a
    no-op (:meth:`Runner.no_op`); ``send(peer, frames)`` sends a PONG."""

    __slots__ = ("_loop", "_pending", "_runner", "_send", "_upstream")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        runner: Runner,
        upstream: Callable[[bytes], bool],
        send: Callable[[bytes, list[Any]], None],
    ) -> None:
        self._loop = loop
        self._runner = runner
        self._upstream = upstream
        self._send = send
        self._pending: dict[bytes, asyncio.Task[None]] = {}

    def defer(self, peer: bytes, rid: int) -> bool:
        """A PING from ``peer``: True when it is answered later (by the PONG of the job this
        starts, or of the one already pending for ``peer``); False when the caller answers
        it now (``peer`` is not one this service connected out to)."""
        if not self._upstream(peer):
            return False
        pending = self._pending
        if peer not in pending:
            task = pending[peer] = self._loop.create_task(self._runner.no_op())
            task.add_done_callback(functools.partial(self._ran, peer, rid))
        return True

    def _ran(self, peer: bytes, rid: int, task: asyncio.Task[None]) -> None:
        if self._pending.get(peer) is task:
            del self._pending[peer]
        if task.cancelled():  # the service stopped or closed: nobody is answered
            return
        exc = task.exception()
        if exc is not None:
            # The handler side cannot run anything (a trio run that ended): no PONG, as
            # from a stuck one; the next PING tries again.
            log.debug("no PONG to %s: the handler side raised %r", peer.hex(), exc)
            return
        self._send(peer, p.Pong(rid).to_frames())

    def close(self) -> None:
        """Cancel the pending jobs (the service stops or closes): no PONG is sent for them.
        Each stays held here until it has ended (a trio job ends once the trio run gets to
        its cancellation), so none is collected while pending."""
        for task in list(self._pending.values()):
            task.cancel()
