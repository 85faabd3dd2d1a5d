"""The asyncio echo service.

Run: python examples/echo_service.py [ENDPOINT ...]
(default: tcp://127.0.0.1:5555 and ipc:///tmp/echo.service). Stop it with Ctrl-C: calls in
flight get a few seconds to finish; a second Ctrl-C stops at once.
"""

import asyncio
import sys

from netcall import RPCService

service = RPCService()


@service.register
async def echo(s):
    return s


@service.register
async def count(n):
    for i in range(n):
        yield i


service.register(lambda n: f"Hello {n}", name="hello")


async def main(endpoints: list[str]) -> None:
    service.bind(endpoints)
    print("serving on", " ".join(endpoints), flush=True)
    await service.serve()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:] or ["tcp://127.0.0.1:5555", "ipc:///tmp/echo.service"]))
    except KeyboardInterrupt:
        pass
