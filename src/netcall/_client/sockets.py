"""The client's two sockets, the ROUTER and its monitor: opened together on first use (the
monitor before any connect, so no connection event is missed), closed together (quietly if
the client is collected unclosed: :class:`netcall._socket.QuietSocket`). Also the rule for a
client whose event loop closed under it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from .._reactor import SocketDriver
from .._socket import monitor_socket
from ..errors import RPCError
from .peers import MONITOR_EVENTS, close_sockets

__all__ = ["ClientSockets", "check_loop_left"]


class ClientSockets:
    __slots__ = ("_make", "monitor", "socket")

    def __init__(self, make: Callable[[], zmq.Socket[Any]]) -> None:
        self._make = make
        self.socket: zmq.Socket[Any] | None = None
        self.monitor: zmq.Socket[Any] | None = None

    def open(self) -> zmq.Socket[Any]:
        if self.socket is None:
            sock = self._make()
            self.monitor = monitor_socket(sock, MONITOR_EVENTS)
            self.socket = sock
        return self.socket

    def close(
        self,
        driver: SocketDriver | None,
        monitor_driver: SocketDriver | None,
        farewell: list[list[Any]],
    ) -> None:
        close_sockets(driver, self.socket, monitor_driver, self.monitor, farewell)


def check_loop_left(in_flight: int) -> None:
    """The loop of a client's earlier calls is closed (a second ``asyncio.run()``): the client
    starts over on the running loop, unless work was left in flight on the old one.

    Raises:
        RPCError: calls or streams were in flight when the old loop closed.
    """
    if in_flight:
        raise RPCError(
            "this client's event loop was closed with calls or streams in flight: "
            "close the client before its loop, or use a new client"
        )
