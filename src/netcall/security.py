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
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

import zmq
import zmq.auth
from zmq.utils import z85

from . import _zap
from .errors import AuthenticationError

__all__ = [
    "Curve",
    "CurveClient",
    "CurveServer",
    "Keypair",
    "handshake_error",
    "public_keys",
]

log = logging.getLogger("netcall.security")

PathLike = Union[str, "os.PathLike[str]"]


def _z85_key(value: Any, what: str) -> bytes:
    """``value`` as a 40-byte Z85 key (from Z85 text or bytes, or 32 raw bytes).

    Raises:
        ValueError: not a CURVE key.
        TypeError: not bytes or str.
    """
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{what} must be a Z85 key (bytes or str), not {type(value).__name__}")
    raw = bytes(value)
    if len(raw) == 32:
        return z85.encode(raw)
    if len(raw) == 40:
        try:
            if len(z85.decode(raw)) == 32:
                return raw
        except Exception:
            pass
    shown = raw[:48].decode("ascii", "replace")
    raise ValueError(f"{what} is not a CURVE key (40 characters of Z85): {shown!r}")


@dataclass(frozen=True)
class Keypair:
    """A CURVE key pair: ``public`` and ``secret`` are Z85 bytes, as :func:`zmq.curve_keypair`
    gives them. ``secret`` is ``None`` for a public key alone (loaded from a ``.key`` file).

    Raises:
        ValueError: a key is malformed, or the secret key does not belong to the public key.
    """

    public: bytes
    secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public", _z85_key(self.public, "the public key"))
        if self.secret is not None:
            secret = _z85_key(self.secret, "the secret key")
            if zmq.curve_public(secret) != self.public:
                raise ValueError("the secret key does not belong to the public key")
            object.__setattr__(self, "secret", secret)

    @classmethod
    def generate(cls) -> Keypair:
        """A new random key pair."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    @classmethod
    def load(cls, path: PathLike) -> Keypair:
        """Read a certificate file: a ``.key_secret`` gives both halves, a ``.key`` file the
        public half only.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a ZeroMQ CURVE certificate, or holds a malformed key.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no CURVE key file at", str(path))
        try:
            public, secret = zmq.auth.load_certificate(path)
        except ValueError as exc:
            raise ValueError(f"{path} is not a ZeroMQ CURVE certificate: {exc}") from None
        except OSError as exc:
            raise ValueError(f"cannot read the CURVE key file {path}: {exc}") from exc
        try:
            keypair = cls(public, secret)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        if secret is not None and os.name == "posix":
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                log.warning(
                    "netcall: the secret key file %s is readable by other users (mode %o); "
                    "chmod 600 it",
                    path,
                    mode,
                )
        return keypair

    def save(self, directory: PathLike, name: str, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``directory/name.key`` (the public key) and ``directory/name.key_secret`` (both
        halves, readable by its owner only) in ZeroMQ's certificate format. The folder is made
        if needed. Returns the two paths.

        Raises:
            ValueError: this key pair has no secret half, or ``name`` is not a plain file name.
            FileExistsError: a file is already there (unless ``overwrite``).
            OSError: the files cannot be written.
        """
        if self.secret is None:
            raise ValueError("a public key alone cannot be saved as a key pair")
        if not name or os.sep in name or name in (".", ".."):
            raise ValueError(f"invalid key name {name!r}")
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        public_path = folder / f"{name}.key"
        secret_path = folder / f"{name}.key_secret"
        if not overwrite:
            for path in (public_path, secret_path):
                if path.exists():
                    raise FileExistsError(errno.EEXIST, "a key file is already at", str(path))
        _write_certificate(secret_path, self.public, self.secret, 0o600)
        _write_certificate(public_path, self.public, None, 0o644)
        return public_path, secret_path


def _write_certificate(path: Path, public: bytes, secret: bytes | None, mode: int) -> None:
    """Write a ZeroMQ certificate (the ZPL text :func:`zmq.auth.load_certificate` reads),
    atomically, created with ``mode`` so a secret is never readable by others, even briefly."""
    kind = "Secret" if secret else "Public"
    lines = [
        f"#   ****  Generated on {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC by netcall",
        f"#   ZeroMQ CURVE {kind} Certificate",
        "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."
        if secret
        else "#   Exchange securely, or check its contents after exchange.",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode("ascii")}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if mode != 0o600:
            os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public_key(value: Any, what: str) -> bytes:
    """A public key from a Keypair, Z85 text or bytes, or a path to a certificate file."""
    if isinstance(value, Keypair):
        return value.public
    if isinstance(value, bytes | bytearray | memoryview):
        return _z85_key(value, what)
    if isinstance(value, str) and len(value) == 40:
        try:
            return _z85_key(value, what)
        except ValueError:
            pass
    if isinstance(value, str | os.PathLike):
        return Keypair.load(value).public
    raise TypeError(f"{what} must be a key, a Keypair or a key file, not {type(value).__name__}")


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
        pub = key.public if isinstance(key, Keypair) else _z85_key(key, f"a key in {what}")
        out.add(pub.decode("ascii"))
    return frozenset(out)


def load_folder(folder: Path) -> frozenset[bytes]:
    """The public keys of every ``*.key`` file in ``folder``; a malformed one is skipped with
    a warning (the others still count).

    Raises:
        OSError: the folder cannot be read.
    """
    keys = set()
    for path in sorted(folder.glob("*.key")):
        try:
            keys.add(Keypair.load(path).public)
        except (OSError, ValueError) as exc:
            log.warning("netcall: skipping the key file %s: %s", path, exc)
    return frozenset(keys)


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
        self.server_public = _public_key(server_public, "the service's public key")
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
