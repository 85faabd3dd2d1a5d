"""The messages and how each is encoded: one ``to_frames()`` per message class, and the two
hot-path helpers the cores use instead of building objects (:func:`call_head`,
:func:`payload_frames`). Nothing else in netcall builds frames. No I/O here."""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "BUFFER_COUNT",
    "CALL_FIXED",
    "CALL_OPTIONS",
    "COUNT",
    "FLAG_BUFFERS",
    "FLAG_BUNDLES",
    "FLAG_METADATA",
    "FLAG_ONEWAY",
    "HEADER",
    "HEADER_SIZE",
    "INLINE_MAX",
    "LEASE",
    "MAGIC",
    "MAX_BUFFERS",
    "MAX_COUNT",
    "MAX_FRAMES",
    "MAX_ID",
    "NO_METADATA",
    "REQUEST_ID",
    "VERSION",
    "Ack",
    "Call",
    "Cancel",
    "Credit",
    "End",
    "Error",
    "Item",
    "Kind",
    "Message",
    "Next",
    "Ping",
    "Pong",
    "Result",
    "StreamOpen",
    "Throw",
    "call_head",
    "encode_metadata",
    "header",
    "payload_frames",
    "retag",
    "retime",
]

MAGIC = b"NC"
#: 2: the CALL carries the time remaining (not an absolute time) and optional metadata.
VERSION = 2
HEADER = struct.Struct("!2sBBQ")
HEADER_SIZE = HEADER.size
CALL_OPTIONS = struct.Struct("!dBIB")
LEASE = struct.Struct("!d")
COUNT = struct.Struct("!I")
BUFFER_COUNT = struct.Struct("!H")
_STR_LEN = struct.Struct("!H")
MAX_ID = 2**64 - 1
MAX_COUNT = 2**32 - 1
#: Payloads up to this size ride in the head frame; larger ones get a frame of their own.
INLINE_MAX = 16384
#: At most this many out-of-band buffer frames travel with one message (a sender keeps any
#: more inline; a receiver refuses a message with more).
MAX_BUFFERS = 64
#: The most frames one message can have (a CALL: head, args, kwargs, buffers, metadata).
MAX_FRAMES = MAX_BUFFERS + 4

FLAG_ONEWAY = 0x01
FLAG_METADATA = 0x02  # the CALL's last frame is its metadata
FLAG_BUFFERS = 0x04  # the CALL has a kwargs frame (maybe empty), then out-of-band buffers
FLAG_BUNDLES = 0x08  # the caller reads bundles (see _bundle): answers may come in them

#: The metadata of a call that has none (shared, read-only: costs nothing per call).
NO_METADATA: Mapping[str, str] = MappingProxyType({})


class Kind(enum.IntEnum):
    CALL = 1
    RESULT = 2
    ERROR = 3
    CANCEL = 4
    ACK = 5
    STREAM = 6
    NEXT = 7
    THROW = 8
    CREDIT = 9
    ITEM = 10
    END = 11
    PING = 12
    PONG = 13
    HELLO = 14  # service -> a peer it connected to: its methods (see _announce.py)
    BYE = 15  # service -> a peer it connected to: it stops


_pack_header = HEADER.pack


def header(kind: int, request_id: int) -> bytes:
    """The header for ``kind`` and ``request_id``."""
    return _pack_header(MAGIC, VERSION, kind, request_id)


#: A request id alone (where it sits in a header: after the first 4 bytes).
REQUEST_ID = struct.Struct("!Q")


def retag(head: bytes, request_id: int) -> bytes:
    """``head`` (any kind, already checked) with its request id replaced: how a broker
    forwards a message under the id it chose, without decoding the rest."""
    return head[:4] + REQUEST_ID.pack(request_id) + head[HEADER_SIZE:]


def payload_frames(
    kind: int, request_id: int, payload: bytes, buffers: Sequence[Any] = ()
) -> list[Any]:
    """Frames of a message made of a header, a payload and its out-of-band buffers (RESULT,
    ITEM, NEXT)."""
    if buffers:
        return [
            _pack_header(MAGIC, VERSION, kind, request_id),
            payload,
            BUFFER_COUNT.pack(len(buffers)),
            *buffers,
        ]
    if len(payload) <= INLINE_MAX:
        return [_pack_header(MAGIC, VERSION, kind, request_id) + payload]
    return [_pack_header(MAGIC, VERSION, kind, request_id), payload]


#: A CALL's head up to its names: the header, then the CALL options.
CALL_FIXED = struct.Struct("!2sBBQdBIB")
_call_tails: dict[tuple[str, str], tuple[int, bytes]] = {}


def call_head(
    request_id: int, method: str, serializer: str, timeout: float, flags: int, window: int
) -> bytes:
    """The head frame of a CALL (``timeout``: seconds remaining, 0 for none).

    Raises:
        UnicodeEncodeError: the method name cannot be encoded (lone surrogates).
    """
    key = (serializer, method)
    cached = _call_tails.get(key)
    if cached is None:
        ser = serializer.encode()
        tail = ser + method.encode()
        if len(_call_tails) > 4096:  # names built on the fly must not grow this forever
            _call_tails.clear()
        cached = _call_tails[key] = (len(ser), tail)
    return (
        CALL_FIXED.pack(MAGIC, VERSION, 1, request_id, timeout, flags, window, cached[0])
        + cached[1]
    )


