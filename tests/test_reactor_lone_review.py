"""helper-58's review of 17d9d41 (a lone message goes out at once), on real sockets: a message
sent from ``on_unreachable`` while a burst is written keeps its place behind that burst (it
went out at once, ahead of the burst's messages to the same peer, before the ``_writing``
flag); a zero-copy message sent at once arrives whole; no driver callback runs inside
``send()``; sequential calls never stall, direct, to a client that binds, through a broker
and over CURVE, on every transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq

from netcall import Broker, RPCClient, RPCService
from netcall._reactor import SocketDriver
from netcall.security import Curve, Keypair

pytestmark = pytest.mark.timeout(60)


def _router_and_peer(ctx: Any, rid: bytes = b"B", **opts: int) -> tuple[Any, Any]:
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.LINGER, 0)
    for name, value in opts.items():
        router.setsockopt(getattr(zmq, name), value)
    router.bind("tcp://127.0.0.1:*")
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.ROUTING_ID, rid)
    peer.connect(router.getsockopt(zmq.LAST_ENDPOINT).decode())
    peer.send(b"hello")
    return router, peer


async def _alone() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(500):
        if not loop._ready:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never alone in a turn")


def _drain(peer: Any, timeout_ms: int = 300) -> list[bytes]:
    got = []
    while peer.poll(timeout_ms):
        got.append(peer.recv())
    return got


async def test_a_send_from_on_unreachable_during_a_flush_keeps_the_peers_order(ctx: Any) -> None:
    # The broker's backend does this: a send to a service that left fails in the burst's
    # write (EHOSTUNREACH), on_unreachable -> Router.service_gone -> tick -> dispatch sends the
    # calls waiting at the broker to the other services, through the same driver, while the
    # rest of the burst (to those same services) is still to be written.
    router, peer = _router_and_peer(ctx)
    seen: list[Any] = []
    driver: SocketDriver | None = None

    def gone(rid: bytes) -> None:
        assert driver is not None
        driver.send([b"B", b"after-2"])

    driver = SocketDriver(router, asyncio.get_running_loop(), seen.append, on_unreachable=gone)
    try:
        for _ in range(500):
            if seen:
                break
            await asyncio.sleep(0.01)
        await _alone()
        driver.send([b"B", b"1"])  # at once (alone in the turn)
        driver.send([b"nobody", b"x"])  # corked: EHOSTUNREACH in the flush
        driver.send([b"B", b"2"])  # corked, behind it
        await asyncio.sleep(0.05)  # the flush (_flush_soon) runs alone in its turn
        assert _drain(peer) == [b"1", b"2", b"after-2"]
    finally:
        driver.close()
        peer.close(0)


async def test_a_large_zero_copy_message_sent_at_once_arrives_whole(ctx: Any) -> None:
    router, peer = _router_and_peer(ctx)
    seen: list[Any] = []
    driver = SocketDriver(router, asyncio.get_running_loop(), seen.append)
    try:
        for _ in range(500):
            if seen:
                break
            await asyncio.sleep(0.01)
        big = [bytes([i]) * (3 << 20) for i in range(3)]
        for i in range(3):
            await _alone()
            driver.send([b"B", b"head%d" % i, big[i]])  # bytes >= 2 MiB: copy=False
            assert peer.poll(5000)
            assert peer.recv_multipart() == [b"head%d" % i, big[i]]
            peer.send(b"again")  # a wake-up of the driver: the next one goes at once again
            for _ in range(500):
                if len(seen) == i + 2:
                    break
                await asyncio.sleep(0.01)
    finally:
        driver.close()
        peer.close(0)


async def test_a_lone_send_runs_no_callback_of_the_driver(ctx: Any) -> None:
    # The direct path defers every error to the flush: on_unreachable and on_overflow never
    # run inside send() (a caller iterating over its peers is not re-entered).
    router, _peer = _router_and_peer(ctx, SNDHWM=1)
    inside = [False]
    reported: list[tuple[bool, bytes]] = []
    driver = SocketDriver(
        router,
        asyncio.get_running_loop(),
        lambda f: None,
        on_unreachable=lambda rid: reported.append((inside[0], rid)),
        max_queued=1,
        on_overflow=lambda rid: reported.append((inside[0], rid)),
    )
    try:
        await asyncio.sleep(0.1)
        for _ in range(5):
            await _alone()
            inside[0] = True
            driver.send([b"gone-%d" % _, b"x"])
            inside[0] = False
            await asyncio.sleep(0.01)
        assert [r for r in reported if r[0]] == []
        assert len(reported) == 5
    finally:
        driver.close()
        _peer.close(0)


def _service(ctx: Any, **kw: Any) -> RPCService:
    svc = RPCService(context=ctx, **kw)
    svc.register(lambda x: x, name="echo")

    async def aecho(x: Any) -> Any:
        await asyncio.sleep(0)
        return x

    svc.register(aecho, name="aecho")
    return svc


async def _sequential(cli: RPCClient, n: int = 600) -> None:
    for _ in range(500):  # the service joined (broker, client that binds)
        try:
            await cli.echo(0)
            break
        except Exception:
            await asyncio.sleep(0.02)
    for i in range(n):
        method = cli.echo if i % 2 else cli.aecho
        assert await asyncio.wait_for(method(i), 1.0) == i  # a stall would take >= 1 s


@pytest.mark.parametrize("kind", ["tcp", "ipc", "inproc"])
@pytest.mark.parametrize("topology", ["direct", "client-binds", "broker", "curve"])
async def test_sequential_calls_never_stall(
    ctx: Any, make_url: Any, kind: str, topology: str
) -> None:
    closers: list[Any] = []
    try:
        if topology == "direct":
            svc = _service(ctx)
            closers.append(svc.close)
            url = make_url(kind)
            svc.bind(url)
            svc.start()
            cli = RPCClient(context=ctx, timeout=5)
            cli.connect(url)
        elif topology == "client-binds":
            url = make_url(kind)
            cli = RPCClient(context=ctx, timeout=5)
            cli.bind(url)
            svc = _service(ctx)
            closers.append(svc.close)
            svc.connect(url)
            svc.start()
        elif topology == "broker":
            front, back = make_url(kind), make_url(kind)
            broker = Broker(front, back, context=ctx)
            closers.append(broker.close)
            broker.start()
            svc = _service(ctx)
            closers.append(svc.close)
            svc.connect(back)
            svc.start()
            cli = RPCClient(context=ctx, timeout=5)
            cli.connect(front)
        else:
            server, client = Keypair.generate(), Keypair.generate()
            svc = _service(ctx, security=Curve.server(server, allow=[client.public]))
            closers.append(svc.close)
            url = make_url(kind)
            svc.bind(url)
            svc.start()
            cli = RPCClient(
                context=ctx, timeout=5, security=Curve.client(server.public, keypair=client)
            )
            cli.connect(url)
        closers.insert(0, cli.close)
        await _sequential(cli)
    finally:
        for close in closers:
            close()
