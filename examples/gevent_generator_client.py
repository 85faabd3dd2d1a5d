"""The seed README's generator client, under gevent: a remote generator is a plain generator.

Run: python examples/gevent_generator_client.py [ENDPOINT ...] (default: tcp://127.0.0.1:5555)
"""

import sys

from netcall.green import GeventRPCClient

endpoints = sys.argv[1:] or ["tcp://127.0.0.1:5555"]

client = GeventRPCClient()
for endpoint in endpoints:
    client.connect(endpoint)

generator = client.echo(1)
print(next(generator))
print(next(generator))
print(generator.send(2))
print(repr(generator.throw(TypeError("spam"))))
generator = None  # implicitly call generator.close()
client.close()
