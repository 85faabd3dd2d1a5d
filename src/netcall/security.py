"""CURVE encryption, client allowlists and the caller's key, through pyzmq's own machinery.

::

    from netcall import RPCClient, RPCService
    from netcall.security import Curve, Keypair

    server = Keypair.generate()
    alice = Keypair.generate()
    service = RPCService(security=Curve.server(server, allow=[alice.public]))
    client = RPCClient(security=Curve.client(server.public, keypair=alice))

ZeroMQ does the cryptography (CURVE: elliptic-curve encryption with perfect forward secrecy)
and asks a ZAP handler whether a client key may connect; netcall supplies that handler (see
:mod:`netcall._zap`). Keys are Z85 text (40 characters) as :func:`zmq.curve_keypair` makes
them, stored in ZeroMQ's certificate format (:func:`zmq.auth.load_certificate` reads them).

What is protected: every byte of every call, reply and stream between the client and the
service; who may connect (the allowlist); which methods a key may call
(``register(allow=...)``). What is not: a client's key is checked when it connects, so removing
it from an allowlist folder refuses its next connection, not the one it has; the secret key
files on disk are only as safe as their file permissions; and traffic metadata (who talks to
whom, message sizes and timing) stays visible.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from . import _zap
from ._keys import Keypair, PathLike, load_folder, public_key, z85_key
from .errors import AuthenticationError

__all__ = [
    "Curve",
    "CurveClient",
    "CurveServer",
    "Keypair",
    "from_options",
    "handshake_error",
    "public_keys",
    "secure_socket",
    "warn_if_exposed",
]

log = logging.getLogger("netcall.security")


def public_keys(keys: Iterable[Any], what: str = "allow") -> frozenset[str]:
    """Z85 text of each public key in ``keys`` (Keypairs, Z85 bytes or text): the form of
    :attr:`netcall.CallContext.peer_key`, for ``register(allow=...)`` and middleware.

    Raises:
        TypeError: ``keys`` is a single string rather than a list of keys.
        ValueError: an entry is not a key.
    """
    if isinstance(keys, str | bytes):
        raise TypeError(f"{what} must be a list of keys, not a single {type(keys).__name__}")
    out = set()
    for key in keys:
        pub = key.public if isinstance(key, Keypair) else z85_key(key, f"a key in {what}")
        out.add(pub.decode("ascii"))
    return frozenset(out)


class CurveServer:
    """The service side of CURVE: made by :meth:`Curve.server`, passed as ``security=``."""

    def __init__(self, keypair: Keypair | PathLike, allow: Any = None) -> None:
        if not isinstance(keypair, Keypair):
            keypair = Keypair.load(keypair)
        if keypair.secret is None:
            raise ValueError("Curve.server needs the service's secret key (a .key_secret file)")
        self.keypair = keypair
        label = f"the CURVE service {keypair.public[:8].decode()}…"
        if allow is None:
            self.allowlist = _zap.Allowlist(label=label)
        elif isinstance(allow, str | os.PathLike):
            folder = Path(allow)
            if not folder.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no allowlist folder at", str(folder))
            for path in sorted(folder.glob("*.key")):
                Keypair.load(path)  # a bad file is an error now, a warning once serving
            self.allowlist = _zap.Allowlist(folder=folder, label=label, load=load_folder)
        else:
            keys = frozenset(k.encode("ascii") for k in public_keys(allow))
            self.allowlist = _zap.Allowlist(keys=keys, label=label)

    @property
    def public(self) -> bytes:
        """The service's public key (Z85): what clients need."""
        return self.keypair.public

    def apply(self, socket: zmq.Socket[Any], name: str | None = None) -> _zap.ZapRegistration:
        """Make ``socket`` (before it binds) a CURVE server checked by this allowlist, under
        a ZAP domain of its own in its context's handler. ``name`` labels refusals in the log.

        Close the returned registration *after* the socket: ZeroMQ admits every client of a
        CURVE socket whose context has no ZAP handler.

        Raises:
            RuntimeError: another ZAP handler is bound in the socket's context.
        """
        if name:
            self.allowlist.label = name
        registration = _zap.register(socket, self.allowlist)
        try:
            socket.setsockopt(zmq.CURVE_SERVER, 1)
            socket.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)  # type: ignore[arg-type]
            socket.setsockopt(zmq.ZAP_DOMAIN, registration.domain)
        except BaseException:
            registration.close()
            raise
        return registration

    def __repr__(self) -> str:
        return f"CurveServer(public={self.public.decode()!r})"


