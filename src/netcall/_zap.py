"""ZAP: the hook through which ZeroMQ asks who may complete a CURVE handshake.

ZeroMQ sends one ZAP request per handshake to ``inproc://zeromq.zap.01`` in the socket's
context, and a context has room for one handler there. netcall runs one handler per context
(shared by every service of that context, counted by reference) and gives each service socket
its own ZAP domain; the handler answers each request with the policy registered under that
domain. So services with different allowlists can share a context (the default one, usually).

The handler runs in a real OS thread (started with the unpatched ``_thread`` under gevent) and
owns its sockets there: it needs no event loop, so it answers while a service's loop is busy,
under Tornado, gevent and the blocking client alike. Its sockets are made through a plain
``zmq.Context`` shadowing the user's context, so a ``zmq.asyncio`` or ``zmq.green`` context
works too.

Rules this file keeps:

- Fail closed: a request for an unknown netcall domain, a malformed request or a policy that
  raised is refused. (Domains netcall did not create are answered "200", as ZeroMQ does when no
  handler is bound, so other CURVE sockets in the context behave as they would without us.)
- A handler is released only after the sockets that use it are closed: with no handler bound,
  ZeroMQ lets every client in.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

__all__ = ["Allowlist", "ZapRegistration", "register"]

log = logging.getLogger("netcall.security")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
DOMAIN_PREFIX = "netcall-"
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two refusal warnings of one service
FOLDER_RECHECK = 1.0  # seconds an unchanged folder allowlist is trusted before it is re-read
STOP_TIMEOUT = 5.0  # seconds the handler thread gets to exit

_domains = itertools.count(1)
_MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def _original(module: str, name: str) -> Any:
    """``module.name`` before gevent's monkey-patching, if any."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


class Allowlist:
    """Which client keys a CURVE service accepts: any key, a fixed set, or the ``*.key`` files
    of a folder (re-read when the folder changes, and at least every :data:`FOLDER_RECHECK`
    seconds when a key is looked up, which catches a file edited in place).

    Refusals are logged as warnings, at most one per :data:`REFUSAL_LOG_INTERVAL` seconds
    (with the count of those not logged), so a peer retrying cannot flood the log.
    """

    def __init__(
        self,
        keys: frozenset[bytes] | None = None,
        folder: Path | None = None,
        label: str = "service",
        load: Callable[[Path], frozenset[bytes]] | None = None,
    ) -> None:
        self.label = label
        self.folder = folder
        self._keys = keys
        self._load = load
        self._lock = _original("_thread", "allocate_lock")()
        self._folder_stamp: int | None = None
        self._loaded_at = -float("inf")
        self._refusals = 0
        self._last_warning = -float("inf")
        if folder is not None:
            self._reload(time.monotonic())

    @property
    def allow_any(self) -> bool:
        return self._keys is None and self.folder is None

    def keys(self) -> frozenset[bytes] | None:
        """The allowed keys (Z85) now, or ``None`` for any key."""
        if self.folder is None:
            return self._keys
        with self._lock:
            now = time.monotonic()
            try:
                stamp = os.stat(self.folder).st_mtime_ns
            except OSError:
                stamp = None
            if stamp != self._folder_stamp or now - self._loaded_at >= FOLDER_RECHECK:
                self._reload(now)
            return self._keys or frozenset()

    def _reload(self, now: float) -> None:
        assert self.folder is not None and self._load is not None
        try:
            self._folder_stamp = os.stat(self.folder).st_mtime_ns
            self._keys = self._load(self.folder)
        except OSError as exc:
            # The folder went away or cannot be read: nobody is allowed until it is back.
            self._folder_stamp = None
            self._keys = frozenset()
            self._warn(f"cannot read the allowlist folder {self.folder}: {exc}; refusing all")
        self._loaded_at = now

    def check(self, key: bytes, address: str) -> bool:
        """Whether the client key ``key`` (Z85) may connect; logs refusals (rate-limited)."""
        keys = self.keys()
        if keys is None or key in keys:
            return True
        self.refused(f"client key {key.decode('ascii', 'replace')} from {address}")
        return False

    def refused(self, what: str, checked: bool = True) -> None:
        """Log a refusal (rate-limited); ``checked``: the allowlist said no."""
        self._warn(f"{self.label} refused {what}" + (": not in its allowlist" if checked else ""))

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        self._refusals += 1
        if now - self._last_warning < REFUSAL_LOG_INTERVAL:
            return
        more = self._refusals - 1
        self._refusals = 0
        self._last_warning = now
        if more:
            message += f" ({more} more refusals since the last warning)"
        log.warning("%s", message)


