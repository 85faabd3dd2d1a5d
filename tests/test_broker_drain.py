"""broker.stop() drains: new calls are refused at once, calls in flight finish within the
grace, and a call that overruns it is cut off when the broker closes."""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import tcp_url
from netcall import Broker, ConnectionLostError, RPCClient, RPCTimeoutError, ServiceStoppingError

pytestmark = pytest.mark.timeout(30)


async def cluster(make_service, ctx, grace: float):  # type: ignore[no-untyped-def]
    front, back = tcp_url(), tcp_url()
    svc = make_service()

    @svc.register
    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    svc.connect(back)
    broker = Broker(front, back, context=ctx, grace=grace)
    broker.start()
    svc.start()
    client = RPCClient(timeout=10, context=ctx)
    client.connect(front)
    assert await client.slow(0) == 0  # the service has joined
    return broker, client


async def test_stop_lets_calls_in_flight_finish_and_refuses_new_ones(make_service, ctx):
    broker, client = await cluster(make_service, ctx, grace=5)
    try:
        calls = [asyncio.ensure_future(client.slow(0.5)) for _ in range(5)]
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        stopping = asyncio.ensure_future(broker.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceStoppingError, match="broker is stopping"):
            await client.slow(0)
        assert await asyncio.gather(*calls) == [0.5] * 5
        await stopping
        assert broker.closed and time.monotonic() - t0 < 2
    finally:
        client.close()
        broker.close()


async def test_a_call_past_the_grace_is_cut_off(make_service, ctx):
    broker, client = await cluster(make_service, ctx, grace=0.2)
    try:
        call = asyncio.ensure_future(client.call("slow", 5, timeout=3))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        assert await broker.drain() is False
        assert 0.15 < time.monotonic() - t0 < 1.5
        broker.close()
        with pytest.raises((ConnectionLostError, RPCTimeoutError)):
            await call
    finally:
        client.close()
        broker.close()


async def test_answers_given_before_the_stop_reach_their_callers(make_service, ctx):
    # The last answers are still on their way out when the calls are over: stop() lets them
    # go (the driver's drain, then a close that lingers), as a service's stop does. Closed
    # with linger 0 straight after, 4 MiB answers were cut off (ConnectionLostError).
    front, back = tcp_url(), tcp_url()
    svc = make_service()

    @svc.register
    async def big(seconds: float) -> bytes:
        await asyncio.sleep(seconds)
        return b"x" * (4 << 20)

    svc.connect(back)
    broker = Broker(front, back, context=ctx, grace=5)
    broker.start()
    svc.start()
    client = RPCClient(timeout=10, context=ctx)
    client.connect(front)
    try:
        assert len(await client.big(0)) == 4 << 20  # the service has joined
        calls = [asyncio.ensure_future(client.big(0.2)) for _ in range(16)]
        await asyncio.sleep(0.05)
        await broker.stop()
        answers = await asyncio.gather(*calls, return_exceptions=True)
        assert [len(a) if isinstance(a, bytes) else a for a in answers] == [4 << 20] * 16
    finally:
        client.close()
        broker.close()
