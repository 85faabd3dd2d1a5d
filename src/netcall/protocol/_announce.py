"""HELLO and BYE: how a service announces itself to a peer it connected to. No I/O here.

A service that *connects out* (to a broker's backend, or to a client that binds) is the
connecting side, so the binder cannot know it is there, nor what it serves, until it speaks.
It speaks first, on every (re)connection::

    HELLO  head+ max_concurrent u32 (0: no limit), flags u8 (HELLO_BUNDLES: the service
           reads bundles, see ``_bundle``)
           then one frame: the service's methods, as UTF-8 JSON
           ``{name: {"signature": str, "doc": str}}`` (what ``client.methods()`` shows)
    BYE    -                      the service is stopping: send it no new calls

Both use request id 0 and the common 12-byte header. JSON, not the
service's serializer: the binder must read it whatever serializer the calls use.

The binder bounds what it accepts (:data:`MAX_HELLO_BYTES`, :data:`MAX_METHODS`); anything
malformed raises :class:`~netcall.errors.ProtocolError`, never another exception.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from ..errors import ProtocolError
from ._messages import HEADER_SIZE, MAX_COUNT, Kind, header

__all__ = [
    "HELLO_BUNDLES",
    "MAX_HELLO_BYTES",
    "MAX_METHODS",
    "Bye",
    "Hello",
    "decode_bye",
    "decode_hello",
]

_OPTIONS = struct.Struct("!IB")
#: HELLO flag: the service reads bundles (the peer it connected to may send it some).
HELLO_BUNDLES = 0x01
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

    @property
    def id(self) -> int:
        """Always 0: an announcement belongs to no request."""
        return 0

    def to_frames(self) -> list[bytes]:
        limit = self.max_concurrent or 0
        if not 0 <= limit <= MAX_COUNT:
            raise ValueError("max_concurrent out of range")
        head = header(Kind.HELLO, 0) + _OPTIONS.pack(limit, self.flags)
        body = json.dumps(self.methods, separators=(",", ":"), ensure_ascii=False)
        return [head, body.encode()]


@dataclass(slots=True)
class Bye:
    """The service is stopping."""

    @property
    def id(self) -> int:
        """Always 0: an announcement belongs to no request."""
        return 0

    def to_frames(self) -> list[bytes]:
        return [header(Kind.BYE, 0)]


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


def decode_hello(rid: int, frames: list[bytes]) -> Hello:
    """A HELLO's frames (after its header was checked).

    Raises:
        ProtocolError: a malformed one.
    """
    if len(frames) != 2 or len(frames[0]) != HEADER_SIZE + _OPTIONS.size:
        raise ProtocolError("bad HELLO message layout")
    limit, flags = _OPTIONS.unpack_from(frames[0], HEADER_SIZE)
    return Hello(_methods(frames[1]), limit or None, flags)


def decode_bye(rid: int, frames: list[bytes]) -> Bye:
    """A BYE's frames (after its header was checked).

    Raises:
        ProtocolError: a malformed one.
    """
    if len(frames) != 1 or len(frames[0]) != HEADER_SIZE:
        raise ProtocolError("bad BYE message")
    return Bye()
