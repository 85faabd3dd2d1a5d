"""Checked by mypy in test_typed_client.py: a typed client used correctly (no errors)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from netcall import RPCClient
from netcall.sync import SyncRPCClient


class Math(Protocol):
    async def add(self, a: int, b: int) -> int: ...

    def count(self, n: int) -> AsyncIterator[int]: ...


class BlockingMath(Protocol):
    def add(self, a: int, b: int) -> int: ...


async def use(client: RPCClient) -> int:
    math = client.typed(Math)
    total = await math.add(1, 2)
    async for i in math.count(3):
        total += i
    quick = client.with_options(timeout=1.0, metadata={"request-id": "1"}).typed(Math)
    return total + await quick.add(a=3, b=4)


def use_blocking(client: SyncRPCClient) -> int:
    math = client.typed(BlockingMath)
    return math.add(1, 2) + client.with_options(timeout=1.0).typed(BlockingMath).add(3, 4)
