"""What a hostile or broken peer can cost a broker, with real sockets: malformed messages are
logged at a bounded rate (not one line each), and a peer that does not read what the broker
sends it is cut off (its queue dropped, its work forgotten) instead of growing the broker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import zmq

from _helpers import recv_within, wait_until
from conftest import inproc_url, tcp_url
from netcall import Broker
from netcall import protocol as p
from netcall.errors import ConnectionLostError

pytestmark = pytest.mark.timeout(60)

GARBAGE = 2000
FLOOD = 10_300  # calls: the pipe to a service holds 10,001 here, then 50 wait at the broker


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


def _drain(sock: Any, replies: dict[int, Any]) -> None:
    """Keep what came on a plain client socket, by request id."""
    while True:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        msg = p.decode(frames)
        replies[msg.id] = msg


async def _serve_raw(sock: Any, cancelled: set[int]) -> None:
    """A service on a plain DEALER, reading again: every call's answer is its arguments; the
    request ids of CANCELs go to ``cancelled``."""
    while True:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.001)
            continue
        msg = p.decode(frames)
        if isinstance(msg, p.Call):
            sock.send_multipart(p.Result(msg.id, msg.args).to_frames(), zmq.NOBLOCK)
        elif isinstance(msg, p.Ping):
            sock.send_multipart(p.Pong(msg.id).to_frames(), zmq.NOBLOCK)
        elif isinstance(msg, p.Cancel):
            cancelled.add(msg.id)
            sock.send_multipart(p.End(msg.id).to_frames(), zmq.NOBLOCK)


async def test_a_service_that_does_not_read_is_cut_off_then_gets_calls_again(
    ctx, zsockets, make_client
):
    # The service is a plain DEALER that announces itself as a service would, then reads
    # nothing. inproc: the pipe to it holds exactly the broker's SNDHWM + its RCVHWM (10,001)
    # calls, then 50 wait at the broker, and the next one cuts it off.
    front, back = inproc_url(), inproc_url()
    broker = Broker(
        front, back, context=ctx, startup_grace=0, max_queued=50, max_per_client=FLOOD
    )  # (one client sends the whole flood)
    broker.start()
    serving = None
    try:
        service = zsockets(zmq.DEALER)
        service.setsockopt(zmq.RCVHWM, 1)
        service.setsockopt(zmq.SNDHWM, 0)  # its answers never block the loop the broker runs on
        service.connect(back)
        service.send_multipart(p.Hello({"ticks": {}, "work": {}}).to_frames())
        assert await wait_until(lambda: broker.stats()["methods"] == ["ticks", "work"])
        client = make_client(timeout=30)
        client.connect(front)
        items: list[int] = []

        async def consume() -> None:
            async for x in client.ticks():
                items.append(x)

        # A stream it opened before it stopped reading.
        streaming = asyncio.ensure_future(consume())
        opened = p.decode(await recv_within(service, 5))
        assert isinstance(opened, p.Call) and opened.method == "ticks"
        service.send_multipart(p.StreamOpen(opened.id, 30.0).to_frames())
        service.send_multipart(p.Item(opened.id, b"\x01").to_frames())
        assert await wait_until(lambda: items == [1])
        first = [asyncio.ensure_future(client.work(i)) for i in range(20)]
        assert await wait_until(lambda: broker.stats()["in_flight"] == 21)
        flood = zsockets(zmq.DEALER)
        flood.setsockopt(zmq.SNDHWM, 0)
        flood.setsockopt(zmq.RCVHWM, 0)
        flood.connect(front)
        for i in range(FLOOD):
            flood.send_multipart(p.Call(i + 1, "work", "msgpack", b"\x90").to_frames())

        # The callers learn at once, not at their timeouts.
        answers = await asyncio.wait_for(asyncio.gather(*first, return_exceptions=True), 10)
        assert all(isinstance(a, ConnectionLostError) for a in answers), answers
        with pytest.raises(ConnectionLostError):
            await asyncio.wait_for(streaming, 10)

        def settled() -> bool:  # every call failed, or waiting at the broker
            s = broker.stats()
            return s["errors"]["connection_lost"] + s["queued"] == 21 + FLOOD

        assert await wait_until(settled, 10), broker.stats()
        stats = broker.stats()
        assert stats["errors"]["services_cut_off"] == 1
        assert stats["in_flight"] == 0 and len(stats["services"]) == 1
        lost = stats["errors"]["connection_lost"]
        assert 10_001 + 50 < lost < 21 + FLOOD  # its pipe, its queue here; the rest came later
        # Nothing more is sent to it: what waits for it does not grow.
        later = [asyncio.ensure_future(client.work(100 + i)) for i in range(20)]
        assert await wait_until(lambda: broker.stats()["queued"] == 21 + FLOOD - lost + 20)
        back_driver = broker._drivers[1]
        assert back_driver._blocked == {} and broker.stats()["in_flight"] == 0

        # It reads again: its first answer (to a call failed long ago) puts it back to work,
        # and the stream failed at the cut-off is closed on it.
        cancelled: set[int] = set()
        serving = asyncio.ensure_future(_serve_raw(service, cancelled))
        assert await asyncio.wait_for(asyncio.gather(*later), 20) == [[100 + i] for i in range(20)]
        replies: dict[int, Any] = {}

        def all_answered() -> bool:
            _drain(flood, replies)
            return len(replies) == FLOOD

        assert await wait_until(all_answered, 20), len(replies)
        kinds = [type(m).__name__ for m in replies.values()]
        assert kinds.count("Error") == lost - 21 and kinds.count("Result") == FLOOD - lost + 21
        assert all(
            m.type_name == p.ERR_CONNECTION_LOST for m in replies.values() if isinstance(m, p.Error)
        )
        stats = broker.stats()
        assert stats["errors"]["services_cut_off"] == 1 and stats["queued"] == 0
        assert stats["services"][0]["served"] == FLOOD - lost + 41
        assert await wait_until(lambda: opened.id in cancelled), cancelled
    finally:
        if serving is not None:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
        broker.close()
