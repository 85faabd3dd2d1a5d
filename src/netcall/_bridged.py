"""The core service driven from threads or greenlets: its socket lives on netcall's own loop
thread (:mod:`netcall._bridge`), and every call that touches it is run there, blocking only
the caller. The gevent and threading services are this plus where their handlers run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import _bridge
from .service import RPCService

__all__ = ["BridgedService"]


class BridgedService(RPCService):
    """An :class:`~netcall.RPCService` on netcall's loop thread. Endpoints, :meth:`stop` and
    :meth:`close` block until done; subclasses start it with :meth:`_start_on_loop`.
    The loop thread is released when the service stops or closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bridge = _bridge.acquire()
        self._bridge.closers[id(self)] = super().close
        self._released = False

    # -- endpoints (the socket belongs to the loop thread) ----------------------------------

    def bind(self, urls: str | Iterable[str], only: bool = False) -> None:
        self._bridge.call(super().bind, urls, only)

    def unbind(self, url: str) -> None:
        self._bridge.call(super().unbind, url)

    def bind_ports(
        self, ip: str = "127.0.0.1", port: int = 0, *, min_port: int = 49152, max_port: int = 65535
    ) -> int:
        return self._bridge.call(super().bind_ports, ip, port, min_port=min_port, max_port=max_port)

    # -- running --------------------------------------------------------------------------

    def _start_on_loop(self) -> None:
        """Start the core on the loop (from any thread, the loop's own included).

        Raises:
            RuntimeError: the service is closed.
        """
        if self._bridge.in_loop_thread():  # the core's serve() starts the service too
            RPCService.start(self, self._bridge.loop)
        else:
            self._bridge.call(RPCService.start, self, self._bridge.loop)

    def stop(self, grace: float | None = None) -> None:  # type: ignore[override]
        """Stop gracefully (see :meth:`RPCService.stop`), blocking until done."""
        if not self._released and self._bridge.alive and not self.closed:
            self._bridge.run(super().stop(grace))
        self._finished()

    def close(self) -> None:
        """Close at once: cancel running calls, close the socket."""
        if not self._released and self._bridge.alive and not self.closed:
            self._bridge.call(super().close)
        self._finished()

    def _finished(self) -> None:
        if self._released:
            return
        self._released = True
        self._bridge.closers.pop(id(self), None)
        self._on_finished()
        _bridge.release(self._bridge)

    def _on_finished(self) -> None:
        """Called once when the service has stopped or closed (before the loop is released)."""
