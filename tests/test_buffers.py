"""Out-of-band buffers: large bytes, bytearrays, memoryviews, arrays and numpy arrays travel as
ZeroMQ frames of their own (issue 14). Serializer, protocol, end to end, and hostile peers."""

from __future__ import annotations

import array
import asyncio
import pickle
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from netcall import RPCClient, RPCService, SerializationError
from netcall import protocol as p
from netcall._buffers import EXT_BUFFER, EXT_NDARRAY
from netcall.errors import ProtocolError, RemoteRPCError
from netcall.serializers import (
    BUFFER_MIN,
    MAX_BUFFERS,
    JSONSerializer,
    MsgpackSerializer,
    PickleSerializer,
)

BIG = bytes(range(256)) * 4096  # 1 MiB


def _round_trip(ser: Any, value: Any) -> tuple[Any, list[Any], bytes]:
    buffers: list[Any] = []
    data = ser.dumps_buffers(value, buffers)
    return ser.loads_buffers(data, buffers), buffers, data


# ----------------------------------------------------------------------------- serializers


@pytest.mark.parametrize(
    "big",
    [BIG, bytearray(BIG), memoryview(BIG), array.array("B", BIG), memoryview(BIG).cast("I")],
    ids=["bytes", "bytearray", "memoryview", "array", "memoryview-of-ints"],
)
def test_msgpack_buffer_types_go_out_of_band(big: Any) -> None:
    ser = MsgpackSerializer()
    value, buffers, data = _round_trip(ser, [big, {"k": (big, 1)}, "s"])
    assert value == [BIG, {"k": (BIG, 1)}, "s"]
    assert type(value[0]) is bytes
    assert len(buffers) == 2
    assert len(data) < 100  # the payload refers to the buffers, it does not hold them


def test_msgpack_small_buffers_stay_inline_and_dumps_is_unchanged() -> None:
    ser = MsgpackSerializer()
    small = b"x" * (BUFFER_MIN - 1)
    value, buffers, _ = _round_trip(ser, [small, bytearray(small)])
    assert buffers == [] and value == [small, small]
    # dumps() alone keeps everything inline: a self-contained payload, as before.
    assert ser.loads(ser.dumps([BIG, bytearray(BIG)])) == [BIG, BIG]
    # A large payload without buffers in it keeps the first packing.
    value, buffers, _ = _round_trip(ser, list(range(20000)))
    assert buffers == [] and value == list(range(20000))


def test_msgpack_buffers_found_deep_in_a_large_value() -> None:
    ser = MsgpackSerializer()
    value = {"rows": [{"id": i, "blob": BIG if i == 7 else b"x"} for i in range(50)]}
    out, buffers, data = _round_trip(ser, value)
    assert out == value and len(buffers) == 1 and len(data) < 2000


def test_msgpack_at_most_max_buffers_the_rest_inline() -> None:
    ser = MsgpackSerializer(buffer_min=16)
    blobs = [bytes([i]) * 32 for i in range(MAX_BUFFERS + 6)]
    value, buffers, _ = _round_trip(ser, blobs)
    assert value == blobs
    assert len(buffers) == MAX_BUFFERS


def test_msgpack_memoryviews_opt_in() -> None:
    ser = MsgpackSerializer(memoryviews=True)
    value, _, _ = _round_trip(ser, [BIG])
    assert type(value[0]) is memoryview and value[0].readonly and value[0] == BIG


def test_msgpack_bad_references_are_serialization_errors() -> None:
    ser = MsgpackSerializer()
    ref = msgpack.packb([msgpack.ExtType(EXT_BUFFER, (3).to_bytes(4, "big"))])
    with pytest.raises(SerializationError, match="buffer"):
        ser.loads(ref)  # no buffers at all
    with pytest.raises(SerializationError, match="buffer 3"):
        ser.loads_buffers(ref, [b"a"])
    with pytest.raises(SerializationError, match="reference"):
        ser.loads_buffers(msgpack.packb(msgpack.ExtType(EXT_BUFFER, b"\x00")), [b"a"])
    # The codec is still good afterwards.
    assert _round_trip(ser, [BIG])[0] == [BIG]


