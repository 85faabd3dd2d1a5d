"""A service never cuts off its broker as a client that does not read (issue 14's review): the
per-client bounds on what waits behind a full pipe are for clients; what waits for a broker is
bounded by the calls it sent, and cutting it off lost every answer behind it (the callers
waited out their timeouts)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from _cluster import Procs
from conftest import tcp_url

pytestmark = pytest.mark.timeout(60)

N = 1500  # answers of 20 kB each: 30 MB, far over a client's 4 MiB once the broker stalls


async def test_a_stalled_broker_gets_every_answer_afterwards(make_service, make_client):
    procs = Procs()
    try:
        front, back = tcp_url(), tcp_url()
        broker = await procs.broker(front, back)
        svc = make_service()
        release = asyncio.Event()

        @svc.register
        async def blob(size: int) -> bytes:
            await release.wait()
            return b"x" * size

        svc.connect(back)
        svc.start()
        client = make_client(timeout=30)
        client.connect(front)
        for _ in range(100):  # until the service has joined the broker
            if "blob" in await client.methods():
                break
            await asyncio.sleep(0.1)
        calls = [asyncio.ensure_future(client.blob(20_000)) for _ in range(N)]
        for _ in range(300):
            if svc.active_calls == N:
                break
            await asyncio.sleep(0.05)
        assert svc.active_calls == N
        broker.send_signal(signal.SIGSTOP)  # a stalled broker (or link)
        try:
            release.set()
            for _ in range(300):  # every answer given, most of them waiting for the broker
                if svc.active_calls == 0:
                    break
                await asyncio.sleep(0.05)
            assert svc.active_calls == 0
        finally:
            broker.send_signal(signal.SIGCONT)
        answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
        assert [a if isinstance(a, Exception) else len(a) for a in answers] == [20_000] * N
        assert svc.stats()["peers_cut_off"] == 0
    finally:
        await procs.cleanup()
