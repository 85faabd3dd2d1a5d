"""In-process broker checks. Who the caller is: the ``netcall.peer_key`` metadata key is
honoured by a service only on calls from a peer it connected to itself (its broker); a broker
removes any a client wrote. And a broker on a taken address fails clearly."""

from __future__ import annotations

import asyncio

import pytest
import zmq

from conftest import tcp_url
from netcall import Broker, current_call
from netcall import protocol as p

pytestmark = pytest.mark.timeout(30)


def raw_call(method: str, rid: int, key: str) -> list[bytes]:
    return p.Call(rid, method, "msgpack", b"\x90", metadata={p.META_PEER_KEY: key}).to_frames()


async def recv(sock: zmq.Socket, timeout: float = 5.0) -> list[bytes]:  # type: ignore[type-arg]
    for _ in range(int(timeout / 0.01)):
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.01)
    raise AssertionError("no answer")


def make_whois(make_service):  # type: ignore[no-untyped-def]
    svc = make_service()

    @svc.register
    def whois() -> str | None:
        return current_call().metadata.get(p.META_PEER_KEY)

    return svc


async def test_a_client_cannot_claim_a_key(make_service, ctx):
    svc = make_whois(make_service)
    url = tcp_url()
    svc.bind(url)
    svc.start()
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.connect(url)
        dealer.send_multipart(raw_call("whois", 1, "spoofed"))
        reply = await recv(dealer)
        assert p.decode(reply) == p.Result(1, b"\xc0")  # None: the key was removed
    finally:
        dealer.close(linger=0)


async def test_a_broker_removes_a_key_a_client_wrote(make_service, ctx):
    front, back = tcp_url(), tcp_url()
    svc = make_whois(make_service)
    svc.connect(back)
    dealer = ctx.socket(zmq.DEALER)
    async with Broker(front, back, context=ctx):
        svc.start()
        try:
            dealer.connect(front)
            for rid in range(1, 100):  # until the service has announced itself
                dealer.send_multipart(raw_call("whois", rid, "spoofed"))
                msg = p.decode(await recv(dealer))
                if isinstance(msg, p.Result):
                    assert msg.payload == b"\xc0"
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the call never went through")
        finally:
            dealer.close(linger=0)


async def test_a_service_trusts_the_peer_it_connected_to(make_service, ctx):
    # A stand-in for a broker that says who the caller is: a ROUTER the service connects to.
    url = tcp_url()
    router = ctx.socket(zmq.ROUTER)
    try:
        router.bind(url)
        svc = make_whois(make_service)
        svc.connect(url)
        svc.start()
        peer, *hello = await recv(router)
        assert isinstance(p.decode(hello), p.Hello)
        _, *ping = await recv(router)  # a broker answers it; this stand-in need not
        assert isinstance(p.decode(ping), p.Ping)
        router.send_multipart([peer, *raw_call("whois", 7, "client-key")])
        _, *reply = await recv(router)
        assert p.decode(reply) == p.Result(7, b"\xaaclient-key")
    finally:
        router.close(linger=0)


async def test_a_broker_on_a_taken_address_fails_clearly(ctx):
    front, back = tcp_url(), tcp_url()
    async with Broker(front, back, context=ctx) as first:
        with pytest.raises(zmq.ZMQError):  # a TransportError, also a ZMQError
            Broker(tcp_url(), back, context=ctx)
        assert first.stats()["services"] == []
    assert first.closed


@pytest.mark.parametrize("kind", ["tcp", "ipc", "inproc"])
async def test_broker_and_a_client_that_binds_on_each_transport(kind, make_url, make_service, ctx):
    from netcall import RPCClient

    front, back, direct = make_url(kind), make_url(kind), make_url(kind)
    svc = make_service()
    svc.register(lambda: kind, name="who")
    svc.connect([back, direct])
    clients = [RPCClient(context=ctx, timeout=3), RPCClient(context=ctx, timeout=3)]
    try:
        async with Broker(front, back, context=ctx):
            clients[0].connect(front)  # through the broker
            clients[1].bind(direct)  # the service connects to this client
            svc.start()
            for cli in clients:
                for _ in range(100):
                    try:
                        assert await cli.who() == kind
                        break
                    except p.ProtocolError:
                        raise
                    except Exception:
                        await asyncio.sleep(0.02)
                else:
                    raise AssertionError(f"no answer through {kind}")
    finally:
        for cli in clients:
            cli.close()


async def test_curve_frontend_the_service_sees_the_clients_key(make_service, ctx):
    from netcall import AuthenticationError, RPCClient
    from netcall.security import Curve, Keypair

    broker_keys, alice, bob, eve = (Keypair.generate() for _ in range(4))
    front, back = tcp_url(), tcp_url()
    svc = make_service()

    @svc.register
    def whois() -> str | None:
        return current_call().peer_key

    @svc.register(allow=[alice.public])
    def alice_only() -> str:
        return "yes"

    svc.connect(back)
    security = Curve.server(broker_keys, allow=[alice.public, bob.public])
    clients = {
        name: RPCClient(
            context=ctx, timeout=3, security=Curve.client(broker_keys.public, keypair=k)
        )
        for name, k in (("alice", alice), ("bob", bob), ("eve", eve))
    }
    try:
        async with Broker(front, back, context=ctx, security=security):
            svc.start()
            for cli in clients.values():
                cli.connect(front)
            for _ in range(100):
                try:
                    got = await clients["alice"].whois()
                    break
                except Exception:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("no answer through the CURVE broker")
            assert got == alice.public.decode()
            assert await clients["bob"].whois() == bob.public.decode()
            assert await clients["alice"].alice_only() == "yes"
            with pytest.raises(PermissionError):
                await clients["bob"].alice_only()
            with pytest.raises(AuthenticationError):
                await clients["eve"].whois()
    finally:
        for cli in clients.values():
            cli.close()
