"""netcall's wire protocol, sans-IO: frames in, messages out. No zmq, no asyncio here.

Theory of operation
-------------------
A client talks to services over ZeroMQ; the socket's routing envelope (which service, which
client) is the transport's business and is stripped before frames reach this module. What is
left is one message: a list of frames whose first frame, the *head*, starts with a fixed
12-byte header::

    header  = b"NC" | version (u8) | kind (u8) | request id (u64, big-endian)

The request id is chosen by the client (a counter per client, 64 bits, never reused while the
client lives); a service keys its state by (peer, request id). Every message carries the version
byte: a peer speaking another version gets a :class:`ProtocolError`, never a misread.

What follows the header, by kind (``payload`` is the serializer's bytes, text is UTF-8;
``head+`` means "in the head frame, after the header")::

    client -> service
      CALL    head+ deadline f64, flags u8, window u32, len u8, serializer name, method name
              then frames: args[, kwargs]
      CANCEL  -                          cancel a call, or close a stream
      NEXT    payload                    stream: send a value (lock-step asend / __anext__)
      THROW   frames: type name, message stream: throw an exception into the generator
      CREDIT  head+ count u32            stream: allow this many more items (prefetch)
      PING    -                          keepalive (request id 0); the service answers PONG
    service -> client
      RESULT  payload                    the call's return value
      ERROR   frames: type name, message, traceback
      ACK     -                          a one-way call was accepted
      STREAM  head+ lease f64            the call returned a generator: a stream is open
      ITEM    payload                    stream: one yielded value
      END     -                          stream: the generator is exhausted
      PONG    -                          answer to PING

A ``payload`` rides in the head after the header (small values: one frame, no extra copy on
the ZeroMQ side), or, when the head is exactly the header, in a second frame (large values,
sent without copying). Decoders accept both.

``deadline`` is an absolute UNIX time (0 for none): a service drops work whose deadline passed,
and cancels a handler still running at its deadline. ``window`` in a CALL is the number of
items a stream may produce before the client asks (0: strict lock-step). ``lease`` is how long
a service keeps a stream whose client has gone silent; a client holding streams pings more
often than that.

Stream states on the service, and the client messages each allows, are the table
:data:`STREAM_ACCEPTS`.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

__all__ = [
    "HEADER",
    "MAGIC",
    "STREAM_ACCEPTS",
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
    "StreamState",
    "Throw",
    "call_head",
    "decode",
    "decode_header",
    "header",
    "payload_frames",
    "payload_of",
    "request_id_of",
    "split_inline",
]

MAGIC = b"NC"
VERSION = 1
HEADER = struct.Struct("!2sBBQ")
HEADER_SIZE = HEADER.size
CALL_OPTIONS = struct.Struct("!dBIB")
LEASE = struct.Struct("!d")
COUNT = struct.Struct("!I")
MAX_ID = 2**64 - 1
MAX_COUNT = 2**32 - 1
#: Payloads up to this size ride in the head frame; larger ones get a frame of their own.
INLINE_MAX = 16384

FLAG_ONEWAY = 0x01


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


_pack_header = HEADER.pack


def header(kind: int, request_id: int) -> bytes:
    """The header for ``kind`` and ``request_id``."""
    return _pack_header(MAGIC, VERSION, kind, request_id)


def payload_frames(kind: int, request_id: int, payload: bytes) -> list[bytes]:
    """Frames of a message made of a header and a payload (RESULT, ITEM, NEXT)."""
    if len(payload) <= INLINE_MAX:
        return [_pack_header(MAGIC, VERSION, kind, request_id) + payload]
    return [_pack_header(MAGIC, VERSION, kind, request_id), payload]


_CALL_FIXED = struct.Struct("!2sBBQdBIB")  # the header, then the CALL options
_call_tails: dict[tuple[str, str], tuple[int, bytes]] = {}


def call_head(
    request_id: int, method: str, serializer: str, deadline: float, flags: int, window: int
) -> bytes:
    """The head frame of a CALL."""
    key = (serializer, method)
    cached = _call_tails.get(key)
    if cached is None:
        ser = serializer.encode()
        if len(_call_tails) > 4096:  # names built on the fly must not grow this forever
            _call_tails.clear()
        cached = _call_tails[key] = (len(ser), ser + method.encode())
    return (
        _CALL_FIXED.pack(MAGIC, VERSION, 1, request_id, deadline, flags, window, cached[0])
        + cached[1]
    )


def _text(frame: bytes, what: str) -> str:
    try:
        return bytes(frame).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None


@dataclass(slots=True)
class Call:
    id: int
    method: str
    serializer: str
    args: bytes
    kwargs: bytes | None = None
    deadline: float = 0.0
    flags: int = 0
    window: int = 0

    @property
    def oneway(self) -> bool:
        return bool(self.flags & FLAG_ONEWAY)

    def to_frames(self) -> list[bytes]:
        head = call_head(
            self.id, self.method, self.serializer, self.deadline, self.flags, self.window
        )
        if self.kwargs is not None:
            return [head, self.args, self.kwargs]
        return [head, self.args]


@dataclass(slots=True)
class Result:
    id: int
    payload: bytes

    def to_frames(self) -> list[bytes]:
        return payload_frames(Kind.RESULT, self.id, self.payload)


@dataclass(slots=True)
class Error:
    id: int
    type_name: str
    message: str
    traceback: str = ""

    def to_frames(self) -> list[bytes]:
        return [
            header(Kind.ERROR, self.id),
            self.type_name.encode(),
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

    def to_frames(self) -> list[bytes]:
        return payload_frames(Kind.NEXT, self.id, self.payload)


@dataclass(slots=True)
class Throw:
    id: int
    type_name: str
    message: str

    def to_frames(self) -> list[bytes]:
        return [
            header(Kind.THROW, self.id),
            self.type_name.encode(),
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

    def to_frames(self) -> list[bytes]:
        return payload_frames(Kind.ITEM, self.id, self.payload)


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


def decode_header(frame: bytes) -> tuple[int, int]:
    """``(kind, request id)`` from a head frame.

    Raises:
        ProtocolError: not a netcall head, an unknown kind, or another protocol version
            (then ``exc.request_id`` holds the id, so the peer can still be answered).
    """
    if len(frame) < HEADER_SIZE:
        raise ProtocolError(f"bad header: {len(frame)} bytes, expected {HEADER_SIZE}")
    magic, version, kind, request_id = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise ProtocolError("bad header: not a netcall message")
    if version != VERSION:
        err = ProtocolError(f"unsupported protocol version {version} (this end speaks {VERSION})")
        err.request_id = request_id  # type: ignore[attr-defined]
        raise err
    if not Kind.CALL <= kind <= Kind.PONG:
        raise ProtocolError(f"unknown message kind {kind}")
    return kind, request_id


def _frames(frames: list[bytes], low: int, high: int, name: str) -> None:
    if not low <= len(frames) <= high:
        raise ProtocolError(
            f"{name} message has {len(frames)} frames, expected {low}"
            + (f" to {high}" if high != low else "")
        )


def _bare(frames: list[bytes], name: str) -> None:
    _frames(frames, 1, 1, name)
    if len(frames[0]) != HEADER_SIZE:
        raise ProtocolError(f"{name} message has trailing bytes")


def _fixed(frames: list[bytes], st: struct.Struct, name: str) -> tuple[Any, ...]:
    _frames(frames, 1, 1, name)
    head = frames[0]
    if len(head) != HEADER_SIZE + st.size:
        raise ProtocolError(f"bad {name} message: {len(head)} bytes")
    return st.unpack_from(head, HEADER_SIZE)


_PREFIX = MAGIC + bytes([VERSION])
_INLINE_KINDS = frozenset({Kind.RESULT, Kind.ITEM})


def split_inline(head: bytes) -> tuple[int, int, bytes] | None:
    """Fast path for the commonest replies: ``(kind, id, payload)`` when ``head`` is, alone, a
    RESULT or ITEM with its payload inline; ``None`` for anything else (use :func:`decode`)."""
    if len(head) < HEADER_SIZE or not head.startswith(_PREFIX) or head[3] not in _INLINE_KINDS:
        return None
    return head[3], int.from_bytes(head[4:HEADER_SIZE], "big"), head[HEADER_SIZE:]


def payload_of(frames: list[bytes], name: str = "message") -> bytes:
    """The payload of a header+payload message (inline in the head, or the second frame).

    Raises:
        ProtocolError: neither layout.
    """
    n = len(frames)
    if n == 1:
        return frames[0][HEADER_SIZE:]
    if n == 2 and len(frames[0]) == HEADER_SIZE:
        return frames[1]
    raise ProtocolError(f"bad {name} message layout ({n} frames)")


def _decode_call(rid: int, frames: list[bytes]) -> Call:
    _frames(frames, 2, 3, "CALL")
    head = frames[0]
    fixed = HEADER_SIZE + CALL_OPTIONS.size
    if len(head) < fixed:
        raise ProtocolError("CALL head too short")
    deadline, flags, window, ser_len = CALL_OPTIONS.unpack_from(head, HEADER_SIZE)
    if deadline != deadline or deadline < 0:  # NaN or negative
        raise ProtocolError("bad deadline")
    if len(head) < fixed + ser_len:
        raise ProtocolError("CALL head too short for its serializer name")
    serializer = _text(head[fixed : fixed + ser_len], "serializer name")
    method = _text(head[fixed + ser_len :], "method name")
    if not method:
        raise ProtocolError("empty method name")
    return Call(
        rid,
        method,
        serializer,
        frames[1],
        frames[2] if len(frames) == 3 else None,
        float(deadline),
        flags,
        window,
    )


def _decode_error(rid: int, frames: list[bytes]) -> Error:
    _frames(frames, 4, 4, "ERROR")
    if len(frames[0]) != HEADER_SIZE:
        raise ProtocolError("ERROR message has trailing bytes")
    return Error(
        rid,
        _text(frames[1], "error type"),
        bytes(frames[2]).decode("utf-8", "replace"),
        bytes(frames[3]).decode("utf-8", "replace"),
    )


def _decode_throw(rid: int, frames: list[bytes]) -> Throw:
    _frames(frames, 3, 3, "THROW")
    if len(frames[0]) != HEADER_SIZE:
        raise ProtocolError("THROW message has trailing bytes")
    return Throw(rid, _text(frames[1], "error type"), bytes(frames[2]).decode("utf-8", "replace"))


def _decode_stream(rid: int, frames: list[bytes]) -> StreamOpen:
    (lease,) = _fixed(frames, LEASE, "STREAM")
    if not lease > 0:
        raise ProtocolError("bad stream lease")
    return StreamOpen(rid, float(lease))


def _decode_credit(rid: int, frames: list[bytes]) -> Credit:
    (count,) = _fixed(frames, COUNT, "CREDIT")
    return Credit(rid, count)


def _bare_decoder(cls: Any, name: str) -> Callable[[int, list[bytes]], Message]:
    def decode_bare(rid: int, frames: list[bytes]) -> Message:
        _bare(frames, name)
        return cls(rid)  # type: ignore[no-any-return]

    return decode_bare


def _payload_decoder(cls: Any, name: str) -> Callable[[int, list[bytes]], Message]:
    def decode_payload(rid: int, frames: list[bytes]) -> Message:
        return cls(rid, payload_of(frames, name))  # type: ignore[no-any-return]

    return decode_payload


_DECODERS: dict[int, Callable[[int, list[bytes]], Message]] = {
    Kind.CALL: _decode_call,
    Kind.RESULT: _payload_decoder(Result, "RESULT"),
    Kind.ERROR: _decode_error,
    Kind.CANCEL: _bare_decoder(Cancel, "CANCEL"),
    Kind.ACK: _bare_decoder(Ack, "ACK"),
    Kind.STREAM: _decode_stream,
    Kind.NEXT: _payload_decoder(Next, "NEXT"),
    Kind.THROW: _decode_throw,
    Kind.CREDIT: _decode_credit,
    Kind.ITEM: _payload_decoder(Item, "ITEM"),
    Kind.END: _bare_decoder(End, "END"),
    Kind.PING: _bare_decoder(Ping, "PING"),
    Kind.PONG: _bare_decoder(Pong, "PONG"),
}


def request_id_of(frames: list[bytes]) -> int | None:
    """Best effort, for answering a message that failed to decode: its request id when its
    head starts with a netcall header (of any version), else ``None``."""
    if not frames or len(frames[0]) < HEADER_SIZE or not frames[0].startswith(MAGIC):
        return None
    return int(HEADER.unpack_from(frames[0])[3])


def decode(frames: list[bytes]) -> Message:
    """Parse one message (the frames after the routing envelope).

    Raises:
        ProtocolError: for anything that is not a well-formed message of this version; never
            any other exception.
    """
    if not frames:
        raise ProtocolError("empty message")
    kind, rid = decode_header(frames[0])
    return _DECODERS[kind](rid, frames)


class StreamState(enum.Enum):
    """A service-side stream's state."""

    IDLE = "idle"  # suspended at a yield, waiting for the client
    STEPPING = "stepping"  # one lock-step NEXT/THROW in progress
    FLOWING = "flowing"  # prefetch mode: producing while credit lasts
    CLOSED = "closed"


#: Which client messages a stream accepts in each state. Anything else is a protocol error
#: answered with an ERROR (and the stream closed), never a crash.
STREAM_ACCEPTS: dict[StreamState, frozenset[Kind]] = {
    StreamState.IDLE: frozenset({Kind.NEXT, Kind.THROW, Kind.CREDIT, Kind.CANCEL}),
    StreamState.STEPPING: frozenset({Kind.CANCEL}),
    StreamState.FLOWING: frozenset({Kind.CREDIT, Kind.CANCEL}),
    StreamState.CLOSED: frozenset({Kind.CANCEL}),
}
