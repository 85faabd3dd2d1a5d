"""HELLO and BYE: how a service announces itself to a peer it connected to. Sans-IO.

A service that *connects out* (to a broker's backend, or to a client that binds) is the
connecting side, so the binder cannot know it is there, nor what it serves, until it speaks.
It speaks first, on every (re)connection::

    HELLO  head+ max_concurrent u32 (0: no limit), flags u8
           then one frame: the service's methods, as UTF-8 JSON
           ``{name: {"signature": str, "doc": str}}`` (what ``client.methods()`` shows)
    BYE    -                      the service is stopping: send it no new calls

Both use request id 0 and the common 12-byte header of :mod:`netcall.protocol`. JSON, not the
service's serializer: the binder must read it whatever serializer the calls use.

The binder bounds what it accepts (:data:`MAX_HELLO_BYTES`, :data:`MAX_METHODS`); anything
malformed raises :class:`~netcall.errors.ProtocolError`, never another exception.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from . import protocol as p
from .errors import ProtocolError

__all__ = ["BYE", "HELLO", "MAX_HELLO_BYTES", "MAX_METHODS", "Bye", "Hello", "decode", "kind_of"]

HELLO = 14
BYE = 15
_OPTIONS = struct.Struct("!IB")
#: A HELLO larger than this is refused (its JSON frame).
MAX_HELLO_BYTES = 2**20
#: A HELLO listing more methods than this is refused.
MAX_METHODS = 10000
_MAX_TEXT = 65536  # per signature or doc string


@dataclass(slots=True)
class Hello:
    """A service's announcement: its methods and how many calls it admits at once."""

    methods: dict[str, dict[str, str]] = field(default_factory=dict)
    max_concurrent: int | None = None
    flags: int = 0

    def to_frames(self) -> list[bytes]:
        limit = self.max_concurrent or 0
        if not 0 <= limit <= p.MAX_COUNT:
            raise ValueError("max_concurrent out of range")
        head = p.header(HELLO, 0) + _OPTIONS.pack(limit, self.flags)
        body = json.dumps(self.methods, separators=(",", ":"), ensure_ascii=False)
        return [head, body.encode()]


@dataclass(slots=True)
class Bye:
    """The service is stopping."""

    def to_frames(self) -> list[bytes]:
        return [p.header(BYE, 0)]


def kind_of(head: bytes) -> int | None:
    """HELLO or BYE when ``head`` is one of those (this protocol version), else ``None``."""
    if len(head) >= p.HEADER_SIZE and head[:3] == p.MAGIC + bytes([p.VERSION]):
        kind = head[3]
        if kind in (HELLO, BYE):
            return kind
    return None


def _methods(body: bytes) -> dict[str, dict[str, str]]:
    if len(body) > MAX_HELLO_BYTES:
        raise ProtocolError(f"HELLO too large ({len(body)} bytes)")
    try:
        data = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("HELLO methods are not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("HELLO methods must be a JSON object")
    if len(data) > MAX_METHODS:
        raise ProtocolError(f"HELLO lists {len(data)} methods (at most {MAX_METHODS})")
    out: dict[str, dict[str, str]] = {}
    for name, info in data.items():
        if not name or len(name) > 1024:
            raise ProtocolError("bad method name in HELLO")
        if not isinstance(info, dict):
            info = {}
        sig = info.get("signature", "")
        doc = info.get("doc", "")
        out[name] = {
            "signature": sig[:_MAX_TEXT] if isinstance(sig, str) else "",
            "doc": doc[:_MAX_TEXT] if isinstance(doc, str) else "",
        }
    return out


def decode(frames: list[bytes]) -> Hello | Bye:
    """Parse a HELLO or BYE.

    Raises:
        ProtocolError: anything else, or a malformed one.
    """
    if not frames:
        raise ProtocolError("empty message")
    head = frames[0]
    kind = kind_of(head)
    if kind == BYE:
        if len(frames) != 1 or len(head) != p.HEADER_SIZE:
            raise ProtocolError("bad BYE message")
        return Bye()
    if kind != HELLO:
        raise ProtocolError("not a HELLO or BYE message")
    if len(frames) != 2 or len(head) != p.HEADER_SIZE + _OPTIONS.size:
        raise ProtocolError("bad HELLO message layout")
    limit, flags = _OPTIONS.unpack_from(head, p.HEADER_SIZE)
    return Hello(_methods(frames[1]), limit or None, flags)
