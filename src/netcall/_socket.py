"""The one place netcall creates and configures its ROUTER sockets (service and client).

Later work (CURVE security, socket options) adds its settings here, once, for both ends.

Whatever kind of pyzmq context the user passes (``zmq.green``, ``zmq.asyncio`` or plain),
netcall's sockets are plain ones, made from a shadow of it (:func:`plain_context`: the same
libzmq context, so ``inproc://`` and ``term()`` still span both). netcall drives its sockets
from its own loop by file descriptor; a ``zmq.green`` socket would also start a watcher on the
hub of the thread that made it, and that hub and netcall's loop thread would then both work
the same socket: calls hung, and processes crashed (SIGSEGV, SIGABRT).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import stat
from collections.abc import Iterator
from typing import Any

import zmq

from ._edge import map_exceptions

__all__ = [
    "IpcFiles",
    "QuietSocket",
    "bound_endpoint",
    "connecting_out",
    "make_router",
    "max_message_size",
    "monitor_socket",
    "plain_context",
    "stop_monitor",
]

#: Messages queued per peer before a send reports "busy" (ZeroMQ's high-water marks).
HWM = 10000


_monitors = itertools.count(1)


class QuietSocket(zmq.Socket[Any]):
    """A socket that, collected unclosed (its service or client was never closed), closes at
    once and quietly instead of raising pyzmq's ResourceWarning: whatever the order in which a
    collected cycle or a finishing interpreter finalizes objects. Closing it stops its monitor
    first (see :func:`stop_monitor`)."""

    def close(self, linger: int | None = None) -> None:
        stop_monitor(self)
        super().close(linger)

    def __del__(self) -> None:
        try:
            if not self.closed:
                self.close(linger=0)
        except Exception:
            pass


def monitor_socket(sock: zmq.Socket[Any], events: int) -> zmq.Socket[Any]:
    """A PAIR socket receiving ``sock``'s monitor events (a :class:`QuietSocket`).

    Its queue is unbounded (``RCVHWM`` 0): libzmq's I/O thread sends each event with a
    blocking send, so a full queue (a loop that does not read for a while) would stop every
    socket of the context, not only this one. Before closing the PAIR, stop the monitor
    (:func:`stop_monitor`; closing a :class:`QuietSocket` does it).
    """
    addr = f"inproc://netcall-monitor-{os.getpid()}-{next(_monitors)}"
    sock.monitor(addr, events)
    pair: zmq.Socket[Any] = sock.context.socket(zmq.PAIR, socket_class=QuietSocket)
    try:
        pair.setsockopt(zmq.RCVHWM, 0)
        pair.setsockopt(zmq.LINGER, 0)
        pair.connect(addr)
    except BaseException:
        stop_monitor(sock)
        pair.close(linger=0)
        raise
    return pair


def stop_monitor(sock: zmq.Socket[Any]) -> None:
    """Stop ``sock``'s monitor, if it has one (a no-op once ``sock`` is closed).

    Call it before closing the monitor's PAIR, and before closing ``sock`` itself (a socket
    reports events until libzmq has reaped it, after ``close()``). libzmq's I/O thread sends
    each event with a blocking send; once the PAIR is closed, nothing can take it, and that
    send never returns: every socket of the context stops, in this process, for good. Seen
    as calls that time out after a client closed while one of its connections broke
    (tests/test_monitor_close.py).
    """
    if sock.closed:
        return
    try:
        sock.monitor(None, 0)
    except zmq.ZMQError:
        pass


def plain_context(context: zmq.Context[Any]) -> zmq.Context[Any]:
    """``context`` itself if it is a plain ``zmq.Context`` (or terminated: it then refuses
    sockets itself), else a plain shadow of it."""
    if type(context) is zmq.Context or context.closed:
        return context
    return zmq.Context.shadow(context.underlying)


def max_message_size(value: int | None) -> int | None:
    """``max_message_size`` as given to a service or a broker: a positive number of bytes, or
    ``None`` (no limit; ZeroMQ's ``-1`` is taken to mean the same).

    Raises:
        ValueError: zero, another negative number, or not an integer.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"max_message_size must be a number of bytes or None, not {value!r}")
    if value == -1:
        return None
    if value < 1:
        raise ValueError(f"max_message_size must be at least 1 byte, not {value}")
    return value


