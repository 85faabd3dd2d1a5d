"""The broker, with every party a real process on 127.0.0.1: a broker, three services (two with
``math.*``, one with ``users.*``) that connect out to it, and clients; processes are killed
with SIGKILL where a test says so."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from _cluster import Procs, kill9, rolling_restart
from _helpers import offered
from conftest import tcp_url
from netcall import (
    ConnectionLostError,
    MethodNotFoundError,
    RPCClient,
    RPCTimeoutError,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def procs():
    p = Procs()
    yield p
    await p.cleanup()


class Cluster:
    def __init__(self, procs: Procs, front: str, back: str) -> None:
        self.procs = procs
        self.front = front
        self.back = back
        self.broker: asyncio.subprocess.Process | None = None
        self.services: dict[str, asyncio.subprocess.Process] = {}

    async def start_broker(self) -> None:
        self.broker = await self.procs.broker(self.front, self.back)

    async def start_service(self, name: str, kind: str, max_concurrent: int | None = None) -> None:
        self.services[name] = await self.procs.service(name, kind, self.back, max_concurrent)


async def wait_names(cli: RPCClient, method: str, names: set[str], timeout: float = 10.0) -> float:
    """Call ``method`` (a whoami) until all of ``names`` answered; return the time it took."""
    seen: set[str] = set()
    t0 = time.monotonic()
    while not names <= seen:
        assert time.monotonic() - t0 < timeout, f"only {seen} of {names} answered {method}"
        try:
            got = await asyncio.gather(*[cli.call(method, timeout=2) for _ in range(8)])
            seen.update(got)
        except (MethodNotFoundError, ConnectionLostError, RPCTimeoutError):
            await asyncio.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture
async def cluster(procs, make_client):
    """A broker and three services: math-a, math-b (``math.*``) and users (``users.*``)."""
    c = Cluster(procs, tcp_url(), tcp_url())
    await c.start_broker()
    await asyncio.gather(
        c.start_service("math-a", "math"),
        c.start_service("math-b", "math"),
        c.start_service("users", "users"),
    )
    cli = make_client(timeout=5)
    cli.connect(c.front)
    await wait_names(cli, "math.whoami", {"math-a", "math-b"})
    await wait_names(cli, "users.whoami", {"users"})
    c.client = cli  # type: ignore[attr-defined]
    return c


# ---------------------------------------------------------------- routing


async def test_routing_by_method_name(cluster):
    cli = cluster.client
    assert await cli.math.add(1, 2) == 3
    assert await cli.users.get(7) == {"id": 7, "name": "user7"}
    assert set(await asyncio.gather(*[cli.users.whoami() for _ in range(10)])) == {"users"}
    t0 = time.monotonic()
    with pytest.raises(MethodNotFoundError, match="nope"):
        await cli.nope.missing()
    assert time.monotonic() - t0 < 0.5  # at once, from the broker
    methods = await cli.methods()
    assert {"math.add", "math.whoami", "users.get", "users.whoami"} <= set(methods)
    assert methods["math.add"]["signature"].startswith("(x")


async def test_least_loaded_spreading(cluster):
    cli = cluster.client
    names = await asyncio.gather(*[cli.math.slow(0.3) for _ in range(40)])
    counts = Counter(names)
    assert set(counts) == {"math-a", "math-b"}
    assert 14 <= counts["math-a"] <= 26, counts


async def test_twenty_streams_stick_to_their_service(cluster):
    cli = cluster.client

    async def one(n: int) -> set[str]:
        owners = set()
        async for name, _i in cli.math.count(200 + n):
            owners.add(name)
        return owners

    results = await asyncio.gather(*[one(n) for n in range(20)])
    assert all(len(owners) == 1 for owners in results)
    assert {o for owners in results for o in owners} == {"math-a", "math-b"}

    # Lock-step, asend/athrow/aclose through the broker.
    gens = [await cli.math.echo_back() for _ in range(6)]
    firsts = [await g.asend(None) for g in gens]
    for g, owner in zip(gens, firsts):
        assert await g.asend(owner) == owner
        assert await g.asend([1, 2]) == [1, 2]
        with pytest.raises(ValueError):
            await g.athrow(ValueError("boom"))
        await g.aclose()


async def test_max_concurrent_respected(procs, make_client):
    front, back = tcp_url(), tcp_url()
    await procs.broker(front, back)
    await procs.service("capped", "users", back, max_concurrent=2)
    cli = make_client(timeout=10)
    cli.connect(front)
    await wait_names(cli, "users.whoami", {"capped"})
    t0 = time.monotonic()
    assert await asyncio.gather(*[cli.users.slow(0.2) for _ in range(10)]) == ["capped"] * 10
    assert time.monotonic() - t0 >= 0.9  # five rounds of two
    stats = await cli.users.stats()
    assert stats["peak"] == 2
    # An open stream counts as a call in flight.
    gen = await cli.users.echo_back()
    assert await gen.asend(None) == "capped"
    assert await asyncio.gather(*[cli.users.slow(0.1) for _ in range(4)]) == ["capped"] * 4
    assert (await cli.users.stats())["peak"] == 2
    await gen.aclose()


async def test_queued_call_respects_its_deadline(procs, make_client):
    front, back = tcp_url(), tcp_url()
    await procs.broker(front, back)
    await procs.service("capped", "users", back, max_concurrent=1)
    cli = make_client(timeout=10)
    cli.connect(front)
    await wait_names(cli, "users.whoami", {"capped"})
    busy = asyncio.ensure_future(cli.users.slow(1.0))
    await asyncio.sleep(0.1)
    with pytest.raises(RPCTimeoutError):
        await cli.call("users.slow", 0.01, timeout=0.3)
    assert await busy == "capped"
    # The call that timed out in the queue never ran.
    assert (await cli.users.stats())["peak"] == 1


async def test_service_joins_and_gets_calls_within_a_second(cluster):
    cli = cluster.client
    await cluster.start_service("math-c", "math")
    took = await wait_names(cli, "math.whoami", {"math-c"}, timeout=5)
    assert took < 1.5


# ---------------------------------------------------------------- faults


async def test_kill9_service_fails_its_calls_fast(cluster):
    cli = cluster.client
    slow = [asyncio.ensure_future(cli.call("math.slow", 30, timeout=30)) for _ in range(8)]
    while (await cli.math.stats())["running"] == 0:  # both services run some
        await asyncio.sleep(0.01)
    stream = cli.math.endless()
    owners = set()
    async for name, i in stream:
        owners.add(name)
        if i == 3:
            break
    await asyncio.sleep(0.3)
    victim = "math-a"
    t0 = time.monotonic()
    await kill9(cluster.services[victim])
    # Spread least-loaded: four slow calls run on each service; math-a's four fail fast.
    lost: list[asyncio.Future[str]] = []
    while len(lost) < 4:
        assert time.monotonic() - t0 < 2.5, f"{len(lost)} of 4 calls failed"
        await asyncio.sleep(0.01)
        lost = [t for t in slow if t.done()]
    assert all(isinstance(t.exception(), ConnectionLostError) for t in lost)
    assert sum(1 for t in slow if t.done()) == 4
    # New calls go to the others.
    names = await asyncio.gather(*[cli.math.whoami() for _ in range(10)])
    assert set(names) == {"math-b"}
    for t in slow:
        t.cancel()


async def test_kill9_service_mid_stream(cluster):
    cli = cluster.client
    gens = [await cli.math.endless() for _ in range(6)]
    owners = [(await g.asend(None))[0] for g in gens]
    assert set(owners) == {"math-a", "math-b"}
    await kill9(cluster.services["math-a"])
    t0 = time.monotonic()
    for g, owner in zip(gens, owners):
        if owner == "math-a":
            with pytest.raises(ConnectionLostError):
                while True:
                    await g.asend(None)
        else:
            assert (await g.asend(None))[0] == "math-b"
            await g.aclose()
    assert time.monotonic() - t0 < 2.5


async def test_kill9_client_mid_stream_closes_the_generator(cluster):
    cli = cluster.client
    for mode in ("async-for", "lockstep"):
        before = await _closed_total(cli)
        child = await cluster.procs.start("client", cluster.front, mode, ready="STREAMING")
        await kill9(child)
        t0 = time.monotonic()
        while await _closed_total(cli) <= before:
            assert time.monotonic() - t0 < 2.5, "the service did not close the generator"
            await asyncio.sleep(0.05)


async def _closed_total(cli: RPCClient) -> int:
    """Generators closed so far on math-a and math-b (asked until both answered)."""
    seen: dict[str, int] = {}
    while len(seen) < 2:
        stats = await cli.math.stats()
        seen[stats["name"]] = stats["closed"]
    return sum(seen.values())


async def test_kill9_broker_then_restart(cluster):
    cli = cluster.client
    inflight = asyncio.ensure_future(cli.call("math.slow", 30, timeout=20))
    await asyncio.sleep(0.2)
    await kill9(cluster.broker)
    with pytest.raises(ConnectionLostError):
        await asyncio.wait_for(inflight, 10)
    await cluster.start_broker()  # the same two addresses
    t0 = time.monotonic()
    # A call made at once waits for the services to announce themselves again, no retry.
    assert await cli.call("math.add", 2, 3, timeout=5) == 5
    await wait_names(cli, "math.whoami", {"math-a", "math-b"}, timeout=5)
    await wait_names(cli, "users.whoami", {"users"}, timeout=5)
    assert time.monotonic() - t0 < 5
    assert await cli.math.add(2, 3) == 5


async def test_two_brokers_for_redundancy(procs, make_client):
    fronts = [tcp_url(), tcp_url()]
    backs = [tcp_url(), tcp_url()]
    brokers = [await procs.broker(f, b) for f, b in zip(fronts, backs)]
    await asyncio.gather(
        procs.service("math-a", "math", backs), procs.service("math-b", "math", backs)
    )
    cli = make_client(timeout=5)
    cli.connect(fronts)
    await wait_names(cli, "math.whoami", {"math-a", "math-b"})
    await kill9(brokers[0])
    await asyncio.sleep(0.1)
    ok = 0
    for _ in range(20):
        try:
            assert await cli.math.add(1, 1) == 2
            ok += 1
        except ConnectionLostError:
            pass
    assert ok >= 19
    assert await asyncio.gather(*[cli.math.add(i, 1) for i in range(50)]) == [
        i + 1 for i in range(50)
    ]


async def test_cli_broker_routes_and_reports(procs, make_client):
    front, back = tcp_url(), tcp_url()
    broker = await procs.start(
        "cli",
        "broker",
        "--frontend",
        front,
        "--backend",
        back,
        "--stats-every",
        "0.2",
        ready="broker: clients connect to",
    )
    await procs.service("math-a", "math", back)
    cli = make_client(timeout=5)
    cli.connect(front)
    await wait_names(cli, "math.whoami", {"math-a"})
    assert await cli.math.add(2, 2) == 4
    assert broker.stdout is not None
    line = await asyncio.wait_for(broker.stdout.readline(), 5)
    while b"services=1" not in line:
        line = await asyncio.wait_for(broker.stdout.readline(), 5)
    assert b"methods=" in line and b"in_flight=" in line and b"queued=" in line
    broker.terminate()
    assert await asyncio.wait_for(broker.wait(), 5) == 0


async def test_broker_survives_garbage_from_both_sides(cluster, ctx):
    import zmq

    from netcall import protocol as p

    cli = cluster.client
    socks = []
    try:
        for url in (cluster.front, cluster.back):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(url)
            socks.append(s)
            for frames in (
                [b""],
                [b"garbage"],
                [p.header(p.Kind.CALL, 5)],  # a CALL header with no body
                [p.header(p.Kind.NEXT, 5), b"x"],  # NEXT for no stream
                [b"NC\x09\x01" + b"\x00" * 8, b"x"],  # another version
                [p.header(p.Kind.HELLO, 0) + b"\x00" * 5, b"{not json"],  # a bad HELLO
                [b"NC" + bytes([p.VERSION, 99]) + b"\x00" * 8],  # unknown kind
                [b"x" * 100000] * 3,
            ):
                s.send_multipart(frames)
        # The malformed CALL with a request id is answered, on the frontend.
        front = socks[0]
        assert front.poll(2000)
        assert p.decode_header(front.recv_multipart()[0])[0] == p.Kind.ERROR
        assert await cli.math.add(1, 2) == 3
        assert await cli.users.get(1) == {"id": 1, "name": "user1"}
    finally:
        for s in socks:
            s.close(linger=0)


async def test_time_remaining_shrinks_while_queued(procs, make_client):
    front, back = tcp_url(), tcp_url()
    await procs.broker(front, back)
    await procs.service("capped", "users", back, max_concurrent=1)
    cli = make_client(timeout=10)
    cli.connect(front)
    await wait_names(cli, "users.whoami", {"capped"})
    busy = asyncio.ensure_future(cli.users.slow(1.0))
    await asyncio.sleep(0.1)
    left = await cli.call("users.remaining", timeout=5)
    assert await busy == "capped"
    assert 3.0 < left < 4.5  # about 0.9 s of the 5 were spent waiting at the broker


async def test_oneway_cancellation_and_errors_pass_through(cluster):
    cli = cluster.client
    assert await cli.with_options(oneway=True).math.slow(0.05) is None
    with pytest.raises(TypeError):
        await cli.math.add("a", 1)  # the handler's TypeError, through the broker
    with pytest.raises(RPCTimeoutError):
        await cli.call("math.slow", 30, timeout=0.3)
    # The client's timeout cancelled the handler on the service, through the broker.
    t0 = time.monotonic()
    while True:
        stats = [await cli.math.stats() for _ in range(4)]
        if all(s["running"] == 0 for s in stats):
            break
        assert time.monotonic() - t0 < 3
        await asyncio.sleep(0.05)


async def test_out_of_band_buffers_through_the_broker(cluster):
    """Large buffers travel as frames of their own; the broker forwards every frame."""
    cli = cluster.client
    big = bytes(range(256)) * 4096  # 1 MiB
    assert await cli.math.add(big, b"!") == big + b"!"
    assert await cli.math.add(bytearray(big), memoryview(big)) == big + big


# ---------------------------------------------------------------- rolling restart


@pytest.mark.timeout(90)
async def test_rolling_restart_loses_no_call(procs, make_client):
    # Services stopped gracefully (SIGTERM) one at a time, each replaced, while 16 calls are
    # always in flight: the calls the broker sent a service before it read its BYE are
    # refused as busy and go to the other service, so callers see no error at all. Before,
    # a service with nothing running closed at once (those calls: ConnectionLostError), and
    # one still running refused them (ServiceStoppingError, passed on by the broker).
    c = Cluster(procs, tcp_url(), tcp_url())
    await c.start_broker()
    cli = make_client(timeout=10)
    cli.connect(c.front)
    # whoami finishes at once (a service with nothing running); slow does not
    await rolling_restart(
        procs, c.back, lambda i: cli.math.whoami() if i % 2 else cli.math.slow(0.002), rounds=4
    )


async def test_a_handler_that_lets_a_busy_error_through_runs_once(make_service, make_client):
    """A broker sends a call refused as busy (``netcall.Busy``: it never ran) to a service
    again. A handler that lets through the ServiceBusyError of a call it made did run: its
    caller gets that error under another name, and the broker does not run it again."""
    from netcall import Broker, RemoteRPCError, ServiceBusyError
    from netcall.errors import HANDLER_BUSY

    front, back, down_url = tcp_url(), tcp_url(), tcp_url()
    started, release = asyncio.Event(), asyncio.Event()
    down = make_service(max_concurrent=1)

    @down.register
    async def hold() -> None:
        started.set()
        await release.wait()

    @down.register
    async def other() -> int:
        await asyncio.sleep(0)  # (one with no await can run beside hold(): it is never refused)
        return 1

    down.bind(down_url)
    down.start()
    to_down = make_client(timeout=5)
    to_down.connect(down_url)
    ran = 0
    relay_service = make_service()

    @relay_service.register
    async def relay() -> int:
        nonlocal ran
        ran += 1
        return await to_down.other()  # refused as busy: the error goes up as it is

    async with Broker(front, back):
        relay_service.connect(back)
        relay_service.start()
        client = make_client(timeout=10)
        client.connect(front)
        await wait_names_of(client, "relay")
        holding = asyncio.ensure_future(to_down.hold())
        await started.wait()
        with pytest.raises(RemoteRPCError) as info:
            await client.relay()
        assert not isinstance(info.value, ServiceBusyError)
        assert info.value.type_name == HANDLER_BUSY
        assert "at its limit of 1" in info.value.message
        assert ran == 1
        # Directly too: the caller of a handler that ran never gets ServiceBusyError.
        relay_direct = tcp_url()
        relay_service.bind(relay_direct)
        direct = make_client(timeout=10)
        direct.connect(relay_direct)
        with pytest.raises(RemoteRPCError, match="ServiceBusyError") as info:
            await direct.relay()
        assert not isinstance(info.value, ServiceBusyError) and ran == 2
        release.set()
        await holding
        assert await client.relay() == 1


async def wait_names_of(cli: RPCClient, method: str, timeout: float = 10.0) -> None:
    """Wait until a service behind the broker offers ``method``."""
    await offered(cli, method, timeout)
