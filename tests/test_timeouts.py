"""Timeouts, deadlines and cancellation, on both ends of the wire."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import msgpack
import pytest
import zmq

from _helpers import wait_until
from netcall import RPCError, RPCTimeoutError, current_call
from netcall import protocol as p

pytestmark = pytest.mark.timeout(20)


class Tracker:
    """Records what happened to handlers on the service."""

    def __init__(self):
        self.started = 0
        self.cancelled = 0
        self.finished = 0
        self.ran: list[str] = []


@pytest.fixture
def tracker():
    return Tracker()


@pytest.fixture
async def tsvc(service, tracker):
    @service.register
    async def slow(seconds=10.0, result="done"):
        tracker.started += 1
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            tracker.cancelled += 1
            raise
        tracker.finished += 1
        return result

    @service.register
    def record(tag):
        tracker.ran.append(tag)
        return tag

    @service.register
    def block(seconds):
        time.sleep(seconds)  # blocks the service's loop on purpose
        return seconds

    @service.register
    async def remaining():
        return current_call().time_remaining()

    return service


# ---------------------------------------------------------------- client side


async def test_default_timeout(tsvc, make_client, endpoint, tracker):
    cli = make_client(timeout=0.2)
    cli.connect(endpoint)
    t0 = time.monotonic()
    with pytest.raises(RPCTimeoutError) as info:
        await cli.slow(10)
    elapsed = time.monotonic() - t0
    assert 0.15 < elapsed < 2.0
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, RPCError)
    assert cli.pending == 0  # freed at once


async def test_per_call_timeout_overrides_default(tsvc, make_client, endpoint):
    cli = make_client(timeout=10.0)
    cli.connect(endpoint)
    t0 = time.monotonic()
    with pytest.raises(RPCTimeoutError):
        await cli.call("slow", 10, timeout=0.2)
    assert time.monotonic() - t0 < 2.0

    short = make_client(timeout=0.1)
    short.connect(endpoint)
    assert await short.call("slow", 0.3, "ok", timeout=5.0) == "ok"


async def test_with_options_timeout(tsvc, make_client, endpoint):
    cli = make_client(timeout=10.0)
    cli.connect(endpoint)
    quick = cli.with_options(timeout=0.2)
    with pytest.raises(RPCTimeoutError):
        await quick.slow(10)
    assert await quick.slow(0.01, "fine") == "fine"
    assert await cli.with_options(timeout=5).call("slow", 0.01, "x") == "x"


async def test_no_timeout_waits(tsvc, make_client, endpoint):
    cli = make_client(timeout=None)
    cli.connect(endpoint)
    assert await cli.slow(0.3, "waited") == "waited"


async def test_timeout_with_no_service_listening(make_client, make_url):
    cli = make_client(timeout=0.3)
    cli.connect(make_url("tcp"))
    t0 = time.monotonic()
    with pytest.raises(RPCTimeoutError):
        await cli.anything()
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(RPCTimeoutError):
        await cli.call("anything", oneway=True)
    assert cli.pending == 0


# ---------------------------------------------------------------- the service side follows


async def test_timeout_cancels_the_handler(tsvc, make_client, endpoint, tracker):
    cli = make_client(timeout=0.2)
    cli.connect(endpoint)
    with pytest.raises(RPCTimeoutError):
        await cli.slow(10)
    assert await wait_until(lambda: tracker.cancelled == 1, 3)
    assert await wait_until(lambda: tsvc.active_calls == 0, 3)
    assert tracker.finished == 0


async def test_cancelled_task_cancels_the_handler(tsvc, client, tracker):
    task = asyncio.ensure_future(client.slow(10))
    assert await wait_until(lambda: tracker.started == 1, 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # never wrapped
        await task
    assert client.pending == 0
    assert await wait_until(lambda: tracker.cancelled == 1, 3)
    assert await wait_until(lambda: tsvc.active_calls == 0, 3)


async def test_wait_for_cancels_remote(tsvc, client, tracker):
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.slow(10), 0.2)
    assert await wait_until(lambda: tracker.cancelled == 1, 3)
    assert client.pending == 0
    assert await client.echo("next") == "next"


async def test_many_concurrent_timeouts(tsvc, make_client, endpoint, tracker):
    cli = make_client(timeout=0.2)
    cli.connect(endpoint)
    results = await asyncio.gather(*(cli.slow(10) for _ in range(100)), return_exceptions=True)
    assert all(isinstance(r, RPCTimeoutError) for r in results)
    assert cli.pending == 0
    assert await wait_until(lambda: tsvc.active_calls == 0, 3)
    assert tracker.cancelled == tracker.started
    assert await cli.echo("alive") == "alive"


async def test_late_reply_is_dropped(make_service, make_client, make_url):
    """A reply that arrives after its call timed out is ignored and confuses no later call."""
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        svc = make_service(executor=pool)
        gate = threading.Event()

        @svc.register
        def uncancellable(x):
            gate.wait(5)  # a thread cannot be cancelled: its reply will come late
            return x

        @svc.register
        def echo(x):
            return x

        url = make_url("tcp")
        svc.bind(url)
        svc.start()
        cli = make_client(timeout=0.2)
        cli.connect(url)
        with pytest.raises(RPCTimeoutError):
            await cli.uncancellable("late")
        gate.set()
        for i in range(20):
            assert await cli.echo(i) == i
        assert cli.pending == 0
        assert await wait_until(lambda: svc.active_calls == 0, 3)
    finally:
        pool.shutdown(wait=False)


# ---------------------------------------------------------------- deadlines travel


async def test_handler_sees_remaining_time(tsvc, make_client, endpoint):
    cli = make_client(timeout=2.0)
    cli.connect(endpoint)
    remaining = await cli.remaining()
    assert 0 < remaining <= 2.0
    assert await cli.call("remaining", timeout=None) is None


@pytest.fixture
async def raw(ctx, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    yield s
    s.close(linger=0)


async def _recv(sock, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return p.decode(sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            await asyncio.sleep(0.005)
    return None


async def test_expired_request_is_not_run(tsvc, tracker, raw):
    raw.send_multipart(
        p.Call(
            1, "record", "msgpack", msgpack.packb(["expired"]), timeout=1e-7
        ).to_frames()  # below MIN_REMAINING: spent
    )
    raw.send_multipart(
        p.Call(2, "record", "msgpack", msgpack.packb(["fresh"]), timeout=30.0).to_frames()
    )
    replies = {}
    for _ in range(2):
        msg = await _recv(raw)
        assert msg is not None
        replies[msg.id] = msg
    assert isinstance(replies[2], p.Result)
    assert tracker.ran == ["fresh"]
    # the expired call is refused, not silently dropped
    assert isinstance(replies[1], p.Error)


async def test_deadline_is_counted_on_the_service_clock_from_arrival(tsvc, tracker, raw):
    """The wire carries the time remaining: the service's deadline starts when it reads the
    call, on its own monotonic clock (so the two hosts' clocks need not agree). Time the call
    spent queued behind a blocking handler is not counted (as in gRPC)."""
    raw.send_multipart(p.Call(1, "block", "msgpack", msgpack.packb([0.3])).to_frames())
    raw.send_multipart(
        p.Call(2, "remaining", "msgpack", msgpack.packb([]), timeout=5.0).to_frames()
    )
    first = await _recv(raw)
    assert isinstance(first, p.Result) and first.id == 1
    second = await _recv(raw)
    assert isinstance(second, p.Result) and second.id == 2
    assert 4.0 < msgpack.unpackb(second.payload) <= 5.0


async def test_deadline_cancels_running_handler_without_client_cancel(tsvc, tracker, raw):
    """The service enforces the deadline itself: no CANCEL message is needed."""
    raw.send_multipart(p.Call(1, "slow", "msgpack", msgpack.packb([10]), timeout=0.3).to_frames())
    assert await wait_until(lambda: tracker.started == 1, 3)
    assert await wait_until(lambda: tracker.cancelled == 1, 3)
    # The call's state goes in the task's done-callback, a loop turn after the handler ended.
    assert await wait_until(lambda: tsvc.active_calls == 0, 3)


async def test_cancel_message_for_one_call_leaves_others(tsvc, tracker, raw):
    for rid in (1, 2):
        raw.send_multipart(p.Call(rid, "slow", "msgpack", msgpack.packb([0.3, rid])).to_frames())
    assert await wait_until(lambda: tracker.started == 2, 3)
    raw.send_multipart(p.Cancel(1).to_frames())
    msg = await _recv(raw)
    assert isinstance(msg, p.Result) and msg.id == 2
    assert tracker.cancelled == 1
    assert tracker.finished == 1
