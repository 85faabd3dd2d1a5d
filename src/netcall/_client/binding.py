"""A client that binds: the public ``bind``/``bind_ports``/``unbind``/``bound`` of
:class:`~netcall.RPCClient` (services ``connect()`` to the client and announce themselves; the
peer table does the work)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ..errors import ClientClosedError
from .peers import PeerTable

__all__ = ["ClientBinding"]


class ClientBinding:
    """Mixed into :class:`~netcall.RPCClient`."""

    _peers: PeerTable
    _closed: bool
    _start: Callable[[], object]

    @property
    def bound(self) -> set[str]:
        """The endpoints this client is bound to (services connect to them)."""
        return set(self._peers.bound)

    def bind(self, urls: str | Iterable[str], only: bool = False) -> None:
        """Bind to one or several endpoints: services ``connect()`` to the client and announce
        their methods; calls go to those that have the method (least loaded first), as with
        services the client connected to. With ``only=True`` the client ends up bound to
        exactly ``urls``.

        A service that stops gracefully (:meth:`RPCService.stop <netcall.RPCService.stop>`)
        says goodbye and gets no new calls; the calls sent to it before the client read the
        goodbye never start there, and go to another service that has the method (at most
        3 times for one call), or fail with :class:`~netcall.errors.ServiceStoppingError`
        when none is left. A call the stop cut short is not sent again.

        Raises:
            TransportError: an endpoint cannot be bound (also a ``zmq.ZMQError``).
            TypeError: an endpoint is not a ``str``.
            ClientClosedError: the client is closed.
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        self._peers.bind(urls, only)
        self._listen()

    def unbind(self, url: str) -> None:
        """Stop listening on ``url``."""
        self._peers.unbind(url)

    def bind_ports(
        self, ip: str = "127.0.0.1", port: int = 0, *, min_port: int = 49152, max_port: int = 65535
    ) -> int:
        """Bind ``tcp://ip:port``; with ``port=0`` pick a free port in [min_port, max_port].
        Returns the port.

        Raises:
            TransportError: the port is taken, or no free port was found.
            ClientClosedError: the client is closed.
        """
        if self._closed:
            raise ClientClosedError("the client is closed")
        port = self._peers.bind_ports(ip, port, min_port, max_port)
        self._listen()
        return port

    def _listen(self) -> None:
        """Read from now on: services that connect announce themselves before any call (with
        no loop running yet, reading starts with the first call)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._start()
