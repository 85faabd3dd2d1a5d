"""The seed README's echo service, on Tornado's IOLoop.

Run: python examples/tornado_echo_service.py [ENDPOINT ...]
(default: tcp://127.0.0.1:5555 and ipc:///tmp/echo.service). Stop it with Ctrl-C.
"""

import sys

from netcall.tornado import TornadoRPCService

endpoints = sys.argv[1:] or ["tcp://127.0.0.1:5555", "ipc:///tmp/echo.service"]

echo = TornadoRPCService()


@echo.task(name="echo")  # the seed named the service and its method alike
def echo_(s):
    return s


echo.register(lambda n: f"Hello {n}", name="hello")


@echo.register
def count(n):  # a generator is a stream: examples/echo_client.py reads it
    yield from range(n)


for endpoint in endpoints:
    echo.bind(endpoint)  # multiple endpoints
echo.start()
print("serving on", " ".join(endpoints), flush=True)
try:
    echo.serve()
except KeyboardInterrupt:
    pass
