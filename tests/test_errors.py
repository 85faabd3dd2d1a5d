"""Errors: remote exceptions, refusals, bad input of every kind; the service keeps serving."""

from __future__ import annotations

import asyncio
import time
import traceback

import pytest
import zmq

from _helpers import wait_until
from netcall import (
    ClientClosedError,
    MethodNotFoundError,
    RemoteRPCError,
    RPCError,
    RPCTimeoutError,
    SerializationError,
)
from netcall import protocol as p

pytestmark = pytest.mark.timeout(20)


class AppError(Exception):
    """A user-defined exception: crosses the wire by name only."""


class AppValueError(ValueError):
    """A user subclass of a builtin: must not be rebuilt locally (only exact allowlisted names)."""


def register_failures(svc):
    @svc.register
    def fail_value(msg="bad value"):
        raise ValueError(msg)

    @svc.register
    async def fail_key():
        await asyncio.sleep(0)
        return {}["missing"]

    @svc.register
    def fail_zero():
        return 1 / 0

    @svc.register
    def fail_app():
        raise AppError("application says no")

    @svc.register
    def fail_app_value():
        raise AppValueError("subclass")

    @svc.register
    def fail_type_inside(x):
        return x + "str"  # TypeError raised by the handler's body, not by the call

    @svc.register
    def fail_empty():
        raise RuntimeError()

    @svc.register
    def unserializable():
        return object()

    @svc.register
    def takes_two(a, b):
        return a + b

    @svc.register
    async def async_takes_one(a):
        return a


@pytest.fixture
async def fsvc(service):
    register_failures(service)
    return service


# ---------------------------------------------------------------- exception classes


def test_exception_tree():
    assert issubclass(RemoteRPCError, RPCError)
    assert issubclass(RPCTimeoutError, RPCError)
    assert issubclass(RPCTimeoutError, TimeoutError)
    assert issubclass(SerializationError, RPCError)
    assert issubclass(MethodNotFoundError, RemoteRPCError)
    assert issubclass(MethodNotFoundError, AttributeError)
    assert issubclass(ClientClosedError, RPCError)


# ---------------------------------------------------------------- remote exceptions


async def test_remote_value_error_is_both_types(fsvc, client):
    with pytest.raises(ValueError) as info:
        await client.fail_value("the message")
    exc = info.value
    assert isinstance(exc, RemoteRPCError)
    assert isinstance(exc, RPCError)
    assert exc.type_name == "ValueError"
    assert exc.message == "the message"
    assert "fail_value" in exc.traceback  # the remote traceback names the handler
    assert exc.remote_traceback == exc.traceback
    assert str(exc) == "ValueError: the message"  # one line, no server paths (issue 13)
    # ...and printing the exception shows the remote traceback (a note; on 3.10 the cause)
    printed = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "remote traceback:" in printed and "fail_value" in printed


@pytest.mark.parametrize(
    "method, builtin, type_name",
    [
        ("fail_key", KeyError, "KeyError"),
        ("fail_zero", ZeroDivisionError, "ZeroDivisionError"),
        ("fail_empty", RuntimeError, "RuntimeError"),
    ],
)
async def test_remote_builtin_errors(fsvc, client, method, builtin, type_name):
    with pytest.raises(RemoteRPCError) as info:
        await client.call(method)
    assert isinstance(info.value, builtin)
    assert info.value.type_name == type_name


async def test_except_clauses_catch_remote_builtin(fsvc, client):
    caught = None
    try:
        await client.fail_value()
    except KeyError:  # pragma: no cover - wrong branch
        caught = "key"
    except ValueError:
        caught = "value"
    assert caught == "value"


async def test_remote_user_exception_is_plain_remote_error(fsvc, client):
    with pytest.raises(RemoteRPCError) as info:
        await client.fail_app()
    exc = info.value
    assert type(exc) is RemoteRPCError  # not rebuilt: never by unpickling, never by guessing
    assert exc.type_name.endswith("AppError")
    assert "." in exc.type_name  # module-qualified
    assert exc.message == "application says no"
    assert "AppError" in str(exc)


async def test_remote_subclass_of_builtin_is_not_rebuilt_as_builtin(fsvc, client):
    with pytest.raises(RemoteRPCError) as info:
        await client.fail_app_value()
    assert info.value.type_name.endswith("AppValueError")
    assert info.value.message == "subclass"


async def test_type_error_raised_by_handler_body_keeps_its_message(fsvc, client):
    with pytest.raises(TypeError) as info:
        await client.fail_type_inside(1)
    assert isinstance(info.value, RemoteRPCError)
    assert "str" in info.value.message
    assert "fail_type_inside" in info.value.traceback


async def test_unicode_and_long_messages(service, client):
    @service.register
    def shout(msg):
        raise ValueError(msg)

    for msg in ["héllo wörld ✓ 日本", "x" * 100_000, ""]:
        with pytest.raises(ValueError) as info:
            await client.shout(msg)
        assert info.value.message == msg


