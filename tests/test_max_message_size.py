"""``max_message_size`` where a socket connects out. ``RPCClient(max_message_size=...)``: a
service that answers with more than the client can hold fails that call (or stream) with a
clear error, and nothing else is lost. A service that connects out (to a broker, to a client
that binds) refuses an oversized call and stays connected: ZeroMQ's per-frame limit, which
libzmq enforces by ending the connection without ever making it again, is not used there.
Real sockets over tcp, ipc and inproc, a real broker, a real blocking client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from _helpers import offered
from conftest import register_basics, tcp_url
from netcall import (
    Broker,
    ConnectionLostError,
    ProtocolError,
    RemoteProtocolError,
    RPCClient,
    RPCError,
)
from netcall.sync import SyncRPCClient

pytestmark = pytest.mark.timeout(30)

LIMIT = 2**20
PART = 600 * 2**10  # out of band (above 64 KiB): two of them exceed LIMIT together


@pytest.fixture
async def served(make_service, make_url):
    """``served(transport)`` -> the endpoint of a started service with the basics, a
    ``parts(n, size)`` handler answering ``n`` buffers of ``size`` bytes, and a stream of
    such answers whose ``finally`` sets ``closed``."""
    closed = asyncio.Event()

    def make(transport: str = "tcp") -> tuple[str, asyncio.Event]:
        svc = make_service()
        register_basics(svc)

        @svc.register
        def parts(n: int, size: int) -> list[bytes]:
            return [bytes([i]) * size for i in range(n)]

        @svc.register
        async def parts_stream(n: int, size: int) -> Any:
            try:
                for i in range(100):
                    yield [bytes([i]) * size for _ in range(n)]
            finally:
                closed.set()

        url = make_url(transport)
        svc.bind(url)
        svc.start()
        return url, closed

    return make


async def test_frames_adding_up_to_more_fail_that_call_only(served, make_client, transport):
    url, _ = served(transport)
    cli = make_client(max_message_size=LIMIT)
    cli.connect(url)
    assert await cli.parts(1, PART) == [b"\0" * PART]  # under the limit
    with pytest.raises(ProtocolError, match=f"more than max_message_size={LIMIT}"):
        await cli.parts(2, PART)
    # Nothing else is lost: the connection, other calls, streams.
    results = await asyncio.gather(cli.echo("hi"), cli.parts(1, PART), cli.add(1, 2))
    assert results == ["hi", [b"\0" * PART], 3]
    assert [x async for x in cli.count(5)] == [0, 1, 2, 3, 4]


async def test_a_stream_item_too_large_closes_the_stream(served, make_client, transport):
    url, closed = served(transport)
    cli = make_client(max_message_size=LIMIT)
    cli.connect(url)
    got = []
    with pytest.raises(ProtocolError, match="max_message_size"):
        async for item in cli.parts_stream(2, 400 * 2**10):  # 800 KiB items: the first passes
            got.append(item)
            async for _ in cli.parts_stream(2, PART):  # 1.2 MiB items: the first fails
                pass
    assert len(got) == 1
    await asyncio.wait_for(closed.wait(), 5.0)  # the service's generator was closed
    assert await cli.echo(1) == 1


async def test_a_single_frame_too_large_fails_its_call_only(served, make_client, transport):
    # The client connects out: ZeroMQ's per-frame limit would end that connection for good
    # (libzmq does not reconnect after it), so only netcall's check applies.
    url, _ = served(transport)
    cli = make_client(max_message_size=LIMIT)
    cli.connect(url)
    slow = asyncio.ensure_future(cli.sleep(0.3, "done"))
    with pytest.raises(ProtocolError, match="max_message_size"):
        await cli.parts(1, 2 * LIMIT)
    assert await cli.echo(2) == 2
    assert await slow == "done"  # a call in flight on the same connection


async def test_no_limit_by_default_and_minus_one_is_none(served, make_client):
    url, _ = served("tcp")
    for size in (None, -1):
        cli = make_client(max_message_size=size)
        cli.connect(url)
        assert await cli.parts(2, 2 * LIMIT) == [b"\0" * 2 * LIMIT, b"\1" * 2 * LIMIT]


@pytest.mark.parametrize("bad", [0, -2, 1.5, "1", True])
def test_the_limit_is_checked(bad):
    with pytest.raises(ValueError, match="max_message_size"):
        RPCClient(max_message_size=bad)


async def test_the_blocking_client_takes_it_too(served, ctx):
    url, _ = served("tcp")

    def blocking() -> None:
        cli = SyncRPCClient(max_message_size=LIMIT, context=ctx, timeout=5.0)
        try:
            cli.connect(url)
            with pytest.raises(ProtocolError, match="max_message_size"):
                cli.parts(2, PART)
            assert cli.echo("fine") == "fine"
        finally:
            cli.close()

    await asyncio.to_thread(blocking)


async def test_an_oversized_call_through_a_broker_leaves_the_service_joined(
    make_service, make_client
):
    # Before: libzmq ended the service's connection to the broker at the first frame over
    # its limit and never made it again: one call from any client took the service away.
    front, back = tcp_url(), tcp_url()
    svc = make_service(max_message_size=LIMIT)
    register_basics(svc)
    async with Broker(front, back):
        svc.connect(back)
        svc.start()
        cli = make_client(timeout=5.0)
        cli.connect(front)
        await offered(cli, "echo")
        for _ in range(3):
            with pytest.raises(RemoteProtocolError, match=f"max_message_size={LIMIT}"):
                await cli.echo(b"x" * 2 * LIMIT)
            assert await cli.echo("still here") == "still here"


async def test_an_oversized_call_from_a_client_that_binds(make_service, make_client):
    url = tcp_url()
    cli = make_client(timeout=5.0)
    cli.bind(url)
    svc = make_service(max_message_size=LIMIT)
    register_basics(svc)
    svc.connect(url)
    svc.start()
    await offered(cli, "echo")
    with pytest.raises(RemoteProtocolError, match="max_message_size"):
        await cli.echo(b"x" * 2 * LIMIT)
    assert await cli.echo("still here") == "still here"


async def test_a_service_connected_out_still_limits_its_binds(make_service, make_client):
    # The limit is lifted for the connections a service makes, not for the ones it accepts:
    # a client sending a frame over it to a bound endpoint is cut off by ZeroMQ (its calls
    # fail at once), and it connects again.
    import zmq

    front, back, direct = tcp_url(), tcp_url(), tcp_url()
    svc = make_service(max_message_size=LIMIT)
    register_basics(svc)
    svc.bind(direct)
    async with Broker(front, back):
        svc.connect(back)
        svc.start()
        assert svc.socket.getsockopt(zmq.MAXMSGSIZE) == LIMIT
        cli = make_client(timeout=5.0)
        cli.connect(direct)
        assert await cli.echo(1) == 1
        with pytest.raises(ConnectionLostError):
            await asyncio.wait_for(cli.echo(b"x" * 2 * LIMIT), 3.0)
        for _ in range(100):
            try:
                assert await cli.call("echo", "again", timeout=0.5) == "again"
                break
            except (ConnectionLostError, RPCError):
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the client did not connect again")
        by_broker = make_client(timeout=5.0)
        by_broker.connect(front)
        await offered(by_broker, "echo")
        assert await by_broker.echo("through the broker") == "through the broker"


async def test_a_limit_below_the_inline_size_checks_small_answers_too(served, make_client):
    url, _ = served("tcp")
    cli = make_client(max_message_size=1000)
    cli.connect(url)
    assert await cli.echo(b"x" * 900) == b"x" * 900
    with pytest.raises(ProtocolError, match="max_message_size=1000"):
        await cli.echo(b"x" * 2000)  # inline in the answer's one frame
    with pytest.raises(ProtocolError, match="max_message_size=1000"):
        [x async for x in cli.parts_stream(1, 2000)]
    assert await cli.echo(1) == 1


async def test_a_client_that_binds_with_a_small_limit_still_hears_hellos(make_service, make_client):
    # A service's HELLO lists its methods (up to 1 MiB, the protocol's own bound). With the
    # client's limit applied to it, a client that binds never saw a service with more
    # methods than its limit has room for (or ZeroMQ cut it off, and it said HELLO again,
    # forever).
    url = tcp_url()
    cli = make_client(max_message_size=1000, timeout=5.0)
    cli.bind(url)
    svc = make_service()
    register_basics(svc)
    for i in range(30):

        def method(x: int = i) -> int:
            """A method with a docstring, so the HELLO is longer than the client's limit."""
            return x

        svc.register(method, name=f"method_{i:02d}")
    svc.connect(url)
    svc.start()
    for _ in range(200):  # (methods() would answer with more than 1000 bytes)
        try:
            assert await cli.call("method_29", timeout=1.0) == 29
            break
        except RPCError:  # not announced yet
            await asyncio.sleep(0.02)
    else:
        pytest.fail("the client never heard the service's HELLO")
    with pytest.raises(ProtocolError, match="max_message_size=1000"):
        await cli.echo(b"x" * 2000)
    assert await cli.echo("small") == "small"