_TIMEOUT = struct.Struct("!d")


def retime(head: bytes, timeout: float) -> bytes:
    """A CALL's ``head`` (already checked) with its timeout (seconds remaining, 0 for none)
    replaced: how a client sends a call again, to another service, with the time it has left."""
    return head[:HEADER_SIZE] + _TIMEOUT.pack(timeout) + head[HEADER_SIZE + 8 :]


def encode_metadata(metadata: Mapping[str, str]) -> bytes:
    """The metadata frame: for each pair, key and value as UTF-8, each after its length (u16).

    Raises:
        ValueError: a key or value is not a ``str``, or longer than 65535 bytes encoded.
    """
    out = bytearray()
    for key, value in metadata.items():
        for text in (key, value):
            if not isinstance(text, str):
                raise ValueError(f"metadata keys and values must be str, not {type(text)!r}")
            raw = text.encode()
            if len(raw) > 0xFFFF:
                raise ValueError("a metadata key or value is longer than 65535 bytes")
            out += _STR_LEN.pack(len(raw)) + raw
    return bytes(out)


@dataclass(slots=True)
class Call:
    """A call. ``timeout`` is the time remaining in seconds when it was sent (0: none)."""

    id: int
    method: str
    serializer: str
    args: bytes
    kwargs: bytes | None = None
    timeout: float = 0.0
    flags: int = 0
    window: int = 0
    metadata: Mapping[str, str] = field(default_factory=lambda: NO_METADATA)
    #: Out-of-band buffers that ``args`` and ``kwargs`` refer to (one list for both).
    buffers: Sequence[Any] = ()

    @property
    def oneway(self) -> bool:
        return bool(self.flags & FLAG_ONEWAY)

    def to_frames(self) -> list[Any]:
        flags = self.flags & ~(FLAG_METADATA | FLAG_BUFFERS)
        if self.metadata:
            flags |= FLAG_METADATA
        if self.buffers:
            flags |= FLAG_BUFFERS
        head = call_head(self.id, self.method, self.serializer, self.timeout, flags, self.window)
        frames: list[Any] = [head, self.args]
        if self.buffers:
            frames.append(b"" if self.kwargs is None else self.kwargs)
            frames.extend(self.buffers)
        elif self.kwargs is not None:
            frames.append(self.kwargs)
        if self.metadata:
            frames.append(encode_metadata(self.metadata))
        return frames


@dataclass(slots=True)
class Result:
    id: int
    payload: bytes
    buffers: Sequence[Any] = ()

    def to_frames(self) -> list[Any]:
        return payload_frames(Kind.RESULT, self.id, self.payload, self.buffers)


@dataclass(slots=True)
class Error:
    id: int
    type_name: str
    message: str
    traceback: str = ""

    def to_frames(self) -> list[bytes]:
        return [
            header(Kind.ERROR, self.id),
            self.type_name.encode("utf-8", "replace"),
            self.message.encode("utf-8", "replace"),
            self.traceback.encode("utf-8", "replace"),
        ]


@dataclass(slots=True)
class Cancel:
    id: int

    def to_frames(self) -> list[bytes]:
        return [header(Kind.CANCEL, self.id)]


@dataclass(slots=True)
class Ack:
    id: int

    def to_frames(self) -> list[bytes]:
        return [header(Kind.ACK, self.id)]


@dataclass(slots=True)
class StreamOpen:
    id: int
    lease: float

    def to_frames(self) -> list[bytes]:
        return [header(Kind.STREAM, self.id) + LEASE.pack(self.lease)]


@dataclass(slots=True)
class Next:
    id: int
    payload: bytes
    buffers: Sequence[Any] = ()

    def to_frames(self) -> list[Any]:
        return payload_frames(Kind.NEXT, self.id, self.payload, self.buffers)


@dataclass(slots=True)
class Throw:
    id: int
    type_name: str
    message: str

    def to_frames(self) -> list[bytes]:
        return [
            header(Kind.THROW, self.id),
            self.type_name.encode("utf-8", "replace"),
            self.message.encode("utf-8", "replace"),
        ]


@dataclass(slots=True)
class Credit:
    id: int
    count: int

    def to_frames(self) -> list[bytes]:
        return [header(Kind.CREDIT, self.id) + COUNT.pack(self.count)]


@dataclass(slots=True)
class Item:
    id: int
    payload: bytes
    buffers: Sequence[Any] = ()

    def to_frames(self) -> list[Any]:
        return payload_frames(Kind.ITEM, self.id, self.payload, self.buffers)


@dataclass(slots=True)
class End:
    id: int

    def to_frames(self) -> list[bytes]:
        return [header(Kind.END, self.id)]


@dataclass(slots=True)
class Ping:
    id: int = 0

    def to_frames(self) -> list[bytes]:
        return [header(Kind.PING, self.id)]


@dataclass(slots=True)
class Pong:
    id: int = 0

    def to_frames(self) -> list[bytes]:
        return [header(Kind.PONG, self.id)]


Message = (
    Call
    | Result
    | Error
    | Cancel
    | Ack
    | StreamOpen
    | Next
    | Throw
    | Credit
    | Item
    | End
    | Ping
    | Pong
)
