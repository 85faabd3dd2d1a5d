"""netcall: one asyncio ``RPCService`` server, and every netcall client against it.

Service methods: ``echo`` (async def), ``count`` (async generator), ``count_sync``
(plain generator), ``count_big(n, size)`` (async generator yielding one ``size``-byte
``bytes`` object, made once per size, ``n`` times), and for the memory figures ``hold``
(parks until ``release()``), ``held`` (how many are parked) and ``release``.

Every client echoes numpy arrays as they are (``echo_array`` is ``echo``): netcall's
serializer carries them.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def curve_dir(path: str) -> str:
    """Where the CURVE run keeps its keys: beside the harness's files for this run."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(path)), "curve-keys")


async def _noop_service_mw(ctx: Any, call_next: Any) -> Any:
    return await call_next()


async def _noop_client_mw(call: Any, call_next: Any) -> Any:
    return await call_next(call)


def make_service(curve_dir: str | None = None, middleware: bool = False, many: bool = False) -> Any:
    """The benchmark service. ``many``: per-client limits raised for the memory figures (one
    client parks 10,000 calls and opens 1,000 streams; the defaults, 1,024 calls and streams
    and 128 streams per client, refuse that by design)."""
    from netcall import Limits, RPCService

    security = None
    if curve_dir is not None:  # the service's key pair, made here; clients read its public key
        from netcall.security import Curve, Keypair

        keypair = Keypair.generate()
        keypair.save(curve_dir, "server", overwrite=True)
        security = Curve.server(keypair)
    extra: dict[str, Any] = {"middleware": [_noop_service_mw]} if middleware else {}
    if many:
        extra["limits"] = Limits(max_per_client=100_000, max_streams_per_client=10_000)
    service = RPCService(security=security, **extra)
    state: dict[str, Any] = {"held": 0, "event": None}
    big: dict[int, bytes] = {}

    @service.register
    async def echo(s: Any) -> Any:
        return s

    @service.register
    async def count(n: int) -> Any:
        for i in range(n):
            yield i

    @service.register
    def count_sync(n: int) -> Any:
        yield from range(n)

    @service.register
    async def count_big(n: int, size: int) -> Any:
        item = big.get(size)
        if item is None:
            item = big[size] = b"s" * size
        for _ in range(n):
            yield item

    @service.register
    async def hold() -> int:
        if state["event"] is None:
            state["event"] = asyncio.Event()
        ev = state["event"]
        state["held"] += 1
        try:
            await ev.wait()
        finally:
            state["held"] -= 1
        return 1

    @service.register
    def held() -> int:
        return int(state["held"])

    @service.register
    def release() -> None:
        ev = state["event"]
        state["event"] = None
        if ev is not None:
            ev.set()

    return service


async def serve(
    endpoint_cb: Callable[[str], None],
    host: str = "127.0.0.1",
    curve_dir: str | None = None,
    middleware: bool = False,
    many: bool = False,
) -> None:
    service = make_service(curve_dir, middleware, many)
    bind_ports = getattr(service, "bind_ports", None)
    if bind_ports is not None:
        port = bind_ports(host, port=0)
    else:
        port = _free_port(host)
        service.bind(f"tcp://{host}:{port}")
    endpoint_cb(f"tcp://{host}:{port}")
    await service.serve()


async def serve_broker(endpoint_cb: Callable[[str], None], services: int) -> None:
    """A broker in this process, and ``services`` service processes connected out to it (in
    this process group: the harness kills them with it). The endpoint is the frontend."""
    import os
    import subprocess
    import sys
    import time

    from netcall import Broker

    host = "127.0.0.1"
    front, back = f"tcp://{host}:{_free_port(host)}", f"tcp://{host}:{_free_port(host)}"
    broker = Broker(frontend=front, backend=back)
    broker.start()
    here = os.path.dirname(os.path.abspath(__file__))
    code = f"import sys; sys.path.insert(0, {here!r}); import netcall_systems as m; m.run_connected({back!r})"
    children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(services)]
    deadline = time.monotonic() + 20
    while len(broker.stats()["services"]) < services:
        if time.monotonic() > deadline or any(c.poll() is not None for c in children):
            raise RuntimeError("the broker's services did not start")
        await asyncio.sleep(0.02)
    endpoint_cb(front)
    await broker.serve()


def run_connected(backend: str) -> None:
    """A service process that connects out to a broker (exits when its parent does)."""
    from worker import _watch_parent

    _watch_parent(21600)  # as long as the run: the harness stops the broker's process group

    async def main() -> None:
        service = make_service()
        service.connect(backend)
        await service.serve()

    asyncio.run(main())


# =========================================================================== asyncio clients


class AsyncioClient:
    """netcall.RPCClient on the running loop (default asyncio loop, or uvloop)."""

    client_cls_path = ("netcall", "RPCClient")

    def __init__(self, curve_dir: str | None = None, middleware: bool = False) -> None:
        self.curve_dir = curve_dir
        self.middleware = middleware  # one no-op client middleware

    async def open(self, endpoint: str) -> AsyncioClient:
        import importlib
        import os

        mod, name = self.client_cls_path
        cls = getattr(importlib.import_module(mod), name)
        kwargs: dict[str, Any] = {}
        if self.curve_dir is not None:  # an ephemeral client key pair for the service's key
            from netcall.security import Curve

            kwargs["security"] = Curve.client(os.path.join(self.curve_dir, "server.key"))
        if self.middleware:
            kwargs["middleware"] = [_noop_client_mw]
        # default options (no timeout), like the raw baselines: no timer per call
        self.client = cls(**kwargs)
        self.client.connect(endpoint)
        c = self.client
        self.echo = lambda s: c.echo(s)
        self.echo_array = self.echo
        self.stream = lambda n: c.count(n)
        self.stream_sync = lambda n: c.count_sync(n)
        self.stream_big = lambda n, size: c.count_big(n, size)
        return self

    async def close(self) -> None:
        aclose = getattr(self.client, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            self.client.close()


class TornadoClient(AsyncioClient):
    """netcall.tornado.TornadoRPCClient; Tornado >= 5 runs on the asyncio loop."""

    client_cls_path = ("netcall.tornado", "TornadoRPCClient")


# =========================================================================== blocking clients


class _BlockingClient:
    spawner = "thread"
    client_cls_path = ("netcall.sync", "SyncRPCClient")

    def __init__(self, endpoint: str) -> None:
        import importlib

        mod, name = self.client_cls_path
        cls = getattr(importlib.import_module(mod), name)
        self.client = cls()
        self.client.connect(endpoint)
        c = self.client
        self.echo = lambda s: c.echo(s)
        self.echo_array = self.echo
        self.stream = lambda n: c.count(n)
        self.stream_sync = lambda n: c.count_sync(n)
        self.stream_big = lambda n, size: c.count_big(n, size)

    def close(self) -> None:
        self.client.close()


class SyncClient(_BlockingClient):
    spawner = "thread"
    client_cls_path = ("netcall.sync", "SyncRPCClient")


class GeventClient(_BlockingClient):
    spawner = "gevent"
    client_cls_path = ("netcall.green", "GeventRPCClient")
