"""Waiting from gevent: a :class:`HubPort` runs callbacks on one gevent hub from any thread,
so a greenlet can wait for netcall's loop thread without blocking its hub (see
:mod:`netcall._bridge`)."""

from __future__ import annotations

import functools
import logging
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["HubPort", "current_port", "port_for"]

log = logging.getLogger("netcall")


class HubPort:
    """Runs callbacks on one gevent hub, from any thread; lets greenlets of that hub wait.

    One per hub (:func:`port_for`). :meth:`submit` appends to a deque and wakes the hub
    through an ``async_`` watcher, which is started once, here, before anything is scheduled
    (libev forgets a ``send`` that came before ``start``). The watcher holds the hub alive
    only while :meth:`hold` counts something waiting, so an idle hub can still exit.
    """

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self._queue: deque[Callable[[], Any]] = deque()
        self._holds = 0
        self._watcher = hub.loop.async_()
        self._watcher.start(self._drain)
        self._watcher.ref = False

    def submit(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the hub (thread-safe, never blocks). It must not block either."""
        self._queue.append(fn)
        self._watcher.send()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            fn = queue.popleft()
            try:
                fn()
            except BaseException:  # a callback must never kill the hub
                log.exception("error in a callback on the gevent hub")

    def hold(self) -> None:
        """Keep the hub running (call from the hub's thread)."""
        self._holds += 1
        self._watcher.ref = True

    def unhold(self) -> None:
        self._holds -= 1
        if self._holds <= 0:
            self._holds = 0
            self._watcher.ref = False

    @staticmethod
    def current_greenlet() -> Any:
        """The greenlet running now (in this thread)."""
        return _gevent().getcurrent()

    def new_waiter(self) -> Any:
        """A fresh gevent ``Waiter`` on this hub."""
        return _gevent().Waiter(self.hub)

    def reader(self, fd: int) -> Any:
        """A watcher of ``fd`` becoming readable, on this hub (for :meth:`wait_readable`;
        keep it for the next wait, as long as ``fd`` stays open: a new one costs system
        calls each time)."""
        return self.hub.loop.io(fd, 1)

    def wait_readable(self, waiter: Any, reader: Any, seconds: float | None) -> None:
        """Block the calling greenlet until ``reader`` (from :meth:`reader`, if any) sees its
        file readable, ``seconds`` (``None``: no limit) have passed, or something switches to
        ``waiter`` (from this hub). A value switched to ``waiter`` before the wait ends it at
        once (clear it first)."""
        if reader is not None:
            reader.start(waiter.switch, None)
        timer = None
        if seconds is not None:
            timer = self.hub.loop.timer(seconds if seconds > 0 else 0.0)
            timer.start(waiter.switch, None)
        self.hold()
        try:
            waiter.get()
        finally:
            self.unhold()
            if reader is not None:
                reader.stop()
            if timer is not None:
                timer.close()

    def waker(self, waiter: Any) -> Callable[..., None]:
        """A callback, for any thread, that ends :meth:`wait` on ``waiter`` (a
        :meth:`new_waiter`); what it is given is ignored."""
        submit = self.submit
        switch = functools.partial(waiter.switch, None)

        def wake(_value: object = None) -> None:
            submit(switch)

        return wake

    def wait(self, waiter: Any) -> None:
        """Block the calling greenlet until ``waiter``'s :meth:`waker` is called (from any
        thread; before this wait too)."""
        self.hold()
        try:
            waiter.get()
        finally:
            self.unhold()


class _Gevent:
    """What this module uses of gevent, imported once (an import statement per call costs a
    lookup through the import machinery; this is on every bridged call's path)."""

    def __init__(self) -> None:
        from gevent._hub_local import get_hub_if_exists
        from gevent.hub import Waiter
        from greenlet import getcurrent

        self.get_hub_if_exists = get_hub_if_exists
        self.getcurrent = getcurrent
        self.Waiter = Waiter


_imported: list[_Gevent] = []


def _gevent() -> _Gevent:
    # Only once gevent is in use: netcall never imports it for callers that do not.
    if not _imported:
        _imported.append(_Gevent())
    return _imported[0]


def port_for(hub: Any) -> HubPort:
    """The :class:`HubPort` of ``hub`` (created on first use; call from the hub's thread)."""
    port: HubPort | None = getattr(hub, "_netcall_port", None)
    if port is None:
        port = HubPort(hub)
        hub._netcall_port = port
    return port


def current_port() -> HubPort | None:
    """The hub port to wait on, when the caller is a greenlet; ``None`` for a plain thread.

    A greenlet is any caller in a thread that has a gevent hub, or in a process whose
    ``threading`` is monkey-patched.

    Raises:
        RuntimeError: called from the hub itself, which must never block.
    """
    gevent = sys.modules.get("gevent")
    if gevent is None:
        return None
    hub = _gevent().get_hub_if_exists()
    if hub is None:
        monkey = sys.modules.get("gevent.monkey")
        if monkey is None or not monkey.is_module_patched("threading"):
            return None
        hub = gevent.get_hub()
    if gevent.getcurrent() is hub:
        raise RuntimeError("netcall cannot block the gevent hub; call it from a greenlet")
    return port_for(hub)
