"""The asyncio echo service. Run: python examples/echo_service.py [tcp://127.0.0.1:5555]"""

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


async def main(url: str) -> None:
    service.bind(url)
    print(f"serving on {url}", flush=True)
    await service.serve()


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "tcp://127.0.0.1:5555"))
    except KeyboardInterrupt:
        pass
