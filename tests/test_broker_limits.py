"""What a hostile or broken peer can cost a broker, with real sockets: malformed messages are
logged at a bounded rate (not one line each), and a peer that does not read what the broker
sends it is cut off (its queue dropped, its work forgotten) instead of growing the broker."""

from __future__ import annotations

import asyncio
import logging

import pytest
import zmq

from _helpers import recv_within, wait_until
from conftest import inproc_url, tcp_url
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


async def test_a_client_that_does_not_read_is_cut_off_and_its_work_cancelled(
    ctx, zsockets, make_service
):
    # Before: the broker queued every reply for it without bound (30,000 messages, +56 MB in
    # /work/rev10c/t_nonreader_inproc.py) and its calls ran on. inproc: no kernel buffers, so
    # the pipe holds exactly SNDHWM + RCVHWM messages before the broker's own queue starts.
    front, back = inproc_url(), inproc_url()
    svc = make_service()
    cancelled, closed = asyncio.Event(), asyncio.Event()
    started: list[str] = []

    @svc.register
    async def hang() -> None:
        started.append("hang")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    @svc.register
    async def ticks():  # type: ignore[no-untyped-def]
        started.append("ticks")
        try:
            yield 1
            await asyncio.Event().wait()
        finally:
            closed.set()

    broker = Broker(front, back, context=ctx, startup_grace=0)
    broker.start()
    svc.connect(back)
    svc.start()
    try:
        assert await wait_until(lambda: bool(broker.stats()["services"]))
        client = zsockets(zmq.DEALER)
        client.setsockopt(zmq.RCVHWM, 1)
        client.setsockopt(zmq.SNDHWM, 0)  # sends never block the loop the broker runs on
        client.connect(front)
        client.send_multipart(p.Call(1, "hang", "msgpack", b"\x90").to_frames())
        client.send_multipart(p.Call(2, "ticks", "msgpack", b"\x90", window=8).to_frames())
        assert await wait_until(lambda: len(started) == 2)
        # Never read: each unknown call is answered at once by the broker itself.
        for i in range(25_000):
            client.send_multipart(p.Call(10 + i, "nope", "msgpack", b"\x90").to_frames())
        await asyncio.wait_for(cancelled.wait(), 10)  # the call was cancelled on the service
        await asyncio.wait_for(closed.wait(), 10)  # and the stream closed
        stats = broker.stats()
        assert stats["errors"]["clients_cut_off"] >= 1
        assert stats["in_flight"] == 0 and stats["clients"] == 0
        front_driver = broker._drivers[0]
        assert sum(len(q) for q in front_driver._blocked.values()) <= 10_000
    finally:
        broker.close()
