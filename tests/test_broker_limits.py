"""What a hostile or broken peer can cost a broker, with real sockets: malformed messages are
logged at a bounded rate (not one line each), and a peer that does not read what the broker
sends it is cut off (its queue dropped, its work forgotten) instead of growing the broker."""

from __future__ import annotations

import logging

import pytest
import zmq

from _helpers import recv_within, wait_until
from conftest import tcp_url
from netcall import Broker
from netcall import protocol as p

pytestmark = pytest.mark.timeout(60)

GARBAGE = 2000


async def test_malformed_messages_are_logged_at_a_bounded_rate(ctx, zsockets, caplog):
    # Before: one WARNING per malformed message (2,000 from each side here).
    caplog.set_level(logging.WARNING, logger="netcall.broker")
    front, back = tcp_url(), tcp_url()
    broker = Broker(front, back, context=ctx, startup_grace=0)
    broker.start()
    try:
        client = zsockets(zmq.DEALER)
        client.connect(front)
        service = zsockets(zmq.DEALER)
        service.connect(back)
        for _ in range(GARBAGE):
            client.send_multipart([b"garbage"])  # too short for a header: dropped, no answer
            service.send_multipart([b"garbage"])
        # The broker handles one peer's messages in order: the PONG comes after the garbage.
        client.send_multipart(p.Ping(7).to_frames())
        assert p.decode(await recv_within(client, 10)) == p.Pong(7)
        assert await wait_until(lambda: broker.stats()["errors"]["malformed"] == 2 * GARBAGE)
        lines = [r for r in caplog.records if r.name == "netcall.broker"]
        assert 1 <= len(lines) <= 5 + 1, len(lines)  # a burst per window (and a summary)
        assert all("malformed" in r.getMessage() for r in lines)
        assert broker.router is not None and broker.router.log.count("malformed") == 2 * GARBAGE
    finally:
        broker.close()
