"""A reply that reached the client before the connection broke is an answer, not a loss,
whichever of the two the client's loop happens to see first (the data socket and its monitor
are two file descriptors, and a loop may run their readers in either order)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest
import zmq

from _helpers import recv_within
from conftest import tcp_url
from netcall import RPCClient
from netcall import protocol as p
from netcall.errors import ConnectionLostError


@pytest.fixture
def connected(ctx: Any, zsockets: Any) -> Any:
    """A raw ROUTER standing in for a service, and a client connected to it (closed after)."""
    url = tcp_url()
    service = zsockets(zmq.ROUTER)
    # It must not drop a reply: a ROUTER drops what is over its SNDHWM (1,000 by default; a
    # connection takes the value it had when it was made), and under load the last 500 of
    # the 1,500 below were dropped now and then.
    service.setsockopt(zmq.SNDHWM, 0)
    service.bind(url)
    client = RPCClient(timeout=5.0, context=ctx)
    client.connect(url)
    yield client, service
    client.close()


async def _answer_then_hang_up(client: RPCClient, service: zmq.Socket[Any]) -> asyncio.Future[Any]:
    call = asyncio.ensure_future(client.echo("x"))
    frames = await recv_within(service, 5.0)
    peer, head = frames[0], frames[1]
    (rid,) = struct.unpack("!Q", head[4:12])
    service.send_multipart([peer, *p.Result(rid, msgpack.packb("x")).to_frames()])
    service.close(linger=1000)  # the reply is written, then the connection closes
    return call


async def test_a_reply_read_after_the_disconnect_that_followed_it(connected):
    client, service = connected
    call = await _answer_then_hang_up(client, service)
    # Without a turn of the loop: wait until both have arrived, the reply on the client's
    # socket and the disconnect on its monitor ...
    monitor, sock = client._sockets.monitor, client._sockets.socket
    assert monitor is not None and sock is not None
    assert monitor.poll(5000) and sock.poll(5000)
    # ... then let the monitor's reader run first, as a loop may.
    assert client._monitor_driver is not None
    client._monitor_driver._on_ready()
    assert await asyncio.wait_for(call, 5) == "x"


async def test_a_call_with_no_reply_still_fails_when_the_connection_breaks(connected):
    client, service = connected
    call = asyncio.ensure_future(client.echo("x"))
    await recv_within(service, 5.0)
    service.close(linger=0)  # no answer
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(call, 5)


async def test_more_replies_than_one_batch_all_answer(connected):
    # 1,500 replies wait when the monitor says the connection broke: read_waiting reads them
    # all (it read one batch of 512, and the calls behind it failed with ConnectionLostError)
    client, service = connected
    n = 1500
    calls = [asyncio.ensure_future(client.echo(i)) for i in range(n)]
    received = [await recv_within(service, 5.0) for _ in range(n)]
    for frames in received:
        peer, head = frames[0], frames[1]
        (rid,) = struct.unpack("!Q", head[4:12])
        service.send_multipart([peer, *p.Result(rid, msgpack.packb("ok")).to_frames()])
    service.close(linger=5000)
    monitor, sock = client._sockets.monitor, client._sockets.socket
    assert monitor is not None and sock is not None
    assert monitor.poll(5000) and sock.poll(5000)
    assert client._monitor_driver is not None
    client._monitor_driver._on_ready()  # the monitor's reader first, as a loop may run it
    answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10)
    assert answers == ["ok"] * n
