"""Serializers: exact round-trips through a real service, JSON, pickle opt-in, mismatches."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time

import pytest

from netcall import (
    JSONSerializer,
    MsgpackSerializer,
    PickleSerializer,
    RemoteRPCError,
    RPCError,
    SerializationError,
    SerializerMismatchError,
)
from netcall.serializers import get_serializer

pytestmark = pytest.mark.timeout(20)

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
NEG = dt.timezone(-dt.timedelta(hours=8))

# (id, value): every value must come back with the same type and value, nested types too.
MSGPACK_VALUES = [
    ("none", None),
    ("true", True),
    ("false", False),
    ("zero", 0),
    ("int", 42),
    ("neg", -7),
    ("int64_min", -(2**63)),
    ("int64_max", 2**63 - 1),
    ("uint64_max", 2**64 - 1),
    ("float", 0.1),
    ("float_neg", -1.5e-300),
    ("inf", float("inf")),
    ("str", "héllo ✓"),
    ("empty_str", ""),
    ("bytes", b"\x00\xffbinary"),
    ("empty_bytes", b""),
    ("list", [1, "a", None]),
    ("empty_list", []),
    ("dict", {"a": 1, "b": [1, 2]}),
    ("int_keys", {1: "one", 2: "two"}),
    ("tuple", (1, 2, 3)),
    ("empty_tuple", ()),
    ("nested_tuple", ((1, (2, (3,))), [4, (5, 6)])),
    ("tuple_in_dict", {"point": (1.0, 2.0), "list": [1, 2]}),
    ("list_of_tuples", [(1, "a"), (2, "b")]),
    ("dt_utc", dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.timezone.utc)),
    ("dt_ist", dt.datetime(2001, 1, 1, 12, 0, tzinfo=IST)),
    ("dt_neg", dt.datetime(1999, 12, 31, 23, 0, 1, 5, tzinfo=NEG)),
    ("dt_in_tuple", (dt.datetime(2020, 5, 17, tzinfo=dt.timezone.utc), "x")),
]


def deep_equal(a, b):
    """Equal in value AND type, all the way down (``1 == 1.0 == True`` does not count)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(
            deep_equal(k1, k2) and deep_equal(a[k1], b[k2])
            for k1, k2 in zip(sorted(a, key=repr), sorted(b, key=repr))
        )
    if isinstance(a, dt.datetime):
        return a == b and a.utcoffset() == b.utcoffset() and a.tzinfo is not None
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def test_deep_equal_is_strict():
    assert not deep_equal((1, 2), [1, 2])
    assert not deep_equal(1, True)
    assert not deep_equal(1, 1.0)
    assert not deep_equal({"a": (1,)}, {"a": [1]})
    assert deep_equal({"a": (1,)}, {"a": (1,)})


# ---------------------------------------------------------------- msgpack, unit


@pytest.mark.parametrize(
    "value", [v for _, v in MSGPACK_VALUES], ids=[i for i, _ in MSGPACK_VALUES]
)
def test_msgpack_round_trip_unit(value):
    s = MsgpackSerializer()
    assert s.name == "msgpack"
    out = s.loads(s.dumps(value))
    assert deep_equal(out, value), (value, out)


def test_msgpack_nan():
    s = MsgpackSerializer()
    assert math.isnan(s.loads(s.dumps(float("nan"))))


def test_msgpack_refuses_arbitrary_objects():
    class Thing:
        pass

    with pytest.raises(SerializationError):
        MsgpackSerializer().dumps(Thing())


def test_msgpack_garbage_is_a_serialization_error():
    with pytest.raises(SerializationError):
        MsgpackSerializer().loads(b"\xc1")
    with pytest.raises(SerializationError):
        MsgpackSerializer().loads(b"\x92\x01")  # truncated array
    with pytest.raises(SerializationError, match="extra data after the value"):
        MsgpackSerializer().loads(b"\x01\x02")  # one value, then more
    ok = MsgpackSerializer()
    with pytest.raises(SerializationError):
        ok.loads(b"\xc1")
    assert ok.loads(b"\x91\x01") == [1]  # the thread's codec starts afresh after a failure


