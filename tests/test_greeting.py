"""A plain client of a CURVE service that hangs up in the middle of the ZMTP greeting.

libzmq's CURVE server, when it reads a plain client's version and mechanism in one read, sees
the mismatch and closes before its own mechanism has gone out: the client's monitor reports
``HANDSHAKE_FAILED_NO_DETAIL`` (end-of-file), not the mismatch, and ZeroMQ retries, mostly the
same way. ``netcall call`` without CURVE against a CURVE service then timed out instead of
failing with AuthenticationError (tests/test_security_e2e.py, under load). The client asks the
service for its mechanism (netcall._client.greeting); :class:`GreetingRelay` makes the hang-up
happen on every handshake. Real CURVE services and sockets on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
import zmq

from _relay import GreetingRelay
from netcall import AuthenticationError, RPCClient, RPCService
from netcall._client.greeting import address, parse_mechanism, peer_mechanism
from netcall.security import Curve, Keypair

pytestmark = pytest.mark.timeout(60)

#: A refused client is told within this many seconds (the relay holds the client's greeting
#: for up to 0.5 s; slack for a machine shared by several test runs).
REFUSAL_BOUND = 2.5


def _curve_service(ctx: Any) -> tuple[RPCService, int]:
    service = RPCService(context=ctx, security=Curve.server(Keypair.generate()))

    @service.register
    def whoami() -> str:
        return "nobody"

    return service, service.bind_ports()


async def test_plain_client_refused_when_the_service_hangs_up_mid_greeting(ctx: Any) -> None:
    service, port = _curve_service(ctx)
    with GreetingRelay(("127.0.0.1", port)) as relay:
        async with service, RPCClient(context=ctx, timeout=10.0) as client:
            client.connect(relay.url)
            start = time.monotonic()
            with pytest.raises(AuthenticationError, match="requires CURVE"):
                await client.whoami()
            assert time.monotonic() - start < REFUSAL_BOUND, "refused only at the timeout"
            with pytest.raises(AuthenticationError, match="requires CURVE"):
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
