"""netcall.tornado on a real Tornado IOLoop: the service started before the IOLoop runs and
with serve(), plain / async def / @gen.coroutine handlers, the client from Tornado coroutines
and RequestHandlers, streams, and a web app under concurrent HTTP load."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tornado import gen
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from conftest import tcp_url
from netcall import RemoteGenerator, RPCTimeoutError
from netcall.sync import SyncRPCClient
from netcall.tornado import TornadoRPCClient, TornadoRPCService

pytestmark = pytest.mark.timeout(30)


def tornado_service(ctx: Any) -> TornadoRPCService:
    svc = TornadoRPCService(context=ctx)

    @svc.task  # the seed's spelling
    def echo(s: Any) -> Any:
        return s

    svc.register(lambda n: f"Hello {n}", name="hello")

    @svc.register
    async def native(x: Any) -> Any:
        await asyncio.sleep(0.01)
        return ["native", x]

    @svc.register
    @gen.coroutine
    def legacy(x: Any) -> Any:
        yield gen.sleep(0.01)
        return ["legacy", x]

    @svc.register
    @gen.coroutine
    def slow(seconds: float, result: Any = None) -> Any:
        yield gen.sleep(seconds)
        return result

    @svc.register
    async def count(n: int) -> Any:
        for i in range(n):
            yield i

    return svc


@pytest.fixture
def ioloop() -> Iterator[IOLoop]:
    """A fresh IOLoop (on a new asyncio loop), closed afterwards."""
    loop = IOLoop(make_current=False)
    try:
        yield loop
    finally:
        loop.close(all_fds=False)


@pytest.fixture
def on_ioloop(ioloop: IOLoop, ctx: Any) -> Iterator[Callable[..., Any]]:
    """``on_ioloop(fn)``: run the coroutine function ``fn(service, client)`` on the IOLoop with
    a started TornadoRPCService and a connected TornadoRPCClient; both closed afterwards."""
    made: list[Any] = []

    def run(fn: Callable[..., Any], timeout: float = 20) -> Any:
        async def main() -> Any:
            svc = tornado_service(ctx)
            made.append(svc)
            url = tcp_url()
            svc.bind(url)
            svc.start()
            client = TornadoRPCClient(context=ctx, timeout=5)
            made.append(client)
            client.connect(url)
            try:
                return await fn(svc, client)
            finally:
                client.close()
                await svc.stop(grace=0)

        return ioloop.run_sync(main, timeout=timeout)

    yield run
    for obj in made:
        obj.close()


def test_handlers_of_every_style(on_ioloop: Callable[..., Any]) -> None:
    async def check(svc: TornadoRPCService, client: TornadoRPCClient) -> None:
        assert IOLoop.current().asyncio_loop is asyncio.get_running_loop()
        assert await client.echo("hi") == "hi"
        assert await client.hello("World") == "Hello World"
        assert await client.native(1) == ["native", 1]
        assert await client.legacy(2) == ["legacy", 2]
        assert await client.call("legacy", 3, timeout=2) == ["legacy", 3]

    on_ioloop(check)


def test_client_from_gen_coroutine(on_ioloop: Callable[..., Any]) -> None:
    @gen.coroutine
    def legacy_caller(svc: TornadoRPCService, client: TornadoRPCClient) -> Any:
        a = yield client.echo("from gen.coroutine")
        b = yield [client.legacy(1), client.native(2)]
        return [a, b]

    assert on_ioloop(legacy_caller) == [
        "from gen.coroutine",
        [["legacy", 1], ["native", 2]],
    ]


def test_concurrent_gen_coroutine_handlers(on_ioloop: Callable[..., Any]) -> None:
    async def check(svc: TornadoRPCService, client: TornadoRPCClient) -> float:
        start = time.monotonic()
        results = await asyncio.gather(*(client.slow(0.3, i) for i in range(20)))
        assert results == list(range(20))
        return time.monotonic() - start

    assert on_ioloop(check) < 2.0


def test_streams_and_timeouts(on_ioloop: Callable[..., Any]) -> None:
    async def check(svc: TornadoRPCService, client: TornadoRPCClient) -> None:
        assert [x async for x in client.count(5)] == [0, 1, 2, 3, 4]
        gen_ = await client.count(3)
        assert isinstance(gen_, RemoteGenerator)
        assert await gen_.asend(None) == 0
        await gen_.aclose()
        with pytest.raises(RPCTimeoutError):
            await client.call("slow", 5, timeout=0.2)
        for _ in range(100):
            if svc.active_calls == 0 and svc.active_streams == 0:
                break
            await gen.sleep(0.01)
        assert svc.active_calls == 0 and svc.active_streams == 0

    on_ioloop(check)


class SlowHandler(RequestHandler):
    async def get(self, n: str) -> None:
        client: TornadoRPCClient = self.settings["rpc"]
        self.write(str(await client.slow(0.3, int(n))))


class LegacyHandler(RequestHandler):
    @gen.coroutine
    def get(self, n: str) -> Any:
        client: TornadoRPCClient = self.settings["rpc"]
        result = yield client.legacy(int(n))
        self.write(repr(result))


def test_web_app_calling_netcall(on_ioloop: Callable[..., Any]) -> None:
    """A Tornado web app whose handlers call netcall serves concurrent requests from a real
    HTTP client."""

    async def check(svc: TornadoRPCService, client: TornadoRPCClient) -> float:
        app = Application(
            [(r"/slow/(\d+)", SlowHandler), (r"/legacy/(\d+)", LegacyHandler)], rpc=client
        )
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        http = AsyncHTTPClient(force_instance=True, max_clients=100)
        try:
            start = time.monotonic()
            responses = await asyncio.gather(
                *(http.fetch(f"http://127.0.0.1:{port}/slow/{i}") for i in range(40))
            )
            elapsed = time.monotonic() - start
            assert [r.body.decode() for r in responses] == [str(i) for i in range(40)]
            legacy = await http.fetch(f"http://127.0.0.1:{port}/legacy/7")
            assert legacy.body.decode() == "['legacy', 7]"
            return elapsed
        finally:
            http.close()
            server.stop()
            await server.close_all_connections()

    assert on_ioloop(check) < 3.0  # 40 x 0.3 s in sequence would take 12 s


# ----------------------------------------------------------------------------- start / serve


class IOLoopThread:
    """A TornadoRPCService in a thread of its own: ``mode`` "serve" calls ``serve()``;
    "start" calls ``start()`` and then ``IOLoop.current().start()``, as in the seed."""

    def __init__(self, ctx: Any, mode: str) -> None:
        self.ctx = ctx
        self.mode = mode
        self.url = tcp_url()
        self.ready = threading.Event()
        self.svc: TornadoRPCService | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.returned = False
        self.thread = threading.Thread(target=self.main, daemon=True)

    def main(self) -> None:
        loop = self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            svc = self.svc = tornado_service(self.ctx)
            svc.bind(self.url)
            svc.start()  # the IOLoop is not running yet
            self.ready.set()
            if self.mode == "serve":
                svc.serve()
            else:
                IOLoop.current().start()
            self.returned = True
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def stop(self) -> None:
        assert self.svc is not None and self.loop is not None
        svc = self.svc

        asyncio.run_coroutine_threadsafe(svc.stop(grace=0), self.loop).result(10)
        if self.mode == "start":  # serve() stops the IOLoop itself
            self.loop.call_soon_threadsafe(lambda: IOLoop.current().stop())
        self.thread.join(10)


@pytest.mark.parametrize("mode", ["serve", "start"])
def test_service_on_the_ioloop(ctx: Any, mode: str) -> None:
    runner = IOLoopThread(ctx, mode)
    runner.thread.start()
    assert runner.ready.wait(10)
    try:
        with SyncRPCClient(context=ctx, timeout=5) as client:
            client.connect(runner.url)
            assert client.echo("seed") == "seed"
            assert client.hello("World") == "Hello World"
            assert client.legacy(1) == ["legacy", 1]
            assert list(client.count(3)) == [0, 1, 2]
    finally:
        runner.stop()
    assert not runner.thread.is_alive()
    assert runner.returned
    assert runner.svc is not None and runner.svc.closed
