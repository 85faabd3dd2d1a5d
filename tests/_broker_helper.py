"""Child processes for the broker tests: a broker, a service or a client, each killable.

    python _broker_helper.py broker <frontend> <backend>
    python _broker_helper.py service <name> <math|users> <backend>[,<backend>...] [max_concurrent]
    python _broker_helper.py client <frontend> <async-for|lockstep>
    python _broker_helper.py cli <netcall command line arguments...>

Each prints ``READY`` once it serves (a client: ``STREAMING`` once it holds an open stream),
then runs until killed (SIGKILL in the tests) or stopped (SIGTERM: a graceful stop).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from netcall import RPCClient, RPCService, current_call
from netcall.broker import Broker


def build_service(name: str, kind: str, max_concurrent: int | None) -> RPCService:
    svc = RPCService(max_concurrent=max_concurrent, name=name, heartbeat=1.0)
    state = {"running": 0, "peak": 0, "closed": 0, "opened": 0}

    async def whoami() -> str:
        return name

    async def slow(seconds: float) -> str:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        try:
            await asyncio.sleep(seconds)
        finally:
            state["running"] -= 1
        return name

    async def count(n: int):  # type: ignore[no-untyped-def]
        state["opened"] += 1
        try:
            for i in range(n):
                yield [name, i]
                await asyncio.sleep(0)
        finally:
            state["closed"] += 1

    async def endless():  # type: ignore[no-untyped-def]
        state["opened"] += 1
        try:
            i = 0
            while True:
                yield [name, i]
                i += 1
                await asyncio.sleep(0.01)
        finally:
            state["closed"] += 1

    async def echo_back():  # type: ignore[no-untyped-def]
        # A lock-step stream: yields what it is sent.
        value = yield name
        while True:
            value = yield value

    def stats() -> dict[str, object]:
        return {"name": name, **state}

    async def remaining() -> float | None:
        return current_call().time_remaining()

    prefix = "math" if kind == "math" else "users"
    for fn in (whoami, slow, count, endless, echo_back, stats, remaining):
        svc.register(fn, name=f"{prefix}.{fn.__name__}")
    if kind == "math":

        @svc.register(name="math.add")
        async def add(x: int, y: int) -> int:
            return x + y

    else:

        @svc.register(name="users.get")
        async def get(uid: int) -> dict[str, object]:
            return {"id": uid, "name": f"user{uid}"}

    return svc


async def run_service(name: str, kind: str, urls: str, max_concurrent: int | None) -> None:
    svc = build_service(name, kind, max_concurrent)
    for url in urls.split(","):
        svc.connect(url)
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()
    loop.add_signal_handler(signal.SIGTERM, lambda: stopping.add(loop.create_task(svc.stop())))
    svc.start()
    print("READY", flush=True)
    await svc.serve()


async def run_broker(front: str, back: str) -> None:
    broker = Broker(frontend=front, backend=back)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, broker.close)
    broker.start()
    print("READY", flush=True)
    await broker.serve()


async def run_client(url: str, mode: str) -> None:
    cli = RPCClient(timeout=30)
    cli.connect(url)
    if mode == "async-for":
        async for x in cli.math.endless():
            if x[1] == 3:
                print("STREAMING", flush=True)
                await asyncio.sleep(3600)  # hold the stream open, reading nothing
    else:
        gen = await cli.math.endless()
        for _ in range(3):
            await gen.asend(None)
        print("STREAMING", flush=True)
        await asyncio.sleep(3600)


def main() -> None:
    role = sys.argv[1]
    if role == "broker":
        asyncio.run(run_broker(sys.argv[2], sys.argv[3]))
    elif role == "cli":
        from netcall.cli import main as cli_main

        sys.exit(cli_main(sys.argv[2:]))
    elif role == "service":
        limit = int(sys.argv[5]) if len(sys.argv) > 5 else None
        asyncio.run(run_service(sys.argv[2], sys.argv[3], sys.argv[4], limit))
    else:
        asyncio.run(run_client(sys.argv[2], sys.argv[3]))


if __name__ == "__main__":
    main()
