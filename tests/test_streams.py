"""Streams (issue 3): generators over RPC with the generator protocol, flow control, cleanup,
affinity and per-step timeouts."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import random

import pytest

from _helpers import wait_until
from netcall import (
    PickleSerializer,
    RemoteGenerator,
    RemoteRPCError,
    RPCError,
    RPCTimeoutError,
    ServiceStoppingError,
)

pytestmark = pytest.mark.timeout(30)


class Probe:
    """Counts what service-side generators did."""

    def __init__(self):
        self.started = 0
        self.produced = 0
        self.finalized = 0
        self.stalled = 0  # generators waiting at their stall point
        self.received: list = []
        self.thrown: list = []

    def live(self):
        return self.started - self.finalized


def register_streams(svc, probe):
    @svc.register
    async def acount(n):
        probe.started += 1
        try:
            for i in range(n):
                probe.produced += 1
                yield i
        finally:
            probe.finalized += 1

    @svc.register
    def scount(n):
        probe.started += 1
        try:
            for i in range(n):
                probe.produced += 1
                yield i
        finally:
            probe.finalized += 1

    @svc.register
    async def endless(delay=0.0):
        probe.started += 1
        i = 0
        try:
            while True:
                probe.produced += 1
                yield i
                i += 1
                if delay:
                    await asyncio.sleep(delay)
        finally:
            probe.finalized += 1

    @svc.register
    def sync_endless():
        probe.started += 1
        i = 0
        try:
            while True:
                probe.produced += 1
                yield i
                i += 1
        finally:
            probe.finalized += 1

    @svc.register
    async def failing(after):
        probe.started += 1
        try:
            for i in range(after):
                yield i
            raise ValueError(f"failed after {after}")
        finally:
            probe.finalized += 1

    @svc.register
    async def accumulate(start=0):
        """Bidirectional: yields the running total of the values sent."""
        probe.started += 1
        total = start
        try:
            while True:
                try:
                    value = yield total
                except KeyError as exc:
                    probe.thrown.append(("KeyError", exc.args[0] if exc.args else None))
                    value = -1000
                if value is not None:
                    probe.received.append(value)
                    total += value
        finally:
            probe.finalized += 1

    @svc.register
    async def slow_steps(n, delay):
        probe.started += 1
        try:
            for i in range(n):
                await asyncio.sleep(delay)
                yield i
        finally:
            probe.finalized += 1

    @svc.register
    async def stall_at(k, n=10):
        probe.started += 1
        try:
            for i in range(n):
                if i == k:
                    probe.stalled += 1
                    await asyncio.sleep(30)
                yield i
        finally:
            probe.finalized += 1


@pytest.fixture
def probe():
    return Probe()


@pytest.fixture
async def ssvc(service, probe):
    register_streams(service, probe)
    return service


async def streams_closed(svc, probe, client=None, timeout=3.0):
    ok = await wait_until(lambda: svc.active_streams == 0 and probe.live() == 0, timeout)
    if client is not None:
        ok = ok and await wait_until(lambda: client.open_streams == 0, timeout)
    return ok


# ---------------------------------------------------------------- 1. semantics (every transport)


async def test_async_for_async_generator(ssvc, client, probe):
    assert [x async for x in client.acount(10)] == list(range(10))
    assert await streams_closed(ssvc, probe, client)


async def test_async_for_sync_generator(ssvc, client, probe):
    assert [x async for x in client.scount(10)] == list(range(10))
    assert await streams_closed(ssvc, probe, client)


async def test_empty_generator(ssvc, client, probe):
    assert [x async for x in client.acount(0)] == []
    assert await streams_closed(ssvc, probe, client)


async def test_await_gives_remote_generator(ssvc, client, probe):
    gen = await client.acount(3)
    assert isinstance(gen, RemoteGenerator)
    assert [x async for x in gen] == [0, 1, 2]
    assert await streams_closed(ssvc, probe, client)


async def test_generator_body_starts_on_first_step(ssvc, client, probe):
    """Like a local generator: nothing runs until the first next()/asend(None)."""
    gen = await client.accumulate(5)
    await asyncio.sleep(0.2)
    assert probe.started == 0
    assert await gen.asend(None) == 5
    assert probe.started == 1
    await gen.aclose()


async def test_asend_athrow_aclose(ssvc, client, probe):
    gen = await client.accumulate(10)
    assert await gen.asend(None) == 10
    assert await gen.asend(5) == 15
    assert await gen.__anext__() == 15  # next() sends None
    assert await gen.asend(-20) == -5
    # a builtin exception arrives in the generator as that type, with its message
    assert await gen.athrow(KeyError("spam")) == -1005
    assert [t for t, _ in probe.thrown] == ["KeyError"]
    assert "spam" in probe.thrown[0][1]
    assert probe.received == [5, -20, -1000]
    await gen.aclose()
    assert probe.finalized == 1  # aclose() returned after the service's finally ran
    assert await streams_closed(ssvc, probe, client)
    with pytest.raises(StopAsyncIteration):
        await gen.asend(1)
    await gen.aclose()  # idempotent


async def test_athrow_with_type_and_value(ssvc, client, probe):
    gen = await client.accumulate(0)
    await gen.asend(None)
    assert await gen.athrow(KeyError, "typed") == -1000
    assert [t for t, _ in probe.thrown] == ["KeyError"]
    await gen.aclose()


async def test_athrow_keyerror_keeps_its_argument(ssvc, client, probe):
    gen = await client.accumulate(0)
    await gen.asend(None)
    await gen.athrow(KeyError("spam"))
    assert probe.thrown == [("KeyError", "spam")]
    await gen.aclose()


async def test_athrow_uncaught_propagates_and_closes(ssvc, client, probe):
    gen = await client.accumulate(0)
    await gen.asend(None)
    with pytest.raises(ValueError) as info:
        await gen.athrow(ValueError("not handled"))
    assert isinstance(info.value, RemoteRPCError)
    assert info.value.message == "not handled"
    assert await streams_closed(ssvc, probe, client)
    with pytest.raises(StopAsyncIteration):
        await gen.asend(None)


async def test_exhaustion_raises_stop_async_iteration(ssvc, client, probe):
    gen = await client.acount(2)
    assert await gen.asend(None) == 0
    assert await gen.__anext__() == 1
    with pytest.raises(StopAsyncIteration):
        await gen.__anext__()
    with pytest.raises(StopAsyncIteration):
        await gen.asend(5)
    assert await streams_closed(ssvc, probe, client)


async def test_remote_exception_in_generator(ssvc, client, probe):
    got = []
    with pytest.raises(ValueError) as info:
        async for x in client.failing(3):
            got.append(x)
    assert got == [0, 1, 2]  # items before the error are all delivered
    assert isinstance(info.value, RemoteRPCError)
    assert "failed after 3" in str(info.value)
    assert "failing" in info.value.traceback
    assert await streams_closed(ssvc, probe, client)


async def test_lockstep_error_then_stop(ssvc, client, probe):
    gen = await client.failing(1)
    assert await gen.asend(None) == 0
    with pytest.raises(ValueError):
        await gen.asend(None)
    with pytest.raises(StopAsyncIteration):
        await gen.asend(None)
    assert await streams_closed(ssvc, probe, client)


async def test_async_with_closes(ssvc, client, probe):
    async with await client.endless() as gen:
        assert await gen.asend(None) == 0
        assert await gen.__anext__() == 1
    assert probe.finalized == 1
    assert await streams_closed(ssvc, probe, client)


async def test_value_returned_not_a_stream(ssvc, client):
    with pytest.raises((TypeError, RPCError)):
        async for _ in client.echo(1):
            pass
    assert await client.echo(2) == 2


async def test_bad_arguments_to_generator_function(ssvc, client, probe):
    with pytest.raises(TypeError):
        async for _ in client.acount():
            pass
    with pytest.raises(TypeError):
        await client.acount(1, 2, 3)
    assert ssvc.active_streams == 0


async def test_stream_items_keep_their_types(ssvc, client):
    @ssvc.register
    async def typed_items():
        yield (1, (2, 3))
        yield b"bytes"
        yield {"t": (1,)}

    assert [x async for x in client.typed_items()] == [(1, (2, 3)), b"bytes", {"t": (1,)}]
    out = [x async for x in client.typed_items()]
    assert type(out[0]) is tuple and type(out[0][1]) is tuple and type(out[2]["t"]) is tuple


async def test_calls_are_served_while_streams_are_open(ssvc, client, probe):
    gen = await client.endless()
    assert await gen.asend(None) == 0
    it = client.endless()
    first = await it.__aiter__().__anext__()
    assert first == 0
    for i in range(20):
        assert await client.add(i, 1) == i + 1
    assert await gen.__anext__() == 1
    await gen.aclose()


class AppError(Exception):
    pass


async def test_athrow_non_builtin_exception(ssvc, client):
    @ssvc.register
    async def catcher():
        while True:
            try:
                yield "waiting"
            except Exception as exc:
                yield f"{type(exc).__name__}|{exc}"

    gen = await client.catcher()
    assert await gen.asend(None) == "waiting"
    caught = await gen.athrow(AppError("custom"))
    # not rebuilt as the user's class (never unpickled): a remote error carrying its name
    kind, message = caught.split("|", 1)
    assert kind in ("RemoteRPCError", "AppError")
    assert "custom" in message
    await gen.aclose()


async def test_unserializable_item_ends_stream_with_clear_error(ssvc, client, probe):
    @ssvc.register
    async def bad_items():
        probe.started += 1
        try:
            yield 1
            yield object()
            yield 3  # pragma: no cover - never reached
        finally:
            probe.finalized += 1

    got = []
    with pytest.raises(RPCError) as info:
        async for x in client.bad_items():
            got.append(x)
    assert got == [1]
    assert "bad_items" in str(info.value) or "serializ" in str(info.value).lower()
    assert await streams_closed(ssvc, probe, client)


async def test_unserializable_asend_value_fails_locally(ssvc, client, probe):
    gen = await client.accumulate(0)
    assert await gen.asend(None) == 0
    with pytest.raises(TypeError):  # SerializationError is a TypeError
        await gen.asend(object())
    assert await gen.asend(4) == 4  # the stream is still usable
    await gen.aclose()
    assert await streams_closed(ssvc, probe, client)


async def test_asend_not_allowed_while_prefetching(ssvc, client, probe):
    gen = await client.endless()
    async for x in gen:
        if x == 2:
            break
    with pytest.raises(RuntimeError):
        await gen.asend(1)
    await gen.aclose()
    assert await streams_closed(ssvc, probe, client)


async def test_concurrent_steps_on_one_generator_are_refused(ssvc, client, probe):
    gen = await client.slow_steps(5, 0.2)
    first = asyncio.ensure_future(gen.asend(None))
    await asyncio.sleep(0)  # one loop turn: the first step starts and waits for its item
    with pytest.raises(RuntimeError):
        await gen.asend(None)
    assert await first == 0
    await gen.aclose()
    assert await streams_closed(ssvc, probe, client)


# ---------------------------------------------------------------- the seed's echo example


def register_seed_echo(svc, events):
    @svc.register
    def echo(value=None):
        events.append("start")
        try:
            while True:
                try:
                    value = yield value
                except Exception as e:
                    value = e
        finally:
            events.append("finally")


async def _seed_echo_session(cli, events, svc):
    generator = await cli.echo(1)
    assert events == []  # "Execution starts when 'next()' is called for the first time."
    assert await generator.__anext__() == 1
    assert events == ["start"]
    assert await generator.__anext__() is None
    assert await generator.asend(2) == 2
    err = await generator.athrow(TypeError, "spam")
    assert isinstance(err, TypeError)
    assert str(err) == "spam"
    generator = None
    assert await wait_until(lambda: events == ["start", "finally"], 3, gc_collect=True)
    assert await wait_until(lambda: svc.active_streams == 0, 3)


async def test_seed_echo_example_with_pickle(make_service, make_client, make_url):
    """The seed README's session, word for word in async form (pickle carries the exception)."""
    events: list[str] = []
    url = make_url("tcp")
    svc = make_service(serializer=PickleSerializer())
    register_seed_echo(svc, events)
    svc.bind(url)
    svc.start()
    cli = make_client(serializer="pickle")
    cli.connect(url)
    await _seed_echo_session(cli, events, svc)


