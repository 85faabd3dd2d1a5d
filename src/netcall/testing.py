"""Test helpers for code that uses netcall: a service and a client wired in-process.

::

    from netcall.testing import service_client_pair

    async def test_echo():
        async with service_client_pair(my_service, timeout=2.0) as client:
            assert await client.echo("hi") == "hi"

The pair talks over a private ``inproc://`` endpoint on the service's ZeroMQ context, so tests
need no ports and no files; everything is stopped and closed on exit.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .client import RPCClient
from .service import RPCService

__all__ = ["free_tcp_endpoint", "service_client_pair"]

_counter = itertools.count(1)


@asynccontextmanager
async def service_client_pair(
    service: RPCService, *, grace: float = 0.0, **client_options: Any
) -> AsyncIterator[RPCClient]:
    """Serve ``service`` on a private inproc endpoint; yield a client connected to it.

    ``client_options`` go to :class:`RPCClient` (``timeout=``, ``window=``; the serializer
    defaults to the service's). On exit the client is closed and the service stopped with
    ``grace`` seconds for calls still running.
    """
    url = f"inproc://netcall-testing-{os.getpid()}-{next(_counter)}"
    service.bind(url)
    client_options.setdefault("serializer", service.serializer)
    client = RPCClient(context=service.context, **client_options)
    try:
        service.start()
        client.connect(url)
        yield client
    finally:
        client.close()
        await service.stop(grace=grace)


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A ``tcp://host:port`` endpoint whose port was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return f"tcp://{host}:{port}"
