"""connect/bind/unbind/disconnect on a driven socket can take the ZeroMQ FD's edge (libzmq
processes the socket's pending commands in them, as in a send) while a message waits: the
socket's driver must look at ``EVENTS`` again, or the message waits for the next event.

Each test plays the race in one turn of the loop, deterministically: a message reaches the
socket (its FD turns readable), then, before the loop's reader callback can run, the call
processes the commands (past libzmq's ~1 ms command throttle) and the FD is no longer
readable. The message must still be read, within seconds."""

from __future__ import annotations

import asyncio
import select
import struct
import time
from typing import Any

import msgpack
import pytest
import zmq

from _helpers import recv_within, wait_until
from conftest import tcp_url
from fuzz_peer import RESULT, call_head
from netcall import RPCClient, RPCService
from netcall import protocol as p
from netcall._edge import TransportError
from netcall._reactor import SocketDriver

pytestmark = pytest.mark.timeout(30)


def _until_readable(fd: int) -> None:
    """Block (not yielding to the loop) until ``fd`` is readable, then past the throttle."""
    readable, _, _ = select.select([fd], [], [], 5.0)
    assert readable, "the message did not reach the socket"
    time.sleep(0.005)  # libzmq processes commands at most every ~1 ms (TSC throttle)


async def test_check_soon_reads_a_message_a_connect_left_waiting(zsockets):
    make = zsockets
    url = tcp_url()
    router = make(zmq.ROUTER)
    router.bind(url)
    peer = make(zmq.DEALER)
    peer.connect(url)
    peer.send(b"hello")
    seen: list[bytes] = []
    driver = SocketDriver(router, asyncio.get_running_loop(), lambda f: seen.append(f[-1]))
    try:
        assert await wait_until(lambda: seen == [b"hello"])
        peer.send(b"ping")
        _until_readable(driver._fd)
        router.connect("inproc://edge-driver")  # one of the calls that leave the edge taken
        driver.check_soon()
        assert await wait_until(lambda: b"ping" in seen, timeout=3.0)
    finally:
        driver.close()


def test_check_soon_is_safe_when_closed_or_the_loop_is(ctx):
    loop = asyncio.new_event_loop()
    sock = ctx.socket(zmq.ROUTER)
    driver = SocketDriver(sock, loop, lambda f: None)
    driver.check_soon()  # before the loop runs: the check runs when it does
    loop.run_until_complete(asyncio.sleep(0))
    driver.close()
    driver.check_soon()
    loop.close()
    driver.check_soon()


# The calls that leave the edge taken: the others (a TCP connect, bind, unbind, disconnect)
# happen to queue a command for the socket itself, which makes the FD readable again.
_LEAVE_IT_TAKEN = ["connect", "disconnect", "bind", "unbind", "bind-in-use"]


def _race(obj: Any, action: str, url: str, taken: str) -> None:
    """Do ``action`` on a client or service (``url``: an inproc endpoint; ``taken``: a TCP
    endpoint another socket holds)."""
    if action == "bind-in-use":
        with pytest.raises(TransportError):
            obj.bind(taken)
    else:
        getattr(obj, action)(url)


def _prepare(obj: Any, action: str, url: str) -> None:
    if action == "disconnect":
        obj.connect(url)
    elif action == "unbind":
        obj.bind(url)


@pytest.mark.parametrize("action", _LEAVE_IT_TAKEN)
async def test_a_client_reads_a_reply_that_came_in_during(zsockets, ctx, action):
    make = zsockets
    url, taken = tcp_url(), tcp_url()
    inproc = f"inproc://edge-client-{action}"
    service = make(zmq.ROUTER)
    service.bind(url)
    make(zmq.ROUTER).bind(taken)
    client = RPCClient(timeout=10.0, context=ctx)
    client.connect(url)
    try:
        call = asyncio.ensure_future(client.echo(7))
        peer, head, _args = await recv_within(service, 5.0)
        rid = struct.unpack("!Q", head[4:12])[0]
        _prepare(client, action, inproc)  # after the call: it went to the service above
        await asyncio.sleep(0.01)  # whatever that scheduled runs now, before the race
        service.send_multipart([peer, *p.Result(rid, msgpack.packb(7)).to_frames()])
        driver = client._driver
        assert driver is not None
        _until_readable(driver._fd)
        _race(client, action, inproc, taken)
        assert await asyncio.wait_for(call, 3.0) == 7
    finally:
        client.close()


# -- the service ---------------------------------------------------------------------------


async def _result(sock: zmq.Socket[Any], timeout: float) -> Any:
    """The next RESULT's value (skipping ACKs and the like)."""
    end = time.monotonic() + timeout
    while True:
        frames = await recv_within(sock, max(0.01, end - time.monotonic()))
        if frames[0][3] == RESULT:
            return msgpack.unpackb(frames[1] if len(frames) > 1 else frames[0][p.HEADER_SIZE :])


class Echo(RPCService):
    async def echo(self, x: Any) -> Any:
        return x


@pytest.mark.parametrize("action", _LEAVE_IT_TAKEN)
async def test_a_service_reads_a_call_that_came_in_during(zsockets, ctx, action):
    make = zsockets
    url, taken = tcp_url(), tcp_url()
    inproc = f"inproc://edge-service-{action}"
    make(zmq.ROUTER).bind(taken)
    service = Echo(context=ctx)
    service.bind(url)
    _prepare(service, action, inproc)
    service.start()
    client = make(zmq.DEALER)
    client.connect(url)
    try:
        client.send_multipart([call_head(1, "echo"), msgpack.packb([1])])
        assert await _result(client, 5.0) == 1
        client.send_multipart([call_head(2, "echo"), msgpack.packb([2])])
        driver = service._driver
        assert driver is not None
        _until_readable(driver._fd)
        _race(service, action, inproc, taken)
        assert await _result(client, 3.0) == 2
    finally:
        service.close()
