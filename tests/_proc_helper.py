"""Child process for test_kill.py: a netcall service or client that the test kills with SIGKILL.

    python _proc_helper.py service <url>
    python _proc_helper.py client <url> <async-for|lockstep>

Prints ``READY`` (service bound and serving) or ``STREAMING`` (client holds an open stream),
then runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

from netcall import RPCClient, RPCService


async def run_service(url: str) -> None:
    svc = RPCService()

    @svc.register
    async def echo(x):
        return x

    @svc.register
    async def slow(seconds):
        await asyncio.sleep(seconds)
        return seconds

    @svc.register
    async def endless():
        i = 0
        while True:
            yield i
            i += 1
            await asyncio.sleep(0.01)

    svc.bind(url)
    svc.start()
    print("READY", flush=True)
    await svc.serve()


async def run_client(url: str, mode: str) -> None:
    cli = RPCClient(timeout=30)
    cli.connect(url)
    if mode == "async-for":
        async for x in cli.endless():
            if x == 3:
                print("STREAMING", flush=True)
                await asyncio.sleep(3600)  # hold the stream open, reading nothing
    else:
        gen = await cli.endless()
        for _ in range(3):
            await gen.asend(None)
        print("STREAMING", flush=True)
        await asyncio.sleep(3600)


def main() -> None:
    role, url = sys.argv[1], sys.argv[2]
    if role == "service":
        asyncio.run(run_service(url))
    else:
        asyncio.run(run_client(url, sys.argv[3]))


if __name__ == "__main__":
    main()
