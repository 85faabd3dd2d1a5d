"""A byte-forwarding TCP relay that records every byte it forwards, both ways.

Put it between a client and a service to see what crosses the wire::

    with Relay(("127.0.0.1", service_port)) as relay:
        client.connect(relay.url)
        ...
        assert b"marker" not in relay.seen()
"""

from __future__ import annotations

import selectors
import socket
import threading
from types import TracebackType


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
