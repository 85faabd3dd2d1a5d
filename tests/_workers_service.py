"""Services for test_workers.py and benchmarks/workers.py, loaded by worker processes."""

from __future__ import annotations

import asyncio
import os

from netcall import RPCService

service = RPCService()


@service.register
def pid() -> int:
    return os.getpid()


@service.register
def burn(n: int = 1) -> int:
    """About ``n`` ms of pure Python on this machine; returns the worker's pid."""
    x = 0
    for i in range(n * 25000):
        x += i * i % 7
    return os.getpid()


@service.register
async def slow(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()


def make_service() -> RPCService:
    """A factory: each worker calls it once."""
    svc = RPCService()
    svc.register(os.getpid, name="pid")
    return svc


not_a_service = 42