# ---------------------------------------------------------------- refusals: quick and clear


async def test_unknown_method(fsvc, client):
    t0 = time.monotonic()
    with pytest.raises(MethodNotFoundError) as info:
        await client.no_such_method(1)
    assert time.monotonic() - t0 < 2.0  # an answer, not a timeout
    assert isinstance(info.value, AttributeError)
    assert "no_such_method" in str(info.value)
    assert await client.echo("still serving") == "still serving"


async def test_unknown_dotted_method(fsvc, client):
    with pytest.raises(MethodNotFoundError):
        await client.a.b.c()
    with pytest.raises(MethodNotFoundError):
        await client.call("echo.sub")


@pytest.mark.parametrize(
    "method, args, kwargs",
    [
        ("takes_two", (1,), {}),
        ("takes_two", (1, 2, 3), {}),
        ("takes_two", (1, 2), {"c": 3}),
        ("async_takes_one", (), {}),
        ("async_takes_one", (1,), {"zzz": 2}),
    ],
)
async def test_bad_arguments(fsvc, client, method, args, kwargs):
    t0 = time.monotonic()
    with pytest.raises(TypeError) as info:
        await client.call(method, *args, **kwargs)
    assert time.monotonic() - t0 < 2.0
    assert isinstance(info.value, RemoteRPCError)
    assert method in str(info.value)  # says which method was called badly
    assert await client.takes_two(1, 2) == 3


async def test_unserializable_result(fsvc, client):
    t0 = time.monotonic()
    with pytest.raises(RPCError) as info:
        await client.unserializable()
    assert time.monotonic() - t0 < 2.0
    assert isinstance(info.value, SerializationError)
    assert "unserializable" in str(info.value)
    assert await client.echo(1) == 1


async def test_unserializable_argument_fails_locally(fsvc, client):
    with pytest.raises(SerializationError):
        await client.echo(object())
    assert client.pending == 0
    assert fsvc.active_calls == 0
    assert await client.echo(2) == 2


async def test_errors_do_not_disturb_other_calls_in_flight(fsvc, client):
    async def one(i):
        if i % 3 == 0:
            with pytest.raises(ValueError):
                await client.fail_value(str(i))
            return "err"
        if i % 3 == 1:
            with pytest.raises(MethodNotFoundError):
                await client.call(f"missing_{i}")
            return "missing"
        return await client.sleep(0.001 * (i % 7), i)

    results = await asyncio.gather(*(one(i) for i in range(150)))
    for i, r in enumerate(results):
        assert r == ("err" if i % 3 == 0 else "missing" if i % 3 == 1 else i)
    assert client.pending == 0


# ---------------------------------------------------------------- closed client


async def test_call_on_closed_client(service, make_client, endpoint):
    cli = make_client(timeout=2.0)
    cli.connect(endpoint)
    assert await cli.echo(1) == 1
    cli.close()
    with pytest.raises(ClientClosedError):
        await cli.echo(1)


async def test_call_on_client_closed_before_first_call(service, make_client, endpoint):
    cli = make_client(timeout=2.0)
    cli.connect(endpoint)
    cli.close()
    with pytest.raises(ClientClosedError):
        await cli.echo(1)
    with pytest.raises(ClientClosedError):
        cli.connect(endpoint)


async def test_close_fails_calls_in_flight(service, make_client, endpoint):
    cli = make_client()
    cli.connect(endpoint)
    calls = [asyncio.ensure_future(cli.sleep(5)) for _ in range(3)]
    assert await wait_until(lambda: cli.pending == 3, 3)
    cli.close()
    for c in calls:
        with pytest.raises(ClientClosedError):
            await asyncio.wait_for(c, 2)
    assert cli.pending == 0


# ---------------------------------------------------------------- hostile raw frames


@pytest.fixture
async def raw_dealer(ctx):
    socks = []

    def make(url):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 2000)
        s.connect(url)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close(linger=0)


def _call_frames(rid=1, method="echo", **kw):
    return p.Call(rid, method, "msgpack", b"\x90", **kw).to_frames()


def _with_head(frames, head):
    return [head, *frames[1:]]


# Built only from the protocol's public helpers, so they stay malformed whatever the layout.
GARBAGE = [
    [b""],
    [b"garbage"],
    [b"\x00" * 12],
    [b"NC"],
    [b"NC\x01"],
    [p.HEADER.pack(p.MAGIC, p.VERSION, 0xFF, 1)],  # unknown kind
    [p.header(p.Kind.CALL, 1)],  # CALL without its fields
    _call_frames(2)[:1],  # CALL without its arguments frame
    _with_head(_call_frames(3), _call_frames(3)[0][: p.HEADER.size + 3]),  # truncated head
    _with_head(_call_frames(4), _call_frames(4)[0][:-4] + b"\xff\xfe\xff\xfe"),  # bad UTF-8 name
    _call_frames(5, timeout=float("nan")),
    [*_call_frames(6), b"extra", b"frames"],
    p.Result(7, b"\x01").to_frames(),  # a service-only message sent to a service
    p.Next(8, b"\xc0").to_frames(),  # a stream that does not exist
    p.Credit(9, 16).to_frames(),
    p.Throw(10, "ValueError", "x").to_frames(),
    p.Cancel(11).to_frames(),  # cancel of an unknown call
    [*p.Ping(0).to_frames(), b"trailing"],
    [b"x" * 1_000_000],
    [b"a"] * 500,
]


