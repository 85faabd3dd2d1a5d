"""A plain client of a CURVE service that hangs up in the middle of the ZMTP greeting.

libzmq's CURVE server, when it reads a plain client's version and mechanism in one read, sees
the mismatch and closes before its own mechanism has gone out: the client's monitor reports
``HANDSHAKE_FAILED_NO_DETAIL`` (end-of-file), not the mismatch, and ZeroMQ retries, mostly the
same way. ``netcall call`` without CURVE against a CURVE service then timed out instead of
failing with AuthenticationError (tests/test_security_e2e.py, under load). The client asks the
service for its mechanism (netcall._greeting); :class:`GreetingRelay` makes the hang-up
happen on every handshake. Real CURVE services and sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest
import zmq

from _relay import GreetingRelay
from conftest import tcp_url
from netcall import AuthenticationError, Broker, RPCClient, RPCService
from netcall._greeting import address, parse_mechanism, peer_mechanism
from netcall.security import Curve, Keypair

pytestmark = pytest.mark.timeout(60)

#: A refused client is told within this many seconds (the relay holds the client's greeting
#: for up to 0.5 s; slack for a machine shared by several test runs).
REFUSAL_BOUND = 2.5


def _curve_service(ctx: Any, curve: bool = True) -> tuple[RPCService, int]:
    security = Curve.server(Keypair.generate()) if curve else None
    service = RPCService(context=ctx, security=security)

    @service.register
    def whoami() -> str:
        return "nobody"

    return service, service.bind_ports()


@pytest.mark.parametrize(
    ("client_curve", "expect"),
    [
        (False, "requires CURVE encryption: give this client security=Curve.client"),
        # The other way round: a plain service hangs up on a CURVE client mid-greeting. That
        # end-of-file once read as a wrong service key ("the service's public key is not ...").
        (True, "does not use CURVE"),
    ],
    ids=["plain client, CURVE service", "CURVE client, plain service"],
)
async def test_client_refused_when_the_service_hangs_up_mid_greeting(
    ctx: Any, client_curve: bool, expect: str
) -> None:
    service, port = _curve_service(ctx, curve=not client_curve)
    security = Curve.client(Keypair.generate().public) if client_curve else None
    with GreetingRelay(("127.0.0.1", port)) as relay:
        async with service, RPCClient(context=ctx, timeout=10.0, security=security) as client:
            client.connect(relay.url)
            start = time.monotonic()
            with pytest.raises(AuthenticationError, match=expect):
                await client.whoami()
            assert time.monotonic() - start < REFUSAL_BOUND, "refused only at the timeout"
            with pytest.raises(AuthenticationError, match=expect):
                await client.whoami()  # the next call too, at once
            # The client's handshake did end as described: the service hung up before the end
            # of its own 64-byte greeting (the connection that asked got it all).
            assert relay.service_bytes and min(relay.service_bytes) < 64


async def test_peer_mechanism_reads_the_greeting(ctx: Any, tmp_path: Any) -> None:
    curve = ctx.socket(zmq.ROUTER)
    plain = ctx.socket(zmq.ROUTER)
    try:
        curve.curve_server = True
        curve.curve_secretkey = zmq.curve_keypair()[1]
        curve_port = curve.bind_to_random_port("tcp://127.0.0.1")
        plain.bind(f"ipc://{tmp_path}/plain.sock")
        assert await peer_mechanism(f"tcp://127.0.0.1:{curve_port}") == "CURVE"
        assert await peer_mechanism(f"tcp://127.0.0.1;127.0.0.1:{curve_port}") == "CURVE"
        assert await peer_mechanism(f"ipc://{tmp_path}/plain.sock") == "NULL"
    finally:
        curve.close(linger=0)
        plain.close(linger=0)


async def test_peer_mechanism_is_none_when_it_cannot_tell() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await peer_mechanism(f"tcp://127.0.0.1:{port}") is None
    assert await peer_mechanism("inproc://x") is None
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks
        assert await peer_mechanism(f"tcp://127.0.0.1:{silent.getsockname()[1]}", 0.2) is None


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("tcp://127.0.0.1:5555", ("127.0.0.1", 5555)),
        ("tcp://[::1]:5555", ("::1", 5555)),
        ("tcp://eth0;10.0.0.1:80", ("10.0.0.1", 80)),
        ("tcp://host:*", None),
        ("ipc:///tmp/x.sock", "/tmp/x.sock"),
        ("ipc://@name", "\0name"),
        ("inproc://a", None),
        ("ws://127.0.0.1:80", None),
    ],
)
def test_address(url: str, where: Any) -> None:
    assert address(url) == where


def test_parse_mechanism() -> None:
    head = b"\xff" + b"\0" * 7 + b"\x01\x7f"
    assert parse_mechanism(head + b"\x03\x01CURVE" + b"\0" * 47) == "CURVE"
    assert parse_mechanism(head + b"\x03\x00NULL" + b"\0" * 16) == "NULL"
    assert parse_mechanism(head + b"\x01\x05" + b"\0" * 20) == "NULL"  # ZMTP/2: no mechanism
    assert parse_mechanism(head + b"\x03") is None  # cut short
    assert parse_mechanism(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\0" * 10) is None


async def test_curve_client_with_a_wrong_key_still_told_about_the_key(ctx: Any) -> None:
    """A CURVE service that hangs up on a CURVE client (it cannot read the client's HELLO:
    the client has another service key): the key is what is wrong, not the mechanism."""
    service, port = _curve_service(ctx)
    security = Curve.client(Keypair.generate().public)
    async with service, RPCClient(context=ctx, timeout=10.0, security=security) as client:
        client.connect(f"tcp://127.0.0.1:{port}")
        start = time.monotonic()
        with pytest.raises(AuthenticationError, match="public key is not the one"):
            await client.whoami()
        assert time.monotonic() - start < REFUSAL_BOUND, "refused only at the timeout"


async def test_plain_service_connecting_out_warns_that_the_broker_requires_curve(
    ctx: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain service connecting out to a CURVE broker's backend that hangs up mid-greeting:
    ZeroMQ retries for ever, and the service says why, once per period, not per retry."""
    caplog.set_level(logging.WARNING, logger="netcall")
    back = tcp_url()
    port = int(back.rpartition(":")[2])
    broker = Broker(
        "inproc://greeting-front",
        back,
        context=ctx,
        backend_security=Curve.server(Keypair.generate()),
    )
    service = RPCService(context=ctx)
    async with broker:
        with GreetingRelay(("127.0.0.1", port), hold=0.05) as relay:
            service.connect(relay.url)
            async with service:

                def warnings() -> list[str]:
                    out = "a service's connection out: "
                    return [m for r in caplog.records if (m := r.getMessage()).startswith(out)]

                deadline = time.monotonic() + REFUSAL_BOUND
                while not any("CURVE" in m for m in warnings()):
                    assert time.monotonic() < deadline, warnings()
                    await asyncio.sleep(0.02)
                assert warnings() == [
                    f"a service's connection out: the peer at {relay.url} requires CURVE "
                    "encryption: connect with security=Curve.client(<its public key>, "
                    "keypair=...)"
                ]
                # ZeroMQ keeps retrying (the broker may change); the warning is not repeated.
                deadline = time.monotonic() + 10
                while len(relay.service_bytes) < 6:
                    assert time.monotonic() < deadline, relay.service_bytes
                    await asyncio.sleep(0.02)
                assert len(warnings()) == 1
                assert min(relay.service_bytes) < 64