async def test_seed_echo_example_default_serializer(make_service, make_client, make_url):
    events: list[str] = []
    url = make_url("ipc")
    svc = make_service()
    register_seed_echo(svc, events)
    svc.bind(url)
    svc.start()
    cli = make_client()
    cli.connect(url)
    await _seed_echo_session(cli, events, svc)


async def test_seed_echo_example_as_async_generator(make_service, make_client, make_url):
    """The same session against an async generator, without the exception round trip."""
    events: list[str] = []
    url = make_url("tcp")
    svc = make_service()

    @svc.register
    async def echo(value=None):
        events.append("start")
        try:
            while True:
                try:
                    value = yield value
                except Exception as e:
                    value = f"{type(e).__name__}: {e}"
        finally:
            events.append("finally")

    svc.bind(url)
    svc.start()
    cli = make_client()
    cli.connect(url)
    gen = await cli.echo(1)
    assert await gen.__anext__() == 1
    assert await gen.__anext__() is None
    assert await gen.asend(2) == 2
    assert await gen.athrow(TypeError, "spam") == "TypeError: spam"
    del gen
    assert await wait_until(lambda: events == ["start", "finally"], 3, gc_collect=True)
    assert await wait_until(lambda: svc.active_streams == 0, 3)


# ---------------------------------------------------------------- 2. flow control


