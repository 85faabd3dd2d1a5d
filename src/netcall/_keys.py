"""CURVE keys: Z85 text, and ZeroMQ's certificate files on disk (re-exported by
:mod:`netcall.security`)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Union

import zmq
import zmq.auth
from zmq.utils import z85

__all__ = ["Keypair", "PathLike", "load_folder", "public_key", "z85_key"]

log = logging.getLogger("netcall.security")

PathLike = Union[str, "os.PathLike[str]"]


def z85_key(value: Any, what: str) -> bytes:
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
        object.__setattr__(self, "public", z85_key(self.public, "the public key"))
        if self.secret is not None:
            secret = z85_key(self.secret, "the secret key")
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


def public_key(value: Any, what: str) -> bytes:
    """A public key from a Keypair, Z85 text or bytes, or a path to a certificate file."""
    if isinstance(value, Keypair):
        return value.public
    if isinstance(value, bytes | bytearray | memoryview):
        return z85_key(value, what)
    if isinstance(value, str) and len(value) == 40:
        try:
            return z85_key(value, what)
        except ValueError:
            pass
    if isinstance(value, str | os.PathLike):
        return Keypair.load(value).public
    raise TypeError(f"{what} must be a key, a Keypair or a key file, not {type(value).__name__}")


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