class _Handler:
    """The ZAP handler of one ZeroMQ context: a thread answering requests by domain."""

    def __init__(self, ctx: zmq.Context[Any]) -> None:
        self.policies: dict[bytes, Allowlist] = {}
        self.users = 0
        self._ctx: zmq.Context[Any] = zmq.Context.shadow(ctx.underlying)
        self._done = _original("_thread", "allocate_lock")()
        self._lock = _original("_thread", "allocate_lock")()
        self._changes: list[tuple[bytes, Any, Any]] = []
        zap = self._ctx.socket(zmq.REP, socket_class=zmq.Socket)
        zap.linger = 0
        try:
            zap.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            zap.close()
            if exc.errno == zmq.EADDRINUSE:
                raise RuntimeError(
                    "another ZAP handler (such as zmq.auth's Authenticator) is already bound in "
                    "this ZeroMQ context; give the netcall service its own context= "
                    "(zmq.Context()) to use CURVE"
                ) from exc
            raise
        self._zap = zap
        pipe_url = f"inproc://netcall-zap-pipe-{id(self)}-{os.getpid()}"
        self._pipe = self._ctx.socket(zmq.PAIR, socket_class=zmq.Socket)
        self._pipe.linger = 0
        self._pipe.bind(pipe_url)
        inner = self._ctx.socket(zmq.PAIR, socket_class=zmq.Socket)
        inner.linger = 0
        inner.connect(pipe_url)
        self._done.acquire()
        _original("_thread", "start_new_thread")(self._run, (inner,))

    # -- the handler thread ----------------------------------------------------------------

    def _run(self, pipe: zmq.Socket[Any]) -> None:
        zap = self._zap
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        monitors: dict[bytes, tuple[zmq.Socket[Any], Allowlist]] = {}
        by_socket: dict[zmq.Socket[Any], Allowlist] = {}
        try:
            while True:
                ready = dict(poller.poll())
                if pipe in ready:
                    if pipe.recv() == b"STOP":
                        return
                    self._sync(poller, monitors, by_socket)
                for sock, policy in list(by_socket.items()):
                    if sock in ready:
                        self._drain_monitor(sock, policy)
                while zap in ready:
                    try:
                        request = zap.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    zap.send_multipart(self.answer(request))
        except zmq.ZMQError as exc:  # the context was terminated under us
            if exc.errno not in (zmq.ETERM, zmq.ENOTSOCK):
                log.exception("the ZAP handler stopped")
        finally:
            self._sync(poller, monitors, by_socket, everything=True)
            try:
                zap.unbind(ZAP_ENDPOINT)
            except zmq.ZMQError:
                pass
            zap.close(linger=0)
            pipe.close(linger=0)
            self._done.release()

    def _sync(
        self,
        poller: zmq.Poller,
        monitors: dict[bytes, tuple[zmq.Socket[Any], Allowlist]],
        by_socket: dict[zmq.Socket[Any], Allowlist],
        everything: bool = False,
    ) -> None:
        """Take over the monitors added and close those removed since the last call (all of
        them when stopping)."""
        with self._lock:
            changes, self._changes = self._changes, []
        for domain, sock, policy in changes:
            if sock is not None:
                monitors[domain] = (sock, policy)
                by_socket[sock] = policy
                poller.register(sock, zmq.POLLIN)
            elif domain in monitors:
                gone, _ = monitors.pop(domain)
                del by_socket[gone]
                poller.unregister(gone)
                gone.close(linger=0)
        if everything:
            for sock, _ in monitors.values():
                sock.close(linger=0)
            monitors.clear()
            by_socket.clear()

    def _drain_monitor(self, sock: zmq.Socket[Any], policy: Allowlist) -> None:
        """Log the handshakes ZeroMQ failed before asking ZAP (a client without CURVE, or with
        another service key): the service socket's monitor reports them."""
        while True:
            try:
                event = parse_monitor_message(sock.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except Exception:  # pragma: no cover - libzmq's own format
                continue
            refused_handshake(event, policy)

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request (ZeroMQ RFC 27)."""
        if len(request) < 6:
            rid = request[1] if len(request) > 1 else b""
            return [b"1.0", rid, b"400", b"malformed ZAP request", b"", b""]
        version, rid, domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        if version != b"1.0":
            return [b"1.0", rid, b"400", b"unsupported ZAP version", b"", b""]
        policy = self.policies.get(domain)
        if policy is None:
            if domain.startswith(DOMAIN_PREFIX.encode()):
                return [b"1.0", rid, b"400", b"unknown domain", b"", b""]
            return [b"1.0", rid, b"200", b"OK", b"", b""]  # not ours: as if we were not here
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            policy.refused(f"a {mechanism.decode('ascii', 'replace')} handshake", checked=False)
            return [b"1.0", rid, b"400", b"CURVE required", b"", b""]
        key = z85.encode(credentials[0])
        try:
            allowed = policy.check(key, address.decode("utf-8", "replace"))
        except Exception:
            log.exception("the allowlist check failed; refusing the client")
            allowed = False
        if not allowed:
            return [b"1.0", rid, b"400", b"key not allowed", b"", b""]
        return [b"1.0", rid, b"200", b"OK", key, b""]

    # -- from other threads ----------------------------------------------------------------

    def alive(self) -> bool:
        return bool(self._done.locked())

    def watch(self, sock: zmq.Socket[Any], domain: bytes, policy: Allowlist) -> None:
        """Log ``sock``'s failed handshakes (called under the registry lock)."""
        url = f"inproc://netcall-zap-monitor-{domain.decode()}"
        sock.monitor(url, _MONITOR_EVENTS)
        monitor = self._ctx.socket(zmq.PAIR, socket_class=zmq.Socket)
        monitor.linger = 0
        monitor.rcvhwm = 0  # never full: libzmq's I/O thread would block on it (see _socket)
        monitor.connect(url)
        with self._lock:
            self._changes.append((domain, monitor, policy))
        self._pipe.send(b"SYNC")

    def unwatch(self, domain: bytes) -> None:
        with self._lock:
            self._changes.append((domain, None, None))
        self._pipe.send(b"SYNC")

    def stop(self) -> None:
        try:
            self._pipe.send(b"STOP")
        except zmq.ZMQError:
            pass
        if self._done.acquire(True, STOP_TIMEOUT):
            self._done.release()
        else:  # pragma: no cover - the thread is stuck in libzmq
            log.warning("the ZAP handler thread did not stop within %ss", STOP_TIMEOUT)
        self._pipe.close(linger=0)


_handlers: dict[int, _Handler] = {}
_registry_lock = _original("_thread", "allocate_lock")()


def _forget_handlers() -> None:
    # After fork() the handler threads do not exist in the child (nor can its contexts be used).
    global _registry_lock
    _handlers.clear()
    _registry_lock = _original("_thread", "allocate_lock")()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_handlers)


