"""The seed README's echo service, under gevent.

Run: python examples/gevent_echo_service.py [ENDPOINT ...]
(default: tcp://127.0.0.1:5555 and ipc:///tmp/echo.service). Stop it with Ctrl-C.
"""

import sys

import gevent

from netcall.green import GeventRPCService

endpoints = sys.argv[1:] or ["tcp://127.0.0.1:5555", "ipc:///tmp/echo.service"]

service = GeventRPCService()


@service.task
def echo(s):
    gevent.sleep(0)  # handlers are greenlets: they may block on gevent, never the service
    return s


service.register(lambda n: f"Hello {n}", name="hello")


@service.register
def count(n):  # a generator is a stream: examples/echo_client.py reads it
    yield from range(n)


for endpoint in endpoints:
    service.bind(endpoint)  # multiple endpoints
print("serving on", " ".join(endpoints), flush=True)
try:
    service.start().join()
except KeyboardInterrupt:
    pass
