"""netcall in one process: a service and a client, a call, a remote error, a timeout, a stream.

Run: python examples/demo.py
"""

import asyncio

from netcall import RPCClient, RPCService, RPCTimeoutError

service = RPCService()


@service.register
async def echo(s):
    return s


@service.register
def divide(a, b):
    return a / b


@service.register
async def slow(seconds):
    await asyncio.sleep(seconds)
    return "done"


@service.register
async def count(n):
    for i in range(n):
        yield i


async def main() -> None:
    port = service.bind_ports("127.0.0.1")
    async with service, RPCClient(timeout=5.0) as client:
        client.connect(f"tcp://127.0.0.1:{port}")

        print("call:        echo('hi') ->", await client.echo("hi"))

        try:
            await client.divide(1, 0)
        except ZeroDivisionError as exc:  # a remote ZeroDivisionError, also a RemoteRPCError
            print("remote error:", exc.type_name, "-", exc.message)

        try:
            await client.call("slow", 10, timeout=0.2)
        except RPCTimeoutError as exc:
            print("timeout:    ", exc, "(and the handler was cancelled on the service)")

        print("stream:      count(5) ->", [x async for x in client.count(5)])


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # Ctrl-C: the service and client closed on the way out
        raise SystemExit(130) from None