async def flow_service(make_service, make_url, probe, kind="tcp", **kwargs):
    svc = make_service(**kwargs)
    register_streams(svc, probe)
    url = make_url(kind)
    svc.bind(url)
    svc.start()
    return svc, url


@pytest.mark.parametrize("window", [4, 32])
async def test_endless_generator_paused_consumer(make_service, make_client, make_url, window):
    probe = Probe()
    svc, url = await flow_service(make_service, make_url, probe)
    cli = make_client(window=window)
    cli.connect(url)
    consumed = 0
    async for x in cli.endless():
        assert x == consumed
        consumed += 1
        if consumed == 50:
            break
        if consumed == 10:
            # the consumer pauses: the producer must stop within the window
            await asyncio.sleep(0.3)
            first = probe.produced
            await asyncio.sleep(0.3)
            assert probe.produced == first  # stopped, not just slowed
            ahead = probe.produced - consumed
            assert ahead <= window + 2, (ahead, window)
            if window >= 32:
                assert ahead >= 8, ahead  # ... and the window really prefetches
    assert await streams_closed(svc, probe)


async def test_sync_endless_generator_paused_consumer(make_service, make_client, make_url):
    probe = Probe()
    svc, url = await flow_service(make_service, make_url, probe)
    cli = make_client(window=8)
    cli.connect(url)
    it = cli.sync_endless().__aiter__()
    assert await it.__anext__() == 0
    await asyncio.sleep(0.3)
    assert probe.produced <= 1 + 8 + 2
    await it.aclose()
    assert await streams_closed(svc, probe)


