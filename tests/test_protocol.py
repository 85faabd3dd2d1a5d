"""The sans-IO wire protocol: every message kind round-trips; garbage gives ProtocolError only."""

from __future__ import annotations

import random
import struct

import pytest

from netcall import protocol as p
from netcall.errors import ProtocolError

MESSAGES = [
    p.Call(1, "echo", "msgpack", b"\x91\xa2hi"),
    p.Call(2**64 - 1, "a.b.c", "json", b"[]", b"{}", deadline=1.7e9, flags=p.FLAG_ONEWAY, window=9),
    p.Result(3, b"payload"),
    p.Error(4, "ValueError", "bad \u00e9", "Traceback ..."),
    p.Cancel(5),
    p.Ack(6),
    p.StreamOpen(7, 30.0),
    p.Next(8, b"\xc0"),
    p.Throw(9, "TypeError", "spam"),
    p.Credit(10, 64),
    p.Item(11, b"\x01"),
    p.End(12),
    p.Ping(0),
    p.Pong(0),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: p.Message) -> None:
    frames = msg.to_frames()
    assert all(isinstance(f, bytes) for f in frames)
    assert p.decode(frames) == msg
    kind, rid = p.decode_header(frames[0])
    assert kind == p.Kind[type(msg).__name__.upper().replace("STREAMOPEN", "STREAM")]
    assert rid == msg.id


def test_every_kind_is_covered() -> None:
    kinds = {p.decode_header(m.to_frames()[0])[0] for m in MESSAGES}
    assert kinds == {int(k) for k in p.Kind}


def test_header_layout_is_stable() -> None:
    # The documented layout: b"NC", version, kind, 64-bit big-endian id.
    assert p.header(p.Kind.CALL, 258) == b"NC\x01\x01" + (258).to_bytes(8, "big")
    # Small payloads ride in the head; large ones get their own frame. Both decode.
    small = p.Result(1, b"x" * 10).to_frames()
    large = p.Result(1, b"x" * (p.INLINE_MAX + 1)).to_frames()
    assert len(small) == 1 and len(large) == 2
    assert p.decode(large) == p.Result(1, b"x" * (p.INLINE_MAX + 1))
    assert p.decode([p.header(p.Kind.ITEM, 5), b"abc"]) == p.Item(5, b"abc")
    assert p.Call(1, "m", "msgpack", b"a").oneway is False
    assert p.Call(1, "m", "msgpack", b"a", flags=p.FLAG_ONEWAY).oneway is True


def test_other_version_is_refused_with_its_id() -> None:
    frames = p.Cancel(77).to_frames()
    frames[0] = b"NC\x02" + frames[0][3:]
    with pytest.raises(ProtocolError, match="version") as info:
        p.decode(frames)
    assert info.value.request_id == 77  # type: ignore[attr-defined]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_truncated_and_oversized(msg: p.Message) -> None:
    frames = msg.to_frames()
    # Missing frames.
    for n in range(len(frames)):
        if n == len(frames) - 1 and isinstance(msg, p.Call) and msg.kwargs is not None:
            continue  # a Call without its optional kwargs frame is valid
        with pytest.raises(ProtocolError):
            p.decode(frames[:n])
    # Extra frames.
    with pytest.raises(ProtocolError):
        p.decode([*frames, b"x", b"y"])
    # A truncated header.
    with pytest.raises(ProtocolError):
        p.decode([frames[0][: p.HEADER_SIZE - 1], *frames[1:]])
    # Trailing bytes where the layout is fixed.
    if isinstance(msg, p.Cancel | p.Ack | p.End | p.Ping | p.Pong | p.StreamOpen | p.Credit):
        with pytest.raises(ProtocolError):
            p.decode([frames[0] + b"\x00", *frames[1:]])


def test_bad_fields() -> None:
    head = p.header(p.Kind.CALL, 1)
    opts = p.CALL_OPTIONS.pack(0.0, 0, 0, 7)
    with pytest.raises(ProtocolError, match="UTF-8"):
        p.decode([head + opts + b"msgpack" + b"\xff\xfe", b"x"])
    with pytest.raises(ProtocolError, match="UTF-8"):
        p.decode([head + p.CALL_OPTIONS.pack(0.0, 0, 0, 2) + b"\xff\xfeecho", b"x"])
    with pytest.raises(ProtocolError, match="empty method"):
        p.decode([head + opts + b"msgpack", b"x"])
    with pytest.raises(ProtocolError, match="too short"):
        p.decode([head + b"\x00" * 5, b"x"])
    with pytest.raises(ProtocolError, match="too short"):
        p.decode([head + p.CALL_OPTIONS.pack(0.0, 0, 0, 200) + b"abc", b"x"])
    with pytest.raises(ProtocolError, match="deadline"):
        p.decode([head + p.CALL_OPTIONS.pack(float("nan"), 0, 0, 7) + b"msgpackecho", b"x"])
    with pytest.raises(ProtocolError, match="lease"):
        p.decode([p.header(p.Kind.STREAM, 1) + struct.pack("!d", -1.0)])
    with pytest.raises(ProtocolError, match="layout"):
        p.decode([p.header(p.Kind.RESULT, 1) + b"inline", b"and a frame"])
    with pytest.raises(ProtocolError, match="kind"):
        p.decode([b"NC\x01\x63" + bytes(8)])
    with pytest.raises(ProtocolError, match="not a netcall"):
        p.decode([b"XX\x01\x01" + bytes(8)])
    with pytest.raises(ProtocolError, match="empty"):
        p.decode([])


def test_random_garbage_only_raises_protocol_error() -> None:
    rng = random.Random(1234)
    valid_headers = [m.to_frames()[0] for m in MESSAGES]
    for _ in range(20000):
        n = rng.randrange(0, 8)
        frames = [rng.randbytes(rng.choice([0, 1, 4, 8, 12, 13, 25, 40])) for _ in range(n)]
        if frames and rng.random() < 0.6:
            # A valid header with random bodies reaches deeper into the decoder.
            frames[0] = rng.choice(valid_headers) + rng.randbytes(rng.choice([0, 0, 4, 13, 30]))
        try:
            p.decode(frames)
        except ProtocolError:
            pass


def test_stream_state_table() -> None:
    accepts = p.STREAM_ACCEPTS
    assert set(accepts) == set(p.StreamState)
    assert p.Kind.CANCEL in accepts[p.StreamState.STEPPING]
    assert p.Kind.NEXT not in accepts[p.StreamState.FLOWING]
    assert p.Kind.NEXT not in accepts[p.StreamState.STEPPING]
    assert p.Kind.CREDIT in accepts[p.StreamState.IDLE]


def test_protocol_module_is_sans_io() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(p))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & {"zmq", "asyncio", "anyio", "gevent", "tornado"}


def test_request_id_of_a_malformed_message() -> None:
    call = p.Call(42, "echo", "msgpack", b"x").to_frames()
    assert p.request_id_of([call[0]]) == 42  # a CALL head, longer than the header
    other_version = b"NC\x07\x01" + (43).to_bytes(8, "big")
    assert p.request_id_of([other_version]) == 43
    assert p.request_id_of([]) is None
    assert p.request_id_of([b"NC\x01"]) is None
    assert p.request_id_of([b"XX" + bytes(10)]) is None
