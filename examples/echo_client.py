"""The asyncio echo client. Run: python examples/echo_client.py [tcp://127.0.0.1:5555]"""

import asyncio
import sys

from netcall import RPCClient


async def main(url: str) -> None:
    async with RPCClient(timeout=5.0) as client:
        client.connect(url)
        print(await client.echo("hi"))
        print(await client.hello("World"))
        print([x async for x in client.count(5)])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5555"))
