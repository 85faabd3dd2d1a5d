"""A service whose handlers run off netcall's loop thread (a gevent hub, a trio run) and whose
handler side is stuck, behind a real broker: every service a real process (tests/
_stuck_service.py), the broker in this one (its ``stats()`` read directly).

Such a service's socket is read by netcall's own loop thread, which answered the broker's
PINGs at once while the hub or the trio thread was stuck: the broker kept sending it calls,
which timed out. It now answers a broker's PING once its handler side has run a no-op.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
from typing import Any

import pytest
import zmq

from _cluster import Procs
from _helpers import wait_until
from conftest import TESTS_DIR, tcp_url
from netcall import RPCClient, RPCService, RPCTimeoutError
from netcall import protocol as p
from netcall.broker import Broker
from netcall.threading import ThreadingRPCService

pytestmark = pytest.mark.timeout(60)

SERVICE = str(TESTS_DIR / "_stuck_service.py")


@pytest.fixture
async def procs():
    p = Procs()
    yield p
    await p.cleanup()


@pytest.fixture
async def broker(ctx):
    b = Broker(tcp_url(), tcp_url(), context=ctx, heartbeat=0.2)
    b.start()
    yield b
    b.close()


async def pids_seen(client: RPCClient, want: set[int], timeout: float = 15.0) -> set[int]:
    """Call ``pid()`` (16 at a time) until every pid of ``want`` answered."""
    seen: set[int] = set()

    async def more() -> bool:
        seen.update(await asyncio.gather(*[client.call("pid", timeout=2) for _ in range(16)]))
        return want <= seen

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await more():
        assert loop.time() < deadline, f"only {seen} of {want} answered"
    return seen


@pytest.mark.parametrize("kind", ["gevent", "gevent-patched", "trio"])
async def test_a_service_whose_handler_side_is_stuck_gets_no_new_calls(
    procs, broker, make_client, kind
):
    """``block`` holds the gevent hub (or the trio run) of one of two services for 3 s: that
    service is marked unresponsive within a few pings, the calls that follow all go to the
    other one, and once the block ends it answers again and gets calls again."""
    pytest.importorskip("trio" if kind == "trio" else "gevent")
    started = await asyncio.gather(
        *[procs.start(kind, broker.backend_urls[0], script=SERVICE) for _ in range(2)]
    )
    pids = {proc.pid for proc in started}
    client = make_client(timeout=10)
    client.connect(broker.frontend_urls[0])
    assert await pids_seen(client, pids) == pids

    def responsive() -> list[bool]:
        return [svc["responsive"] for svc in broker.stats()["services"]]

    with pytest.raises(RPCTimeoutError):
        await client.call("block", 3.0, timeout=0.3)
    assert await wait_until(lambda: sorted(responsive()) == [False, True], timeout=2.5), (
        f"no service marked unresponsive: {broker.stats()}"
    )
    # Every call goes to the service whose handlers run: none waits for the stuck one.
    got = await asyncio.gather(
        *[client.call("pid", timeout=1.5) for _ in range(40)], return_exceptions=True
    )
    assert all(isinstance(x, int) for x in got), got
    assert len(set(got)) == 1 and set(got) < pids
    # Once the block ends, its hub (or trio run) runs the no-op: PONG, and calls again.
    assert await wait_until(lambda: responsive() == [True, True], timeout=10), (
        f"not responsive again: {broker.stats()}"
    )
    assert await pids_seen(client, pids) == pids
    assert broker.stats()["errors"]["services_unresponsive"] == 1


# ------------------------------------------------- in one process: a stand-in broker, a hook


class HeldHook:
    """A ``handler_runner`` for a plain asyncio service that runs nothing until ``free`` is set
    (a stuck hub), or raises while ``failing``; counts the jobs it got and those cancelled.
    It runs all user code on one thread, as it says (a gevent hub does)."""

    one_thread = True

    def __init__(self) -> None:
        self.free = asyncio.Event()
        self.failing = False
        self.jobs = 0
        self.cancelled = 0

    async def __call__(self, fn: Any) -> Any:
        self.jobs += 1
        if self.failing:
            raise RuntimeError("the hub is gone")
        try:
            await self.free.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return fn()


async def recv(sock: Any, timeout: float = 5.0) -> list[bytes]:
    assert await wait_until(lambda: sock.poll(0, zmq.POLLIN), timeout), "nothing came"
    return sock.recv_multipart(zmq.NOBLOCK)  # type: ignore[no-any-return]


class StandIn:
    """A bare ROUTER a service connects out to: the broker's stand-in."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.peer = b""

    async def greeted(self) -> None:
        """Read the service's HELLO and PING."""
        self.peer, *hello = await recv(self.router)
        assert isinstance(p.decode(hello), p.Hello)
        assert isinstance(await self.next(), p.Ping)

    async def next(self) -> p.Message:
        return p.decode((await recv(self.router))[1:])

    def ping(self, *rids: int) -> None:
        for rid in rids:
            self.router.send_multipart([self.peer, *p.Ping(rid).to_frames()])

    async def ask(self, rid: int) -> list[p.Message]:
        """Send a CALL of ``echo`` (an async handler, run on the loop): what the service sent
        up to its RESULT, so after it had read all the broker sent before (one pipe, in order)."""
        self.router.send_multipart(
            [self.peer, *p.Call(rid, "echo", "msgpack", b"\x91\x01").to_frames()]
        )
        got = [await self.next()]
        while not isinstance(got[-1], p.Result):
            got.append(await self.next())
        return got


