"""Ctrl-C and SIGTERM for ``netcall serve``, also while a handler holds the loop.

The first signal stops the service gracefully (``--grace`` seconds for the calls in flight),
the second stops it at once. Both are taken on the loop, between callbacks, as
``loop.add_signal_handler`` would. But a plain function served as it is (``netcall serve
time``, then ``sleep 20``) runs on the loop itself, and holds it: nothing on the loop runs until
it returns. So the handler here is a Python signal handler, which Python runs in the main
thread at once, even inside ``time.sleep``. When it finds the main thread in a handler's own
code (:func:`_holding`), it does what it can there:

- the first signal says at once that the service is stopping, and from then on new calls are
  refused; once the grace is over and a handler still holds the loop, that handler gets
  ``asyncio.CancelledError`` where it is (its caller gets ServiceStoppingError, as for an
  ``async def`` handler cancelled at the end of the grace);
- the second raises ``KeyboardInterrupt`` in the handler, as Python does for a plain program.

Anywhere else (the loop waiting, netcall's own code) it only hands the signal to the loop.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

from . import _eager
from ._service.dispatch import Dispatcher
from ._service.streams import Producers, sync_step
from .service import RPCService

__all__ = ["Interrupts"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_OURS = (os.path.dirname(__file__), os.path.dirname(asyncio.__file__), selectors.__file__)
# Where netcall (or asyncio, for a task's step) calls a handler's or a generator's own code.
_CALLERS = frozenset(
    fn.__code__
    for fn in (
        Dispatcher.invoke,
        _eager.start_task,
        Producers._step,
        sync_step,
        asyncio.Handle._run,
    )
)


def _holding(frame: types.FrameType | None) -> bool:
    """Whether the main thread, stopped at ``frame``, is in a handler's own code, called by
    netcall (not in netcall's or asyncio's code, nor in code they call, such as logging)."""
    outer = frame
    while outer is not None:  # a signal taken inside this module's handler: where that one was
        if outer.f_code is _ON_SIGNAL:
            frame = outer.f_back
        outer = outer.f_back
    if frame is None or frame.f_code.co_filename.startswith(_OURS):
        return False
    caller = frame.f_back
    while caller is not None and not caller.f_code.co_filename.startswith(_OURS):
        caller = caller.f_back
    return caller is not None and caller.f_code in _CALLERS


def _say(line: str) -> None:
    # Straight to the file: the main thread may be in the middle of a write to sys.stderr.
    try:
        os.write(sys.stderr.fileno(), f"netcall: {line}\n".encode())
    except (OSError, ValueError):
        pass


class Interrupts:
    """The signal handlers of one ``netcall serve`` run. ``first()`` and ``second()`` run on
    the loop (the graceful stop, the stop now); ``stops`` counts the signals so far."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        service: RPCService,
        grace: float,
        first: Callable[[bool], None],
        second: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._service = service
        self._grace = grace
        self._first = first
        self._second = second
        self.stops = 0
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
        held = _holding(frame)
        if self._forced:  # the watcher's: the grace is over and a handler still runs
            self._forced = False
            if held:
                raise asyncio.CancelledError("the service stopped before the call finished")
            return
        self.stops += 1
        if self.stops == 1:
            if held:
                self._service._refuse_calls()
                busy = self._service.active_calls + self._service.active_streams + 1
                _say(
                    f"stopping, waiting up to {self._grace:g} s for {busy} "
                    f"call{'s' if busy != 1 else ''}; Ctrl-C again to stop now"
                )
            threading.Thread(target=self._watch, name="netcall-stop", daemon=True).start()
            self._to_loop(self._first, not held)
        elif held:
            _say("stopping now")
            raise KeyboardInterrupt
        else:
            self._to_loop(self._second)

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the run is over
            pass

    def _watch(self) -> None:
        """After the grace: while a handler holds the loop, interrupt it (every 0.2 s)."""
        if self._done.wait(self._grace):
            return
        while not self._done.is_set():
            answered = threading.Event()
            self._to_loop(answered.set)
            if not answered.wait(0.05) and not self._done.is_set():
                self._forced = True
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            if self._done.wait(0.2):
                return


_ON_SIGNAL = Interrupts._on_signal.__code__
