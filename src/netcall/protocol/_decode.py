"""Decoding: frames in, a message (or :class:`~netcall.errors.ProtocolError`) out. No I/O."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ProtocolError
from ._announce import Bye, Hello, decode_bye, decode_hello
from ._messages import (
    BUFFER_COUNT,
    CALL_FIXED,
    CALL_OPTIONS,
    COUNT,
    FLAG_BUFFERS,
    FLAG_METADATA,
    HEADER,
    HEADER_SIZE,
    LEASE,
    MAGIC,
    MAX_BUFFERS,
    NO_METADATA,
    REQUEST_ID,
    VERSION,
    Ack,
    Call,
    Cancel,
    Credit,
    End,
    Error,
    Item,
    Kind,
    Message,
    Next,
    Ping,
    Pong,
    Result,
    StreamOpen,
    Throw,
)

__all__ = [
    "decode",
    "decode_header",
    "decode_metadata",
    "payload_and_buffers",
    "payload_of",
    "request_id_of",
    "split_inline",
]

_STR_LEN = struct.Struct("!H")


def _text(frame: bytes, what: str) -> str:
    try:
        return bytes(frame).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None


def decode_metadata(frame: bytes) -> Mapping[str, str]:
    """The metadata of a CALL from its frame (see :func:`~netcall.protocol.encode_metadata`).

    Raises:
        ProtocolError: truncated, an odd number of strings, or not UTF-8.
    """
    texts: list[str] = []
    pos, end = 0, len(frame)
    while pos < end:
        if pos + 2 > end:
            raise ProtocolError("truncated metadata")
        (n,) = _STR_LEN.unpack_from(frame, pos)
        pos += 2
        if pos + n > end:
            raise ProtocolError("truncated metadata")
        texts.append(_text(frame[pos : pos + n], "metadata"))
        pos += n
    if len(texts) % 2:
        raise ProtocolError("metadata has a key without a value")
    if not texts:
        return NO_METADATA
    return dict(zip(texts[::2], texts[1::2], strict=True))


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
    if not Kind.CALL <= kind <= Kind.BYE:
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
# The first 4 bytes of a RESULT or ITEM head (magic, version, kind), to its kind.
_INLINE_PREFIXES = {_PREFIX + bytes([kind]): int(kind) for kind in (Kind.RESULT, Kind.ITEM)}
_unpack_id = REQUEST_ID.unpack_from


def split_inline(head: bytes) -> tuple[int, int, bytes] | None:
    """Fast path for the commonest replies: ``(kind, id, payload)`` when ``head`` is, alone, a
    RESULT or ITEM with its payload inline; ``None`` for anything else (use :func:`decode`),
    a head that is not ``bytes`` too."""
    kind = _INLINE_PREFIXES.get(head[:4]) if type(head) is bytes else None
    if kind is None or len(head) < HEADER_SIZE:
        return None
    return kind, _unpack_id(head, 4)[0], head[HEADER_SIZE:]


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


def _bytes(frame: Any) -> bytes:
    # A large frame may arrive as a memoryview over the ZeroMQ message; payloads go to
    # serializers as bytes (one copy, as receiving them as bytes would have made).
    return frame if type(frame) is bytes else bytes(frame)


def _buffers(frames: list[Any], name: str) -> Sequence[Any]:
    if len(frames) > MAX_BUFFERS:
        raise ProtocolError(
            f"{name} message has {len(frames)} out-of-band buffers (at most {MAX_BUFFERS})"
        )
    return frames


def payload_and_buffers(frames: list[Any], name: str = "message") -> tuple[bytes, Sequence[Any]]:
    """The payload of a header+payload message and its out-of-band buffers. Layouts: the
    payload inline in the head; or the head exactly the header, then the payload frame; or
    that, then a frame holding the number of buffers (u16), then the buffers.

    Raises:
        ProtocolError: none of these layouts, or more than ``MAX_BUFFERS`` buffers.
    """
    n = len(frames)
    if n == 1:
        return frames[0][HEADER_SIZE:], ()
    if len(frames[0]) == HEADER_SIZE:
        if n == 2:
            return _bytes(frames[1]), ()
        count = frames[2]
        if len(count) == BUFFER_COUNT.size and BUFFER_COUNT.unpack(count)[0] == n - 3:
            return _bytes(frames[1]), _buffers(frames[3:], name)
    raise ProtocolError(f"bad {name} message layout ({n} frames)")


# The (serializer, method) names of recent CALL heads, by their bytes: a service sees the same
# few again and again. Bounded in entries and in key size.
_names: dict[bytes, tuple[str, str]] = {}
_NAMES_MAX = 1024
_NAMES_KEY_MAX = 256


def _call_names(head: bytes, fixed: int, ser_len: int) -> tuple[str, str]:
    if len(head) < fixed + ser_len:
        raise ProtocolError("CALL head too short for its serializer name")
    serializer = _text(head[fixed : fixed + ser_len], "serializer name")
    method = _text(head[fixed + ser_len :], "method name")
    if not method:
        raise ProtocolError("empty method name")
    return serializer, method


def _decode_call(rid: int, frames: list[bytes]) -> Call:
    head = frames[0]
    fixed = HEADER_SIZE + CALL_OPTIONS.size
    if len(head) < fixed:
        raise ProtocolError("CALL head too short")
    timeout, flags, window, ser_len = CALL_OPTIONS.unpack_from(head, HEADER_SIZE)
    metadata = NO_METADATA
    buffers: Sequence[Any] = ()
    if flags & FLAG_METADATA:
        _frames(frames, 3, 4 + (MAX_BUFFERS if flags & FLAG_BUFFERS else 0), "CALL")
        metadata = decode_metadata(_bytes(frames[-1]))
        frames = frames[:-1]
    if flags & FLAG_BUFFERS:
        _frames(frames, 4, 3 + MAX_BUFFERS, "CALL")
        buffers = frames[3:]
        frames = frames[:3] if len(frames[2]) else frames[:2]
    elif not flags & FLAG_METADATA:
        _frames(frames, 2, 3, "CALL")
    if timeout != timeout or timeout < 0:  # NaN or negative
        raise ProtocolError("bad deadline: the time remaining must be a number >= 0")
    names = head[fixed - 1 :]  # the serializer name's length, then both names
    if type(names) is not bytes:  # a bytearray or memoryview head: keys must be immutable
        names = bytes(names)
    known = _names.get(names)
    if known is None:
        known = _call_names(head, fixed, ser_len)
        if len(names) <= _NAMES_KEY_MAX:
            if len(_names) >= _NAMES_MAX:  # names made up by a peer cannot grow this
                _names.clear()
            _names[names] = known
    serializer, method = known
    return Call(
        rid,
        method,
        serializer,
        _bytes(frames[1]),
        _bytes(frames[2]) if len(frames) == 3 else None,
        float(timeout),
        flags & ~(FLAG_METADATA | FLAG_BUFFERS),
        window,
        metadata,
        buffers,
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
        return cls(rid, *payload_and_buffers(frames, name))  # type: ignore[no-any-return]

    return decode_payload


_DECODERS: dict[int, Callable[[int, list[bytes]], Message | Hello | Bye]] = {
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
    Kind.HELLO: decode_hello,
    Kind.BYE: decode_bye,
}


def request_id_of(frames: list[bytes]) -> int | None:
    """Best effort, for answering a message that failed to decode: its request id when its
    head starts with a netcall header (of any version), else ``None``."""
    if not frames or len(frames[0]) < HEADER_SIZE or not frames[0].startswith(MAGIC):
        return None
    return int(HEADER.unpack_from(frames[0])[3])


def decode(frames: list[bytes]) -> Message | Hello | Bye:
    """Parse one message (the frames after the routing envelope).

    Raises:
        ProtocolError: for anything that is not a well-formed message of this version; never
            any other exception.
    """
    if not frames:
        raise ProtocolError("empty message")
    if len(frames) == 2:
        call = _plain_call(frames[0], frames[1])
        if call is not None:
            return call
    kind, rid = decode_header(frames[0])
    return _DECODERS[kind](rid, frames)


_CALL_PREFIX = MAGIC + bytes([VERSION, Kind.CALL])
_PLAIN_CALL_SIZE = CALL_FIXED.size


def _plain_call(head: Any, args: Any) -> Call | None:
    """The commonest CALL, with fewer steps than the general path (measured: 1.1 µs against
    2.2 µs): a ``bytes`` head and the arguments, no metadata, no out-of-band buffers, names
    seen before (see ``_names``). ``None`` for anything else, which the general path
    decodes, or refuses, as before."""
    if type(head) is not bytes or not head.startswith(_CALL_PREFIX):
        return None
    if len(head) < _PLAIN_CALL_SIZE:
        return None
    _, _, _, rid, timeout, flags, window, _ = CALL_FIXED.unpack_from(head)
    if flags & (FLAG_METADATA | FLAG_BUFFERS) or not timeout >= 0:  # (NaN is not >= 0)
        return None
    known = _names.get(head[_PLAIN_CALL_SIZE - 1 :])
    if known is None:
        return None
    return Call(
        rid,
        known[1],
        known[0],
        args if type(args) is bytes else bytes(args),
        None,
        timeout,
        flags,
        window,
        NO_METADATA,
        (),
    )
