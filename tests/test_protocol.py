"""The sans-IO wire protocol: every message kind round-trips; garbage gives ProtocolError only."""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest

from netcall import protocol as p
from netcall.errors import ProtocolError
from netcall.protocol import session

MESSAGES = [
    p.Call(1, "echo", "msgpack", b"\x91\xa2hi"),
    p.Call(2**64 - 1, "a.b.c", "json", b"[]", b"{}", timeout=2.5, flags=p.FLAG_ONEWAY, window=9),
    p.Call(3, "m", "msgpack", b"\x90", None, metadata={"trace": "abc", "\u00e9": ""}),
    p.Call(4, "m", "msgpack", b"\x90", b"\x80", 1.0, metadata={"k": "v" * 300}),
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
    p.Hello(
        {
            "math.add": {"signature": "(a, b)", "doc": "Add."},
            "\u00e9": {"signature": "", "doc": ""},
        },
        8,
    ),
    p.Bye(),
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
    assert p.header(p.Kind.CALL, 258) == b"NC\x02\x01" + (258).to_bytes(8, "big")
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
    frames[0] = b"NC" + bytes([p.VERSION + 1]) + frames[0][3:]
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
        p.decode([b"NC" + bytes([p.VERSION]) + b"\x63" + bytes(8)])
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
    import pathlib

    imported = set()
    nodes = []
    for path in pathlib.Path(p.__file__).parent.glob("*.py"):
        nodes += list(ast.walk(ast.parse(path.read_text())))
    assert len(nodes) > 100 and inspect.ismodule(p)
    for node in nodes:
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


def test_metadata_round_trip_and_cost() -> None:
    md = {"traceparent": "00-abc-01", "user": "\u00e9l\u00e8ve", "": ""}
    call = p.Call(9, "echo", "msgpack", b"\x90", metadata=md)
    frames = call.to_frames()
    assert len(frames) == 3 and frames[0][p.HEADER_SIZE + 8] & p.FLAG_METADATA
    back = p.decode(frames)
    assert isinstance(back, p.Call)
    assert dict(back.metadata) == md and back.flags == 0 and back.kwargs is None
    # No metadata: no frame, no flag, the shared empty mapping.
    plain = p.decode(p.Call(9, "echo", "msgpack", b"\x90").to_frames())
    assert isinstance(plain, p.Call) and plain.metadata is p.NO_METADATA
    assert p.decode_metadata(p.encode_metadata({})) == {}
    for bad in (b"\x00", b"\x00\x05ab", b"\x00\x01a", b"\x00\x01\xff\x00\x00"):
        with pytest.raises(ProtocolError):
            p.decode_metadata(bad)
    with pytest.raises(ValueError):
        p.encode_metadata({"k": 1})  # type: ignore[dict-item]


def test_call_carries_time_remaining() -> None:
    call = p.decode(p.Call(1, "m", "msgpack", b"\x90", timeout=2.5).to_frames())
    assert isinstance(call, p.Call) and call.timeout == 2.5
    with pytest.raises(ProtocolError, match="deadline"):
        p.decode([p.header(p.Kind.CALL, 1) + p.CALL_OPTIONS.pack(-1.0, 0, 0, 1) + b"mx", b"x"])


def test_service_stream_transitions() -> None:
    S, K = p.StreamState, p.Kind
    nxt = session.service_stream_next
    assert nxt(S.IDLE, K.NEXT) is S.STEPPING
    assert nxt(S.IDLE, K.THROW) is S.STEPPING
    assert nxt(S.STEPPING, K.ITEM) is S.IDLE
    assert nxt(S.IDLE, K.CREDIT) is S.FLOWING
    assert nxt(S.FLOWING, K.ITEM) is S.FLOWING
    for state in S:
        assert nxt(state, K.CANCEL) is S.CLOSED
        assert nxt(state, K.END) is S.CLOSED
    for state, kind in [(S.FLOWING, K.NEXT), (S.STEPPING, K.CREDIT), (S.CLOSED, K.NEXT)]:
        with pytest.raises(ProtocolError, match="not allowed"):
            nxt(state, kind)
    # STREAM_ACCEPTS is derived from the table.
    assert p.STREAM_ACCEPTS[S.FLOWING] == {K.CREDIT, K.CANCEL}


def test_client_stream_transitions() -> None:
    C, K = p.ClientStreamState, p.Kind
    nxt = session.client_stream_next
    assert nxt(C.LOCKSTEP, K.CREDIT) is C.PREFETCH
    assert nxt(C.PREFETCH, K.CANCEL) is C.CLOSING
    assert nxt(C.CLOSING, K.END) is C.DONE
    # ITEM never changes the state (the client's hot path relies on it).
    for state in C:
        assert nxt(state, K.ITEM) is state
        assert nxt(state, K.ERROR) is C.DONE
    for state, kind in [(C.CLOSING, K.CREDIT), (C.DONE, K.CREDIT), (C.PREFETCH, K.NEXT)]:
        with pytest.raises(ProtocolError):
            nxt(state, kind)


def test_credit_accounting() -> None:
    assert session.first_credit(1024) == session.FIRST_CREDIT
    assert session.first_credit(4) == 4
    assert session.add_credit(p.MAX_COUNT - 1, 10) == p.MAX_COUNT
    assert session.credit_limit(1024, 4 * 2**20, 64.0) == 1024
    assert session.credit_limit(1024, 4 * 2**20, 2**20) == 4  # big items: the byte budget
    assert session.credit_limit(1024, 10, 2**20) == 1  # never below one
    assert session.credit_to_grant(granted=16, consumed=1, limit=16) == 0  # 15 still ahead
    assert session.credit_to_grant(granted=16, consumed=8, limit=16) == 8  # half: top up
    assert session.credit_to_grant(granted=16, consumed=8, limit=1024) == 1016
    avg = 64.0
    for _ in range(100):
        avg = session.update_item_size(avg, 1000)
    assert 990 < avg <= 1000


def test_no_frames_are_built_outside_the_protocol() -> None:
    """One way to encode every message: the cores never pack a header themselves."""
    import pathlib

    src = pathlib.Path(p.__file__).parent.parent
    for path in src.rglob("*.py"):
        if path.parent.name == "protocol":
            continue
        text = path.read_text()
        assert "p.header(" not in text and "HEADER.pack" not in text, path


def test_hello_and_bye() -> None:
    hello = p.Hello({"a": {"signature": "()", "doc": ""}}, None)
    assert p.decode(hello.to_frames()) == hello
    assert p.decode(p.Hello({}, 3).to_frames()).max_concurrent == 3  # type: ignore[union-attr]
    head = hello.to_frames()[0]
    for body in (b"\xff", b"[1]", b"{bad", b'{"": {}}', b"[" * 100000):
        with pytest.raises(ProtocolError):
            p.decode([head, body])
    with pytest.raises(ProtocolError, match="too large"):
        p.decode([head, b" " * (p.MAX_HELLO_BYTES + 1)])
    # Odd info is tolerated (the methods' names are what matter), within bounds.
    odd = p.decode([head, b'{"m": 5, "n": {"signature": 7, "doc": "x"}}'])
    assert odd.methods == {  # type: ignore[union-attr]
        "m": {"signature": "", "doc": ""},
        "n": {"signature": "", "doc": "x"},
    }


def test_retag_replaces_only_the_request_id() -> None:
    for msg in MESSAGES:
        frames = msg.to_frames()
        frames[0] = p.retag(frames[0], 4242)
        assert p.decode_header(frames[0])[1] == 4242
        if not isinstance(msg, p.Hello | p.Bye):
            again = p.decode(frames)
            assert type(again) is type(msg) and again.id == 4242


def test_retime_replaces_only_a_call_s_timeout() -> None:
    call = p.Call(7, "svc.method", "msgpack", b"args", None, 2.5, p.FLAG_ONEWAY, 16)
    frames = call.to_frames()
    frames[0] = p.retime(frames[0], 0.75)
    again = p.decode(frames)
    assert again == p.Call(7, "svc.method", "msgpack", b"args", None, 0.75, p.FLAG_ONEWAY, 16)


@pytest.mark.parametrize(
    "convert", [bytes, bytearray, lambda b: memoryview(bytearray(b)), memoryview]
)
def test_a_call_head_of_any_buffer_type_decodes(convert: Any) -> None:
    """The decoder keeps the names of recent CALL heads by their bytes: a head given as a
    bytearray or a (writable) memoryview decodes as from bytes, and twice over (the second time
    from what the first one kept)."""
    head = p.call_head(1, "echo", "msgpack", 0.0, 0, 0)
    for _ in range(2):
        msg = p.decode([convert(head), b"\x90"])
        assert isinstance(msg, p.Call)
        assert (msg.method, msg.serializer) == ("echo", "msgpack")


def test_the_plain_call_shortcut_decodes_as_the_general_path() -> None:
    """decode() takes a shortcut for the commonest CALL (two frames, a ``bytes`` head, no
    metadata nor buffers, names seen before): it gives what the general path gives, the same
    Call or the same ProtocolError, for good heads and bad, the first time and the next."""
    from netcall.protocol import _decode

    def general(frames: list[Any]) -> Any:
        kind, rid = p.decode_header(frames[0])
        return _decode._DECODERS[kind](rid, frames)

    def outcome(decoder: Any, frames: list[Any]) -> Any:
        try:
            return decoder(frames)
        except ProtocolError as exc:
            return repr(exc)

    rng = random.Random(2026)
    names = [(b"msgpack", b"echo"), (b"json", b"a.b"), (b"msgpack", b""), (b"\xff", b"m")]
    names += [(b"msgpack", "\u00e9t\u00e9".encode()), (b"", b"x")]
    calls = shortcuts = 0
    for _ in range(3000):
        timeout = rng.choice([0.0, 2.5, -1.0, float("nan"), float("inf"), 1e-9])
        flags = rng.choice([0, 0, p.FLAG_ONEWAY, p.FLAG_METADATA, p.FLAG_BUFFERS, 0xFF])
        ser, method = rng.choice(names)
        ser_len = rng.choice([len(ser), len(ser), len(ser), 0, 200])
        options = p.CALL_OPTIONS.pack(timeout, flags, rng.randrange(2**32), ser_len)
        head = p.header(p.Kind.CALL, rng.randrange(2**64)) + options + ser + method
        if rng.random() < 0.1:
            head = head[: rng.randrange(len(head))]
        args = rng.choice([b"\x90", memoryview(b"\x91\x01"), bytearray(b"\x90")])
        frames = [head, args]
        for _ in range(2):  # the second time with the names the first one kept
            want = outcome(general, frames)
            assert outcome(p.decode, frames) == want
            calls += isinstance(want, p.Call)
            shortcuts += _decode._plain_call(head, args) is not None
    assert calls > 500
    assert shortcuts > 300  # (taken: bytes heads, names kept, neither metadata nor buffers)
