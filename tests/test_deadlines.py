"""Deadline propagation in one process: a handler of service A calls service B; the nested call
ends by A's deadline whatever its own client's timeout, from the handler's task, child tasks,
shielded tasks, executor threads (blocking client) and gevent greenlets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import pytest

from _helpers import wait_until
from netcall import RPCClient, RPCError, RPCService, RPCTimeoutError, current_call
from netcall.sync import SyncRPCClient


class B:
    """Service B's state: its handlers record what they saw."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.cancelled: list[float] = []
        self.calls = 0


@pytest.fixture
async def chain(make_service: Any, make_client: Any, make_url: Any, ctx: Any) -> Any:
    """(a_client, a_service, b_state, b_url, b_client for A's handlers)."""
    b_url, a_url = make_url("tcp"), make_url("tcp")
    b_svc: RPCService = make_service()
    b = B()

    @b_svc.register
    def remaining() -> float | None:
        b.calls += 1
        return current_call().time_remaining()

    @b_svc.register
    async def sleep(seconds: float) -> None:
        b.calls += 1
        b.started.append(time.monotonic())
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            b.cancelled.append(time.monotonic())
            raise

    b_svc.bind(b_url)
    b_svc.start()
    to_b: RPCClient = make_client(timeout=30)
    to_b.connect(b_url)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    a_svc: RPCService = make_service(executor=pool)
    a_svc.bind(a_url)
    a_svc.start()
    cli: RPCClient = make_client(timeout=10)
    cli.connect(a_url)
    yield cli, a_svc, b, b_url, to_b
    pool.shutdown(wait=False, cancel_futures=True)


async def test_nested_calls_get_the_time_remaining(chain: Any) -> None:
    cli, a_svc, _, _, to_b = chain

    @a_svc.register
    async def direct() -> Any:
        return [current_call().time_remaining(), await to_b.remaining()]

    async def call_b() -> Any:
        return await to_b.remaining()

    @a_svc.register
    async def child() -> Any:
        return await asyncio.create_task(call_b())

    @a_svc.register
    async def shielded() -> Any:
        return await asyncio.shield(asyncio.ensure_future(to_b.call("remaining")))

    mine, theirs = await cli.call("direct", timeout=2.0)
    assert 1.5 < mine <= 2.0 and 1.5 < theirs <= mine
    assert 1.5 < await cli.call("child", timeout=2.0) <= 2.0
    assert 1.5 < await cli.call("shielded", timeout=2.0) <= 2.0
    # A shorter timeout of its own wins; without a deadline the client's timeout applies.
    _, own = await cli.call("direct", timeout=None)
    assert 29 < own <= 30


async def test_a_nested_call_with_02s_left_fails_by_02s(chain: Any) -> None:
    """Its client has 30 s; the call being served has 0.2 s left: RPCTimeoutError by then, and
    B's handler is cancelled. Observed from a shielded task, which A's own cancellation spares."""
    cli, a_svc, b, _, to_b = chain
    outcome: list[Any] = []

    async def nested() -> None:
        t0 = time.monotonic()
        try:
            await to_b.sleep(10)
        except BaseException as exc:
            outcome.append((type(exc), time.monotonic() - t0))
            raise

    @a_svc.register
    async def wait_then_call() -> None:
        left = current_call().time_remaining()
        assert left is not None
        await asyncio.sleep(left - 0.2)
        await asyncio.shield(asyncio.ensure_future(nested()))

    with pytest.raises(RPCTimeoutError):
        await cli.call("wait_then_call", timeout=0.6)
    assert await wait_until(lambda: bool(outcome) and bool(b.cancelled), timeout=3)
    kind, elapsed = outcome[0]
    assert kind is RPCTimeoutError
    assert 0.1 < elapsed < 0.3, elapsed
    assert b.cancelled[0] - b.started[0] < 0.3


