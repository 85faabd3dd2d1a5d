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
