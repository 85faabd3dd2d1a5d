"""netcall's wire protocol, sans-IO: frames in, messages out. No zmq, no asyncio here.

Theory of operation
-------------------
A client talks to services over ZeroMQ; the socket's routing envelope (which service, which
client) is the transport's business and is stripped before frames reach this module. What is
left is one message: a list of frames whose first frame is a fixed 12-byte header::

    header  = b"NC" | version (u8) | kind (u8) | request id (u64, big-endian)

The request id is chosen by the client (a counter per client, 64 bits, never reused while the
client lives); a service keys its state by (peer, request id). Every message carries the version
byte: a peer speaking another version gets a :class:`ProtocolError`, never a misread.

Frames after the header, by kind (``payload`` is the serializer's bytes, text is UTF-8)::

    client -> service
      CALL    method, serializer name, options(deadline f64, flags u8, window u32), args[, kwargs]
      CANCEL  -                          cancel a call, or close a stream
      NEXT    payload                    stream: send a value (lock-step asend / __anext__)
      THROW   type name, message         stream: throw an exception into the generator
      CREDIT  count (u32)                stream: allow this many more items (prefetch)
      PING    -                          keepalive (request id 0); the service answers PONG
    service -> client
      RESULT  payload                    the call's return value
      ERROR   type name, message, traceback
      ACK     -                          a one-way call was accepted
      STREAM  lease (f64)                the call returned a generator: a stream is open
      ITEM    payload                    stream: one yielded value
      END     -                          stream: the generator is exhausted
      PONG    -                          answer to PING

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
from dataclasses import dataclass

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
    "decode",
    "decode_header",
]

MAGIC = b"NC"
VERSION = 1
HEADER = struct.Struct("!2sBBQ")
_OPTIONS = struct.Struct("!dBI")
_LEASE = struct.Struct("!d")
_COUNT = struct.Struct("!I")
MAX_ID = 2**64 - 1
MAX_COUNT = 2**32 - 1

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


def header(kind: int, request_id: int) -> bytes:
    """The header frame for ``kind`` and ``request_id``."""
    return HEADER.pack(MAGIC, VERSION, kind, request_id)


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
        frames = [
            header(Kind.CALL, self.id),
            self.method.encode(),
            self.serializer.encode(),
            _OPTIONS.pack(self.deadline, self.flags, self.window),
            self.args,
        ]
        if self.kwargs is not None:
            frames.append(self.kwargs)
        return frames


@dataclass(slots=True)
class Result:
    id: int
    payload: bytes

    def to_frames(self) -> list[bytes]:
        return [header(Kind.RESULT, self.id), self.payload]


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
        return [header(Kind.STREAM, self.id), _LEASE.pack(self.lease)]


@dataclass(slots=True)
class Next:
    id: int
    payload: bytes

    def to_frames(self) -> list[bytes]:
        return [header(Kind.NEXT, self.id), self.payload]


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
        return [header(Kind.CREDIT, self.id), _COUNT.pack(self.count)]


@dataclass(slots=True)
class Item:
    id: int
    payload: bytes

    def to_frames(self) -> list[bytes]:
        return [header(Kind.ITEM, self.id), self.payload]


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
    """``(kind, request id)`` of a header frame.

    Raises:
        ProtocolError: not a netcall header, an unknown kind, or another protocol version
            (then ``exc.request_id`` holds the id, so the peer can still be answered).
    """
    if len(frame) != HEADER.size:
        raise ProtocolError(f"bad header: {len(frame)} bytes, expected {HEADER.size}")
    magic, version, kind, request_id = HEADER.unpack(frame)
    if magic != MAGIC:
        raise ProtocolError("bad header: not a netcall message")
    if version != VERSION:
        err = ProtocolError(f"unsupported protocol version {version} (this end speaks {VERSION})")
        err.request_id = request_id  # type: ignore[attr-defined]
        raise err
    if not Kind.CALL <= kind <= Kind.PONG:
        raise ProtocolError(f"unknown message kind {kind}")
    return kind, request_id


def _expect(frames: list[bytes], low: int, high: int, kind: Kind) -> None:
    if not low <= len(frames) <= high:
        raise ProtocolError(
            f"{kind.name} message has {len(frames)} frames, expected {low}"
            + (f" to {high}" if high != low else "")
        )


def _unpack(st: struct.Struct, frame: bytes, what: str) -> tuple[float | int, ...]:
    if len(frame) != st.size:
        raise ProtocolError(f"bad {what} frame: {len(frame)} bytes, expected {st.size}")
    return st.unpack(frame)


def decode(frames: list[bytes]) -> Message:
    """Parse one message (the frames after the routing envelope).

    Raises:
        ProtocolError: for anything that is not a well-formed message of this version; never
            any other exception.
    """
    if not frames:
        raise ProtocolError("empty message")
    kind, rid = decode_header(frames[0])
    k = Kind(kind)
    if k is Kind.CALL:
        _expect(frames, 5, 6, k)
        deadline, flags, window = _unpack(_OPTIONS, frames[3], "options")
        if deadline != deadline or deadline < 0:  # NaN or negative
            raise ProtocolError("bad deadline")
        method = _text(frames[1], "method name")
        if not method:
            raise ProtocolError("empty method name")
        return Call(
            rid,
            method,
            _text(frames[2], "serializer name"),
            frames[4],
            frames[5] if len(frames) == 6 else None,
            float(deadline),
            int(flags),
            int(window),
        )
    if k is Kind.RESULT:
        _expect(frames, 2, 2, k)
        return Result(rid, frames[1])
    if k is Kind.ERROR:
        _expect(frames, 4, 4, k)
        return Error(
            rid,
            _text(frames[1], "error type"),
            bytes(frames[2]).decode("utf-8", "replace"),
            bytes(frames[3]).decode("utf-8", "replace"),
        )
    if k is Kind.CANCEL:
        _expect(frames, 1, 1, k)
        return Cancel(rid)
    if k is Kind.ACK:
        _expect(frames, 1, 1, k)
        return Ack(rid)
    if k is Kind.STREAM:
        _expect(frames, 2, 2, k)
        (lease,) = _unpack(_LEASE, frames[1], "lease")
        if not lease > 0:
            raise ProtocolError("bad stream lease")
        return StreamOpen(rid, float(lease))
    if k is Kind.NEXT:
        _expect(frames, 2, 2, k)
        return Next(rid, frames[1])
    if k is Kind.THROW:
        _expect(frames, 3, 3, k)
        return Throw(
            rid, _text(frames[1], "error type"), bytes(frames[2]).decode("utf-8", "replace")
        )
    if k is Kind.CREDIT:
        _expect(frames, 2, 2, k)
        (count,) = _unpack(_COUNT, frames[1], "credit")
        return Credit(rid, int(count))
    if k is Kind.ITEM:
        _expect(frames, 2, 2, k)
        return Item(rid, frames[1])
    if k is Kind.END:
        _expect(frames, 1, 1, k)
        return End(rid)
    if k is Kind.PING:
        _expect(frames, 1, 1, k)
        return Ping(rid)
    _expect(frames, 1, 1, k)
    return Pong(rid)


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