class CurveClient:
    """The client side of CURVE: made by :meth:`Curve.client`, passed as ``security=``."""

    def __init__(self, server_public: Any, keypair: Keypair | PathLike | None = None) -> None:
        self.server_public = public_key(server_public, "the service's public key")
        if keypair is None:
            keypair = Keypair.generate()
        elif not isinstance(keypair, Keypair):
            keypair = Keypair.load(keypair)
        if keypair.secret is None:
            raise ValueError("Curve.client needs the client's secret key (a .key_secret file)")
        self.keypair = keypair

    @property
    def public(self) -> bytes:
        """This client's public key (Z85): what the service's allowlist holds."""
        return self.keypair.public

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make ``socket`` (before it connects) a CURVE client of the service key."""
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.keypair.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.keypair.secret)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        server, public = self.server_public.decode(), self.public.decode()
        return f"CurveClient(server={server!r}, public={public!r})"


class Curve:
    """CURVE security for ``RPCService(security=...)`` and ``RPCClient(security=...)``."""

    @staticmethod
    def server(keypair: Keypair | PathLike, allow: Any = None) -> CurveServer:
        """Security for a service with this key pair (or ``.key_secret`` file).

        ``allow``: ``None`` lets in any client that speaks CURVE to this key (encryption
        without an allowlist); a list of public keys (Z85, or Keypairs) lets in those only; a
        folder lets in the key of every ``*.key`` file in it, re-read when it changes.

        Raises:
            FileNotFoundError: the key file or the allowlist folder does not exist.
            ValueError: a malformed key or key file (the message names it), or a key pair
                without its secret half.
        """
        return CurveServer(keypair, allow)

    @staticmethod
    def client(server_public: Any, keypair: Keypair | PathLike | None = None) -> CurveClient:
        """Security for a client of the service whose public key is ``server_public`` (Z85,
        a Keypair, or a ``.key`` file). ``keypair`` (or its ``.key_secret`` file) is this
        client's identity; ``None`` makes an ephemeral one, enough without an allowlist.

        Raises:
            FileNotFoundError: a key file does not exist.
            ValueError: a malformed key or key file (the message names it).
        """
        return CurveClient(server_public, keypair)


def from_options(
    *,
    server: bool,
    server_key: str | None = None,
    keypair: str | None = None,
    allow: Sequence[str] = (),
) -> CurveServer | CurveClient | None:
    """Security from command-line style options (``--curve-server-key``, ``--curve-keypair``,
    ``--allow``), or ``None`` for none of them.

    For a service: ``keypair`` is its ``.key_secret`` file; ``allow`` one folder, or keys and
    ``.key`` files. For a client: ``server_key`` is the service's key or ``.key`` file;
    ``keypair`` this client's ``.key_secret`` file (else an ephemeral key pair).

    Raises:
        ValueError: options that do not go together, or a malformed key or key file.
        FileNotFoundError: a key file or folder does not exist.
    """
    if server:
        if keypair is None:
            if allow or server_key is not None:
                raise ValueError("a CURVE service needs --curve-keypair (its .key_secret file)")
            return None
        if len(allow) == 1 and os.path.isdir(allow[0]):
            security = CurveServer(keypair, allow[0])
        else:
            keys = [public_key(entry, f"--allow {entry}") for entry in allow]
            security = CurveServer(keypair, keys or None)
        if server_key is not None and public_key(server_key, server_key) != security.public:
            raise ValueError("--curve-server-key is not the public half of --curve-keypair")
        return security
    if allow:
        raise ValueError("--allow is for services (netcall serve)")
    if server_key is None:
        if keypair is not None:
            raise ValueError("--curve-keypair needs --curve-server-key (the service's key)")
        return None
    return CurveClient(server_key, keypair)


def _protocol_error_names() -> dict[int, str]:
    return {
        int(getattr(zmq, name)): name[len("PROTOCOL_ERROR_") :]
        for name in dir(zmq)
        if name.startswith("PROTOCOL_ERROR_")
    }


def handshake_error(event: int, value: int, url: str, secure: bool) -> AuthenticationError | None:
    """The error for calls to ``url`` after a monitor reports a failed handshake there, or
    ``None`` when the event says nothing about security. ``secure``: the client uses CURVE.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return AuthenticationError(
            f"the service at {url} refused this client's key (ZAP status {int(value)}): "
            "it is not in the service's allowlist"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if int(value) == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            if secure:
                return AuthenticationError(f"the service at {url} does not use CURVE")
            return AuthenticationError(
                f"the service at {url} requires CURVE encryption: give this client "
                "security=Curve.client(<the service's public key>)"
            )
        if secure:
            reason = _protocol_error_names().get(int(value), str(int(value)))
            return AuthenticationError(f"the CURVE handshake with {url} failed ({reason})")
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and secure:
        return AuthenticationError(
            f"the CURVE handshake with {url} failed: the service's public key is not the one "
            "this client was given"
        )
    return None


_NETWORK_TRANSPORTS = ("tcp://", "ws://", "wss://", "pgm://", "epgm://", "udp://", "tipc://")


def warn_if_exposed(url: str, serializer: str, security: object | None, action: str) -> None:
    """Log a warning when an endpoint just bound or connected (``action``) is less protected
    than it looks: pickle on a network endpoint without CURVE, or a CURVE service on inproc
    (where ZeroMQ applies no security mechanism)."""
    if security is None:
        if serializer == "pickle" and url.startswith(_NETWORK_TRANSPORTS):
            log.warning(
                "netcall: %s %s with the pickle serializer and no CURVE security: anyone who "
                "can reach it can make this process run code of their choosing (unpickling "
                "runs code). Use security=Curve... or another serializer.",
                action,
                url,
            )
    elif action == "bound" and url.startswith("inproc://"):
        log.warning(
            "netcall: %s is inproc: ZeroMQ applies no CURVE there, so any code in this process "
            "can call the service (and its callers have no peer_key)",
            url,
        )


def secure_socket(
    sock: zmq.Socket[Any], security: object | None, *, server: bool, name: str
) -> _zap.ZapRegistration | None:
    """Apply a service's or client's ``security=`` to its new socket (``None``: nothing to
    do). Returns the service's ZAP registration, to close after the socket. The socket is
    closed if this fails.

    Raises:
        TypeError: ``security`` is not what that end takes.
        RuntimeError: another ZAP handler is bound in the socket's context.
    """
    if security is None:
        return None
    try:
        if server and isinstance(security, CurveServer):
            return security.apply(sock, name=f"service {name}")
        if not server and isinstance(security, CurveClient):
            security.apply(sock)
            return None
        owner, maker = ("RPCService", "server") if server else ("RPCClient", "client")
        raise TypeError(
            f"{owner}(security=) takes Curve.{maker}(...), not {type(security).__name__}"
        )
    except BaseException:
        sock.close(linger=0)
        raise
