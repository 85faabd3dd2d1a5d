"""Adversarial review of the asyncio core: races and edge cases of the call and stream state
machines. The first group reproduced bugs found in review (all fixed): regression tests now."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import pytest
import zmq

from _helpers import wait_until
from netcall import (
    ClientClosedError,
    ConnectionLostError,
    RemoteGenerator,
    RPCTimeoutError,
    ServiceStoppingError,
)
from netcall import protocol as p

pytestmark = pytest.mark.timeout(30)


def _idle(service, client) -> bool:
    return (
        service.active_calls == 0
        and service.active_streams == 0
        and client.pending == 0
        and client.open_streams == 0
    )


# ------------------------------------------------------------- bugs found in review (fixed)


async def test_aclose_while_lockstep_asend_waits_in_another_task(
    make_service, make_client, make_url
):
    svc = make_service()
    finalized = asyncio.Event()

    stepping = asyncio.Event()

    @svc.register
    async def slow():
        try:
            while True:
                stepping.set()
                await asyncio.sleep(0.5)
                yield 1
        finally:
            finalized.set()

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client(timeout=None)
    cli.connect(url)
    gen = await cli.slow()
    step = asyncio.ensure_future(gen.asend(None))
    await asyncio.wait_for(stepping.wait(), 3)  # the step is in flight, its task waits
    await asyncio.wait_for(gen.aclose(), 3)
    assert finalized.is_set()
    # The waiting step must end (StopAsyncIteration or an error), not hang.
    done, _ = await asyncio.wait([step], timeout=3)
    step.cancel()
    assert done, "asend() still waiting after aclose() returned"
    assert _idle(svc, cli)


async def test_aclose_while_prefetch_anext_waits_in_another_task(
    make_service, make_client, make_url
):
    svc = make_service()

    stepping = asyncio.Event()

    @svc.register
    async def slow():
        while True:
            stepping.set()
            await asyncio.sleep(0.5)
            yield 1

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client(timeout=None)
    cli.connect(url)
    gen = await cli.slow()
    gen.__aiter__()  # prefetch
    step = asyncio.ensure_future(gen.__anext__())
    await asyncio.wait_for(stepping.wait(), 3)
    await asyncio.wait_for(gen.aclose(), 3)
    done, _ = await asyncio.wait([step], timeout=3)
    step.cancel()
    assert done, "__anext__() still waiting after aclose() returned"


async def test_lockstep_step_after_client_close_raises_client_closed(
    make_service, make_client, make_url
):
    svc = make_service()

    @svc.register
    async def numbers():
        i = 0
        while True:
            yield i
            i += 1

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client()
    cli.connect(url)
    gen = await cli.numbers()
    assert await gen.asend(None) == 0
    cli.close()
    with pytest.raises(ClientClosedError):
        await gen.asend(None)


async def test_lockstep_step_after_connection_lost_raises(make_service, make_client, make_url):
    svc = make_service(heartbeat=0.2)

    @svc.register
    async def numbers():
        i = 0
        while True:
            yield i
            i += 1

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client(heartbeat=0.2)
    cli.connect(url)
    gen = await cli.numbers()
    assert await gen.asend(None) == 0
    svc.close()  # the service dies
    assert await wait_until(lambda: cli.open_streams == 0, 5)
    with pytest.raises(ConnectionLostError):
        await gen.asend(None)


async def test_aclose_while_executor_generator_step_runs(make_service, make_client, make_url):
    pool = concurrent.futures.ThreadPoolExecutor(2)
    svc = make_service(executor=pool)
    finalized = threading.Event()
    steps: list[int] = []

    @svc.register
    def slow():
        try:
            while True:
                steps.append(1)
                time.sleep(0.4)
                yield 1
        finally:
            finalized.set()

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client()
    cli.connect(url)
    try:
        gen = await cli.slow()
        async for _ in gen:  # prefetch: the service keeps stepping in the executor
            break
        assert await wait_until(lambda: len(steps) >= 2, 3)  # the next step runs in a thread
        await gen.aclose()  # "waits until its finally blocks ran"
        assert finalized.is_set()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)


async def test_raw_peer_reuses_request_id_of_a_closed_stream(make_service, ctx, make_url):
    svc = make_service()
    finalized = []

    @svc.register
    async def forever():
        try:
            while True:
                yield 1
                await asyncio.sleep(10)
        finally:
            finalized.append(1)

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(url)
    try:
        call = p.Call(
            7, "forever", svc.serializer.name, svc.serializer.dumps([]), window=1
        ).to_frames()
        peer.send_multipart(call)
        await wait_until(lambda: svc.active_streams == 1, 3)
        # CANCEL, then the same id again, in one burst: the service reads both at once.
        peer.send_multipart(p.Cancel(7).to_frames())
        peer.send_multipart(call)
        # The first stream is finalized, the second (same id) is open.
        assert await wait_until(lambda: len(finalized) == 1 and svc.active_streams == 1, 3)
        peer.send_multipart(p.Cancel(7).to_frames())
        assert await wait_until(lambda: len(finalized) == 2, 3)
    finally:
        peer.close(0)


async def test_unencodable_method_name_leaks_nothing(make_service, make_client, make_url):
    svc = make_service()
    url = make_url("inproc")
    svc.bind(url)
    svc.start()
    client = make_client()
    client.connect(url)
    with pytest.raises(UnicodeEncodeError):
        await client.call("echo\ud800", 1)
    assert client.pending == 0
    assert all(s.inflight == 0 for s in client._peers.order)


# --------------------------------------------------------------------------- behaving correctly


@pytest.fixture
async def rsvc(make_service, make_url):
    """A started tcp service with a few adversarial handlers, and its url."""
    svc = make_service()
    svc.log = []

    @svc.register
    async def echo(x=None):
        return x

    @svc.register
    async def sleep(seconds, result=None):
        await asyncio.sleep(seconds)
        return result

    @svc.register
    async def count(n, delay=0.0):
        try:
            for i in range(n):
                if delay:
                    await asyncio.sleep(delay)
                yield i
        finally:
            svc.log.append("count-finally")

    @svc.register
    async def catcher():
        try:
            yield 1
        except ValueError:
            svc.log.append("caught")
            return
        finally:
            svc.log.append("catcher-finally")

    @svc.register
    async def stubborn():
        try:
            yield 1
        finally:
            svc.log.append("stubborn-finally")
            yield 2  # ignores GeneratorExit

    @svc.register
    def stubborn_sync():
        try:
            yield 1
        finally:
            svc.log.append("stubborn-sync-finally")
            yield 2

    @svc.register
    async def raises_in_finally():
        try:
            yield 1
        finally:
            svc.log.append("rif-finally")
            raise KeyError("boom")

    @svc.register
    def fails(x):
        raise ValueError(x)

    @svc.register
    def note(x):
        svc.log.append(x)

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    return svc, url


async def test_break_before_first_item_cleans_up(rsvc, make_client):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    for _ in range(5):
        async for _x in cli.count(1000, 0.01):
            break
    assert await wait_until(lambda: _idle(svc, cli), 5, gc_collect=True)
    assert svc.log.count("count-finally") == 5
    assert await cli.echo(1) == 1


async def test_athrow_caught_then_returns_ends_stream(rsvc, make_client):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    gen = await cli.catcher()
    assert await gen.asend(None) == 1
    with pytest.raises(StopAsyncIteration):
        await gen.athrow(ValueError("x"))
    assert svc.log == ["caught", "catcher-finally"]
    with pytest.raises(StopAsyncIteration):
        await gen.asend(None)
    await gen.aclose()
    assert await wait_until(lambda: _idle(svc, cli), 3)


@pytest.mark.parametrize("name", ["stubborn", "stubborn_sync", "raises_in_finally"])
async def test_generator_misbehaving_in_finally_on_aclose(rsvc, make_client, name):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    gen = await cli.call(name)
    assert await gen.asend(None) == 1
    await asyncio.wait_for(gen.aclose(), 3)
    assert any(entry.endswith("finally") for entry in svc.log)
    assert await wait_until(lambda: _idle(svc, cli), 3)
    assert await cli.echo("still serving") == "still serving"


async def test_cancel_racing_end_many_times(rsvc, make_client):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    for i in range(50):
        gen = await cli.count(1)
        assert await gen.asend(None) == 0
        step = asyncio.ensure_future(gen.asend(None))  # END is on its way...
        await asyncio.sleep(0.0005 * (i % 4))
        step.cancel()  # ...while the CANCEL goes out
        try:
            await step
        except (asyncio.CancelledError, StopAsyncIteration):
            pass
        await gen.aclose()
    assert await wait_until(lambda: _idle(svc, cli), 5)
    assert await cli.echo(2) == 2


async def test_credit_after_stream_closed_is_ignored(rsvc, ctx):
    svc, url = rsvc
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(url)
    try:
        peer.send_multipart(p.Credit(99, 5).to_frames())  # no such stream: silently ignored
        peer.send_multipart(
            p.Call(1, "echo", svc.serializer.name, svc.serializer.dumps([3])).to_frames()
        )
        reply = p.decode(await asyncio.wait_for(_recv(peer), 3))
        assert type(reply) is p.Result and reply.id == 1
    finally:
        peer.close(0)


async def _recv(sock):
    while True:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.005)


async def test_two_tasks_iterating_one_prefetching_stream(rsvc, make_client):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    gen = await cli.count(5, 0.05)
    gen.__aiter__()
    first = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0)  # one loop turn: the first reader starts and waits
    with pytest.raises(RuntimeError):
        await gen.__anext__()
    assert await first == 0
    assert [x async for x in gen] == [1, 2, 3, 4]
    assert await wait_until(lambda: _idle(svc, cli), 3)


async def test_client_close_with_calls_and_streams_in_flight(rsvc, make_client):
    svc, url = rsvc
    cli = make_client(timeout=None)
    cli.connect(url)
    calls = [asyncio.ensure_future(cli.sleep(10)) for _ in range(5)]
    lock = await cli.count(100, 1.0)
    lock_step = asyncio.ensure_future(lock.asend(None))
    pre = await cli.count(100, 1.0)
    pre.__aiter__()
    pre_step = asyncio.ensure_future(pre.__anext__())
    opening = asyncio.ensure_future(cli.count(3))  # StreamOpen not yet here
    assert await wait_until(lambda: svc.active_calls == 5, 3)
    cli.close()
    results = await asyncio.wait_for(
        asyncio.gather(*calls, lock_step, pre_step, return_exceptions=True), 3
    )
    assert all(isinstance(r, ClientClosedError) for r in results), results
    opened = await asyncio.wait_for(asyncio.gather(opening, return_exceptions=True), 3)
    if isinstance(opened[0], RemoteGenerator):  # it opened just before close(): it is failed
        with pytest.raises(ClientClosedError):
            await opened[0].__anext__()
    else:
        assert isinstance(opened[0], ClientClosedError), opened[0]
    await asyncio.wait_for(lock.aclose(), 1)  # a no-op now, never a hang
    assert cli.pending == 0 and cli.open_streams == 0
    with pytest.raises(ClientClosedError):
        await cli.echo(1)
    assert await wait_until(lambda: svc.active_streams == 0, 5)


async def test_client_close_cancels_pending_calls_on_the_service(rsvc, make_client):
    svc, url = rsvc
    cli = make_client(timeout=None)
    cli.connect(url)
    calls = [asyncio.ensure_future(cli.sleep(10)) for _ in range(5)]
    assert await wait_until(lambda: svc.active_calls == 5, 3)
    cli.close()
    await asyncio.gather(*calls, return_exceptions=True)
    assert await wait_until(lambda: svc.active_calls == 0, 3), svc.active_calls


async def test_stop_with_grace_async_executor_and_streams(make_service, make_client, make_url):
    pool = concurrent.futures.ThreadPoolExecutor(2)
    svc = make_service(executor=pool)

    @svc.register
    async def quick():
        await asyncio.sleep(0.2)
        return "quick"

    @svc.register
    async def slow():
        await asyncio.sleep(10)

    @svc.register
    def blocking():
        time.sleep(0.2)
        return "blocking"

    @svc.register
    async def gen():
        while True:
            await asyncio.sleep(0.05)
            yield 1

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client()
    cli.connect(url)
    try:
        q = asyncio.ensure_future(cli.quick())
        s = asyncio.ensure_future(cli.slow())
        b = asyncio.ensure_future(cli.blocking())
        g = await cli.gen()
        g.__aiter__()  # prefetch: an idle lock-step stream would hide the error (see above)
        assert await wait_until(lambda: svc.active_calls == 3, 3)
        stopping = asyncio.ensure_future(svc.stop(grace=0.6))
        await asyncio.sleep(0)  # one loop turn: stop() starts refusing new calls
        with pytest.raises(ServiceStoppingError):
            await cli.call("quick", timeout=1)
        assert await q == "quick"
        assert await b == "blocking"
        with pytest.raises(ServiceStoppingError):
            await s
        with pytest.raises(ServiceStoppingError):
            async for _ in g:
                pass
        await asyncio.wait_for(stopping, 5)
        assert svc.active_calls == 0 and svc.active_streams == 0
        assert cli.pending == 0 and cli.open_streams == 0
    finally:
        await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)


async def test_reply_after_timeout_is_dropped(rsvc, make_client):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    for _ in range(5):
        with pytest.raises(RPCTimeoutError):
            await cli.call("sleep", 0.05, "late", timeout=0.04)
    assert await wait_until(lambda: svc.active_calls == 0, 3)  # late replies were sent
    assert await cli.echo("fresh") == "fresh"
    assert await wait_until(lambda: _idle(svc, cli), 3)


async def test_stream_open_after_timeout_is_closed(make_service, make_client, make_url):
    svc = make_service()

    @svc.register
    async def late_stream():
        await asyncio.sleep(0.1)

        async def g():
            yield 1

        return g()

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client()
    cli.connect(url)
    with pytest.raises(RPCTimeoutError):
        await cli.call("late_stream", timeout=0.05)
    assert await wait_until(lambda: _idle(svc, cli), 3)


async def test_cancellation_racing_the_reply(rsvc, make_client):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    for i in range(200):
        task = asyncio.ensure_future(cli.echo(i))
        for _ in range(i % 5):
            await asyncio.sleep(0)
        task.cancel()
        try:
            assert await task == i
        except asyncio.CancelledError:
            pass
    for i in range(40):
        task = asyncio.ensure_future(cli.count(3))
        for _ in range(i % 8):
            await asyncio.sleep(0)
        task.cancel()
        try:
            gen = await task
            await gen.aclose()
        except asyncio.CancelledError:
            pass
    ok = await wait_until(lambda: _idle(svc, cli), 5, gc_collect=True)
    assert ok, (svc.active_calls, svc.active_streams, cli.pending, cli.open_streams)


async def test_oneway_to_raising_and_generator_handlers(rsvc, make_client):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    assert await cli.call("fails", 1, oneway=True) is None
    assert await cli.call("count", 3, oneway=True) is None
    assert await cli.call("note", "x", oneway=True) is None
    assert await wait_until(lambda: "x" in svc.log, 3)
    assert await cli.echo(5) == 5
    assert await wait_until(lambda: _idle(svc, cli), 3)


async def test_step_timeout_racing_items(rsvc, make_client):
    svc, url = rsvc
    cli = make_client()
    cli.connect(url)
    for i in range(20):
        got = []
        try:
            async for x in cli.call("count", 100, 0.02, timeout=0.015 + 0.001 * (i % 10)):
                got.append(x)
        except RPCTimeoutError:
            pass
        assert got == list(range(len(got)))
    assert await wait_until(lambda: _idle(svc, cli), 5, gc_collect=True)


async def test_call_while_service_down_then_back(make_service, make_client, make_url):
    url = make_url("tcp")
    cli = make_client()
    cli.connect(url)
    call = asyncio.ensure_future(cli.call("echo", "queued", timeout=5))
    assert await wait_until(lambda: cli.pending == 1, 3)  # sent while nobody listens
    svc = make_service()
    svc.register(lambda x: x, name="echo")
    svc.bind(url)
    svc.start()
    assert await asyncio.wait_for(call, 5) == "queued"
    assert cli.pending == 0
