"""A lone message goes out at once (session 21): the first message since the driver's last
wake-up, sent from the last callback of a loop turn with nothing queued, is written in
``send()`` itself instead of one turn later; everything else is corked as before. Real
sockets over tcp and ipc; "at once" is shown by a peer that receives the message while the
sending coroutine still holds the loop (it blocks in ``poll``, so no later turn can run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import zmq

from _helpers import wait_until
from conftest import tcp_url
from netcall._reactor import SocketDriver

pytestmark = pytest.mark.timeout(30)

GONE = 0.2  # seconds a peer waits for a message that must not have left yet


@pytest.fixture
async def driver_and_peer(zsockets: Any) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await driver_and_peer(url, **socket options)``: a driver of a ROUTER bound to ``url``
    and a DEALER peer ``b"peer"`` that has said hello, with ``seen``, the messages the driver
    handed on (its last item: what ``on_unreachable`` reported). Drivers are closed after the
    test."""
    drivers: list[SocketDriver] = []

    async def make(url: str, **opts: int) -> tuple[Any, Any, list[Any]]:
        router = zsockets(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        for name, value in opts.items():
            router.setsockopt(getattr(zmq, name), value)
        router.bind(url)
        peer = zsockets(zmq.DEALER)
        peer.setsockopt(zmq.ROUTING_ID, b"peer")
        peer.connect(url)
        peer.send(b"hello")
        seen: list[Any] = []
        gone: list[bytes] = []
        driver = SocketDriver(
            router,
            asyncio.get_running_loop(),
            lambda f: seen.append(f[-1]),
            on_unreachable=gone.append,
        )
        drivers.append(driver)
        assert await wait_until(lambda: seen == [b"hello"])
        seen.append(gone)  # (last: what on_unreachable reported)
        return driver, peer, seen

    yield make
    for driver in drivers:
        driver.close()


async def _alone_in_the_turn() -> None:
    """Come back as the only callback of a loop turn (a timer's wake-up of this task)."""
    loop = asyncio.get_running_loop()
    assert await wait_until(lambda: not loop._ready)  # type: ignore[attr-defined]


async def _at_the_turns_end(peer: Any, *expected: bytes) -> None:
    """Nothing has reached ``peer`` yet (corked); after one turn of the loop, ``expected``."""
    assert _now(peer, GONE) is None
    await asyncio.sleep(0)
    for message in expected:
        assert _now(peer) == message


def _now(peer: Any, timeout: float = 5.0) -> bytes | None:
    """The peer's next message, waiting without yielding to the loop; None if none came."""
    if not peer.poll(int(timeout * 1000)):
        return None
    return peer.recv()  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["tcp", "ipc", "inproc"])
async def test_a_lone_message_leaves_before_the_turn_ends_and_the_next_is_corked(
    driver_and_peer: Any, make_url: Any, kind: str
) -> None:
    driver, peer, seen = await driver_and_peer(make_url(kind))
    await _alone_in_the_turn()
    driver.send([b"peer", b"one"])
    assert _now(peer) == b"one"  # out while this coroutine still holds the loop
    driver.send([b"peer", b"two"])  # the same callback again: corked until the turn ends
    driver.send([b"peer", b"three"])
    await _at_the_turns_end(peer, b"two", b"three")
    # After the driver's next wake-up (the peer's answer), a lone message goes at once again.
    peer.send(b"answer")
    assert await wait_until(lambda: seen[-1] == b"answer")
    await _alone_in_the_turn()
    driver.send([b"peer", b"four"])
    assert _now(peer) == b"four"


async def test_a_message_sent_while_other_callbacks_wait_is_corked(driver_and_peer: Any) -> None:
    driver, peer, _seen = await driver_and_peer(tcp_url())
    await _alone_in_the_turn()
    asyncio.get_running_loop().call_soon(lambda: None)  # another callback in this turn
    driver.send([b"peer", b"later"])
    await _at_the_turns_end(peer, b"later")