def test_get_serializer():
    assert isinstance(get_serializer(None), MsgpackSerializer)
    assert isinstance(get_serializer("json"), JSONSerializer)
    assert isinstance(get_serializer("pickle"), PickleSerializer)
    with pytest.raises(ValueError):
        get_serializer("yaml")
    with pytest.raises(TypeError):
        get_serializer(object())


# ---------------------------------------------------------------- msgpack over the wire


async def test_msgpack_round_trip_over_the_wire(service, client):
    """Every value as an argument, a keyword argument, a result and a stream item."""

    @service.register
    def ident(value, *, kw=None):
        assert deep_equal(value, kw)  # the service sees the exact types too
        return value

    @service.register
    def types_seen(value):
        return type(value).__name__

    @service.register
    async def stream_back(values):
        for v in values:
            yield v

    values = [v for _, v in MSGPACK_VALUES]
    for value in values:
        out = await client.ident(value, kw=value)
        assert deep_equal(out, value), (value, out)
    assert await client.types_seen((1, 2)) == "tuple"
    assert await client.types_seen(b"x") == "bytes"
    streamed = [x async for x in client.stream_back(tuple(values))]
    for out, value in zip(streamed, values, strict=True):
        assert deep_equal(out, value), (value, out)


async def test_msgpack_int_beyond_64_bits_is_exact_or_refused(service, client):
    for big in (2**64, -(2**63) - 1, 10**40):
        try:
            out = await client.echo(big)
        except SerializationError:
            continue  # a clear refusal is acceptable ...
        assert out == big and type(out) is int  # ... a silent change is not


# ---------------------------------------------------------------- JSON


JSON_VALUES = [None, True, 0, -(2**53), 1.25, "ü", [1, [2]], {"a": {"b": None}}]


async def test_json_round_trip(make_service, make_client, make_url):
    url = make_url("ipc")
    svc = make_service(serializer="json")

    @svc.register
    def ident(value):
        return value

    @svc.register
    async def count(n):
        for i in range(n):
            yield i

    svc.bind(url)
    svc.start()
    cli = make_client(serializer=JSONSerializer())
    cli.connect(url)
    for value in JSON_VALUES:
        assert deep_equal(await cli.ident(value), value)
    assert await cli.ident((1, 2)) == [1, 2]  # JSON has no tuple: documented
    assert [x async for x in cli.count(3)] == [0, 1, 2]
    with pytest.raises(SerializationError):
        await cli.ident(b"bytes are not JSON")
    assert cli.pending == 0


# ---------------------------------------------------------------- pickle, opt-in