async def test_a_blocking_client_in_an_executor_thread_is_bounded_too(chain: Any, ctx: Any) -> None:
    cli, a_svc, b, b_url, _ = chain
    outcome: list[Any] = []
    with SyncRPCClient(context=ctx, timeout=30) as blocking:
        blocking.connect(b_url)

        @a_svc.register
        def threaded() -> Any:
            t0 = time.monotonic()
            left = current_call().time_remaining()
            try:
                blocking.sleep(10)
            except Exception as exc:
                outcome.append((type(exc), time.monotonic() - t0, left))
            return left

        with pytest.raises(RPCTimeoutError):
            await cli.call("threaded", timeout=0.4)
        assert await wait_until(lambda: bool(outcome), timeout=3)
        kind, elapsed, left = outcome[0]
        # Its own deadline ends it; or, when both land in the same loop turn (a loaded
        # machine), the cancellation of the served call its caller gave up on at the same
        # moment (RPCError "the call being served was cancelled"). Bounded either way.
        assert kind in (RPCTimeoutError, RPCError), outcome
        assert elapsed < left + 0.05, outcome
        assert await wait_until(lambda: bool(b.cancelled), timeout=3)


async def test_propagate_deadline_false_keeps_the_clients_timeout(
    chain: Any, make_client: Any
) -> None:
    cli, a_svc, _, b_url, _ = chain
    free: RPCClient = make_client(timeout=30, propagate_deadline=False)
    free.connect(b_url)

    @a_svc.register
    async def unbounded() -> Any:
        return await free.remaining()

    assert 29 < await cli.call("unbounded", timeout=1.0) <= 30


async def test_a_spent_deadline_fails_at_once_and_sends_nothing(chain: Any) -> None:
    cli, a_svc, b, _, to_b = chain
    outcome: list[Any] = []

    async def late() -> None:
        await asyncio.sleep(0.15)  # past A's deadline
        t0 = time.monotonic()
        try:
            await to_b.remaining()
        except BaseException as exc:
            outcome.append((type(exc), time.monotonic() - t0))

    @a_svc.register
    async def spend() -> None:
        await asyncio.shield(asyncio.ensure_future(late()))

    with pytest.raises(RPCTimeoutError):
        await cli.call("spend", timeout=0.1)
    assert await wait_until(lambda: bool(outcome), timeout=3)
    assert outcome[0][0] is RPCTimeoutError and outcome[0][1] < 0.05
    assert b.calls == 0


async def test_a_cancelled_caller_cancels_the_nested_call(chain: Any) -> None:
    cli, a_svc, b, _, to_b = chain

    @a_svc.register
    async def relay() -> None:
        await to_b.sleep(10)

    task = asyncio.ensure_future(cli.relay())
    assert await wait_until(lambda: bool(b.started), timeout=3)
    t0 = time.monotonic()
    task.cancel()
    assert await wait_until(lambda: bool(b.cancelled), timeout=3)
    assert b.cancelled[0] - t0 < 0.1


async def test_a_cancelled_caller_cancels_a_blocking_nested_call(chain: Any, ctx: Any) -> None:
    """No deadline at all: the nested call from an executor thread (blocking client) is
    cancelled with the handler's task, and B's handler with it."""
    cli, a_svc, b, b_url, _ = chain
    outcome: list[Any] = []
    with SyncRPCClient(context=ctx, timeout=None) as blocking:
        blocking.connect(b_url)

        @a_svc.register
        def threaded_relay() -> None:
            try:
                blocking.sleep(10)
            except BaseException as exc:
                outcome.append(exc)
                raise

        task = asyncio.ensure_future(cli.call("threaded_relay", timeout=None))
        assert await wait_until(lambda: bool(b.started), timeout=3)
        t0 = time.monotonic()
        task.cancel()
        assert await wait_until(lambda: bool(b.cancelled), timeout=3)
        assert b.cancelled[0] - t0 < 0.1
        assert await wait_until(lambda: bool(outcome), timeout=3)
        assert isinstance(outcome[0], RPCError) and "cancelled" in str(outcome[0])
