"""Test helpers for code that uses netcall: services and a client wired in-process.

::

    from netcall.testing import service_client_pair, serve

    async def test_echo():
        async with service_client_pair(my_service, timeout=2.0) as client:
            assert await client.echo("hi") == "hi"

    async def test_spread():
        async with serve(first, second) as client:   # one client, both services
            ...

Each service is served on a private ``inproc://`` endpoint of its ZeroMQ context, so tests
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

__all__ = ["free_tcp_endpoint", "serve", "service_client_pair"]

_counter = itertools.count(1)


@asynccontextmanager
async def serve(
    *services: RPCService, grace: float = 0.0, **client_options: Any
) -> AsyncIterator[RPCClient]:
    """Serve each of ``services`` on a private inproc endpoint; yield one client connected to
    all of them (calls are spread across them as usual).

    ``client_options`` go to :class:`RPCClient` (``timeout=``, ``window=``; the serializer
    defaults to the first service's). On exit the client is closed and every service stopped
    with ``grace`` seconds for calls still running.

    Raises:
        ValueError: no service given, or services on different ZeroMQ contexts (inproc
            endpoints are per context).
    """
    if not services:
        raise ValueError("serve() needs at least one service")
    context = services[0].context
    if any(svc.context is not context for svc in services):
        raise ValueError("the services must share one ZeroMQ context")
    urls = []
    for svc in services:
        url = f"inproc://netcall-testing-{os.getpid()}-{next(_counter)}"
        svc.bind(url)
        urls.append(url)
    client_options.setdefault("serializer", services[0].serializer)
    client = RPCClient(context=context, **client_options)
    try:
        for svc in services:
            svc.start()
        client.connect(urls)
        yield client
    finally:
        client.close()
        for svc in services:
            await svc.stop(grace=grace)


@asynccontextmanager
async def service_client_pair(
    service: RPCService, *, grace: float = 0.0, **client_options: Any
) -> AsyncIterator[RPCClient]:
    """Serve ``service`` on a private inproc endpoint; yield a client connected to it.

    ``client_options`` go to :class:`RPCClient` (``timeout=``, ``window=``; the serializer
    defaults to the service's). On exit the client is closed and the service stopped with
    ``grace`` seconds for calls still running.
    """
    async with serve(service, grace=grace, **client_options) as client:
        yield client


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A ``tcp://host:port`` endpoint whose port was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return f"tcp://{host}:{port}"
