"""A byte-forwarding TCP relay that records every byte it forwards, both ways.

Put it between a client and a service to see what crosses the wire::

    with Relay(("127.0.0.1", service_port)) as relay:
        client.connect(relay.url)
        ...
        assert b"marker" not in relay.seen()

:class:`GreetingRelay` instead splits each client's ZMTP greeting the way that makes libzmq's
CURVE server hang up on a plain client before naming its mechanism.
"""

from __future__ import annotations

import selectors
import socket
import threading
from types import TracebackType
from typing import Any


class Relay:
    """Listens on 127.0.0.1 (a free port); each connection is forwarded to ``target``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"tcp://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._bytes = bytearray()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def seen(self) -> bytes:
        """Every byte forwarded so far, in both directions."""
        with self._lock:
            return bytes(self._bytes)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        return
                    if sock is self._listener:
                        inside, _ = self._listener.accept()
                        try:
                            outside = socket.create_connection(self.target, timeout=5)
                        except OSError:
                            inside.close()
                            continue
                        for a, b in ((inside, outside), (outside, inside)):
                            a.setblocking(False)
                            peers[a] = b
                            sel.register(a, selectors.EVENT_READ, None)
                        continue
                    other = peers.get(sock)
                    if other is None:
                        continue
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        for s in (sock, other):
                            if s in peers:
                                sel.unregister(s)
                                del peers[s]
                                s.close()
                        continue
                    with self._lock:
                        self._bytes += data
                    try:
                        other.setblocking(True)
                        other.sendall(data)
                        other.setblocking(False)
                    except OSError:
                        pass
        finally:
            for s in peers:
                s.close()
            sel.close()

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(5)
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class GreetingRelay:
    """A TCP relay to ``target`` that hands the service each client's ZMTP greeting in two
    writes: the 10-byte signature at once, then the other 54 bytes together (or what came
    within ``hold`` seconds of their first byte).

    That is the order in which libzmq's CURVE server reads a plain client's version and
    mechanism in one go, sees the mismatch and hangs up before its own mechanism has gone
    out: the client sees only end-of-file (``HANDSHAKE_FAILED_NO_DETAIL``). On loopback it
    happens on its own, more often under load; through this relay, every time.
    ``service_bytes`` lists, per connection, how many bytes the service sent.
    """

    SIGNATURE, REST = 10, 54

    def __init__(self, target: tuple[str, int], hold: float = 0.5) -> None:
        self.target = target
        self.hold = hold
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self.service_bytes: list[int] = []
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._start(self._accept)

    def _start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="greeting-relay", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                inside, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                outside = socket.create_connection(self.target, timeout=5)
            except OSError:
                inside.close()
                continue
            outside.settimeout(None)
            with self._lock:
                if self._closed:
                    inside.close()
                    outside.close()
                    return
                self._socks += [inside, outside]
                index = len(self.service_bytes)
                self.service_bytes.append(0)
            self._start(self._from_service, outside, inside, index)
            self._start(self._from_client, inside, outside)

    def _from_service(self, src: socket.socket, dst: socket.socket, index: int) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.service_bytes[index] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(src, dst)

    def _from_client(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            dst.sendall(_receive(src, self.SIGNATURE, None))
            dst.sendall(_receive(src, self.REST, self.hold))
            src.settimeout(None)
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(src, dst)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            socks, threads = list(self._socks), list(self._threads)
        _hang_up(self._listener)  # wakes the accept() in progress (close() alone does not)
        self._listener.close()
        for sock in socks:
            _hang_up(sock)
        for thread in threads:
            thread.join(5)
        for sock in socks:
            sock.close()

    def __enter__(self) -> GreetingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _receive(sock: socket.socket, size: int, hold: float | None) -> bytes:
    """``size`` bytes from ``sock`` (fewer at end-of-file), or with ``hold``, what came within
    ``hold`` seconds of the first of them."""
    data = bytearray()
    sock.settimeout(None)
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if hold is not None:
            sock.settimeout(hold)
    return bytes(data)


def _hang_up(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