@contextlib.contextmanager
def connecting_out(sock: zmq.Socket[Any]) -> Iterator[None]:
    """Around a ``connect``: the connection made in the block has no ZeroMQ per-frame limit
    (ZMQ_MAXMSGSIZE); the socket's own limit, for its binds, comes back after (ZeroMQ copies
    a socket's options into each connection when it is made).

    On the side that connected, libzmq ends a connection on which a frame over the limit came
    and never makes it again (a protocol error ends the session; it does not reconnect): one
    oversized call from any client would cut a service off its broker for good. Where the
    socket connects out, only netcall's own check of the whole message applies (a message
    over the limit is refused; the connection stays).
    """
    limit = sock.getsockopt(zmq.MAXMSGSIZE)
    if limit == -1:
        yield
        return
    sock.setsockopt(zmq.MAXMSGSIZE, -1)
    try:
        yield
    finally:
        sock.setsockopt(zmq.MAXMSGSIZE, limit)


def make_router(
    context: zmq.Context[Any],
    *,
    server: bool,
    heartbeat: float | None,
    max_message_size: int | None = None,
    send_hwm: int = HWM,
    receive_hwm: int = HWM,
) -> zmq.Socket[Any]:
    """A ROUTER socket configured for netcall: no linger, ROUTER_MANDATORY (an unknown peer is
    an error, not a silent drop), high-water marks (default :data:`HWM`), optional heartbeats
    (a peer silent for three intervals is dropped) and maximum message size. ``server`` says which
    end (the service binds; the client connects). The socket is a plain one on ``context``'s
    libzmq context, whatever kind of pyzmq context it is (see the module docstring).

    Raises:
        TransportError, ClientClosedError: ZeroMQ refused (``__cause__``: the ZMQError).
    """
    del server  # the same options on both ends today; security settings will differ
    with map_exceptions("cannot create a socket"):
        sock: zmq.Socket[Any] = plain_context(context).socket(zmq.ROUTER, socket_class=QuietSocket)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.SNDHWM, int(send_hwm))
            sock.setsockopt(zmq.RCVHWM, int(receive_hwm))
            if max_message_size is not None:
                sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_size))
            if heartbeat:
                sock.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat * 1000))
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(heartbeat * 3000))
        except BaseException:
            sock.close(linger=0)
            raise
    return sock


class IpcFiles:
    """The socket files a socket's ``ipc://`` binds made, removed when it unbinds them or
    closes (libzmq removes them only if its I/O thread gets to it before the process exits):
    each only while it is still the file that bind made (another process may have bound the
    same path since), wherever the process's current directory is by then. Abstract
    endpoints (``ipc://@name``) have no file."""

    __slots__ = ("_made",)

    def __init__(self) -> None:
        self._made: dict[str, tuple[str, int, int, bool]] = {}

    def bound(self, url: str, asked: str) -> None:
        """``url`` was just bound, as ``bound`` lists it; ``asked``: as the caller wrote it
        (``ipc://*``: libzmq made a directory for it, which goes too)."""
        if not url.startswith("ipc://") or url.startswith("ipc://@"):
            return
        path = os.path.abspath(url[len("ipc://") :])
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISSOCK(st.st_mode):
            self._made[url] = (path, st.st_dev, st.st_ino, asked == "ipc://*")

    def remove(self, url: str) -> None:
        """``url`` is no longer listened on: remove its file, if it is still ours."""
        made = self._made.pop(url, None)
        if made is None:
            return
        path, dev, ino, in_own_dir = made
        try:
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):
                os.unlink(path)
                if in_own_dir:  # (libzmq removes it only if it removes the file itself)
                    os.rmdir(os.path.dirname(path))
        except OSError:
            pass

    def remove_all(self) -> None:
        """The socket closed."""
        for url in list(self._made):
            self.remove(url)


def bound_endpoint(sock: zmq.Socket[Any], url: str) -> str:
    """The endpoint ``url`` was bound as: a wildcard (``tcp://host:*``, ``ipc://*``) is
    resolved to what ZeroMQ chose, as clients must use it."""
    if url.endswith(":*") or url == "ipc://*":
        return sock.get_string(zmq.LAST_ENDPOINT)
    return url