async def test_lockstep_never_runs_ahead(make_service, make_client, make_url):
    probe = Probe()
    _, url = await flow_service(make_service, make_url, probe)
    cli = make_client(window=64)
    cli.connect(url)
    gen = await cli.endless()
    for i in range(3):
        assert await gen.asend(None) == i
    await asyncio.sleep(0.3)
    assert probe.produced == 3  # exact generator semantics: one step per asend
    await gen.aclose()


async def test_fast_producer_slow_reader_loses_nothing(make_service, make_client, make_url):
    probe = Probe()
    svc, url = await flow_service(make_service, make_url, probe, kind="ipc")

    @svc.register
    async def blobs(n, size):
        for i in range(n):
            yield (i, bytes([i % 256]) * size)

    cli = make_client(window=64)
    cli.connect(url)
    n = 600
    got = 0
    async for i, blob in cli.blobs(n, 64 * 1024):
        assert i == got
        assert len(blob) == 64 * 1024 and blob[:1] == bytes([i % 256])
        got += 1
        if got % 100 == 0:
            await asyncio.sleep(0.05)  # the reader stalls now and then
    assert got == n


async def test_many_items_with_default_window(ssvc, client, probe):
    n = 5000
    assert [x async for x in client.acount(n)] == list(range(n))
    assert await streams_closed(ssvc, probe, client)


async def test_many_streams_at_once(ssvc, client, probe):
    async def consume(n):
        return [x async for x in client.acount(n)]

    results = await asyncio.gather(*(consume(50 + i) for i in range(40)))
    for i, r in enumerate(results):
        assert r == list(range(50 + i))
    assert await streams_closed(ssvc, probe, client)


async def test_sync_generator_in_executor(make_service, make_client, make_url):
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        probe = Probe()
        svc, url = await flow_service(make_service, make_url, probe, executor=pool)
        cli = make_client()
        cli.connect(url)
        it = cli.sync_endless().__aiter__()
        assert [await it.__anext__() for _ in range(20)] == list(range(20))
        await it.aclose()
        assert await streams_closed(svc, probe)
    finally:
        pool.shutdown(wait=False)


async def test_sync_generator_exhausts_in_executor(make_service, make_client, make_url):
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        probe = Probe()
        _, url = await flow_service(make_service, make_url, probe, executor=pool)
        cli = make_client(timeout=1.0)
        cli.connect(url)
        assert [x async for x in cli.scount(5)] == list(range(5))
        gen = await cli.scount(1)
        assert await gen.asend(None) == 0
        with pytest.raises(StopAsyncIteration):
            await gen.asend(None)
    finally:
        pool.shutdown(wait=False)