def refused_handshake(event: Any, policy: Allowlist) -> None:
    """Log (rate-limited, through ``policy``) a handshake that ZeroMQ failed before asking
    ZAP: a client without CURVE, or with another service key, as the socket's monitor reports
    it (a parsed monitor event); other events are ignored. A connection that ended before its
    handshake did (``HANDSHAKE_FAILED_NO_DETAIL`` here: a TCP health check, a port scan,
    ``netcall call`` looking whether anything listens) refused nothing: DEBUG only, and it
    does not use up the rate-limited warning a real refusal after it would get."""
    raw = event["endpoint"]
    endpoint = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        value = int(event["value"])
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            why = "it does not use CURVE"
        elif value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            why = "its handshake could not be decrypted (it was given another service key)"
        else:
            why = f"its handshake was malformed (protocol error {value:#x})"
    elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        log.debug("a connection on %s ended before its handshake finished", endpoint)
        return
    else:
        return
    policy.refused(f"a client on {endpoint}: {why}", checked=False)


class ZapRegistration:
    """One socket's place in its context's ZAP handler. :meth:`close` it after the socket."""

    def __init__(self, key: int, handler: _Handler, domain: bytes) -> None:
        self.domain = domain
        self._key = key
        self._handler = handler
        self._closed = False

    def on_monitor_event(self, event: Any) -> None:
        """Log a failed handshake that the socket's own monitor reported (a parsed monitor
        event). libzmq keeps one monitor per socket, so a service whose monitor replaced the
        handler's forwards its events here."""
        policy = self._handler.policies.get(self.domain)
        if policy is not None:
            refused_handshake(event, policy)

    def close(self) -> None:
        """Unregister the domain; stop the context's handler when nothing else uses it.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        with _registry_lock:
            handler = self._handler
            if _handlers.get(self._key) is not handler:
                return  # that handler died with its context; a new one took its place
            handler.policies.pop(self.domain, None)
            handler.users -= 1
            if handler.users > 0:
                handler.unwatch(self.domain)
                return
            # Stopped under the lock: a new handler for this context must find the name free.
            del _handlers[self._key]
            handler.stop()


def register(sock: zmq.Socket[Any], policy: Allowlist) -> ZapRegistration:
    """Register ``policy`` under a new ZAP domain in the handler of ``sock``'s context
    (started if needed), which also logs ``sock``'s failed handshakes. The caller sets the
    domain on ``sock``.

    Raises:
        RuntimeError: another ZAP handler is bound in ``ctx``.
    """
    key = int(sock.context.underlying)
    domain = f"{DOMAIN_PREFIX}{os.getpid()}-{next(_domains)}".encode()
    with _registry_lock:
        handler = _handlers.get(key)
        if handler is None or not handler.alive():
            handler = _handlers[key] = _Handler(sock.context)
        handler.policies[domain] = policy
        handler.users += 1
        try:
            handler.watch(sock, domain, policy)
        except zmq.ZMQError:  # the socket has a monitor already: no log of failed handshakes
            pass
    return ZapRegistration(key, handler, domain)
