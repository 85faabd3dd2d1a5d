"""The seed README's generator service, under gevent.

Run: python examples/gevent_generator_service.py [ENDPOINT ...] (default: tcp://127.0.0.1:5555)
Stop it with Ctrl-C.
"""

import sys

from netcall.green import GeventRPCService

endpoints = sys.argv[1:] or ["tcp://127.0.0.1:5555"]

echo_service = GeventRPCService()


@echo_service.register
def echo(value=None):
    print("Execution starts when 'next()' is called for the first time.", flush=True)
    try:
        while True:
            try:
                value = yield value
            except Exception as e:
                value = e  # exceptions travel too (builtin types by name, never unpickled)
    finally:
        print("Don't forget to clean up when 'close()' is called.", flush=True)


for endpoint in endpoints:
    echo_service.bind(endpoint)
print("serving on", " ".join(endpoints), flush=True)
try:
    echo_service.start().join()
except KeyboardInterrupt:
    pass
