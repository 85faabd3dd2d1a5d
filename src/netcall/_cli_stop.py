"""Ctrl-C and SIGTERM for ``netcall serve``, also while a handler holds the loop.

The first signal stops the service gracefully (``--grace`` seconds for the calls in flight),
the second stops it at once. Both are taken on the loop, between callbacks, as
``loop.add_signal_handler`` would. But a plain function served as it is (``netcall serve
time``, then ``sleep 20``) runs on the loop itself, and holds it: nothing on the loop runs until
it returns. So the handler here is a Python signal handler, which Python runs in the main
thread at once, even inside ``time.sleep``. When it finds the main thread in user code that
netcall called (:func:`_held_by`: a handler, a middleware, a generator's step or its
``finally``), it does what it can there:

- the first signal says at once that the service is stopping, and from then on new calls are
  refused; once the grace is over and user code still holds the loop, that code gets
  ``asyncio.CancelledError`` where it is (its caller gets ServiceStoppingError, as for an
  ``async def`` handler cancelled at the end of the grace). The graceful stop that then runs
  on the loop has what is left of the grace, counted from the signal;
- the second interrupts that code the same way at once, and the service closes.

Anywhere else (the loop waiting, netcall's own code) it only hands the signal to the loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from . import _eager
from ._service.chain import ServiceChain
from ._service.dispatch import Dispatcher
from ._service.streams import Producers, close_generator_soon, sync_step
from .service import RPCService

__all__ = ["Interrupts", "stopping_message"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# netcall's and asyncio's own code (directories, so that a module named netcall_x is not).
_OURS = tuple(os.path.dirname(m.__file__ or "") + os.sep for m in (sys.modules[__name__], asyncio))
# Where netcall (or asyncio, for a task's step or a callback) calls user code.
_CALLERS = frozenset(
    fn.__code__
    for fn in (
        Dispatcher.invoke,
        _eager.start_task,
        _eager.run_to_end,
        ServiceChain.run,
        ServiceChain.endpoint,
        Producers._step,
        Producers._finalize,
        sync_step,
        close_generator_soon,
        asyncio.Handle._run,
    )
)
# Callers whose user code is a call not counted in active_calls yet (run inline, or the
# first step of its task).
# (An async handler with no await, run by _eager.run_to_end, is under Dispatcher.invoke.)
_UNCOUNTED = frozenset({Dispatcher.invoke.__code__, _eager.start_task.__code__})


def _ours(frame: types.FrameType) -> bool:
    return frame.f_code.co_filename.startswith(_OURS)


def _held_by(frame: types.FrameType | None) -> types.CodeType | None:
    """The code of netcall's (or asyncio's) that called the user code the main thread is in,
    stopped at ``frame``; ``None`` when it is in netcall's or asyncio's own code, or in code
    they call themselves (logging, say)."""
    outer = frame
    while outer is not None:  # a signal taken inside this module's handler: where that one was
        if outer.f_code is _ON_SIGNAL:
            frame = outer.f_back
        outer = outer.f_back
    if frame is None or _ours(frame):
        return None
    caller = frame.f_back
    while caller is not None and not _ours(caller):
        caller = caller.f_back
    if caller is None or caller.f_code not in _CALLERS:
        return None
    return caller.f_code


def _uncounted(frame: types.FrameType | None) -> bool:
    """Whether the main thread, stopped at ``frame``, runs a call not counted in
    ``active_calls`` yet: one run inline, or the first step of its task."""
    while frame is not None:
        if frame.f_code in _UNCOUNTED:
            return True
        frame = frame.f_back
    return False


def stopping_message(grace: float, busy: int) -> str:
    """What the first Ctrl-C says (after ``netcall: ``)."""
    calls = "call" if busy == 1 else "calls"
    return f"stopping, waiting up to {grace:g} s for {busy} {calls}; Ctrl-C again to stop now"


def _say(line: str) -> None:
    # Straight to the file: the main thread may be in the middle of a write to sys.stderr.
    try:
        os.write(sys.stderr.fileno(), f"netcall: {line}\n".encode())
    except (OSError, ValueError):
        pass


def _answer(event: threading.Event) -> None:
    event.set()


class Interrupts:
    """The signal handlers of one ``netcall serve`` run. ``first(say, grace)`` and
    ``second(say)`` run on the loop: the graceful stop (with what is left of the grace) and
    the stop now, each saying so unless this said it already. ``stops`` counts the signals
    so far."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        service: RPCService,
        grace: float,
        first: Callable[[bool, float], None],
        second: Callable[[bool], None],
    ) -> None:
        self._loop = loop
        self._service = service
        self._grace = grace
        self._first = first
        self._second = second
        self.stops = 0
        self._until = 0.0  # when the grace ends, from the first signal on
        self._forced = False
        self._done = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def remove(self) -> None:
        """Put the previous handlers back (the run is over: the watcher stops too)."""
        self._done.set()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        held = _held_by(frame)
        if self._forced:  # the watcher's: the grace is over and user code still holds on
            self._forced = False
            if held is not None:
                raise asyncio.CancelledError("the service stopped before the call finished")
            return
        self.stops += 1
        if self.stops == 1:
            self._until = time.monotonic() + self._grace
            if held is not None:
                self._service._refuse_calls()
                busy = self._service.active_calls + self._service.active_streams
                _say(stopping_message(self._grace, busy + _uncounted(frame)))
            threading.Thread(target=self._watch, name="netcall-stop", daemon=True).start()
            self._to_loop(self._graceful, held is None)
        elif held is not None:
            _say("stopping now")
            # The code is interrupted as at the end of the grace (its caller is told the
            # service stopped), and the service closes on the loop as soon as it lets go.
            self._to_loop(self._second, False)
            raise asyncio.CancelledError("the service stopped before the call finished")
        else:
            self._to_loop(self._second, True)

    def _graceful(self, say: bool) -> None:
        self._first(say, max(0.0, self._until - time.monotonic()))

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the run is over
            pass

    def _watch(self) -> None:
        """After the grace: while user code holds the loop, interrupt it (every 0.2 s)."""
        if self._done.wait(self._grace):
            return
        while not self._done.is_set():
            answered = threading.Event()
            self._to_loop(_answer, answered)
            if not answered.wait(0.05) and not self._done.is_set():
                self._forced = True
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            if self._done.wait(0.2):
                return


_ON_SIGNAL = Interrupts._on_signal.__code__