@pytest.mark.parametrize("frames", GARBAGE, ids=range(len(GARBAGE)))
async def test_malformed_frames_do_not_hurt_the_service(fsvc, client, endpoint, raw_dealer, frames):
    raw = raw_dealer(endpoint)
    raw.send_multipart(frames)
    # interleave: a real client keeps getting correct answers
    for i in range(3):
        raw.send_multipart(frames)
        assert await client.add(i, i) == 2 * i
    assert fsvc.active_calls == 0


@pytest.mark.parametrize(
    "frames",
    [
        [*_call_frames(81), b"extra", b"frames"],
        _call_frames(81)[:1],
        _with_head(_call_frames(81), _call_frames(81)[0][:-4] + b"\xff\xfe\xff\xfe"),
        _call_frames(81, timeout=float("nan")),
    ],
    ids=["extra-frames", "no-arguments", "bad-utf8-name", "nan-deadline"],
)
async def test_malformed_call_is_answered_not_left_to_time_out(
    fsvc, client, endpoint, raw_dealer, frames
):
    raw = raw_dealer(endpoint)
    raw.send_multipart(frames)
    reply = p.decode(await _recv(raw))
    assert isinstance(reply, p.Error) and reply.id == 81
    assert reply.type_name == "netcall.ProtocolError"
    assert await client.echo("ok") == "ok"


async def test_wrong_protocol_version_is_answered_with_an_error(fsvc, client, endpoint, raw_dealer):
    raw = raw_dealer(endpoint)
    frames = _call_frames(77)
    head = frames[0]
    frames[0] = p.HEADER.pack(p.MAGIC, p.VERSION + 1, p.Kind.CALL, 77) + head[p.HEADER.size :]
    raw.send_multipart(frames)
    # the reply is readable by *this* version and names the problem; the call did not run
    reply = p.decode(await _recv(raw))
    assert isinstance(reply, p.Error)
    assert reply.id == 77
    assert "version" in reply.message.lower()
    assert await client.echo("ok") == "ok"


async def test_call_with_undecodable_arguments_gets_an_error(fsvc, client, endpoint, raw_dealer):
    raw = raw_dealer(endpoint)
    raw.send_multipart(
        p.Call(5, "echo", "msgpack", b"\xc1\xc1\xc1").to_frames()
    )  # 0xc1: never used
    reply = p.decode(await _recv(raw))
    assert isinstance(reply, p.Error) and reply.id == 5
    # arguments that decode but are not a list
    raw.send_multipart(p.Call(6, "echo", "msgpack", b"\x05").to_frames())
    reply = p.decode(await _recv(raw))
    assert isinstance(reply, p.Error) and reply.id == 6
    # keyword arguments that are not a map of strings
    raw.send_multipart(p.Call(7, "echo", "msgpack", b"\x90", b"\x81\x01\x02").to_frames())
    reply = p.decode(await _recv(raw))
    assert isinstance(reply, p.Error) and reply.id == 7
    assert await client.echo("ok") == "ok"
    assert fsvc.active_calls == 0


async def test_duplicate_request_id_from_raw_peer(fsvc, client, endpoint, raw_dealer):
    raw = raw_dealer(endpoint)
    import msgpack

    frames = p.Call(9, "sleep", "msgpack", msgpack.packb([0.2, "first"])).to_frames()
    raw.send_multipart(frames)
    raw.send_multipart(frames)  # same id while the first runs
    replies = [p.decode(await _recv(raw)), p.decode(await _recv(raw))]
    kinds = sorted(type(r).__name__ for r in replies)
    assert kinds == ["Error", "Result"]
    assert await client.echo("ok") == "ok"


async def _recv(sock, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.005)
    raise AssertionError("no reply from the service")


def test_method_not_found_pickles_with_its_method() -> None:
    import pickle

    from netcall.errors import exception_from_remote

    exc = exception_from_remote("netcall.MethodNotFound", "no method named 'x'", method="x")
    assert str(exc) == "NotImplementedError: Unregistered procedure 'x' (no method named 'x')"
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is MethodNotFoundError and str(back) == str(exc)
    bare = exception_from_remote("netcall.MethodNotFound", "no method named 'x'")
    assert str(bare) == "NotImplementedError: no method named 'x'"
