"""The timeout FIFOs (netcall._timers): one loop timer per timeout value instead of one per
call, on a real asyncio loop, and as the client and service use them over real sockets."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest

from _helpers import wait_until
from conftest import inproc_url
from netcall import RPCTimeoutError
from netcall._timers import MAX_QUEUES, TimeoutQueues

pytestmark = pytest.mark.timeout(20)


class Items:
    def __init__(self) -> None:
        self.live: set[int] = set()
        self.fired: list[int] = []
        self.times: dict[int, float] = {}

    def fire(self, item: int) -> None:
        self.fired.append(item)
        self.times[item] = asyncio.get_running_loop().time()
        self.live.discard(item)


async def test_fires_after_the_timeout_in_order_and_skips_the_finished() -> None:
    loop = asyncio.get_running_loop()
    items = Items()
    tq = TimeoutQueues(loop, items.live.__contains__, items.fire)
    start = loop.time()
    for i in range(5):
        items.live.add(i)
        assert tq.add(0.05, i)
    items.live.discard(2)  # finished in time: not fired
    await wait_until(lambda: len(items.fired) == 4, timeout=2)
    assert items.fired == [0, 1, 3, 4]
    assert all(t >= start + 0.05 for t in items.times.values())
    await wait_until(lambda: len(tq) == 0, timeout=2)  # the FIFO is gone once empty


async def test_different_timeouts_each_fire_on_time() -> None:
    loop = asyncio.get_running_loop()
    items = Items()
    tq = TimeoutQueues(loop, items.live.__contains__, items.fire)
    start = loop.time()
    items.live.update({1, 2})
    tq.add(0.3, 1)
    tq.add(0.05, 2)  # later in the queues, earlier deadline
    await wait_until(lambda: items.fired == [2], timeout=2)
    assert loop.time() - start < 0.3
    await wait_until(lambda: items.fired == [2, 1], timeout=2)
    assert items.times[1] >= start + 0.3


async def test_more_timeout_values_than_fifos_are_refused() -> None:
    loop = asyncio.get_running_loop()
    items = Items()
    tq = TimeoutQueues(loop, items.live.__contains__, items.fire)
    for i in range(MAX_QUEUES):
        assert tq.add(10.0 + i, i)
    assert not tq.add(99.0, 99)  # the caller gives this one a timer of its own
    assert tq.add(10.0, 100)  # a value already queued still goes in
    tq.clear()
    assert len(tq) == 0


async def test_finished_entries_do_not_pile_up() -> None:
    """A million calls answered in time leave a FIFO proportional to the live ones."""
    loop = asyncio.get_running_loop()
    live: set[int] = set()
    tq = TimeoutQueues(loop, live.__contains__, lambda item: None)
    for i in range(100_000):
        live.add(i)
        tq.add(30.0, i)
        if i >= 10:
            live.discard(i - 10)  # ten in flight at any time
        assert len(tq) <= 2 * 11 + 1024 + 1  # compacted at twice the live ones plus 1024
    tq.clear()


async def test_firing_may_add_to_the_same_fifo() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    live: set[int] = {0}
    tq: TimeoutQueues

    def fire(item: int) -> None:
        fired.append(item)
        live.discard(item)
        if item < 3:
            live.add(item + 1)
            assert tq.add(0.01, item + 1)

    tq = TimeoutQueues(loop, live.__contains__, fire)
    tq.add(0.01, 0)
    await wait_until(lambda: fired == [0, 1, 2, 3], timeout=2)


async def test_client_calls_answered_in_time_leave_little_behind(client: Any) -> None:
    for _ in range(3000):
        assert await client.echo(1) == 1
    assert len(client._timeouts) <= 1024 + 2
    assert client.pending == 0


async def test_client_timeouts_still_fire_among_many_quick_calls(client: Any) -> None:
    slow = asyncio.ensure_future(client.call("sleep", 5, timeout=0.2))
    for _ in range(200):
        await client.echo(1)
    with pytest.raises(RPCTimeoutError):
        await asyncio.wait_for(slow, 2)
    # and a call with the client's own timeout still fires when it should
    other = asyncio.ensure_future(client.with_options(timeout=0.1).sleep(5))
    with pytest.raises(RPCTimeoutError):
        await asyncio.wait_for(other, 2)


async def test_service_does_not_keep_finished_handlers_results(
    make_service: Any, make_client: Any
) -> None:
    """The service's deadline FIFO refers to handler tasks weakly: a big result is freed when
    the call ends, not when its deadline would have passed."""
    svc = make_service()
    results: list[Any] = []

    class Big(list[int]):
        pass

    @svc.register
    async def big() -> list[int]:
        value = Big(range(1000))
        results.append(weakref.ref(value))
        return value

    url = inproc_url()
    svc.bind(url)
    svc.start()
    cli = make_client(timeout=60)
    cli.connect(url)
    assert await cli.big() == list(range(1000))
    await asyncio.sleep(0)
    gc.collect()
    assert results[0]() is None