async def test_a_buffer_the_sender_may_change_is_never_written_at_once(
    driver_and_peer: Any,
) -> None:
    driver, peer, _seen = await driver_and_peer(tcp_url())
    await _alone_in_the_turn()
    buf = bytearray(b"first")
    driver.send([b"peer", buf])  # copied now (settled), written at the turn's end
    buf[:] = b"later"
    await _at_the_turns_end(peer, b"first")


async def test_lone_messages_to_a_full_pipe_wait_in_order(driver_and_peer: Any) -> None:
    # The peer does not read: its pipe fills, a lone message's send raises EAGAIN, and that
    # message waits in the peer's queue like any other, before every later one.
    driver, peer, _seen = await driver_and_peer(tcp_url(), SNDHWM=1, SNDBUF=4096)
    peer.setsockopt(zmq.RCVHWM, 1)
    sent = []
    for i in range(120):
        if i % 40 == 0:
            await _alone_in_the_turn()
        else:
            await asyncio.sleep(0.001)  # (the next send alone in its turn, mostly)
        frame = b"%d:" % i + b"x" * 4096
        driver.send([b"peer", frame])
        sent.append(frame)
    assert await wait_until(lambda: driver.is_blocked(b"peer"))
    got = []
    while len(got) < len(sent):  # (the loop runs meanwhile: its retries move the queue)
        assert await wait_until(lambda: bool(peer.poll(0)), interval=0.001), len(got)
        got.append(peer.recv())
    assert got == sent


async def test_a_lone_message_to_a_peer_that_left_is_reported_not_raised(
    driver_and_peer: Any,
) -> None:
    driver, _peer, seen = await driver_and_peer(tcp_url())
    gone = seen[-1]
    await _alone_in_the_turn()
    driver.send([b"nobody", b"x"])  # EHOSTUNREACH: never raised from send()
    assert await wait_until(lambda: gone == [b"nobody"])


async def test_sequential_calls_each_in_a_turn_of_their_own(
    service: Any, client: Any, endpoint: str
) -> None:
    # Calls made one at a time, each from a coroutine alone in its turn: every call's message
    # leaves at once; answers and their order are unchanged, over many calls, a burst and a
    # reconnect (each transport).
    for i in range(300):
        assert await client.echo(i) == i
    results = await asyncio.gather(*(client.echo(i) for i in range(100)))
    assert results == list(range(100))
    client.disconnect(endpoint)
    client.connect(endpoint)
    for i in range(50):
        assert await client.echo([i, "x"]) == [i, "x"]


async def test_what_a_reader_or_a_timer_callback_sends_is_corked(driver_and_peer: Any) -> None:
    # Only a task sends at once. A broker forwards from another driver's reader callback, a
    # heartbeat from a timer: their messages leave at the end of the turn as before, so what
    # those callbacks send keeps its order with the rest of their turn (and a SIGTERM handled
    # in the same turn is handled before a client can hear back; test_workers.py).
    driver, peer, _seen = await driver_and_peer(tcp_url())
    other, other_peer, _other_seen = await driver_and_peer(tcp_url())
    out: list[Any] = []

    def forward(frames: list[Any]) -> None:  # the other driver's reader callback
        driver.send([b"peer", b"forwarded"])
        out.append(peer.poll(int(GONE * 1000)))

    other._on_message = forward
    other_peer.send(b"call")
    assert await wait_until(lambda: len(out) == 1)
    assert out == [0]  # not out before the turn ended
    assert _now(peer) == b"forwarded"
    await _alone_in_the_turn()
    loop = asyncio.get_running_loop()

    def tick() -> None:  # a timer callback, alone in its turn
        driver.send([b"peer", b"ping"])
        out.append(peer.poll(int(GONE * 1000)))

    loop.call_soon(tick)
    assert await wait_until(lambda: len(out) == 2)
    assert out[1] == 0
    assert _now(peer) == b"ping"
