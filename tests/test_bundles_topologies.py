"""Bundles where a service connects out: through a broker (both hops, both ways), to a client
that binds, and to a peer that knows nothing of bundles (an older broker) or only says so in
part (a broker or a service with a small ``max_message_size``). A service says it reads
bundles in its HELLO (``HELLO_BUNDLES``); the peer it connected to sends it bundles after
that, and it bundles back only to a peer that sent it one (never on a forwarded caller's
``FLAG_BUNDLES``). Real sockets over tcp and ipc; see ``test_bundles.py`` for the format,
the driver, and a client and a service face to face.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from _helpers import bind_again, wait_until
from conftest import register_basics, tcp_url
from netcall import RPCService
from netcall import protocol as p
from netcall.broker import Broker

pytestmark = pytest.mark.timeout(30)

NB = p.BUNDLE_MAGIC


def drivers(broker: Broker) -> tuple[Any, Any]:
    """The broker's frontend and backend drivers."""
    return broker._drivers[0], broker._drivers[1]


async def offered(cli: Any, method: str = "echo", timeout: float = 10.0) -> None:
    """Wait until a call to ``method`` succeeds (a service joined the broker, or announced
    itself to the client that binds)."""
    end = time.monotonic() + timeout
    while True:
        try:
            assert await cli.echo("up") == "up"
            return
        except Exception:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.02)


async def bursts(cli: Any, rounds: int = 3, n: int = 400) -> None:
    for r in range(rounds):
        values = [(r, i) for i in range(n)]
        got = await asyncio.gather(*[cli.echo(list(v)) for v in values])
        assert got == [list(v) for v in values]


@pytest.fixture
async def make_broker(ctx: Any) -> Any:
    made: list[Broker] = []

    def make(front: str, back: str, **options: Any) -> Broker:
        broker = Broker(front, back, context=ctx, **options)
        broker.start()
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        await broker.stop(grace=0)
        broker.close()


@pytest.fixture
def behind_broker(
    make_broker: Any, make_service: Callable[..., RPCService], make_client: Any
) -> Callable[..., Any]:
    """``await behind_broker(front, back, broker={...}, service={...})`` -> (broker, service,
    client): a broker, a service with the basics connected to its backend, and a client
    connected to its frontend, once a call went through."""

    async def make(
        front: str, back: str, broker: dict[str, Any] | None = None, **service: Any
    ) -> tuple[Broker, RPCService, Any]:
        made = make_broker(front, back, **(broker or {}))
        svc = make_service(**service)
        register_basics(svc)
        svc.connect(back)
        svc.start()
        cli = make_client()
        cli.connect(front)
        await offered(cli)
        return made, svc, cli

    return make


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_both_hops_of_a_broker_bundle_both_ways(
    transport: str, make_url: Callable[[str], str], behind_broker: Any
) -> None:
    broker, svc, cli = await behind_broker(make_url(transport), make_url(transport))
    await bursts(cli)
    items = [x async for x in await cli.count(3000)]
    assert items == list(range(3000))
    to_clients, to_services = drivers(broker)
    assert to_clients.readers, "the broker never bundled answers to the client"
    assert to_services.readers, "the broker never learned the service from its HELLO"
    assert cli._driver.readers, "the client never bundled calls to the broker"
    assert svc._driver.readers, "the service never bundled answers to the broker"


async def test_a_broker_with_a_small_limit_sends_and_learns_no_bundles(
    behind_broker: Any,
) -> None:
    broker, svc, cli = await behind_broker(tcp_url(), tcp_url(), {"max_message_size": 4096})
    await bursts(cli)
    to_clients, to_services = drivers(broker)
    assert not to_clients.readers and not to_services.readers
    assert not cli._driver.readers and not svc._driver.readers


