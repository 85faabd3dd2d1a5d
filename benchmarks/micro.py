#!/usr/bin/env python
"""Two small measurements behind decisions of issue 16 (see benchmarks/README.md).

    PYTHONPATH=src python benchmarks/micro.py cpu-per-op   # process CPU µs per echo / item
    python benchmarks/micro.py to-thread                   # run_in_executor vs anyio.to_thread

``cpu-per-op`` prints one JSON line: process CPU time per sequential echo, per echo with 64 in
flight, and per stream item, service and client in one process over tcp. Alternate runs with
two checkouts on ``PYTHONPATH`` to compare them (CPU time is less sensitive than wall time to
other jobs on the machine).

``to-thread`` compares the two ways to send a sync call to a thread pool of 8 from asyncio.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def cpu_per_op() -> dict[str, float]:
    from netcall import RPCClient, RPCService

    service = RPCService()

    @service.register
    async def echo(s: str) -> str:
        return s

    @service.register
    async def count(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield i

    port = service.bind_ports()
    service.start()
    client = RPCClient()
    client.connect(f"tcp://127.0.0.1:{port}")
    for _ in range(500):
        await client.echo("hello")
    pt = time.process_time
    t = pt()
    for _ in range(3000):
        await client.echo("hello")
    seq = (pt() - t) / 3000 * 1e6

    async def worker() -> None:
        for _ in range(300):
            await client.echo("hello")

    t = pt()
    await asyncio.gather(*(worker() for _ in range(64)))
    c64 = (pt() - t) / (64 * 300) * 1e6
    t = pt()
    k = 0
    async for _ in client.count(200_000):
        k += 1
    stream = (pt() - t) / k * 1e6
    client.close()
    await service.stop(0)
    return {"seq_us": seq, "c64_us": c64, "stream_item_us": stream}


async def to_thread() -> dict[str, float]:
    import concurrent.futures
    import contextvars

    import anyio
    import anyio.to_thread

    def noop() -> int:
        return 1

    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(8)
    limiter = anyio.CapacityLimiter(8)
    ways = {
        "run_in_executor": lambda: loop.run_in_executor(pool, contextvars.copy_context().run, noop),
        "anyio.to_thread": lambda: anyio.to_thread.run_sync(
            noop, limiter=limiter, abandon_on_cancel=True
        ),
    }
    out = {}
    for name, call in ways.items():
        for _ in range(500):
            await call()
        t = time.perf_counter()
        for _ in range(5000):
            await call()
        out[f"{name} sequential/s"] = 5000 / (time.perf_counter() - t)

        async def worker(call=call) -> None:  # type: ignore[no-untyped-def]
            for _ in range(200):
                await call()

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(64)))
        out[f"{name} 64 in flight/s"] = 64 * 200 / (time.perf_counter() - t)
    pool.shutdown()
    return out


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "cpu-per-op"
    fn = {"cpu-per-op": cpu_per_op, "to-thread": to_thread}[what]
    print(json.dumps(asyncio.run(fn())))
