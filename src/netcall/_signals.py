"""Signal handlers deferred while netcall's loop runs in the main thread (see
:mod:`netcall._bridge`): raised inside one of the loop's callbacks, an exception (Ctrl-C's
``KeyboardInterrupt``, a ``SIGALRM`` timeout) could lose messages already read, or cut the
bridge's bookkeeping in two. The handlers are swapped for one that notes the signal, and run
later, between callbacks, by the caller that deferred them."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no enum conversions: 10x faster)
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEFERRED_SIGNALS",
    "defer_signals",
    "put_back_signals",
    "restore_signals",
    "run_pending",
]

#: Signals whose Python handlers run between the loop's callbacks while a caller in the main
#: thread runs the loop (see ``Bridge._drive``).
DEFERRED_SIGNALS = tuple(
    getattr(_signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGALRM", "SIGHUP", "SIGUSR1", "SIGUSR2")
    if hasattr(_signal, name)
)


def defer_signals(
    handlers: dict[int, Any], pending: list[tuple[int, Any]], wake: Callable[[], Any]
) -> None:
    """Swap the Python handlers of :data:`DEFERRED_SIGNALS` (call from the main thread) for
    one that appends to ``pending`` and calls ``wake()``; the swapped-out ones go into
    ``handlers``, and :func:`restore_signals` puts them back."""

    def later(signum: int, frame: Any) -> None:
        pending.append((signum, frame))
        wake()

    for signum in DEFERRED_SIGNALS:
        handler = _signal.getsignal(signum)
        if callable(handler):
            handlers[signum] = handler
            _signal.signal(signum, later)


def put_back_signals(handlers: dict[int, Any]) -> None:
    """Put back the handlers :func:`defer_signals` swapped out (and forget them).

    ``signal.signal`` first runs the handlers of signals already pending, and changes nothing
    when one raises (a SIGALRM whose own handler was put back a moment before): an entry
    leaves ``handlers`` only once its handler is back, every handler is put back (a few
    tries each), and the first exception goes on up afterwards."""
    raised: BaseException | None = None
    tries = 0
    blocked = None
    try:
        while handlers:
            signum = next(iter(handlers))
            try:
                _signal.signal(signum, handlers[signum])
            except BaseException as exc:  # (raised by a pending signal's handler: again)
                if raised is None:
                    raised = exc
                tries += 1
                if tries == 3 and blocked is None and hasattr(_signal, "pthread_sigmask"):
                    # No signal trips any more: those already tripped run once each, and
                    # the next try succeeds (the blocked ones come once the mask is back).
                    blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, DEFERRED_SIGNALS)
                if tries < 100:
                    continue
            del handlers[signum]
            tries = 0
    finally:
        if blocked is not None:
            try:
                _signal.pthread_sigmask(_signal.SIG_SETMASK, blocked)
            except BaseException as exc:  # (a blocked signal's handler, now back)
                if raised is None:
                    raised = exc
    if raised is not None:
        raise raised


def restore_signals(handlers: dict[int, Any], pending: list[tuple[int, Any]]) -> None:
    """Put back the handlers :func:`defer_signals` swapped out, then run them for the
    signals that came meanwhile (what they raise goes on up)."""
    try:
        put_back_signals(dict(handlers))  # (``handlers`` whole: run_pending looks there)
    finally:
        run_pending(handlers, pending)


def run_pending(handlers: dict[int, Any], pending: list[tuple[int, Any]]) -> None:
    """Run the handlers of the signals that came while deferred (what one raises goes on up,
    the others stay pending); a handler already put back is looked up where it is now."""
    while pending:
        signum, frame = pending.pop(0)
        handler = handlers.get(signum) or _signal.getsignal(signum)
        if callable(handler):
            handler(signum, frame)