async def test_a_service_with_a_small_limit_does_not_say_it_reads_bundles(
    behind_broker: Any,
) -> None:
    broker, svc, cli = await behind_broker(tcp_url(), tcp_url(), max_message_size=4096)
    await bursts(cli)
    _, to_services = drivers(broker)
    assert not to_services.readers, "the broker bundled to a service that cannot take them"
    assert not svc._driver.readers
    assert drivers(broker)[0].readers  # the client's hop bundles all the same


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_a_client_that_binds_bundles_to_a_service_that_said_so(
    transport: str,
    make_url: Callable[[str], str],
    make_service: Callable[..., RPCService],
    make_client: Any,
) -> None:
    url = make_url(transport)
    cli = make_client()
    cli.bind(url)
    svc = make_service()
    register_basics(svc)
    svc.connect(url)
    svc.start()
    await offered(cli)
    await bursts(cli)
    assert cli._driver.readers, "the client did not learn the service from its HELLO"
    assert svc._driver.readers, "the service did not learn the client from its bundles"


class OldBroker:
    """A ROUTER standing in for a broker older than bundles: it takes a service's HELLO, then
    sends it CALLs as a broker forwards them (with the client's ``FLAG_BUNDLES``), each
    alone, and records every message the service sends, bundles included."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self.service: bytes | None = None
        self.hello_flags: int | None = None
        self.arrived: list[list[bytes]] = []

    async def recv(self, timeout: float = 5.0) -> list[bytes]:
        end = time.monotonic() + timeout
        while True:
            try:
                peer, *body = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                if time.monotonic() > end:
                    raise TimeoutError("nothing from the service") from None
                await asyncio.sleep(0.002)
                continue
            self.service = peer
            return body

    async def joined(self) -> None:
        while True:
            body = await self.recv()
            msg = p.decode(body)
            if isinstance(msg, p.Hello):
                self.hello_flags = msg.flags
            elif isinstance(msg, p.Ping):  # after the HELLO: a broker answers it
                self.sock.send_multipart([self.service, *p.Pong(msg.id).to_frames()])
                return

    async def burst(self, start: int, n: int) -> list[Any]:
        """``n`` calls at once, then their answers, in the order they came."""
        assert self.service is not None
        for i in range(start, start + n):
            head = p.call_head(i, "echo", "msgpack", 0.0, p.FLAG_BUNDLES, 0)
            self.sock.send_multipart([self.service, head, msgpack.packb([i])])
        values: list[Any] = []
        while len(values) < n:
            body = await self.recv()
            self.arrived.append(body)
            if body[0][:2] == NB:
                messages = [m[1:] for m in p.unbundle(body[0], None)]
            else:
                messages = [body]
            for frames in messages:
                msg = p.decode(frames)
                if isinstance(msg, p.Result):
                    values.append(msgpack.unpackb(msg.payload))
        return values


@pytest.fixture
def old_broker(zsockets: Callable[[int], zmq.Socket[Any]]) -> Callable[[str], OldBroker]:
    def make(url: str) -> OldBroker:
        sock = zsockets(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        bind_again(sock, url)
        return OldBroker(sock)

    return make


async def test_a_service_never_bundles_to_an_older_broker(
    make_service: Callable[..., RPCService], old_broker: Callable[[str], OldBroker]
) -> None:
    url = tcp_url()
    old = old_broker(url)
    svc = make_service()
    register_basics(svc)
    svc.connect(url)
    svc.start()
    await old.joined()
    assert old.hello_flags is not None and old.hello_flags & p.HELLO_BUNDLES
    for r in range(3):
        assert await old.burst(r * 200, 200) == list(range(r * 200, r * 200 + 200))
    assert all(body[0][:2] != NB for body in old.arrived), "a bundle to an older broker"
    assert not svc._driver.readers


async def test_a_service_forgets_a_broker_replaced_by_an_older_one(
    behind_broker: Any, old_broker: Callable[[str], OldBroker]
) -> None:
    back = tcp_url()
    broker, svc, cli = await behind_broker(tcp_url(), back)
    await bursts(cli)
    assert svc._driver.readers  # it bundles to the broker
    await broker.stop(grace=0)
    broker.close()
    assert await wait_until(lambda: not svc._driver.readers, timeout=5.0)
    old = old_broker(back)  # the same endpoint, the same routing id on the service's side
    await old.joined()
    assert await old.burst(0, 300) == list(range(300))
    assert all(body[0][:2] != NB for body in old.arrived), "a bundle to an older broker"
