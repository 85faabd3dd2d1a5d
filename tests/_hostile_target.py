"""A netcall service in a process of its own, for hostile peers to attack (test_hostile.py,
test_fuzz.py, fuzz_peer.py).

    python _hostile_target.py <url> [msgpack|json]

Prints ``READY <pid>`` once serving. Writes ``SLOW`` when a ``slow`` call starts and
``CLOSED <n>`` when an ``endless`` stream's generator is closed, one line each, on stdout.
Logs go to stderr (WARNING and above), as an operator would keep them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from netcall import RPCService


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def make_service(serializer: str) -> RPCService:
    svc = RPCService(serializer)

    @svc.register
    async def echo(x: Any = None) -> Any:
        return x

    @svc.register
    def add(a: Any, b: Any) -> Any:
        return a + b

    @svc.register
    async def count(n: int) -> Any:
        # Never awaits: the loop only gets a turn if the service gives it one.
        for i in range(n):
            yield i

    @svc.register
    def count_sync(n: int) -> Any:
        yield from range(n)

    @svc.register
    async def blob(n: int, count: int = 1) -> Any:
        for _ in range(count):
            yield b"x" * min(int(n), 2**20)  # a fresh item each time, as real data would be

    @svc.register
    async def slow(seconds: float) -> float:
        say("SLOW")
        await asyncio.sleep(seconds)
        return seconds

    @svc.register
    async def endless(tag: int = 0) -> Any:
        i = 0
        try:
            while True:
                yield i
                i += 1
                await asyncio.sleep(0.005)
        finally:
            say(f"CLOSED {tag}")

    @svc.register
    def service_stats() -> dict[str, Any]:
        fn = getattr(svc, "stats", None)
        return dict(fn()) if callable(fn) else {}

    @svc.register
    def pid() -> int:
        return os.getpid()

    return svc


async def main(url: str, serializer: str) -> None:
    svc = make_service(serializer)
    svc.bind(url)
    svc.start()
    say(f"READY {os.getpid()}")
    await svc.serve()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "msgpack"))