# ---------------------------------------------------------------- 3. cleanup, always


async def test_cleanup_on_break(ssvc, client, probe):
    async for x in client.endless():
        if x == 5:
            break
    assert await streams_closed(ssvc, probe, client)


async def test_cleanup_on_aclose_of_async_for_stream(ssvc, client, probe):
    gen = await client.endless()
    async for x in gen:
        if x == 3:
            break
    await gen.aclose()
    assert probe.finalized == 1
    assert await streams_closed(ssvc, probe, client)


async def test_cleanup_on_gc(ssvc, client, probe):
    gen = await client.endless()
    assert await gen.asend(None) == 0
    del gen
    gc.collect()
    assert await streams_closed(ssvc, probe, client)


async def test_cleanup_on_gc_of_unstarted_stream(ssvc, client, probe):
    gen = await client.endless()
    assert ssvc.active_streams == 1
    del gen
    gc.collect()
    assert await wait_until(lambda: ssvc.active_streams == 0, 3)
    assert client.open_streams == 0


async def test_cleanup_on_step_timeout(ssvc, make_client, endpoint, probe):
    cli = make_client(timeout=0.3)
    cli.connect(endpoint)
    got = []
    with pytest.raises(RPCTimeoutError):
        async for x in cli.stall_at(3):
            got.append(x)
    assert got == [0, 1, 2]
    assert await streams_closed(ssvc, probe, cli)


async def test_cleanup_on_lockstep_timeout(ssvc, make_client, endpoint, probe):
    cli = make_client(timeout=0.3)
    cli.connect(endpoint)
    gen = await cli.stall_at(1)
    assert await gen.asend(None) == 0
    with pytest.raises(RPCTimeoutError):
        await gen.asend(None)
    assert await streams_closed(ssvc, probe, cli)
    with pytest.raises(StopAsyncIteration):
        await gen.asend(None)


async def test_cleanup_on_cancellation(ssvc, client, probe):
    started = asyncio.Event()

    async def consume():
        async for x in client.stall_at(2):
            if x == 1:
                started.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(started.wait(), 3)
    assert await wait_until(lambda: probe.stalled == 1, 3)  # the consumer waits for item 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await streams_closed(ssvc, probe, client)


async def test_cleanup_on_cancellation_lockstep(ssvc, client, probe):
    gen = await client.stall_at(1)
    assert await gen.asend(None) == 0
    step = asyncio.ensure_future(gen.asend(None))
    assert await wait_until(lambda: probe.stalled == 1, 3)  # the step waits at the stall
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step
    assert await streams_closed(ssvc, probe, client)


async def test_cleanup_on_generator_error(ssvc, client, probe):
    for _ in range(3):
        with pytest.raises(ValueError):
            async for _ in client.failing(2):
                pass
    assert await streams_closed(ssvc, probe, client)


async def test_cleanup_on_client_close(ssvc, make_client, endpoint, probe):
    cli = make_client()
    cli.connect(endpoint)
    gens = [await cli.endless() for _ in range(3)]
    for g in gens:
        await g.asend(None)
    cli.close()
    assert await streams_closed(ssvc, probe, timeout=3)
    assert cli.open_streams == 0


async def test_cleanup_when_service_stops(ssvc, client, probe):
    gen = await client.endless()
    assert await gen.asend(None) == 0
    await asyncio.wait_for(ssvc.stop(grace=0.2), 3)
    assert probe.finalized == 1
    with pytest.raises((ServiceStoppingError, RPCTimeoutError, StopAsyncIteration)):
        await asyncio.wait_for(gen.asend(None), 6)