class Point:
    """A user class: only pickle can carry it."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


async def test_pickle_when_both_ends_opt_in(make_service, make_client, make_url):
    url = make_url("tcp")
    svc = make_service(serializer=PickleSerializer())

    @svc.register
    def move(p, dx):
        return Point(p.x + dx, p.y)

    svc.bind(url)
    svc.start()
    cli = make_client(serializer="pickle")
    cli.connect(url)
    assert await cli.move(Point(1, 2), 10) == Point(11, 2)
    svc.register(lambda v: v, name="ident")
    value = {"set": {1, 2}, "point": Point(0, 0), "tuple": (1,)}
    assert await cli.ident(value) == value


async def test_pickle_is_not_the_default(service, client):
    """Without opting in, a user object is refused by the client, never pickled."""
    with pytest.raises(SerializationError):
        await client.echo(Point(1, 2))
    assert client.serializer.name == "msgpack"
    assert service.serializer.name == "msgpack"


# ---------------------------------------------------------------- mismatch


@pytest.mark.parametrize(
    "service_ser, client_ser",
    [("msgpack", "json"), ("json", "msgpack"), ("pickle", "msgpack"), ("msgpack", "pickle")],
)
async def test_serializer_mismatch_is_clear_and_quick(
    make_service, make_client, make_url, service_ser, client_ser
):
    url = make_url("tcp")
    svc = make_service(serializer=service_ser)
    svc.register(lambda x=None: x, name="echo")
    svc.bind(url)
    svc.start()
    bad = make_client(serializer=client_ser, timeout=10.0)
    bad.connect(url)
    t0 = time.monotonic()
    with pytest.raises(SerializerMismatchError) as info:
        await bad.echo(1)
    assert time.monotonic() - t0 < 2.0  # an answer, not a timeout
    assert isinstance(info.value, RPCError)
    text = str(info.value)
    assert service_ser in text and client_ser in text
    assert bad.pending == 0
    # the service keeps serving clients that agree with it
    good = make_client(serializer=service_ser)
    good.connect(url)
    assert await good.echo(5) == 5


async def test_serializer_mismatch_on_a_stream(make_service, make_client, make_url):
    url = make_url("tcp")
    svc = make_service(serializer="json")

    @svc.register
    def count(n):
        yield from range(n)

    svc.bind(url)
    svc.start()
    cli = make_client()  # msgpack
    cli.connect(url)
    with pytest.raises(SerializerMismatchError):
        async for _ in cli.count(3):
            pass
    assert svc.active_streams == 0


async def test_custom_serializer_object(make_service, make_client, make_url):
    class Upper(JSONSerializer):
        name = "json-upper"

        def loads(self, data):
            value = super().loads(data)
            return value.upper() if isinstance(value, str) else value

    url = make_url("inproc")
    svc = make_service(serializer=Upper())
    svc.register(lambda s: s + "!", name="bang")
    svc.bind(url)
    svc.start()
    cli = make_client(serializer=Upper())
    cli.connect(url)
    assert await cli.bang("a") == "A!"
    plain = make_client(serializer="json", timeout=3)
    plain.connect(url)
    with pytest.raises(SerializerMismatchError):
        await asyncio.wait_for(plain.bang("a"), 2)


async def test_remote_error_travels_whatever_the_serializer(make_service, make_client, make_url):
    for ser in ("json", "pickle", "msgpack"):
        url = make_url("tcp")
        svc = make_service(serializer=ser)

        @svc.register
        def boom():
            raise KeyError("k")

        svc.bind(url)
        svc.start()
        cli = make_client(serializer=ser)
        cli.connect(url)
        with pytest.raises(KeyError) as info:
            await cli.boom()
        assert isinstance(info.value, RemoteRPCError)


# ---------------------------------------------------------------- nesting limits (issue 9)


def _nested_tuple(depth):
    value = 1
    for _ in range(depth):
        value = (value,)
    return value


def _nested_list(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def _ext_tuple_bytes(depth):
    """msgpack bytes of ``depth`` nested tuples, built by hand (what a hostile peer sends)."""
    import msgpack

    data = msgpack.packb(1)
    for _ in range(depth):
        data = msgpack.packb(msgpack.ExtType(1, b"\x91" + data))
    return data


@pytest.mark.parametrize("ser", [MsgpackSerializer(), JSONSerializer()], ids=["msgpack", "json"])
def test_nesting_up_to_max_depth_round_trips(ser):
    assert ser.max_depth == 100
    for value in (_nested_list(100), _nested_tuple(100)):
        out = ser.loads(ser.dumps(value))
        assert out == value or out == _nested_list(100)


def test_msgpack_tuples_deeper_than_max_depth_are_refused_both_ways():
    s = MsgpackSerializer(max_depth=10)
    assert s.loads(s.dumps(_nested_tuple(10))) == _nested_tuple(10)
    with pytest.raises(SerializationError, match="max_depth=10"):
        s.dumps(_nested_tuple(11))
    with pytest.raises(SerializationError, match="max_depth=10"):
        s.loads(_ext_tuple_bytes(11))
    # the serializer is still usable afterwards, on the same thread
    assert s.loads(s.dumps((1, (2, [3])))) == (1, (2, [3]))


@pytest.mark.parametrize("depth", [200, 1_000, 20_000])
def test_msgpack_deep_ext_values_are_an_error_not_a_crash(depth):
    """Issue 9, failure 1: 200 nested ext tuples killed the process (SIGSEGV)."""
    s = MsgpackSerializer()
    with pytest.raises(SerializationError, match="max_depth"):
        s.loads(_ext_tuple_bytes(depth))
    with pytest.raises(SerializationError):
        s.dumps(_nested_tuple(depth))


def test_msgpack_deep_values_in_a_small_thread_stack(tmp_path):
    """The whole limit fits a 256 KiB thread stack: decoding never re-enters unpackb."""
    import subprocess
    import sys

    from conftest import netcall_env

    script = tmp_path / "deep.py"
    script.write_text(
        "import threading, msgpack\n"
        "from netcall import MsgpackSerializer, SerializationError\n"
        "data = msgpack.packb(1)\n"
        "for _ in range(5000):\n"
        "    data = msgpack.packb(msgpack.ExtType(1, b'\\x91' + data))\n"
        "ok = []\n"
        "def run():\n"
        "    s = MsgpackSerializer()\n"
        "    v = 1\n"
        "    for _ in range(100): v = (v,)\n"
        "    assert s.loads(s.dumps(v)) == v\n"
        "    try: s.loads(data)\n"
        "    except SerializationError: ok.append(1)\n"
        "threading.stack_size(256 * 1024)\n"
        "t = threading.Thread(target=run); t.start(); t.join()\n"
        "print('OK' if ok else 'NO')\n"
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30, env=netcall_env()
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "OK"


def test_msgpack_deep_plain_lists_are_an_error():
    s = MsgpackSerializer()
    with pytest.raises(SerializationError, match="nests"):
        s.loads(b"\x91" * 100_000 + b"\x01")
    with pytest.raises(SerializationError):
        s.dumps(_nested_list(5_000))


@pytest.mark.parametrize(
    "data",
    [
        b"\xdd\xff\xff\xff\xff",  # array32 of 4G elements, nothing after
        b"\xdd\x05\xf5\xe1\x00\x01",  # array32 of 100M
        b"\xdf\x05\xf5\xe1\x00\x01\x01",  # map32 of 100M
        b"\xdb\x7f\xff\xff\xff",  # str32 of 2G
        b"\xc6\x7f\xff\xff\xff",  # bin32 of 2G
        b"\xc9\x7f\xff\xff\xff\x01",  # ext32 of 2G
        b"\xc7\x05\x01\xdd\x05\xf5\xe1\x00",  # a tuple declaring 100M elements
        b"\xc7\x03\x0bab",  # an exception with a truncated body
        b"\xd4\x63\x00",  # an unknown extension type (kept as ExtType)
    ],
)
def test_msgpack_hostile_headers(data):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = MsgpackSerializer()
    try:
        s.loads(data)
    except SerializationError:
        pass
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert s.loads(s.dumps([1, (2,)])) == [1, (2,)]


def test_json_depth_limit_both_ways():
    s = JSONSerializer(max_depth=10)
    assert s.loads(s.dumps(_nested_list(10))) == _nested_list(10)
    with pytest.raises(SerializationError, match="max_depth=10"):
        s.dumps(_nested_list(11))
    with pytest.raises(SerializationError, match="max_depth=10"):
        s.loads(b"[" * 11 + b"]" * 11)
    # brackets inside strings do not count, wide values are fine
    assert s.loads(s.dumps(["[[[[[[[[[[[[[[[[[", {"a": [{}] * 50}])) == [
        "[[[[[[[[[[[[[[[[[",
        {"a": [{}] * 50},
    ]


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_json_very_deep_is_a_serialization_error(depth):
    """Issue 9, failure 6: RecursionError escaped (no reply at all on the service)."""
    s = JSONSerializer()
    with pytest.raises(SerializationError):
        s.loads(b"[" * depth + b"]" * depth)
    with pytest.raises(SerializationError):
        s.dumps(_nested_list(depth))


def test_max_depth_option():
    import pickle

    with pytest.raises(ValueError):
        MsgpackSerializer(max_depth=0)
    with pytest.raises(ValueError):
        JSONSerializer(max_depth=-1)
    s = pickle.loads(pickle.dumps(MsgpackSerializer(max_depth=7)))
    assert s.max_depth == 7
    with pytest.raises(SerializationError):
        s.dumps(_nested_tuple(8))


def test_msgpack_from_several_threads():
    import threading

    s = MsgpackSerializer()
    values = [(i, [(i, {"k": (i,)})], {i}) for i in range(200)]
    errors = []

    def run():
        try:
            for _ in range(50):
                for v in values:
                    assert s.loads(s.dumps(v)) == v
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
