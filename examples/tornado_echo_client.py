"""An echo client on Tornado's IOLoop: talks to any echo service (Tornado, gevent or asyncio).

Run: python examples/tornado_echo_client.py [ENDPOINT ...]
(default: tcp://127.0.0.1:5555 and ipc:///tmp/echo.service)
"""

import asyncio
import sys

from tornado import gen

from netcall.tornado import TornadoRPCClient

endpoints = sys.argv[1:] or ["tcp://127.0.0.1:5555", "ipc:///tmp/echo.service"]


async def main():
    p = TornadoRPCClient()
    for endpoint in endpoints:
        p.connect(endpoint)  # auto load balancing
    print(await p.echo("Hi there"))
    print(await legacy_style(p))
    p.close()


@gen.coroutine
def legacy_style(p):  # Tornado coroutines can yield netcall calls too
    answer = yield p.hello("World")
    return answer


# Tornado (6 and later) runs on asyncio: asyncio.run() is how Tornado's own docs start an app
# (IOLoop.current() outside a running loop is deprecated from Python 3.12).
asyncio.run(main())