def test_msgpack_buffer_min_is_validated() -> None:
    with pytest.raises(ValueError):
        MsgpackSerializer(buffer_min=0)
    assert MsgpackSerializer(buffer_min=5).buffer_min == 5


def test_pickle_protocol_5_buffers() -> None:
    ser = PickleSerializer()
    value, buffers, data = _round_trip(ser, {"a": pickle.PickleBuffer(BIG), "b": 1})
    assert bytes(value["a"]) == BIG and value["b"] == 1
    assert len(buffers) == 1 and len(data) < 200


# ----------------------------------------------------------------------------- numpy


def test_numpy_arrays() -> None:
    np = pytest.importorskip("numpy")
    ser = MsgpackSerializer()
    for arr in (
        np.arange(1 << 16, dtype="f8").reshape(256, -1),
        np.arange(1 << 16, dtype="i4")[::2],  # not contiguous: copied when sent
        np.array(["2020-01-01"] * 5000, dtype="M8[D]"),
        np.zeros((0, 3)),
        np.arange(6, dtype="u2").reshape(2, 3),  # small: inline
    ):
        out, _, _ = _round_trip(ser, {"a": arr})
        assert out["a"].dtype == arr.dtype and out["a"].shape == arr.shape
        assert (out["a"] == arr).all()
    with pytest.raises(SerializationError, match="dtype"):
        ser.dumps_buffers(np.array([object()]), [])


@pytest.mark.parametrize(
    "header",
    [["|O", [1], 0], ["<f8", [3], 0], ["<f8", [-1], 0], ["V8", [1], 0], [1, [1], 0]],
    ids=["object", "size", "negative", "void", "not-a-str"],
)
def test_numpy_hostile_headers_are_refused(header: list[Any]) -> None:
    pytest.importorskip("numpy")
    ser = MsgpackSerializer()
    data = msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(header)))
    with pytest.raises(SerializationError):
        ser.loads_buffers(data, [b"\x00" * 8])


# ----------------------------------------------------------------------------- protocol


@pytest.mark.parametrize("cls", [p.Result, p.Item, p.Next])
def test_payload_messages_carry_buffers(cls: Any) -> None:
    msg = cls(5, b"payload", [b"a" * 10, b"b" * 20])
    frames = msg.to_frames()
    assert len(frames) == 5
    assert p.decode(frames) == msg
    # A count that does not match, and too many buffers, are refused.
    with pytest.raises(ProtocolError, match="layout"):
        p.decode([*frames, b"extra"])
    many = cls(5, b"x", [b"b"] * (MAX_BUFFERS + 1)).to_frames()
    with pytest.raises(ProtocolError, match="at most"):
        p.decode(many)


def test_call_carries_buffers_shared_by_args_and_kwargs() -> None:
    for kwargs in (None, b"kw"):
        call = p.Call(1, "m", "msgpack", b"args", kwargs, buffers=[b"x" * 5, b"y"])
        frames = call.to_frames()
        assert p.decode(frames) == call
        with_meta = p.Call(1, "m", "msgpack", b"a", kwargs, metadata={"k": "v"}, buffers=[b"z"])
        assert p.decode(with_meta.to_frames()) == with_meta
    head = p.call_head(1, "m", "msgpack", 0.0, p.FLAG_BUFFERS, 0)
    with pytest.raises(ProtocolError):
        p.decode([head, b"args", b""])  # the flag, but no buffer
    with pytest.raises(ProtocolError):
        p.decode([head, b"args", b"", *([b"b"] * (MAX_BUFFERS + 1))])


# ----------------------------------------------------------------------------- end to end


@pytest.fixture
async def pair(
    make_service: Callable[..., RPCService], make_client: Callable[..., RPCClient], make_url: Any
) -> tuple[RPCService, RPCClient, str]:
    svc = make_service()

    @svc.register
    def echo(x: Any = None, **kw: Any) -> Any:
        return [x, kw] if kw else x

    @svc.register
    def kinds(*xs: Any) -> list[str]:
        return [type(x).__name__ for x in xs]

    @svc.register
    def repeat(x: Any, n: int) -> Any:
        for _ in range(n):
            yield x

    @svc.register
    def bounce() -> Any:
        value = None
        while True:
            value = yield value

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client(timeout=30.0)
    cli.connect(url)
    return svc, cli, url


