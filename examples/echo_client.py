"""The asyncio echo client: talks to any echo service (asyncio, Tornado or gevent).

Run: python examples/echo_client.py [ENDPOINT ...]
(default: tcp://127.0.0.1:5555 and ipc:///tmp/echo.service)
"""

import asyncio
import sys

from netcall import RPCClient

endpoints = sys.argv[1:] or ["tcp://127.0.0.1:5555", "ipc:///tmp/echo.service"]


async def main() -> None:
    async with RPCClient(timeout=5.0) as client:
        client.connect(endpoints)  # load balanced across them
        print(await client.echo("Hi there"))
        print(await client.hello("World"))
        print([x async for x in client.count(5)])  # a stream


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
