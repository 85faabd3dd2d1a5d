"""The socket driver's per-peer bounds and the disconnect watch (issue 9), on real sockets."""

from __future__ import annotations

import asyncio
import select
import time
from typing import Any

import pytest
import zmq
import zmq.utils.monitor

from _helpers import wait_until
from conftest import tcp_url
from netcall import _frames
from netcall._peerwatch import DisconnectWatch
from netcall._reactor import SocketDriver

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def sockets(ctx):
    made: list[zmq.Socket[Any]] = []

    def make(kind: int, **opts: int) -> zmq.Socket[Any]:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in opts.items():
            sock.setsockopt(getattr(zmq, name), value)
        made.append(sock)
        return sock

    yield make
    for s in made:
        s.close(0)


async def _router_with_peers(sockets, url):
    router = sockets(zmq.ROUTER, ROUTER_MANDATORY=1, SNDHWM=10)
    router.bind(url)
    deaf = sockets(zmq.DEALER, RCVHWM=1, RCVBUF=4096, ROUTING_ID=b"deaf")
    good = sockets(zmq.DEALER, ROUTING_ID=b"good")
    for s in (deaf, good):
        s.connect(url)
        s.send(b"hello")
    return router, deaf, good


async def test_a_peer_that_does_not_read_is_cut_off_alone(sockets):
    url = tcp_url()
    router, _deaf, good = await _router_with_peers(sockets, url)
    seen: list[bytes] = []
    cut: list[bytes] = []
    loop = asyncio.get_running_loop()
    driver = SocketDriver(
        router,
        loop,
        lambda frames: seen.append(frames[0]),
        max_queued=100,
        max_queued_bytes=1 << 20,
        on_overflow=cut.append,
    )
    try:
        assert await wait_until(lambda: len(seen) == 2)
        for i in range(20_000):
            driver.send([b"deaf", b"x" * 1000])
            if i % 500 == 0:
                await asyncio.sleep(0)
        got = 0
        for i in range(2_000):  # the good peer reads as it goes
            driver.send([b"good", b"%d" % i])
            if i % 20 == 0:
                while got <= i - 40:
                    await asyncio.sleep(0.001)
                    while True:
                        try:
                            good.recv(zmq.NOBLOCK)
                            got += 1
                        except zmq.Again:
                            break
        while got < 2_000:
            await asyncio.sleep(0.001)
            while True:
                try:
                    good.recv(zmq.NOBLOCK)
                    got += 1
                except zmq.Again:
                    break
        assert cut == [b"deaf"]  # once: then what is sent to it is dropped
        assert driver.cut_off == len(cut)
        assert not driver.is_blocked(b"good")
        # what waited for the deaf peer is gone, not kept
        assert sum(len(q) for q in driver._blocked.values()) <= 101
    finally:
        driver.close()


async def test_wait_unblocked_resolves_when_the_peer_reads(sockets):
    url = tcp_url()
    router, deaf, _good = await _router_with_peers(sockets, url)
    loop = asyncio.get_running_loop()
    driver = SocketDriver(router, loop, lambda frames: None)
    try:
        await asyncio.sleep(0.1)
        for _ in range(300):  # 3 MB: more than the pipe and the kernel buffers hold
            driver.send([b"deaf", b"y" * 10_000])
        await asyncio.sleep(0.3)
        assert driver.is_blocked(b"deaf")
        waiter = driver.wait_unblocked(b"deaf")
        await asyncio.sleep(0.05)
        assert not waiter.done()
        while not waiter.done():  # the peer starts reading
            try:
                deaf.recv(zmq.NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(0.001)
        assert not driver.is_blocked(b"deaf")
        assert driver.wait_unblocked(b"deaf").done()
    finally:
        driver.close()


async def test_disconnect_watch_finds_the_peer_that_left(sockets):
    url = tcp_url()
    router, _deaf, good = await _router_with_peers(sockets, url)
    loop = asyncio.get_running_loop()
    gone: list[bytes] = []
    driver = SocketDriver(router, loop, lambda frames: None, gone.append)
    probes = []

    def probe() -> None:
        probes.append(1)
        for peer in (b"deaf", b"good"):
            driver.send([peer, b"probe"])

    watch = DisconnectWatch(loop, probe)
    monitor = router.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    events = SocketDriver(
        monitor,
        loop,
        lambda frames: watch.on_event(zmq.utils.monitor.parse_monitor_message(frames)),
    )
    try:
        await asyncio.sleep(0.2)
        assert not probes
        t0 = loop.time()
        good.close(0)
        assert await wait_until(lambda: gone == [b"good"], 3)
        assert loop.time() - t0 < 1.5
        assert watch.events == 1
    finally:
        watch.close()
        events.close()
        driver.close()


async def test_a_retry_that_takes_the_fd_edge_still_reads(sockets):
    # The ZeroMQ FD is edge-triggered: a send may process the socket's pending commands, which
    # takes the FD's edge (the FD is no longer readable) while a message now waits (POLLIN).
    # The retry timer's sends must be followed by a look at EVENTS like any other, or the
    # message waits forever: a stream stalled like this when the client's CREDIT came in just
    # as a retry for the same client's backed-up items ran (issue: netcall-curve stall).
    url = tcp_url()
    router = sockets(zmq.ROUTER, ROUTER_MANDATORY=1, SNDHWM=1, SNDBUF=4096)
    router.bind(url)
    peer = sockets(zmq.DEALER, RCVHWM=1, RCVBUF=4096, ROUTING_ID=b"peer")
    peer.connect(url)
    peer.send(b"hello")
    seen: list[bytes] = []
    loop = asyncio.get_running_loop()
    driver = SocketDriver(router, loop, lambda frames: seen.append(frames[-1]))
    try:
        assert await wait_until(lambda: seen == [b"hello"])
        for i in range(1000):  # the peer does not read: its pipe and TCP fill, sends queue
            driver.send([b"peer", b"x" * 4096])
            if i % 50 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.2)  # retries that fail: nothing more moves
        assert await wait_until(lambda: driver._retry_handle is not None, interval=0.001)
        assert driver.is_blocked(b"peer")
        # The retry timer fires just after the peer's message came in, before the loop's
        # reader callback (same loop turn): play that turn here, without yielding.
        driver._retry_handle.cancel()
        driver._retry_handle = None
        peer.send(b"ping")
        readable, _, _ = select.select([driver._fd], [], [], 5.0)
        assert readable, "the peer's message did not reach the router"
        time.sleep(0.005)  # past libzmq's command throttle (~1 ms): the send processes them
        driver._retry()
        assert await wait_until(lambda: b"ping" in seen, timeout=3.0), (
            "a message that came in during a retry was never read"
        )
    finally:
        driver.close()


