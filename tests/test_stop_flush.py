"""A graceful stop writes every answer given before it closes the socket: the corked outbox,
and what waits for a client whose pipe was full (as far as the client takes it within the
stop's linger), on real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq

from _helpers import wait_until
from conftest import inproc_url
from netcall import Limits
from netcall import protocol as p

pytestmark = pytest.mark.timeout(30)

N = 40


@pytest.fixture
def dealer(ctx: Any) -> Any:
    # inproc: the pipe holds the service's SNDHWM plus this RCVHWM, and no kernel buffer.
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 20)
    sock.setsockopt(zmq.ROUTING_ID, b"slow")
    yield sock
    sock.close(0)


def _ids(answers: list[list[bytes]]) -> list[int]:
    return [p.decode(frames).id for frames in answers]


async def _read_while(sock: Any, stopping: asyncio.Task[None]) -> list[list[bytes]]:
    """What ``sock`` receives until ``stopping`` is done and nothing more is there."""
    got: list[list[bytes]] = []
    while True:
        try:
            got.append(sock.recv_multipart(zmq.NOBLOCK))
            continue
        except zmq.Again:
            if stopping.done():
                return got
        await asyncio.wait([stopping], timeout=0.001)  # read as a client does, meanwhile


async def _answers_waiting(make_service: Any, dealer: Any) -> Any:
    """A service that answered N calls from ``dealer``, which has read none: the answers its
    pipe cannot take wait in the service."""
    url = inproc_url()
    service = make_service(limits=Limits(send_hwm=1))
    service.register(lambda: "pong", name="ping")
    service.bind(url)
    service.start()
    dealer.connect(url)
    for rid in range(1, N + 1):
        dealer.send_multipart(p.Call(rid, "ping", "msgpack", b"\x90").to_frames())
    assert await wait_until(lambda: service.stats()["calls"] == N)
    assert await wait_until(lambda: service._replies.is_blocked(b"slow"))
    return service


async def test_stop_writes_the_answers_waiting_for_a_client_that_reads_late(
    make_service: Any, dealer: Any
) -> None:
    service = await _answers_waiting(make_service, dealer)
    stopping = asyncio.ensure_future(service.stop(grace=0))
    answers = await asyncio.wait_for(_read_while(dealer, stopping), 10)
    assert sorted(_ids(answers)) == list(range(1, N + 1))


async def test_a_cancelled_serve_writes_them_too(make_service: Any, dealer: Any) -> None:
    # Ctrl-C under asyncio.run() cancels serve(): it stops gracefully, as stop() does.
    url = inproc_url()
    service = make_service(limits=Limits(send_hwm=1), grace=0)
    service.register(lambda: "pong", name="ping")
    service.bind(url)
    serving = asyncio.ensure_future(service.serve())
    dealer.connect(url)
    for rid in range(1, N + 1):
        dealer.send_multipart(p.Call(rid, "ping", "msgpack", b"\x90").to_frames())
    assert await wait_until(lambda: service._replies.is_blocked(b"slow"))
    serving.cancel()
    answers = await asyncio.wait_for(_read_while(dealer, serving), 10)
    assert serving.cancelled() and service.closed
    assert sorted(_ids(answers)) == list(range(1, N + 1))


async def test_stop_gives_up_on_a_client_that_never_reads_within_its_linger(
    make_service: Any, dealer: Any
) -> None:
    service = await _answers_waiting(make_service, dealer)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(service.stop(grace=0), 5)
    assert loop.time() - start < 1.0  # bounded by the linger (0.2 s), never a hang
    assert service.closed
    # What the pipe held is still there; the rest was dropped, in order.
    answers = []
    while True:
        try:
            answers.append(dealer.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            break
    assert 0 < len(answers) < N
    assert _ids(answers) == list(range(1, len(answers) + 1))


async def test_a_closing_client_sends_none_of_the_calls_it_failed(ctx: Any) -> None:
    """A client's calls held behind a full pipe fail with ClientClosedError when it closes;
    they must not reach the service after that (where they would run, with no CANCEL to
    follow them, and again if the caller retried). Its farewell CANCELs still go out."""
    from netcall import RPCClient
    from netcall.errors import ClientClosedError

    url = inproc_url()
    service = ctx.socket(zmq.ROUTER)
    service.setsockopt(zmq.LINGER, 0)
    service.setsockopt(zmq.RCVHWM, 1)
    service.bind(url)
    client = RPCClient(context=ctx, timeout=10.0)
    try:
        client.socket.setsockopt(zmq.SNDHWM, 1)
        client.connect(url)
        calls = [asyncio.ensure_future(client.side_effect(i)) for i in range(N)]
        assert await wait_until(
            lambda: client._driver is not None and bool(client._driver._blocked)
        )

        def take() -> list[bool]:  # what the service can read now: is each message a CALL?
            kinds = []
            while True:
                try:
                    frames = service.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return kinds
                kinds.append(p.decode(frames[1:]).__class__ is p.Call)

        assert all(take())  # calls that were sent before the close
        client.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, ClientClosedError) for r in results)
        after = take()
        assert after and not any(after)  # CANCELs, and none of the failed calls
    finally:
        client.close()
        service.close(0)