async def test_end_to_end_args_kwargs_results_items_and_sent_values(pair: Any) -> None:
    _, cli, _ = pair
    assert await cli.echo(BIG) == BIG
    assert await cli.echo(bytearray(BIG), k=memoryview(BIG)) == [BIG, {"k": BIG}]
    assert await cli.kinds(BIG, bytearray(BIG), memoryview(BIG)) == ["bytes"] * 3
    assert [x async for x in cli.repeat(BIG, 5)] == [BIG] * 5
    gen = await cli.bounce()
    assert await gen.asend(None) is None
    assert await gen.asend(bytearray(BIG)) == BIG
    await gen.aclose()


async def test_16_mib_round_trip(pair: Any) -> None:
    _, cli, _ = pair
    huge = bytes(range(256)) * (1 << 16)
    assert len(huge) == 16 << 20
    assert await cli.echo(huge) == huge


async def test_numpy_round_trip_without_a_copy_on_receipt(pair: Any) -> None:
    np = pytest.importorskip("numpy")
    _, cli, _ = pair
    arr = np.arange(1 << 17, dtype="f8").reshape(512, 256)
    out = await cli.echo(arr)
    assert out.dtype == arr.dtype and out.shape == arr.shape and (out == arr).all()
    # The array lies over the received ZeroMQ message: it owns no memory of its own.
    assert not out.flags.owndata
    base = out.base
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview)


async def test_a_service_without_buffers_refuses_them_clearly(
    make_service: Callable[..., RPCService], make_url: Any, ctx: Any
) -> None:
    svc = make_service(serializer=JSONSerializer())
    svc.register(lambda x: x, name="echo")
    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(url)
    try:
        call = p.Call(3, "echo", "json", b"[1]", buffers=[b"x" * 10])
        peer.send_multipart(call.to_frames())
        assert await asyncio.to_thread(peer.poll, 5000)
        reply = p.decode(peer.recv_multipart())
        assert isinstance(reply, p.Error) and "buffers" in reply.message
    finally:
        peer.close(0)


async def test_hostile_frame_counts(pair: Any, ctx: Any) -> None:
    svc, cli, url = pair
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(url)
    try:
        # More buffers than allowed, within the frame limit: refused with an answer.
        call = p.Call(8, "echo", "msgpack", msgpack.packb([1]), buffers=[b"b"] * 20)
        frames = call.to_frames()
        frames[3:] = [b"b"] * (MAX_BUFFERS + 1)
        peer.send_multipart(frames)
        assert await asyncio.to_thread(peer.poll, 5000)
        reply = p.decode(peer.recv_multipart())
        assert isinstance(reply, p.Error) and reply.id == 8
        # Far more frames than any message may have: read, dropped, nothing kept.
        peer.send_multipart([*frames, *([b""] * 10_000)])
        # A client is served all along, and the service holds nothing for the hostile peer.
        assert await cli.echo(BIG) == BIG
        assert not await asyncio.to_thread(peer.poll, 200)
        assert svc.active_calls == 0
    finally:
        peer.close(0)


async def test_remote_error_when_a_result_cannot_be_encoded(pair: Any) -> None:
    svc, cli, _ = pair
    svc.register(lambda: object(), name="opaque")
    with pytest.raises(RemoteRPCError, match="serialize"):
        await cli.opaque()
    assert await cli.echo(BIG) == BIG