@pytest.fixture
async def hooked(ctx, make_service):
    """A service whose sync code runs through a ``HeldHook`` (one middleware noting what it
    sees, an async ``echo``) connected out to a ``StandIn``, greeted; and a DEALER, a client
    connected to the service directly: ``(service, hook, noted, stand_in, dealer)``."""
    hook, noted = HeldHook(), []

    async def note(call: Any, call_next: Any) -> Any:
        noted.append(call.method)
        return await call_next()

    svc = make_service(handler_runner=hook, middleware=[note])

    @svc.register
    async def echo(x: Any) -> Any:
        return x

    up, direct = tcp_url(), tcp_url()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind(up)
        svc.bind(direct)
        svc.connect(up)
        svc.start()
        broker = StandIn(router)
        await broker.greeted()
        dealer.connect(direct)
        yield svc, hook, noted, broker, dealer
    finally:
        router.close(linger=0)
        dealer.close(linger=0)


async def test_a_brokers_pings_are_answered_once_the_hook_ran_a_job(hooked):
    svc, hook, noted, broker, dealer = hooked
    broker.ping(1, 2, 3, 4, 5)
    assert [type(m) for m in await broker.ask(100)] == [p.Result]  # no PONG while it is held
    assert hook.jobs == 1  # one job for the five pings
    # A client connected directly (stream leases, liveness) is answered at once.
    dealer.send_multipart(p.Ping(7).to_frames())
    assert p.decode(await recv(dealer)) == p.Pong(7)
    hook.free.set()
    assert await broker.next() == p.Pong(1)  # the one pending job answers for all five
    assert [type(m) for m in await broker.ask(101)] == [p.Result]
    broker.ping(6)
    assert await broker.next() == p.Pong(6)
    # The jobs were no calls: not counted, not seen by the middleware.
    assert hook.jobs == 2 and noted == ["echo", "echo"]
    assert svc.stats()["calls"] == 2


async def test_a_job_that_fails_or_is_pending_at_close_leaves_nothing(hooked, caplog):
    svc, hook, _, broker, _ = hooked
    hook.failing = True
    broker.ping(1)
    assert [type(m) for m in await broker.ask(100)] == [p.Result]  # no PONG: it raised
    hook.failing = False
    broker.ping(2)  # the next PING tries again (held: pending at close)
    assert [type(m) for m in await broker.ask(101)] == [p.Result]
    assert hook.jobs == 2
    svc.close()
    assert await wait_until(lambda: hook.cancelled == 1 and not svc._hooked_pongs._pending)
    gc.collect()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


@pytest.mark.parametrize("cls", [RPCService, ThreadingRPCService])
async def test_a_service_with_a_pool_answers_at_once(ctx, cls):
    """An asyncio service with an executor, a ThreadingRPCService (whose pool runs through a
    hook that is not ``one_thread``): the loop answers a broker's PING at once, even while a
    handler holds a thread of the pool (one stuck thread does not stop the others)."""
    router = ctx.socket(zmq.ROUTER)
    release = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        svc = cls(context=ctx, executor=pool)
        svc.register(lambda: release.wait(10), name="hold")
        try:
            url = tcp_url()
            router.bind(url)
            svc.connect(url)
            svc.start()
            broker = StandIn(router)
            await broker.greeted()
            broker.router.send_multipart(
                [broker.peer, *p.Call(1, "hold", "msgpack", b"\x90").to_frames()]
            )
            broker.ping(2, 3)
            assert [await broker.next(), await broker.next()] == [p.Pong(2), p.Pong(3)]
            release.set()
            assert await broker.next() == p.Result(1, b"\xc3")
        finally:
            release.set()
            svc.close()
            router.close(linger=0)
