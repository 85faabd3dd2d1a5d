"""broker.stop() drains: new calls are refused at once, calls in flight finish within the
grace, and a call that overruns it is cut off when the broker closes."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest
import zmq

from _helpers import register_work, wait_until
from conftest import tcp_url
from netcall import Broker, ConnectionLostError, RPCClient, RPCTimeoutError, ServiceStoppingError
from netcall import protocol as p

pytestmark = pytest.mark.timeout(30)


def slow_service(make_service, url: str):  # type: ignore[no-untyped-def]
    """A service with ``slow(seconds)``, connected out to ``url``."""
    svc = make_service()

    @svc.register
    async def slow(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    svc.connect(url)
    return svc


async def cluster(make_service, ctx, grace: float):  # type: ignore[no-untyped-def]
    front, back = tcp_url(), tcp_url()
    svc = slow_service(make_service, back)
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
        assert await wait_until(lambda: broker.stats()["in_flight"] == 5, timeout=5)
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
        assert await wait_until(lambda: broker.stats()["in_flight"] == 1, timeout=5)
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


# ---------------------------------------------------------------- a service that stops


async def test_a_call_cut_short_by_a_service_stop_is_not_run_again(make_service, ctx):
    # A call cancelled at the end of the service's grace may have had effects: it fails with
    # ServiceStoppingError, and the broker does not send it to the other service.
    front, back = tcp_url(), tcp_url()
    ran: list[str] = []
    started = asyncio.Event()
    services = {}
    for name in ("a", "b"):
        svc = services[name] = make_service(name=name)
        register_work(svc, name, ran, started)
        svc.connect(back)
    broker = Broker(front, back, context=ctx)
    broker.start()
    for svc in services.values():
        svc.start()
    client = RPCClient(timeout=10, context=ctx)
    client.connect(front)
    try:
        deadline = time.monotonic() + 5
        while {await client.work(0) for _ in range(4)} != {"a", "b"}:
            assert time.monotonic() < deadline, "both services did not join"
        ran.clear()
        started.clear()
        call = asyncio.ensure_future(client.work(30))
        await asyncio.wait_for(started.wait(), 5)
        [victim] = ran
        await asyncio.wait_for(services[victim].stop(grace=0.2), 5)
        with pytest.raises(ServiceStoppingError):
            await asyncio.wait_for(call, 5)
        assert ran == [victim]  # not run again elsewhere
        other = "b" if victim == "a" else "a"
        assert await client.work(0) == other
    finally:
        client.close()
        broker.close()


@pytest.mark.parametrize("answers", [True, False], ids=["broker", "older-peer"])
async def test_a_call_that_arrives_after_bye(ctx, make_service, answers):
    # A raw peer that the service connects to. One that answers the PING after the HELLO is
    # a broker or a client that binds: a call it sent before it read the BYE is refused as
    # busy (it re-routes it), and the service keeps reading until the PONG to its PING after
    # the BYE. One that answers no PING (a broker or a client older than this) gets
    # ServiceStoppingError, and is not waited for.
    url = tcp_url()
    peer = ctx.socket(zmq.ROUTER)
    peer.linger = 0
    peer.bind(url)
    svc = slow_service(make_service, url)
    svc.start()

    got: list[list[bytes]] = []  # read, not yet taken

    async def read(kind: int) -> list[bytes]:
        """The first message of ``kind`` the peer got (others are kept for later reads)."""
        deadline = time.monotonic() + 5
        while True:
            for frames in got:
                if p.decode_header(frames[1])[0] == kind:
                    got.remove(frames)
                    return frames
            assert time.monotonic() < deadline, f"no message of kind {kind}"
            try:
                got.append(peer.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                await asyncio.sleep(0.005)

    def call(rid: int, seconds: float) -> None:
        args = msgpack.packb([seconds])
        peer.send_multipart([sid, *p.Call(rid, "slow", "msgpack", args, None, 0, 0, 0).to_frames()])

    try:
        sid = (await read(p.Kind.HELLO))[0]
        ping = await read(p.Kind.PING)
        if answers:
            peer.send_multipart([sid, *p.Pong(p.decode_header(ping[1])[1]).to_frames()])
            up = svc._upstreams  # the service took the PONG: it knows its peer is a broker
            assert await wait_until(lambda: any(map(up.reroutes, up._ids)), 5)
        call(1, 0.5)
        await wait_until(lambda: svc.active_calls == 1, 5)
        stopping = asyncio.ensure_future(svc.stop(grace=3))
        await read(p.Kind.BYE)
        call(2, 0)
        error = p.decode((await read(p.Kind.ERROR))[1:])
        assert error.id == 2  # type: ignore[union-attr]
        want = p.ERR_BUSY if answers else p.ERR_SERVICE_STOPPING
        assert error.type_name == want  # type: ignore[union-attr]
        if answers:
            bye_ping = await read(p.Kind.PING)
            peer.send_multipart([sid, *p.Pong(p.decode_header(bye_ping[1])[1]).to_frames()])
        result = await read(p.Kind.RESULT)
        assert p.decode_header(result[1])[1] == 1
        await asyncio.wait_for(stopping, 5)
    finally:
        peer.close()
