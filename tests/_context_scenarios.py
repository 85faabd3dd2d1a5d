"""One adapter's service and client on one kind of pyzmq context, run by ``test_migration.py``
in a fresh process, with or without ``gevent.monkey.patch_all()`` (the process patches before
importing this module): ``python -c "import _context_scenarios as s; s.run(adapter, kind)"``.

Each run makes calls, a stream and a generator step, shuts everything down, terminates the
context, and prints ``OK``. A hang is caught by the caller's timeout; a crash by the exit code.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from typing import Any

import gevent
import zmq
import zmq.asyncio
import zmq.green

from netcall import RPCClient, RPCService, _bridge
from netcall.green import GreenRPCClient, GreenRPCService
from netcall.sync import SyncRPCClient
from netcall.threading import ThreadingRPCClient, ThreadingRPCService
from netcall.tornado import TornadoRPCClient, TornadoRPCService

CONTEXTS = {"green": zmq.green.Context, "asyncio": zmq.asyncio.Context, "plain": zmq.Context}
ADAPTERS = ["asyncio", "tornado", "gevent", "sync", "threading"]
CALLS = 5


def register(svc: RPCService) -> None:
    @svc.register
    def echo(x: Any = None) -> Any:
        return x

    @svc.register
    def count(n: int) -> Any:
        yield from range(n)

    @svc.register
    def echo_gen(value: Any = None) -> Any:
        while True:
            value = yield value


def endpoint() -> str:
    return f"ipc://{tempfile.mkdtemp(prefix='nc-ctx-')}/s"


def started(svc: Any, cli_cls: Any, ctx: Any, **options: Any) -> Any:
    """Register, bind and start ``svc``; return a ``cli_cls`` client connected to it."""
    url = endpoint()
    register(svc)
    svc.bind(url)
    svc.start()
    client = cli_cls(context=ctx, timeout=5.0, **options)
    client.connect(url)
    return client


# ------------------------------------------------------------------ async adapters


async def exercise_async(client: RPCClient) -> None:
    for i in range(CALLS):
        assert await client.echo(i) == i
    assert [x async for x in client.count(5)] == [0, 1, 2, 3, 4]
    gen = await client.echo_gen(1)
    assert await gen.asend(None) == 1
    assert await gen.asend(2) == 2
    await gen.aclose()


async def async_pair(ctx: Any, svc_cls: type[RPCService], cli_cls: type[RPCClient]) -> None:
    svc = svc_cls(context=ctx)
    client = started(svc, cli_cls, ctx)
    try:
        await exercise_async(client)
    finally:
        client.shutdown()
        svc.shutdown()


def run_asyncio(ctx: Any) -> None:
    asyncio.run(async_pair(ctx, RPCService, RPCClient))


def run_tornado(ctx: Any) -> None:
    from tornado.ioloop import IOLoop

    ioloop = IOLoop(make_current=False)
    try:
        ioloop.run_sync(lambda: async_pair(ctx, TornadoRPCService, TornadoRPCClient), timeout=20)
    finally:
        ioloop.close(all_fds=False)


# ------------------------------------------------------------------ blocking adapters


def exercise_blocking(client: SyncRPCClient) -> None:
    for i in range(CALLS):
        assert client.echo(i) == i
    assert list(client.count(5)) == [0, 1, 2, 3, 4]
    gen = client.echo_gen(1)
    assert next(gen) == 1
    assert gen.send(2) == 2
    gen.close()


def run_gevent(ctx: Any) -> None:
    svc = GreenRPCService(context=ctx, green_env="gevent")
    client = started(svc, GreenRPCClient, ctx, green_env="gevent")
    try:
        # several greenlets at once, as a gevent program would call
        jobs = [gevent.spawn(client.echo, i) for i in range(CALLS)]
        gevent.joinall(jobs, raise_error=True, timeout=10)
        assert [j.value for j in jobs] == list(range(CALLS))
        exercise_blocking(client)
    finally:
        client.shutdown()
        svc.shutdown()


def run_threading(ctx: Any) -> None:
    svc = ThreadingRPCService(context=ctx)
    client = started(svc, ThreadingRPCClient, ctx, executor=None)
    try:
        exercise_blocking(client)
    finally:
        client.shutdown()
        svc.shutdown()


def run_sync(ctx: Any) -> None:
    """The blocking client against an asyncio service running in a real OS thread."""
    url = endpoint()
    ready = _bridge._real_lock()
    ready.acquire()
    done = _bridge._real_lock()
    done.acquire()
    stop: list[Any] = []

    async def serve() -> None:
        svc = RPCService(context=ctx)
        register(svc)
        svc.bind(url)
        stop.append((asyncio.get_running_loop(), svc))
        async with svc:
            ready.release()
            await svc.serve()

    def main() -> None:
        try:
            asyncio.run(serve())
        finally:
            done.release()

    _bridge._start_real_thread(main)
    assert ready.acquire(True, 10), "the service did not start"
    client = SyncRPCClient(context=ctx, timeout=5.0)
    client.connect(url)
    try:
        exercise_blocking(client)
    finally:
        client.shutdown()
        loop, svc = stop[0]
        loop.call_soon_threadsafe(svc.close)
        assert done.acquire(True, 10), "the service did not stop"


def run(adapter: str, kind: str) -> None:
    ctx = CONTEXTS[kind]()
    globals()[f"run_{adapter}"](ctx)
    ctx.term()  # every netcall socket on it is closed: this returns at once
    print("OK")


if __name__ == "__main__":  # pragma: no cover - manual runs
    run(sys.argv[1], sys.argv[2])
