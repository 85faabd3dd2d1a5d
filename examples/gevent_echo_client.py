"""The seed README's echo client, under gevent: talks to any echo service (Tornado, gevent or
asyncio).

Run: python examples/gevent_echo_client.py [ENDPOINT ...]
(default: tcp://127.0.0.1:5555 and ipc:///tmp/echo.service)
"""

import sys

from netcall.green import GeventRPCClient

endpoints = sys.argv[1:] or ["tcp://127.0.0.1:5555", "ipc:///tmp/echo.service"]

p = GeventRPCClient()
for endpoint in endpoints:
    p.connect(endpoint)  # auto load balancing
print(p.echo("Hi there"))
print(p.hello("World"))
p.close()
