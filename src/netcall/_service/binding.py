"""The endpoints of :class:`~netcall.RPCService` (mixed into it): ``bind``, ``unbind``,
``bind_ports`` and ``bound``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import zmq

from .._edge import endpoint_change, endpoints
from .._reactor import SocketDriver
from .._socket import IpcFiles, bound_endpoint
from ..security import warn_if_exposed

__all__ = ["ServiceBinding"]

log = logging.getLogger("netcall")


class ServiceBinding:
    """Listening endpoints."""

    _bound: set[str]
    _ipc: IpcFiles
    _driver: SocketDriver | None
    name: str
    serializer: Any
    security: Any

    @property
    def socket(self) -> zmq.Socket[Any]:
        raise NotImplementedError  # RPCService opens it on first use

    @property
    def bound(self) -> set[str]:
        """The endpoints this service is bound to."""
        return set(self._bound)

    def bind(self, urls: str | Iterable[str], only: bool = False) -> None:
        """Bind to one or several endpoints (``tcp://``, ``ipc://``, ``inproc://``).

        With ``only=True`` the service ends up bound to exactly ``urls``: others are unbound.

        Raises:
            RPCError: an endpoint cannot be bound (address in use, bad address); the
                ``zmq.ZMQError`` is its ``__cause__``.
            TypeError: an endpoint is not a ``str``.
        """
        wanted = endpoints(urls)
        if only:
            for url in self._bound - set(wanted):
                self.unbind(url)
        for url in wanted:
            if url not in self._bound:
                with endpoint_change(f"cannot bind {url!r}", self._changed):
                    self.socket.bind(url)
                asked, url = url, bound_endpoint(self.socket, url)  # what clients can use
                self._ipc.bound(url, asked)
                self._bound.add(url)
                log.info("%s bound to %s", self.name, url)
                warn_if_exposed(url, self.serializer.name, self.security, "bound")

    def unbind(self, url: str) -> None:
        """Stop listening on ``url``."""
        if url in self._bound:
            self._bound.discard(url)
            try:
                self.socket.unbind(url)
            except zmq.ZMQError:
                pass
            self._ipc.remove(url)
            self._changed()

    def bind_ports(
        self, ip: str = "127.0.0.1", port: int = 0, *, min_port: int = 49152, max_port: int = 65535
    ) -> int:
        """Bind ``tcp://ip:port``; with ``port=0`` pick a free port in [min_port, max_port].
        Returns the port.

        Raises:
            RPCError: the port is taken, or no free port was found (``__cause__``: the
                ``zmq.ZMQError``).
        """
        if port:
            self.bind(f"tcp://{ip}:{port}")
            return port
        with endpoint_change(f"cannot bind tcp://{ip}", self._changed):
            chosen = self.socket.bind_to_random_port(f"tcp://{ip}", min_port, max_port)
        self._bound.add(f"tcp://{ip}:{chosen}")
        log.info("%s bound to tcp://%s:%d", self.name, ip, chosen)
        warn_if_exposed(f"tcp://{ip}:{chosen}", self.serializer.name, self.security, "bound")
        return chosen

    def _changed(self) -> None:
        # bind/unbind process the socket's pending commands, which can take the ZeroMQ FD's
        # edge while a message waits: a running service's driver checks EVENTS again.
        if self._driver is not None:
            self._driver.check_soon()
