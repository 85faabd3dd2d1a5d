"""Who runs netcall's bridged loop (see :mod:`netcall._bridge`): a lone calling thread, for
the length of its call (:meth:`LoopLead._drive`), or a real thread of the bridge's own
(:meth:`LoopLead._main`), which takes over while several call at once and hands the loop back
once they call one at a time again. :class:`BridgeState` names the state the parts of
:class:`~netcall._bridge.Bridge` share."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ._real import real_ident, start_real_thread
from ._signals import defer_signals, restore_signals, run_pending
from .errors import RPCTimeoutError

__all__ = [
    "CALM_AFTER",
    "HAND_BACK_WAIT",
    "BridgeState",
    "LoopLead",
    "cancel_all",
    "run_all",
    "safely",
]

log = logging.getLogger("netcall")

C = TypeVar("C", bound=Coroutine[Any, Any, Any])

#: Seconds between looks at how many callers wait on the bridge's thread at once; after one
#: with at most one at a time, the thread hands the loop back to the callers.
CALM_AFTER = 0.2
HAND_BACK_WAIT = 0.05  # seconds a caller waits for the hand-back before it waits as before


class BridgeState:
    """The state shared by the parts of a bridge (set in ``Bridge.__init__``), and what each
    part calls of the others."""

    loop: asyncio.SelectorEventLoop
    thread_id: int  # the thread running the loop now (0: none)
    _get_ident: Callable[[], int]
    _main_ident: Callable[[], int | None]
    _selector_fd: int
    _lead: Any  # a real lock, held by whichever thread runs the loop
    _scheduling: Any  # a real lock guarding the fields below
    _closing: bool
    _inbox: deque[tuple[Callable[[Any, Any], Any], Any, list[Any], Callable[..., None]]]
    _threaded: bool  # a thread of the bridge's own runs the loop
    _pinned: bool  # ... and must go on running it (a service, a stream)
    _waiting: int  # callers waiting on that thread
    _peak: int  # at most that many at once since the last look
    _calm: bool  # at most one at a time at the last look
    _hand_back: bool
    _hand_back_notify: list[Callable[[], None]]  # greenlets asking for the hand-back
    _green_driver: bool  # a greenlet runs the loop, turn by turn, for its call
    _turns_left: int
    _turn_check: asyncio.TimerHandle | None  # the check ending a greenlet's turns, if due
    _turn_greenlet: Any  # the greenlet amid a turn of the loop (_turns), if any
    _readers: Any  # a watcher of the selector per gevent hub port
    _calm_timer: asyncio.TimerHandle | None
    _in_main: bool  # the bridge's thread is in _main's loop
    _stop_pending: bool
    _done: Any  # a real lock, released when the bridge's thread has closed the loop

    if TYPE_CHECKING:

        @property
        def alive(self) -> bool: ...

        def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool: ...

        def _enqueue(
            self,
            start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None],
            coro: C,
            futures: list[asyncio.Future[Any]],
            done: Callable[..., None],
            wake: bool = True,
            follow: bool = False,
        ) -> bool: ...

        def _drain_inbox(self) -> None: ...

        def _abandon(self, futures: list[asyncio.Future[Any]]) -> None: ...

        def _shutdown(self) -> None: ...

        def _start_thread(self) -> None: ...

        def _take_back(self, notify: Callable[[], None] | None = None) -> bool: ...

        def _defer_signals(
            self,
            handlers: dict[int, Any],
            pending: list[tuple[int, Any]],
            wake: Callable[[], Any] | None = None,
        ) -> None: ...


class LoopLead(BridgeState):
    """The loop run by a lone calling thread, or by the bridge's own thread."""

    def _start_thread(self) -> None:
        """Have a thread of the bridge's own run the loop (while several threads call at once:
        it hands the loop back once they have been calling one at a time for a while)."""
        with self._scheduling:
            if self._threaded or self._closing:
                return
            self._threaded = True
        try:
            start_real_thread(self._main)
        except BaseException:  # (no new threads at interpreter shutdown)
            with self._scheduling:
                self._threaded = False
            raise

    def _main(self) -> None:
        loop = self.loop
        self._lead.acquire()  # (after the caller running the loop, if any, is done)
        shutdown = True
        notify: list[Callable[[], None]] = []
        try:
            if loop.is_closed():  # stopped by a caller meanwhile
                shutdown = False
                return
            self.thread_id = real_ident()
            self._in_main = True
            if self._calm_timer is None and not self._pinned:
                self._calm_timer = loop.call_later(CALM_AFTER, self._look_calm)
            try:
                while not self._stop_pending:
                    loop.run_forever()
                    with self._scheduling:
                        hand_back, self._hand_back = self._hand_back, False
                        notify, self._hand_back_notify = self._hand_back_notify, []
                        if (
                            not hand_back
                            or self._pinned
                            or self._waiting
                            or self._inbox
                            or self._stop_pending
                            or self._closing
                        ):
                            run_all(notify)  # (not handed back: the askers go on waiting)
                            continue
                        self._threaded = False  # calm: callers run the loop themselves again
                        shutdown = False
                        break
            finally:
                self._in_main = False
                if shutdown:
                    self._shutdown()
        finally:
            self.thread_id = 0
            self._lead.release()
            if shutdown:
                self._done.release()
            run_all(notify)

    def _look_calm(self) -> None:
        """Every CALM_AFTER seconds while the bridge's thread runs the loop: calm when at most
        one caller waited at a time since the last look."""
        with self._scheduling:
            self._calm = self._peak <= 1 and not self._pinned
            self._peak = self._waiting
        if self._in_main and not self._pinned:
            self._calm_timer = self.loop.call_later(CALM_AFTER, self._look_calm)
        else:
            self._calm_timer = None

    def _nudge_main(self) -> None:
        """Have the bridge's thread look at its state again (to stop, or to hand the loop
        back); a caller running the loop for its call goes on."""
        if self._in_main:
            self.loop.stop()

    def _take_back(self, notify: Callable[[], None] | None = None) -> bool:
        """After a calm spell (one caller at a time), ask the bridge's thread to hand the
        loop back (to the caller that takes ``_lead`` next): whether it was asked.
        ``notify()`` is called once the thread has let go of the loop, or decided not to."""
        with self._scheduling:
            if not self._calm or self._waiting or self._pinned:
                return False
            self._calm = False
            self._hand_back = True
            if notify is not None:
                self._hand_back_notify.append(notify)
        self.call_soon(self._nudge_main)
        return True

    def _drive(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None],
        coro: C,
        timeout: float | None,
        lead_wait: float = 0.0,
    ) -> asyncio.Future[Any] | None:
        """Run the loop in this thread until ``coro``'s future is done, then let go of it:
        one thread wake-up fewer each way than waiting for the bridge's own thread. ``None``
        (``coro`` untouched) when another thread runs the loop (``_lead`` is not free within
        ``lead_wait`` seconds).

        In the main thread, the Python handlers of :data:`DEFERRED_SIGNALS` (Ctrl-C's
        ``KeyboardInterrupt`` among them) run between callbacks, not inside one: an exception
        raised inside a callback could lose messages already read, or leave a ZeroMQ socket's
        wake-up spent with a message unread. The loop stops, the handler runs here, and what
        it raises is raised from the call (which is cancelled). The handlers are swapped in
        before ``_lead`` is taken and back out after it is let go, so nothing raised can keep
        ``_lead`` for good."""
        loop = self.loop
        futures: list[asyncio.Future[Any]] = []
        pending: list[tuple[int, Any]] = []  # signals that came while the loop ran
        handlers: dict[int, Any] = {}
        timer = None
        timed_out = False
        try:
            self._defer_signals(handlers, pending)
            if not (
                self._lead.acquire(True, lead_wait) if lead_wait else self._lead.acquire(False)
            ):
                return None
            try:
                if self._green_driver:  # a greenlet is amid its call, between two turns
                    return None
                self._enqueue(start, coro, futures, self._stop_loop, wake=False)
                self.thread_id = self._get_ident()
                if timeout is not None:
                    timer = loop.call_later(timeout, loop.stop)
                    deadline = timer.when()
                while True:
                    loop.run_forever()
                    run_pending(handlers, pending)  # (a handler that raises ends the call)
                    if futures and futures[0].done():
                        break
                    if timer is not None and loop.time() >= deadline:
                        timed_out = True
                        if not futures:  # (not started yet: start it, to cancel it now)
                            self._drain_inbox()
                        cancel_all(futures)
                        break
                self._settle()
            except BaseException:
                if self.thread_id:  # (queued: no later call may have to run the cancel)
                    self._abandon(futures)
                raise
            finally:
                self.thread_id = 0
                if timer is not None:
                    timer.cancel()
                self._lead.release()
        finally:
            restore_signals(handlers, pending)
        if timed_out:
            raise RPCTimeoutError(f"no answer within {timeout} s")
        return futures[0]

    def _abandon(self, futures: list[asyncio.Future[Any]]) -> None:
        """Cancel the call a lone caller running the loop gives up on (interrupted, killed,
        timed out by gevent), and have the cancellation take effect now, not at the next call
        (which may never come): its CANCEL goes out and the service's handler is cancelled at
        once. The caller holds ``_lead``; what it raises goes on up at once, never blocked.
        A call not started yet is started first (to be cancelled: an inbox left to the next
        turn would start it later, for nobody). The few turns that send the CANCEL run here;
        work still left after them (a task's cleanup, a send held back) is left to the
        bridge's own thread, which takes the loop over until the next calm spell."""
        try:
            if not futures:
                self._drain_inbox()
            cancel_all(futures)
            self._settle()
            if self.loop._ready or not all(  # type: ignore[attr-defined]
                fut.done() for fut in futures
            ):
                self._start_thread()
        except Exception:  # (the interrupt goes on up, not this: no new threads at exit)
            log.exception("error while cancelling an abandoned call")

    def _defer_signals(
        self,
        handlers: dict[int, Any],
        pending: list[tuple[int, Any]],
        wake: Callable[[], Any] | None = None,
    ) -> None:
        """In the main thread, :func:`~netcall._signals.defer` the handlers of
        :data:`DEFERRED_SIGNALS` (``wake()``, by default, stops the loop)."""
        if self._in_main_thread():
            defer_signals(
                handlers, pending, wake or functools.partial(self.call_soon, self.loop.stop)
            )

    def _settle(self) -> None:
        """Run what the last turn left ready (a corked send's flush, a done callback), a few
        turns at most: the loop may not run again until the next call."""
        loop = self.loop
        ready = getattr(loop, "_ready", None)
        for _ in range(4):
            if not ready:
                return
            loop.call_soon(loop.stop)
            loop.run_forever()

    def _in_main_thread(self) -> bool:
        """Whether the caller is the main thread (where Python runs signal handlers)."""
        return self._get_ident() == self._main_ident()

    def _stop_loop(self, _fut: object = None) -> None:
        self.loop.stop()


def cancel_all(futures: list[asyncio.Future[Any]]) -> None:
    """Cancel every future of ``futures``."""
    for fut in futures:
        fut.cancel()


def safely(fn: Callable[[], None]) -> None:
    """``fn()``, logging what it raises (a closer, a hand-back notification)."""
    try:
        fn()
    except Exception:
        log.exception("error while closing")


def run_all(fns: list[Callable[[], None]]) -> None:
    """:func:`safely` each of ``fns``."""
    for fn in fns:
        safely(fn)