async def test_lone_messages_are_read_without_a_receive_that_raises(zsockets: Any) -> None:
    """A receive that finds nothing raises zmq.Again, which costs more than a look at EVENTS:
    messages that come one at a time (sequential calls) are each read with none; a burst is
    read to its end, with one at most."""
    url = tcp_url()
    router = zsockets(zmq.ROUTER)
    router.bind(url)
    peer = zsockets(zmq.DEALER)
    peer.connect(url)
    seen: list[bytes] = []
    driver = SocketDriver(router, asyncio.get_running_loop(), lambda f: seen.append(f[-1]))
    failed = 0
    receive = driver._recv

    def counting(sock: Any) -> Any:
        nonlocal failed
        try:
            return receive(sock)
        except zmq.Again:
            failed += 1
            raise

    driver._recv = counting
    try:
        for i in range(20):
            peer.send(b"%d" % i)
            assert await wait_until(lambda n=i + 1: len(seen) == n)
        assert failed == 0
        burst = [b"b%d" % i for i in range(200)]
        for frame in burst:
            peer.send(frame)
        assert await wait_until(lambda: len(seen) == 220)
        assert seen[20:] == burst
    finally:
        driver.close()


async def test_a_long_turn_writes_its_first_messages_before_it_ends(sockets):
    """Sends are corked per loop turn, but a turn that sends many messages writes them every
    32 (``_OUTBOX_MESSAGES``), so the peer starts on the first ones while this end makes the
    rest: here the peer receives them while the turn (no await) is still running."""
    from netcall._reactor import _OUTBOX_MESSAGES

    url = tcp_url()
    router = sockets(zmq.ROUTER, ROUTER_MANDATORY=1)
    router.bind(url)
    peer = sockets(zmq.DEALER, ROUTING_ID=b"peer")
    peer.connect(url)
    peer.send(b"hello")
    seen: list[bytes] = []
    driver = SocketDriver(router, asyncio.get_running_loop(), lambda f: seen.append(f[0]))
    try:
        assert await wait_until(lambda: seen == [b"peer"])
        # One turn, no await: the first burst must reach the peer before the turn ends.
        for i in range(_OUTBOX_MESSAGES * 2 + 5):
            driver.send([b"peer", b"%d" % i])
        got = []
        poller = zmq.Poller()
        poller.register(peer, zmq.POLLIN)
        deadline = time.monotonic() + 5
        while len(got) < _OUTBOX_MESSAGES * 2 and time.monotonic() < deadline:
            if poller.poll(100):
                got.append(peer.recv(zmq.NOBLOCK))
        assert got == [b"%d" % i for i in range(_OUTBOX_MESSAGES * 2)]
        # The rest (fewer than a burst) goes out at the end of the turn.
        rest = []
        deadline = time.monotonic() + 5
        while len(rest) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
            try:
                rest.append(peer.recv(zmq.NOBLOCK))
            except zmq.Again:
                pass
        assert rest == [b"%d" % i for i in range(_OUTBOX_MESSAGES * 2, _OUTBOX_MESSAGES * 2 + 5)]
    finally:
        driver.close()


async def test_a_message_cut_by_ctrl_c_does_not_take_the_next_one_with_it(
    zsockets: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ROUTER's routing id is received as bytes, its ``more`` taken for granted. A
    KeyboardInterrupt (a SIGINT handler's) between two frames of a message leaves the rest of
    that message on the socket: it is read and dropped there and then, so the next read starts
    at the next message, not inside this one (its last frame taken for a routing id would
    have glued the next message onto it)."""
    url = tcp_url()
    router = zsockets(zmq.ROUTER)
    router.bind(url)
    peer = zsockets(zmq.DEALER)
    peer.connect(url)
    peer.send_multipart([b"head-1", b"payload-1"])
    peer.send_multipart([b"head-2", b"payload-2"])
    assert await wait_until(lambda: router.poll(0) != 0)
    real = _frames._recv
    reads = 0

    def interrupted(sock: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 3:  # message 1's last frame: Ctrl-C lands just before it is read
            raise KeyboardInterrupt
        return real(sock, *args, **kwargs)

    monkeypatch.setattr(_frames, "_recv", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _frames.recv_routed(router)
    monkeypatch.setattr(_frames, "_recv", real)
    assert await wait_until(lambda: router.poll(0) != 0)
    frames = _frames.recv_routed(router)
    assert frames is not None and frames[1:] == [b"head-2", b"payload-2"]
    assert router.poll(0) == 0