@pytest.mark.parametrize("setting, expected", [("1", "True"), ("0", "False")])
def test_malloc_tuning_once_and_opt_out(setting: str, expected: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["NETCALL_MALLOC_TUNING"] = setting
    code = "from netcall import _malloc; print(_malloc.tune(), _malloc.tune())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    if sys.platform != "linux":
        expected = "False"
    assert out.stdout.split() == [expected, expected], out.stderr


_SENDER = """
import asyncio, sys
import netcall
from netcall import _malloc

async def main():
    client = netcall.RPCClient(timeout=20.0)
    client.connect(sys.argv[1])
    before = list(_malloc._state)
    size = await client.size(b"x" * int(sys.argv[2]))
    print(before, size, list(_malloc._state))
    client.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("size, tuned", [(1 << 20, "[True]"), (1000, "[]")])
async def test_a_process_that_only_sends_large_frames_tunes_malloc(
    make_service: Callable[..., RPCService], make_url: Callable[[str], str], size: int, tuned: str
) -> None:
    """A process that sends large frames and never receives one (a client uploading, a
    service streaming large items) allocates a fresh ZeroMQ message per frame as a receiver
    does: glibc's thresholds are raised at its first large send too. Small frames leave
    malloc alone."""
    import sys

    from conftest import netcall_env

    if not sys.platform.startswith("linux"):
        tuned = "[False]" if size >= 65536 else "[]"
    svc = make_service()
    svc.register(len, name="size")
    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    env = {k: v for k, v in netcall_env().items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env.pop("NETCALL_MALLOC_TUNING", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SENDER, url, str(size), env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert out.decode().strip().split(maxsplit=2) == ["[]", str(size), tuned]


def test_a_received_buffer_sent_on_is_not_copied(ctx: Any) -> None:
    """A large frame received as a memoryview and sent on as it is (a broker forwarding a
    payload, a handler returning the memoryview it was given) goes out as the same ZeroMQ
    message. Over inproc, where messages pass by reference, the next receiver's buffer is then
    the very memory the first one received."""
    import ctypes

    from netcall._frames import recv_frames, send_frames

    def address(buf: Any) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(buf))

    first, second, third, fourth = (ctx.socket(zmq.PAIR) for _ in range(4))
    try:
        first.bind("inproc://sent-on-1")
        second.connect("inproc://sent-on-1")
        third.bind("inproc://sent-on-2")
        fourth.connect("inproc://sent-on-2")
        first.send_multipart([b"envelope", b"head", BIG])
        assert second.poll(5000)
        got = recv_frames(second)
        assert got is not None and type(got[2]) is memoryview
        view = got[2]
        send_frames(third, [b"envelope", b"head", view, view])
        assert fourth.poll(5000)
        out = fourth.recv_multipart(copy=False)
        assert [address(f.buffer) for f in out[2:]] == [address(view)] * 2
        assert out[2].bytes == BIG
        # A part of it, or bytes made from it: copied into a message of its own.
        send_frames(third, [b"envelope", b"head", view[1:], bytes(view)])
        assert fourth.poll(5000)
        out = fourth.recv_multipart(copy=False)
        assert address(out[2].buffer) != address(view) and out[2].bytes == BIG[1:]
        assert address(out[3].buffer) != address(view) and out[3].bytes == BIG
        # The whole of it in another order is not that message (pyzmq refuses to send it).
        with pytest.raises(BufferError):
            send_frames(third, [b"envelope", view[::-1]])
    finally:
        for sock in (first, second, third, fourth):
            sock.close(0)


async def test_large_payloads_through_a_broker(ctx: Any) -> None:
    from conftest import tcp_url
    from netcall import Broker

    front, back = tcp_url(), tcp_url()
    viewer = MsgpackSerializer(memoryviews=True)
    service = RPCService(viewer, context=ctx)

    @service.register
    def echo(x: Any) -> Any:
        return x  # a read-only memoryview over the received message, sent back as it is

    huge = bytes(range(256)) * (1 << 16)  # 16 MiB
    async with Broker(front, back, context=ctx):
        service.connect(back)
        async with service, RPCClient(context=ctx, timeout=30.0) as client:
            client.connect(front)
            for _ in range(500):
                if "echo" in await client.methods():
                    break
                await asyncio.sleep(0.01)
            assert await client.echo(BIG) == BIG
            assert await client.echo(huge) == huge
            assert await asyncio.gather(*(client.echo(BIG) for _ in range(8))) == [BIG] * 8


# ----------------------------------------------------------------------------- review (issue 14)


async def test_a_buffer_changed_after_it_was_sent_goes_with_what_it_held_then(pair: Any) -> None:
    """Sends are corked until the end of the loop's turn (and queued behind a full pipe), so
    a bytearray, memoryview or numpy array is read when it goes out, not when it was handed
    over: each is copied when sent, and a stream's items keep what each held when yielded."""
    svc, cli, _ = pair

    @svc.register
    def changing(n: int) -> Any:
        buf = bytearray(BIG)
        for i in range(n):
            buf[0] = i
            yield buf

    @svc.register
    def changing_view(n: int) -> Any:
        buf = bytearray(BIG)
        for i in range(n):
            buf[0] = i
            yield memoryview(buf)

    assert [x[0] async for x in cli.changing(5)] == [0, 1, 2, 3, 4]
    assert [x[0] async for x in cli.changing_view(5)] == [0, 1, 2, 3, 4]

    # The client's side: calls made in one turn, the buffer changed before the turn ends.
    buf = bytearray(BIG)

    async def call(i: int) -> Any:
        buf[0] = i
        return await cli.echo(buf)

    assert [x[0] for x in await asyncio.gather(call(0), call(1), call(2))] == [0, 1, 2]


async def test_a_numpy_array_changed_after_it_was_sent(pair: Any) -> None:
    np = pytest.importorskip("numpy")
    svc, cli, _ = pair

    @svc.register
    def frames(n: int) -> Any:
        arr = np.zeros(1 << 16, dtype="f8")
        for i in range(n):
            arr[0] = i
            yield arr

    assert [float(x[0]) async for x in cli.frames(4)] == [0.0, 1.0, 2.0, 3.0]


def test_numpy_scalars_travel_as_numbers() -> None:
    np = pytest.importorskip("numpy")
    ser = MsgpackSerializer()
    value, _, _ = _round_trip(
        ser, [np.int64(5), np.int8(-3), np.uint64(2**63), np.float32(1.5), np.bool_(True)]
    )
    assert value == [5, -3, 2**63, 1.5, True]
    assert [type(v) for v in value] == [int, int, int, float, bool]
    value, _, _ = _round_trip(ser, {"n": np.float64(0.25)})
    assert value == {"n": 0.25}


def test_a_large_bytes_subclass_goes_out_of_band() -> None:
    class Blob(bytes):
        pass

    ser = MsgpackSerializer()
    value, buffers, data = _round_trip(ser, [Blob(BIG)])
    assert value == [BIG] and len(buffers) == 1 and len(data) < 100


@pytest.mark.parametrize(
    "view",
    [
        memoryview(bytearray(BIG))[::2],
        memoryview(bytes(64))[::2],
    ],
    ids=["large", "small"],
)
def test_a_memoryview_that_is_not_contiguous_is_refused_clearly(view: memoryview) -> None:
    with pytest.raises(SerializationError, match="contiguous"):
        MsgpackSerializer().dumps_buffers([view], [])


@pytest.mark.parametrize("limit", [100_000, -1], ids=["100000", "-1: no limit"])
async def test_max_message_size_bounds_the_whole_message(
    limit: int,
    make_service: Callable[..., RPCService],
    make_client: Callable[..., RPCClient],
    make_url: Any,
) -> None:
    """ZeroMQ's ZMQ_MAXMSGSIZE bounds each frame; out-of-band buffers make a message of many
    frames, so the service adds them up too, and refuses the call clearly. -1 is ZeroMQ's own
    "no limit"."""
    from netcall.errors import RemoteProtocolError

    svc = make_service(max_message_size=limit)
    svc.register(lambda *xs: sum(len(x) for x in xs), name="size")
    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client(timeout=10.0)
    cli.connect(url)
    part = b"x" * 40_000  # each out of band, each frame under the limit
    assert await cli.size(part, part) == 80_000
    if limit == -1:
        assert await cli.size(b"", BIG, BIG) == 2 * len(BIG)
        return
    with pytest.raises(RemoteProtocolError, match="max_message_size=100000"):
        await cli.size(part, part, part)
    assert await cli.size(part) == 40_000  # the client is still served
    assert svc.active_calls == 0


def test_buffers_found_by_the_packer_are_not_sent_twice() -> None:
    """A numpy array (found by the packer itself) beside a large bytes (found by the search
    after packing) in a large value: each goes out once."""
    np = pytest.importorskip("numpy")

    class Blob(bytes):
        pass

    ser = MsgpackSerializer()
    arr = np.arange(100_000, dtype="f8")
    for first in (arr, Blob(BIG)):
        value = [1, first, b"x" * 20_000, 2, 3]
        out, buffers, _ = _round_trip(ser, value)
        assert len(buffers) == 2
        assert sorted(memoryview(b).nbytes for b in buffers) == [20_000, memoryview(first).nbytes]
        assert out[2] == value[2] and bytes(memoryview(out[1])) == bytes(memoryview(first))
    many = {f"k{i}": i for i in range(9)} | {"a": arr, "b": b"x" * 20_000}
    _, buffers, _ = _round_trip(ser, many)
    assert len(buffers) == 2


def test_numpy_dates_and_odd_scalars() -> None:
    import datetime as dt

    np = pytest.importorskip("numpy")
    ser = MsgpackSerializer()
    value, _, _ = _round_trip(
        ser,
        [
            np.datetime64("2020-01-02"),
            np.datetime64("2020-01-02T03:04:05.123456789"),
            np.timedelta64(5, "s"),
            np.timedelta64(7_000, "ns"),
            np.datetime64("NaT", "us"),
        ],
    )
    assert value == [
        dt.date(2020, 1, 2),
        dt.datetime(2020, 1, 2, 3, 4, 5, 123456),
        dt.timedelta(seconds=5),
        dt.timedelta(microseconds=7),
        None,
    ]
    for odd in (np.complex128(1j), np.longdouble(1.5)):
        with pytest.raises(SerializationError, match="cannot serialize"):
            ser.dumps_buffers([odd], [])


@pytest.mark.parametrize("bad", [0, -5, "100000", 1.5, True])
def test_max_message_size_is_checked(bad: Any) -> None:
    from netcall import Broker

    with pytest.raises(ValueError, match="max_message_size"):
        RPCService(max_message_size=bad)
    with pytest.raises(ValueError, match="max_message_size"):
        Broker("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", max_message_size=bad)


class _OddBuffers:
    """A serializer of the user's whose ``dumps_buffers`` hands over something that is not a
    contiguous buffer for the value ``"odd"``."""

    name = "odd"

    def __init__(self, odd: Any) -> None:
        self.odd = odd

    def dumps(self, obj: Any) -> bytes:
        return msgpack.packb(obj)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(data)

    def dumps_buffers(self, obj: Any, buffers: list[Any]) -> bytes:
        if obj in ("odd", ["odd"]):
            buffers.append(self.odd)
        return msgpack.packb(obj)  # type: ignore[no-any-return]

    def loads_buffers(self, data: bytes, buffers: Any) -> Any:
        return msgpack.unpackb(data)


@pytest.mark.parametrize(
    "odd", ["a str", 7, memoryview(bytes(64))[::2]], ids=["str", "int", "strided"]
)
async def test_a_serializer_handing_over_a_bad_buffer_fails_that_value_only(
    odd: Any,
    make_service: Callable[..., RPCService],
    make_client: Callable[..., RPCClient],
    make_url: Any,
) -> None:
    from netcall.errors import RemoteSerializationError

    ser = _OddBuffers(odd)
    svc = make_service(serializer=ser)
    svc.register(lambda x: x, name="echo")
    svc.register(lambda: "odd", name="odd")

    @svc.register
    def items() -> Any:
        yield 1
        yield "odd"

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client(ser, timeout=10.0)
    cli.connect(url)
    with pytest.raises(SerializationError, match="C-contiguous"):
        await cli.echo("odd")
    assert len(cli._calls) == 0  # nothing recorded for the call that could not be sent
    with pytest.raises(RemoteSerializationError, match="C-contiguous"):
        await cli.odd()
    got = []
    with pytest.raises(RemoteSerializationError, match="C-contiguous"):
        async for item in cli.items():
            got.append(item)
    assert got == [1]
    assert await cli.echo(2) == 2
