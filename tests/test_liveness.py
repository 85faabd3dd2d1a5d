"""A service that dies: calls in flight fail at once, new calls go to the live services."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest
import zmq

from _helpers import wait_until
from netcall import ConnectionLostError, RPCClient, RPCService
from netcall.testing import free_tcp_endpoint

SERVICE = """
import asyncio, sys
from netcall import RPCService
s = RPCService()
@s.register
async def slow(t):
    await asyncio.sleep(t)
    return "slow"
@s.register
def who():
    return "child"
@s.register
async def count():
    i = 0
    while True:
        yield i
        i += 1
        await asyncio.sleep(0.01)
async def main():
    s.bind(sys.argv[1])
    print("ready", flush=True)
    await s.serve()
asyncio.run(main())
"""


@pytest.fixture
def child():
    procs: list[subprocess.Popen[str]] = []

    def start(url: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVICE, url], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_call_in_flight_fails_when_the_service_dies(child, transport, tmp_path):
    url = free_tcp_endpoint() if transport == "tcp" else f"ipc://{tmp_path}/svc.ipc"
    proc = child(url)
    client = RPCClient(timeout=30.0)
    try:
        client.connect(url)
        assert await client.who() == "child"
        call = asyncio.ensure_future(client.slow(20))
        # A round trip behind it on the same connection: the slow call has arrived.
        assert await client.who() == "child"
        started = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        with pytest.raises(ConnectionLostError):
            await call
        assert time.monotonic() - started < 5  # not the 30 s timeout
        assert client.pending == 0
    finally:
        client.close()


@pytest.mark.timeout(30)
async def test_stream_fails_when_the_service_dies(child):
    url = free_tcp_endpoint()
    proc = child(url)
    client = RPCClient(timeout=30.0)
    try:
        client.connect(url)
        seen = []
        with pytest.raises(ConnectionLostError):
            async for x in client.count():
                seen.append(x)
                if x == 5:
                    proc.send_signal(signal.SIGKILL)
        assert seen[:6] == [0, 1, 2, 3, 4, 5]
        assert client.open_streams == 0
    finally:
        client.close()


@pytest.mark.timeout(30)
async def test_new_calls_prefer_live_services(child):
    dead_url, live_url = free_tcp_endpoint(), free_tcp_endpoint()
    proc = child(dead_url)
    live = RPCService()
    live.register(lambda: "live", name="who")
    live.bind(live_url)
    client = RPCClient(timeout=5.0)
    try:
        async with live:
            client.connect([dead_url, live_url])
            answers: set[str] = set()
            deadline = time.monotonic() + 5
            while answers != {"child", "live"} and time.monotonic() < deadline:
                # Once both connections are up, calls alternate between them.
                answers.update(await asyncio.gather(client.who(), client.who()))
            assert answers == {"child", "live"}
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            # The disconnect event arrives (the socket monitor marks the dead service down).
            assert await wait_until(lambda: not client._peers.by_url[dead_url].up, 5)
            assert [await client.who() for _ in range(20)] == ["live"] * 20
    finally:
        client.close()


@pytest.mark.timeout(30)
async def test_keepalive_follows_the_shortest_lease():
    """A stream opened on a long-lease service first must not set the ping interval for a
    stream on a short-lease service opened later: that one must outlive an idle pause."""
    long_url, short_url = free_tcp_endpoint(), free_tcp_endpoint()
    ctx = zmq.Context()
    long_lease = RPCService(stream_lease=60.0, context=ctx)
    short_lease = RPCService(stream_lease=0.6, context=ctx)
    for svc, url in ((long_lease, long_url), (short_lease, short_url)):

        @svc.register
        async def count():
            i = 0
            while True:
                yield i
                i += 1

        svc.bind(url)
    a = RPCClient(timeout=5.0, context=ctx)
    try:
        async with long_lease, short_lease:
            a.connect(long_url)
            first = await a.count()
            assert await first.asend(None) == 0
            a.connect(short_url)  # same client: one keepalive schedule for both
            second = None
            while second is None:  # routing may pick either service; keep the short one
                gen = await a.count()
                assert await gen.asend(None) == 0
                if short_lease.active_streams:
                    second = gen
                else:
                    await gen.aclose()
            await asyncio.sleep(1.5)  # idle, longer than the short lease (0.6 s)
            assert short_lease.active_streams == 1  # still alive: pings came often enough
            assert await second.asend(None) == 1
            await second.aclose()
            await first.aclose()
    finally:
        a.close()
        ctx.destroy(linger=0)
