"""Greenlets calling through netcall's bridged loop (see :mod:`netcall._bridge`): a lone
greenlet runs the loop itself, a turn at a time, waiting between turns on its hub; while the
bridge's own thread runs the loop, greenlets wait for it without blocking their hub."""

from __future__ import annotations

import asyncio
from asyncio.events import _get_running_loop, _set_running_loop
from collections.abc import Callable, Coroutine
from contextlib import nullcontext
from typing import Any, TypeVar

from ._bridge_lead import HAND_BACK_WAIT, BridgeState, cancel_all
from ._hub import HubPort
from ._signals import put_back_signals, restore_signals, run_pending
from .errors import ClientClosedError, RPCTimeoutError

__all__ = ["GreenletCalls"]

C = TypeVar("C", bound=Coroutine[Any, Any, Any])


class GreenletCalls(BridgeState):
    """The greenlets' side of a bridge."""

    def _stop_when_idle(self) -> None:
        """The last callback of each of :meth:`_turns`' turns: stop the loop once a turn left
        nothing ready (after 8 turns at most). It is a timer already due, which asyncio runs
        after the callbacks of what the turn's select found: so a reply read in a turn and
        what it leaves ready take two turns, not three."""
        loop = self.loop
        self._turns_left -= 1
        if loop._ready and self._turns_left > 0:  # type: ignore[attr-defined]
            self._turn_check = loop.call_at(loop.time(), self._stop_when_idle)
        else:
            self._turn_check = None
            loop.stop()

    def _wait_green(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None],
        coro: C,
        port: HubPort,
        timeout: float | None,
    ) -> asyncio.Future[Any]:
        """:meth:`_wait` for a greenlet of the hub behind ``port``, which never blocks.

        While it is the only caller, the greenlet runs the loop itself, a turn at a time
        (:meth:`_turns`), and between turns waits on its hub for the loop's selector to be
        readable or for the loop's next timer. ``_lead`` is not held across the hub switch
        of a wait, so a hub that blocks (CPU work, a plain lock) stalls no other thread's
        calls. (Code on the loop that switches greenlets itself, a middleware sleeping under
        monkey-patching, holds it across that switch: only this greenlet counts as running
        the loop meanwhile, and other callers wait for the bridge's thread.) Should a thread
        take ``_lead`` while the greenlet waits, the bridge's own thread takes over, and the
        greenlet waits for it as it does while other callers call (counted in ``_waiting``).

        In the main thread, the handlers of :data:`DEFERRED_SIGNALS` are deferred while this
        greenlet runs, and run here between steps (what they raise ends the call), as in
        :meth:`_drive`: no bookkeeping below is ever cut in two. While it waits on the hub,
        they are the program's own again."""
        loop = self.loop
        futures: list[asyncio.Future[Any]] = []
        pending: list[tuple[int, Any]] = []
        handlers: dict[int, Any] = {}
        waiter = port.new_waiter()
        wake = port.waker(waiter)
        mine = port.current_greenlet()

        def done(_fut: object) -> None:
            if port.current_greenlet() is not mine:  # (this greenlet looks after each turn)
                wake()

        deadline = None if timeout is None else loop.time() + timeout
        queued = driving = counted = asked = finished = False
        try:
            self._defer_signals(handlers, pending, wake)
            while True:
                run_pending(handlers, pending)  # (a handler that raises ends the call here)
                if futures and futures[0].done():
                    finished = True
                    return futures[0]
                if not self.alive:
                    raise ClientClosedError("the netcall loop has stopped")
                wait = None if deadline is None else deadline - loop.time()
                if wait is not None and wait <= 0:
                    raise RPCTimeoutError(f"no answer within {timeout} s")
                if not (driving or counted):
                    with self._scheduling:
                        if not (self._threaded or self._green_driver or self._closing):
                            self._green_driver = driving = True
                reader = None
                if driving:
                    if not self._turns(None if queued else start, coro, futures, done):
                        # Another thread holds _lead: the bridge's thread takes over.
                        with self._scheduling:
                            self._green_driver = driving = False
                            if queued:  # (one statement: the count and its note)
                                self._waiting, counted = self._waiting + 1, True
                        self._start_thread()
                        continue
                    queued = True
                    scheduled = loop._scheduled  # type: ignore[attr-defined]
                    if loop._ready:  # type: ignore[attr-defined]
                        wait = 0.0
                    elif scheduled:
                        until = scheduled[0].when() - loop.time()
                        wait = until if wait is None or until < wait else wait
                    reader = self._readers.get(port)
                    if reader is None:
                        reader = self._readers[port] = port.reader(self._selector_fd)
                elif not counted:  # not queued yet: wait for the bridge's thread
                    if not asked and self._threaded and self._take_back(wake):
                        asked = True  # wait (briefly, once) for the thread to let go
                        wait = HAND_BACK_WAIT if wait is None else min(wait, HAND_BACK_WAIT)
                    else:
                        if not self._threaded:  # another greenlet runs it: take turns no more
                            self._start_thread()
                        counted = queued = self._enqueue(start, coro, futures, done, follow=True)
                        continue
                waiter.clear()
                if pending or (futures and futures[0].done()):
                    continue
                # The hub runs other greenlets meanwhile: the signals' own handlers are back
                # in place for that time (Ctrl-C must still stop a program whose main
                # greenlet sleeps, or interrupt a greenlet's long computation).
                put_back_signals(handlers)
                try:
                    port.wait_readable(waiter, reader, wait)
                finally:
                    self._defer_signals(handlers, pending, wake)
        finally:
            # Timed out, killed or interrupted: cancel the call (at once, if this greenlet runs
            # the loop: no later call may come to run it).
            if not finished and queued and not (driving and self._abandon_green(futures)):
                self.call_soon(cancel_all, futures)
            if driving or counted:
                with self._scheduling:
                    if driving:
                        self._green_driver = False
                    if counted:
                        self._waiting -= 1
            restore_signals(handlers, pending)

    def _abandon_green(self, futures: list[asyncio.Future[Any]]) -> bool:
        """:meth:`~netcall._bridge_lead.LoopLead._abandon` for the lone greenlet running the
        loop turn by turn: cancel its call and run the turns that send the CANCEL now (no
        later call may come to run them). False when another thread holds ``_lead`` (it runs
        the loop: the cancel is to be scheduled there) or the loop is gone."""
        if not self.alive or not self._lead.acquire(False):
            return False
        self._green_turn(self._abandon, futures)
        return True

    def _follow_green(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None],
        coro: C,
        port: HubPort,
        timeout: float | None,
    ) -> asyncio.Future[Any] | None:
        """:meth:`_wait_in_thread` for a greenlet: it waits on its hub's ``port`` for the
        bridge's thread; ``None`` (nothing done) when that thread no longer runs the loop."""
        futures: list[asyncio.Future[Any]] = []
        waiter = port.new_waiter()
        wake = port.waker(waiter)
        counted = finished = False
        try:
            # (as in _wait_in_thread: nothing can be raised between the count and its note)
            counted = self._enqueue(start, coro, futures, wake, follow=True)
            if not counted:
                return None
            with _gevent_timeout(timeout):
                port.wait(waiter)
                finished = True
                return futures[0]
            raise RPCTimeoutError(f"no answer within {timeout} s")
        finally:
            if counted:
                try:
                    if not finished:  # killed, timed out or interrupted: do not leave it running
                        self.call_soon(cancel_all, futures)
                finally:
                    with self._scheduling:
                        self._waiting -= 1

    def _turns(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None] | None,
        coro: C,
        futures: list[asyncio.Future[Any]],
        done: Callable[..., None],
    ) -> bool:
        """Run the loop in this thread for what is ready now, without waiting (queueing
        ``start(coro)`` first, unless ``start`` is None): False when another thread holds
        ``_lead``."""
        if not self._lead.acquire(False):
            return False
        self._green_turn(self._run_turns, start, coro, futures, done)
        return True

    def _run_turns(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None] | None,
        coro: C,
        futures: list[asyncio.Future[Any]],
        done: Callable[..., None],
    ) -> None:
        if start is not None:
            self._enqueue(start, coro, futures, done, wake=False)
        self._turns_left = 8
        loop = self.loop
        self._turn_check = loop.call_at(loop.time(), self._stop_when_idle)  # (after the start)
        try:
            loop.run_forever()
        finally:
            # Stopped by another loop.stop() (a signal's wake-up, a thread's call that ended):
            # the check still scheduled must not outlive these turns (it would keep the loop
            # turning at every later turn, and the greenlet's waits at 0 s: a spin).
            check, self._turn_check = self._turn_check, None
            if check is not None:
                check.cancel()

    def _green_turn(self, run: Callable[..., Any], *args: Any) -> None:
        """``run(*args)`` as this greenlet's turn at the loop: the caller took ``_lead``,
        released here whatever happens."""
        try:
            self._turn_greenlet = HubPort.current_greenlet()
            self.thread_id = self._get_ident()
            # Another greenlet of this thread may be amid an asyncio loop of its own,
            # switched out: its running loop is put back after these turns (asyncio puts
            # back the thread's async generator hooks itself).
            other = _get_running_loop()
            if other is not None:
                _set_running_loop(None)
            try:
                run(*args)
            finally:
                if other is not None:
                    _set_running_loop(other)
        finally:
            self.thread_id = 0
            self._turn_greenlet = None
            self._lead.release()


def _gevent_timeout(seconds: float | None) -> Any:
    # No timeout: a shared do-nothing context (nothing made per call).
    if seconds is None:
        return _NO_TIMEOUT
    import gevent  # (only for a wait with a timeout: gevent is in use by then)

    return gevent.Timeout(seconds, False)


_NO_TIMEOUT = nullcontext()