async def test_all_cleanup_cases_count_back_to_zero(ssvc, make_client, endpoint, probe):
    """Every way of abandoning a stream, mixed, concurrently: nothing stays open."""
    cli = make_client(timeout=0.3)
    cli.connect(endpoint)

    async def by_break():
        async for x in cli.endless():
            if x == 2:
                break

    async def by_aclose():
        g = await cli.endless()
        await g.asend(None)
        await g.aclose()

    async def by_gc():
        g = await cli.endless()
        await g.asend(None)

    async def by_timeout():
        with pytest.raises(RPCTimeoutError):
            async for _ in cli.stall_at(1):
                pass

    async def by_error():
        with pytest.raises(ValueError):
            async for _ in cli.failing(1):
                pass

    async def by_exhaustion():
        assert [x async for x in cli.acount(3)] == [0, 1, 2]

    async def by_cancel():
        t = asyncio.ensure_future(by_timeout_long())
        await asyncio.sleep(0.1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    async def by_timeout_long():
        async for _ in cli.with_options(timeout=10).stall_at(0):
            pass

    jobs = [by_break, by_aclose, by_gc, by_timeout, by_error, by_exhaustion, by_cancel] * 5
    await asyncio.gather(*(j() for j in jobs))
    gc.collect()
    assert await streams_closed(ssvc, probe, cli)
    assert probe.started == probe.finalized >= len(jobs) - 5  # by_cancel's may not have started
    assert ssvc.active_calls == 0
    assert cli.pending == 0


async def test_idle_stream_survives_past_its_lease(make_service, make_client, make_url):
    """A live client that holds a stream without reading keeps it (the client pings)."""
    probe = Probe()
    svc, url = await flow_service(make_service, make_url, probe, stream_lease=0.6)
    cli = make_client()
    cli.connect(url)
    gen = await cli.accumulate(1)
    assert await gen.asend(None) == 1
    await asyncio.sleep(1.8)  # three leases of silence from the user
    assert svc.active_streams == 1
    assert await gen.asend(2) == 3
    await gen.aclose()
    assert await streams_closed(svc, probe)


# ---------------------------------------------------------------- 4. affinity


async def test_affinity_twenty_streams_two_services(make_service, make_client, make_url):
    probes = [Probe(), Probe()]
    urls = []
    services = []
    for i, kind in enumerate(["tcp", "ipc"]):
        svc = make_service(name=f"s{i}")
        register_streams(svc, probes[i])

        @svc.register
        async def tagged(_i=i):
            total = 0
            while True:
                value = yield (_i, total)
                total += value

        url = make_url(kind)
        svc.bind(url)
        svc.start()
        urls.append(url)
        services.append(svc)
    cli = make_client()
    cli.connect(urls)
    rnd = random.Random(3)

    async def session(k):
        gen = await cli.tagged()
        where, total = await gen.asend(None)
        assert total == 0
        expected = 0
        for _ in range(20):
            v = rnd.randint(-100, 100)
            expected += v
            await asyncio.sleep(rnd.random() * 0.005)
            owner, total = await gen.asend(v)
            assert owner == where  # every step reached the service that started the stream
            assert total == expected
        await gen.aclose()
        return where

    owners = await asyncio.gather(*(session(k) for k in range(20)))
    assert collections.Counter(owners).keys() == {0, 1}  # both services carried streams
    for svc in services:
        assert await wait_until(lambda s=svc: s.active_streams == 0, 3)


async def test_affinity_of_prefetching_streams(make_service, make_client, make_url):
    urls = []
    for i in range(2):
        svc = make_service()

        @svc.register
        async def numbered(n, _i=i):
            for k in range(n):
                yield (_i, k)

        url = make_url("tcp")
        svc.bind(url)
        svc.start()
        urls.append(url)
    cli = make_client(window=4)
    cli.connect(urls)

    async def consume():
        items = [x async for x in cli.numbered(100)]
        assert [k for _, k in items] == list(range(100))
        assert len({s for s, _ in items}) == 1
        return items[0][0]

    owners = await asyncio.gather(*(consume() for _ in range(10)))
    assert set(owners) == {0, 1}


# ---------------------------------------------------------------- 5. per-step timeouts


async def test_timeout_applies_per_step_not_per_stream(ssvc, make_client, endpoint, probe):
    cli = make_client(timeout=0.25)
    cli.connect(endpoint)
    # 10 steps of 0.08 s: the whole stream takes longer than the timeout, no step does
    assert [x async for x in cli.slow_steps(10, 0.08)] == list(range(10))
    gen = await cli.slow_steps(5, 0.08)
    assert [await gen.asend(None) for _ in range(5)] == list(range(5))
    await gen.aclose()
    assert await streams_closed(ssvc, probe, cli)


async def test_per_call_timeout_applies_to_stream_steps(ssvc, make_client, endpoint, probe):
    cli = make_client(timeout=10)
    cli.connect(endpoint)
    gen = await cli.call("stall_at", 1, timeout=0.3)
    assert await gen.asend(None) == 0
    with pytest.raises(RPCTimeoutError):
        await asyncio.wait_for(gen.asend(None), 3)
    assert await streams_closed(ssvc, probe, cli)
