"""Stream credit when the client's window and the service's ``Limits.max_stream_window``
differ: every combination streams to the end, and a client's message never makes the service
send more than ``max_stream_window`` items (real sockets)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest
import zmq

from _helpers import offered, recv_within, wait_until
from conftest import tcp_url
from fuzz_peer import CREDIT, ITEM, STREAM, call_head, header
from netcall import Limits
from netcall._reactor import _OUTBOX_BYTES

pytestmark = pytest.mark.timeout(60)


def _register_streams(svc) -> None:
    """``count(n)``: 0 to n - 1; ``chunks(n, size)``: n items of ``size`` bytes, each its
    number over and over."""

    @svc.register
    def count(n):
        yield from range(n)

    @svc.register
    def chunks(n, size):
        for i in range(n):
            yield i.to_bytes(4, "big") * (size // 4)


async def _consume(cli, n, item_size=None) -> int:
    """Read ``count(n)``, or ``chunks(n, item_size)``, to the end, checking every item."""
    got = 0
    if item_size is None:
        async for x in cli.count(n):
            assert x == got
            got += 1
        return got
    async for x in cli.chunks(n, item_size):
        assert len(x) == item_size // 4 * 4 and x[:4] == got.to_bytes(4, "big")
        got += 1
    return got


async def _stream_all(make_service, make_client, n, client_window, limits=None, item_size=None):
    svc = make_service(limits=limits) if limits is not None else make_service()
    _register_streams(svc)
    url = tcp_url()
    svc.bind(url)
    svc.start()
    # A step that waits for credit nobody sends fails after the client's timeout.
    cli = make_client(window=client_window, timeout=2.0 if item_size is None else 5.0)
    cli.connect(url)
    assert await asyncio.wait_for(_consume(cli, n, item_size), 30.0) == n


async def test_a_client_window_beyond_twice_the_service_limit(make_service, make_client):
    # The service sent its 4096 of the client's 10000 and waited; the client counted 5904
    # items still to come (more than half its window) and granted nothing more: a stall.
    await _stream_all(make_service, make_client, 50_000, client_window=10_000)


async def test_a_service_limit_below_half_the_default_window(make_service, make_client):
    await _stream_all(make_service, make_client, 5_000, 1024, Limits(max_stream_window=100))


@pytest.mark.parametrize(
    ("client_window", "max_window"), [(1, 1), (16, 1), (1024, 3), (100, 50), (200_000, 4096)]
)
async def test_any_window_and_limit_stream_to_the_end(
    make_service, make_client, client_window, max_window
):
    n = 2_000 if max_window < 16 else 20_000
    limits = Limits(max_stream_window=max_window)
    await _stream_all(make_service, make_client, n, client_window, limits)


async def _items_within(sock: zmq.Socket[Any], quiet: float) -> int:
    """ITEMs received until none came for ``quiet`` seconds."""
    got = 0
    while True:
        try:
            frames = await recv_within(sock, quiet)
        except AssertionError:
            return got
        if frames[0][3] == ITEM:
            got += 1


async def _open_endless(svc, zsockets, method: str) -> tuple[zmq.Socket[Any], int]:
    """A raw client that opens the stream ``method`` granting all the credit there is."""
    url = tcp_url()
    svc.bind(url)
    svc.start()
    sock = zsockets(zmq.DEALER)
    sock.connect(url)
    sock.send_multipart([call_head(1, method, window=2**32 - 1), msgpack.packb([])])
    head = (await recv_within(sock, 5.0))[0]
    assert head[3] == STREAM
    return sock, struct.unpack("!Q", head[4:12])[0]


async def test_each_client_message_buys_at_most_the_limit(make_service, zsockets):
    # A client that grants all the credit there is (window and CREDIT of 2**32 - 1) still
    # gets at most max_stream_window items per message it sends.
    svc = make_service(limits=Limits(max_stream_window=50))

    @svc.register
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    sock, rid = await _open_endless(svc, zsockets, "endless")
    assert await _items_within(sock, 0.5) == 50
    for _ in range(3):
        sock.send_multipart([header(CREDIT, rid) + struct.pack("!I", 2**32 - 1)])
        assert await _items_within(sock, 0.5) == 50
    assert svc.active_streams == 1


def _endless_bytes(svc, size):
    @svc.register
    def chunks():
        chunk = b"x" * size
        while True:
            yield chunk


@pytest.mark.parametrize(
    ("item_size", "limits", "per_message"),
    [
        (2**20, Limits(), 4),  # the default: 4 MiB per client message
        (6 * 2**20, Limits(), 1),  # an item larger than that still goes, alone
        (300, Limits(max_stream_window_bytes=1000), 4),  # small items inline: 3 fit under
        (2**20, Limits(max_stream_window_bytes=3 * 2**20 + 1000), 4),  # 3 items and a head
        (2**20, Limits(max_stream_window_bytes=3 * 2**20), 3),
    ],
)
async def test_each_client_message_buys_at_most_the_byte_limit(
    make_service, zsockets, item_size, limits, per_message
):
    # The first credit (16 items, granted before the client saw one) is whatever the client
    # says, here all there is; the service still sends no more than max_stream_window_bytes
    # (and at least one item) per message from the client: 16 items of 6 MiB went at once.
    svc = make_service(limits=limits)
    _endless_bytes(svc, item_size)
    sock, rid = await _open_endless(svc, zsockets, "chunks")
    assert await _items_within(sock, 0.5) == per_message
    for _ in range(2):
        sock.send_multipart([header(CREDIT, rid) + struct.pack("!I", 1)])
        assert await _items_within(sock, 0.5) == per_message
    assert svc.active_streams == 1


@pytest.mark.parametrize(
    ("n", "item_size", "max_bytes", "window"),
    [
        (40, 2**20, 4 * 2**20, 1024),  # the defaults, 1 MiB items
        (12, 5 * 2**20, 4 * 2**20, 1024),  # items over the limit: one per message
        (2_000, 100, 1, 1024),  # a limit of 1 byte: one item per message, to the end
        (500, 3000, 10_000, 16),
    ],
)
async def test_any_byte_limit_streams_to_the_end(
    make_service, make_client, n, item_size, max_bytes, window
):
    limits = Limits(max_stream_window_bytes=max_bytes)
    await _stream_all(make_service, make_client, n, window, limits, item_size)


@pytest.mark.parametrize(("count", "expected"), [(1, 4), (3, 4), (20, 20), (100, 100)])
async def test_a_credit_buys_its_count_at_the_average_size(make_service, zsockets, count, expected):
    # The client sizes a CREDIT from the items it has seen and its own stream_buffer, which
    # may be larger than the service's limit (a slow link): a CREDIT of 20 items of 1 MiB
    # buys 20 MiB. Only the credit granted blind, with the CALL, is held to the limit.
    svc = make_service()
    _endless_bytes(svc, 2**20)
    sock, rid = await _open_endless(svc, zsockets, "chunks")
    assert await _items_within(sock, 0.5) == 4
    sock.send_multipart([header(CREDIT, rid) + struct.pack("!I", count)])
    assert await _items_within(sock, 0.5) == expected


@pytest.mark.parametrize("field", ["max_stream_window_bytes", "max_stream_window"])
@pytest.mark.parametrize("bad", [0, -1, float("nan")])
def test_the_limits_are_checked(field, bad):
    assert Limits().max_stream_window_bytes == 4 * 2**20
    with pytest.raises(ValueError, match=field):
        Limits(**{field: bad})


@pytest.mark.parametrize(
    ("n", "item_size", "max_bytes", "window", "stream_buffer"),
    [
        (20, 2 * 2**20, 4 * 2**20, 1024, 4 * 2**20),  # the defaults, 2 MiB items
        # The broker holds a stream's credit to 8192 items; a window beyond that, a byte
        # limit that bites before the item limit, and a client budget that never does.
        (60_000, 100, 64 * 2**10, 20_000, 2**30),
    ],
)
async def test_the_byte_limit_through_a_broker(
    make_service, make_client, n, item_size, max_bytes, window, stream_buffer
):
    from netcall import Broker

    front, back = tcp_url(), tcp_url()
    svc = make_service(limits=Limits(max_stream_window_bytes=max_bytes))
    _register_streams(svc)
    async with Broker(front, back):
        svc.connect(back)
        svc.start()
        cli = make_client(window=window, stream_buffer=stream_buffer, timeout=5.0)
        cli.connect(front)
        await offered(cli, "chunks")

        assert await asyncio.wait_for(_consume(cli, n, item_size), 40.0) == n


async def test_a_stream_opened_as_its_client_is_cut_off_is_closed(make_service, ctx):
    """A deaf client is cut off by the very send that says its stream is open (the burst is
    full, so it is written at once, and the client's pipe is full): the stream is closed with
    its generator, and no producer is left waiting for credit nobody holds (it used to be
    left pending, to be destroyed by the garbage collector, its generator never closed)."""
    import gc

    made: list[Any] = []
    svc = make_service(limits=Limits(send_hwm=1, max_queued=1, receive_hwm=1))

    @svc.register
    def echo(x):
        return x

    async def forever():
        while True:
            yield 0
            await asyncio.sleep(0.01)

    @svc.register
    def endless():
        made.append(forever())
        return made[-1]

    url = f"inproc://cut-off-{id(svc)}"
    svc.bind(url)
    svc.start()
    deaf = ctx.socket(zmq.DEALER)
    deaf.setsockopt(zmq.RCVHWM, 1)
    deaf.setsockopt(zmq.LINGER, 0)
    deaf.connect(url)
    try:
        tiny = msgpack.packb([1])
        for rid in range(1, 4):  # fills its pipe (1 + 1) and the service's queue (1)
            deaf.send_multipart([call_head(rid, "echo"), tiny])
        assert await wait_until(lambda: svc.stats()["calls"] >= 3)
        # An answer just under the bytes that make a burst go out at once, then the stream:
        # its opening completes the burst, whose write cuts the client off. (The answer's
        # last frame is the string and its 5-byte header; the opening's, 20 bytes.)
        big = msgpack.packb(["x" * (_OUTBOX_BYTES - 16)])
        deaf.send_multipart([call_head(4, "echo"), big])
        deaf.send_multipart([call_head(5, "endless", window=16), msgpack.packb([])])
        assert await wait_until(lambda: svc.stats()["peers_cut_off"] >= 1 and bool(made))
        assert await wait_until(lambda: made[0].ag_frame is None)  # closed
        assert svc.active_streams == 0
        gc.collect()
        pending = [
            t
            for t in asyncio.all_tasks()
            if "Producers._run" in repr(t.get_coro()) and not t.done()
        ]
        assert not pending, pending
    finally:
        deaf.close(0)
