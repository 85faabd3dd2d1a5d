"""No per-call state survives: 10,000 calls with timeouts, cancellations, errors and streams."""

from __future__ import annotations

import asyncio
import gc
import time

import msgpack
import pytest
import zmq

from _helpers import wait_until
from netcall import MethodNotFoundError, RemoteGenerator, RPCTimeoutError
from netcall import protocol as p

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def pair(make_service, make_client, make_url):
    svc = make_service()
    counters = {"slow": 0, "cancelled": 0, "finished": 0, "started": 0, "finalized": 0}

    @svc.register
    def echo(x):
        return x

    @svc.register
    async def aecho(x):
        return x

    @svc.register
    async def slow(x):
        counters["slow"] += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            counters["cancelled"] += 1
            raise
        counters["finished"] += 1
        return x

    @svc.register
    def boom():
        raise ValueError("boom")

    @svc.register
    async def endless():
        counters["started"] += 1
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            counters["finalized"] += 1

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client(timeout=5.0, window=8)
    cli.connect(url)
    return svc, cli, counters


def other_tasks():
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and not t.done()]


async def test_ten_thousand_calls_leave_no_state(pair):
    svc, cli, counters = pair
    total = 0
    timeouts = cancels = errors = 0
    t0 = time.monotonic()

    async def cancelled_call(i):
        task = asyncio.ensure_future(cli.slow(i))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"  # pragma: no cover - the handler sleeps 10 s

    async def timed_out_call(i):
        try:
            await cli.call("slow", i, timeout=0.05)
        except RPCTimeoutError:
            return "timeout"
        return "finished"  # pragma: no cover

    async def failing_call(i):
        try:
            if i % 2:
                await cli.boom()
            else:
                await cli.call("missing")
        except (ValueError, MethodNotFoundError):
            return "error"
        return "no error"  # pragma: no cover

    for rnd in range(20):
        jobs = []
        for i in range(500):
            k = i % 50
            if k < 3:
                jobs.append(timed_out_call(i))
            elif k < 6:
                jobs.append(cancelled_call(i))
            elif k < 8:
                jobs.append(failing_call(i))
            elif k < 9:
                jobs.append(cli.call("echo", i, oneway=True))
            else:
                jobs.append((cli.echo if i % 2 else cli.aecho)((rnd, i)))
        results = await asyncio.gather(*jobs)
        total += len(results)
        for i, r in enumerate(results):
            k = i % 50
            if k < 3:
                assert r == "timeout"
                timeouts += 1
            elif k < 6:
                assert r == "cancelled"
                cancels += 1
            elif k < 8:
                assert r == "error"
                errors += 1
            elif k < 9:
                assert r is None
            else:
                assert r == (rnd, i)
    assert total == 10_000
    assert timeouts == 600 and cancels == 600 and errors == 400

    assert cli.pending == 0
    assert await wait_until(lambda: svc.active_calls == 0, 5)
    # every timed-out or cancelled handler that had started was cancelled on the service (one
    # cancelled before it started never runs at all)
    assert await wait_until(lambda: counters["cancelled"] == counters["slow"], 5)
    assert counters["finished"] == 0
    assert counters["slow"] >= (timeouts + cancels) // 2
    assert other_tasks() == []
    assert time.monotonic() - t0 < 15.0


async def test_abandoned_streams_leave_no_state(pair):
    svc, cli, counters = pair

    async def one(i):
        mode = i % 4
        if mode == 0:
            async for x in cli.endless():
                if x == 3:
                    break
        elif mode == 1:
            g = await cli.endless()
            await g.asend(None)
            await g.aclose()
        elif mode == 2:
            g = await cli.endless()
            await g.asend(None)
            del g
        else:
            g = await cli.call("endless", timeout=5)
            t = asyncio.ensure_future(g.asend(None))
            await asyncio.sleep(0)
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass

    for _ in range(5):
        await asyncio.gather(*(one(i) for i in range(100)))
    gc.collect()
    assert await wait_until(lambda: svc.active_streams == 0, 5, gc_collect=True)
    assert cli.open_streams == 0
    assert cli.pending == 0
    assert svc.active_calls == 0
    # a generator cancelled before its first step never started (nothing to finalise)
    assert counters["started"] >= 375
    assert await wait_until(lambda: counters["finalized"] == counters["started"], 5)
    assert not [o for o in gc.get_objects() if isinstance(o, RemoteGenerator)]
    assert other_tasks() == []


@pytest.fixture
async def raw_dealer(ctx):
    socks = []

    def make(url):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(url)
        socks.append(s)
        return s

    yield make
    for s in socks:
        s.close(linger=0)


async def test_cancel_right_behind_the_call_leaves_no_state(pair, raw_dealer):
    """The deterministic form of the race above: CALL and CANCEL arrive back to back."""
    svc, cli, _ = pair
    url = next(iter(svc.bound))
    raw = raw_dealer(url)
    for rid in range(1, 11):
        raw.send_multipart(p.Call(rid, "slow", "msgpack", msgpack.packb([rid])).to_frames())
        raw.send_multipart(p.Cancel(rid).to_frames())
    assert await cli.echo("after") == "after"  # the service has read them all
    assert await wait_until(lambda: svc.active_calls == 0, 2)
    assert other_tasks() == []
