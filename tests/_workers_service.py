"""Services for test_workers.py and benchmarks/workers.py, loaded by worker processes."""

from __future__ import annotations

import asyncio
import os
import time

from netcall import RPCService

service = RPCService()


@service.register
def pid() -> int:
    return os.getpid()


@service.register
def burn(iterations: int) -> int:
    """CPU-bound pure Python (about 1 ms per 15,000 iterations on a quiet core); returns the
    worker's pid."""
    x = 0
    for i in range(iterations):
        x += i * i % 7
    return os.getpid()


@service.register
async def slow(seconds: float, mark: str | None = None) -> int:
    """Sleeps ``seconds``; with ``mark``, first appends one byte to that file (a test counts
    the calls that reached a worker)."""
    if mark is not None:
        with open(mark, "ab") as f:
            f.write(b".")
    await asyncio.sleep(seconds)
    return os.getpid()


@service.register
def spin(seconds: float) -> int:
    """CPU-bound for ``seconds`` of wall time (a slow sync handler, not a stuck one)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return os.getpid()


@service.register
def block(seconds: float) -> int:
    """Blocks the worker's loop (a handler that should not have been sync): it reads
    nothing, the broker's pings included, for ``seconds``."""
    time.sleep(seconds)
    return os.getpid()


def make_service() -> RPCService:
    """A factory: each worker calls it once."""
    svc = RPCService()
    svc.register(os.getpid, name="pid")
    return svc


not_a_service = 42
