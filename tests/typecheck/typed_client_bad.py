"""Checked by mypy in test_typed_client.py: each line marked ``# error: CODE`` must fail."""

from __future__ import annotations

from typing import Protocol

from netcall import RPCClient
from netcall.sync import SyncRPCClient


class Math(Protocol):
    async def add(self, a: int, b: int) -> int: ...


class BlockingMath(Protocol):
    def add(self, a: int, b: int) -> int: ...


async def misuse(client: RPCClient) -> None:
    math = client.typed(Math)
    await math.add("1", 2)  # error: arg-type
    text: str = await math.add(1, 2)  # error: assignment
    await math.sub(1, 2)  # error: attr-defined
    print(text)


def misuse_blocking(client: SyncRPCClient) -> None:
    client.typed(BlockingMath).add(1, b="2")  # error: arg-type
