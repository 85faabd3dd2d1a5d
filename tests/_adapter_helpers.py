"""Services of each kind in a background thread, and clients of each kind behind one blocking
test interface: the pieces of the adapters' behavioural suite (not fixtures)."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import gevent
import zmq
from tornado.ioloop import IOLoop

from netcall import RPCClient, RPCService
from netcall.green import GeventRPCClient, GeventRPCService
from netcall.sync import SyncRPCClient
from netcall.threading import ThreadingRPCService
from netcall.tornado import TornadoRPCClient, TornadoRPCService

SERVICE_KINDS = ["asyncio", "tornado", "gevent", "threading"]
CLIENT_KINDS = ["asyncio", "tornado", "gevent", "sync"]
START_TIMEOUT = 10.0
TESTS_DIR = Path(__file__).resolve().parent


class AppError(Exception):
    """A user-defined exception a handler raises."""


class Math:
    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def mul(self, a: Any, b: Any) -> Any:
        return a * b


def register_handlers(svc: RPCService, kind: str, closed: list[str]) -> None:
    """The handlers of the behavioural suite. ``closed`` records generators whose ``finally``
    ran. Sleeping and streaming handlers take the service's native style."""

    @svc.register
    def echo(x: Any = None) -> Any:
        return x

    @svc.register
    def add(a: Any, b: Any) -> Any:
        return a + b

    @svc.register
    async def pair(a: Any, b: Any = 2) -> Any:
        return [a, b]

    @svc.register
    def fail(message: str) -> None:
        raise ValueError(message)

    @svc.register
    def app_fail() -> None:
        raise AppError("custom")

    svc.register_object(Math(), namespace="math")
    svc.register(lambda n: f"Hello {n}", name="hello")

    @svc.register
    def echo_gen(value: Any = None) -> Any:
        """The seed README's bidirectional generator."""
        try:
            while True:
                try:
                    value = yield value
                except Exception as e:
                    value = f"caught {type(e).__name__}: {e}"
        finally:
            closed.append("echo_gen")

    @svc.register
    def kinds(*xs: Any) -> list[str]:
        """What arrived: the type of each argument."""
        return [type(x).__name__ for x in xs]

    @svc.register
    def repeat(x: Any, n: int) -> Any:
        for _ in range(n):
            yield x

    @svc.register
    def sync_count(n: int) -> Any:
        """A plain generator, on every kind of service."""
        yield from range(n)

    if kind == "gevent":

        @svc.register
        def slow(seconds: float, result: Any = None) -> Any:
            gevent.sleep(seconds)
            return result

        @svc.register
        def count(n: int) -> Any:
            try:
                yield from range(n)
            finally:
                closed.append("count")

    else:

        @svc.register
        async def slow(seconds: float, result: Any = None) -> Any:
            await asyncio.sleep(seconds)
            return result

        @svc.register
        async def count(n: int) -> Any:
            try:
                for i in range(n):
                    yield i
            finally:
                closed.append("count")


# ----------------------------------------------------------------------------- services


def serving(kind: str, ctx: zmq.Context[Any], url: str) -> Iterator[ServiceThread]:
    """The body of a fixture: a service of ``kind`` serving ``url`` in its own thread,
    stopped afterwards."""
    svc = ServiceThread(kind, ctx, url).start()
    try:
        yield svc
    finally:
        svc.stop()


class ServiceThread:
    """A service of one kind serving ``url`` in its own thread (asyncio loop, Tornado IOLoop,
    gevent hub, or blocked in ``ThreadingRPCService.serve()``), started by :meth:`start` and
    stopped and joined by :meth:`stop`."""

    def __init__(
        self,
        kind: str,
        ctx: zmq.Context[Any],
        url: str,
        setup: Callable[[RPCService], None] | None = None,
        **options: Any,
    ) -> None:
        self.kind = kind
        self.ctx = ctx
        self.url = url
        self._setup = setup  # registers more handlers
        self._options = options  # more service arguments
        self.closed: list[str] = []
        self.svc: RPCService | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"svc-{kind}", daemon=True)

    def _make(self, cls: type[RPCService]) -> RPCService:
        svc = cls(context=self.ctx, grace=0.5, **self._options)
        register_handlers(svc, self.kind, self.closed)
        if self._setup is not None:
            self._setup(svc)
        svc.bind(self.url)
        self.svc = svc
        return svc

    def _main(self) -> None:
        try:
            getattr(self, f"_run_{self.kind}")()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self._ready.set()

    def _run_asyncio(self) -> None:
        async def main() -> None:
            svc = self._make(RPCService)
            self.loop = asyncio.get_running_loop()
            svc.start()
            self._ready.set()
            await svc.serve()

        asyncio.run(main())

    def _run_tornado(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            svc = self._make(TornadoRPCService)
            self.loop = loop
            svc.start()  # before the IOLoop runs
            self._ready.set()
            svc.serve()  # runs IOLoop.current() until the service stops
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def _run_gevent(self) -> None:
        svc = self._make(GeventRPCService)
        serving = svc.start()
        self._ready.set()
        serving.join()
        gevent.get_hub().destroy(destroy_loop=True)

    def _run_threading(self) -> None:
        svc = self._make(ThreadingRPCService)  # the 2014 name: sync handlers in a thread pool
        svc.start()
        self._ready.set()
        svc.serve()

    def start(self) -> ServiceThread:
        self._thread.start()
        assert self._ready.wait(START_TIMEOUT), "service thread did not start"
        if self.error is not None:
            raise self.error
        return self

    @property
    def active_calls(self) -> int:
        assert self.svc is not None
        return self.svc.active_calls

    @property
    def active_streams(self) -> int:
        assert self.svc is not None
        return self.svc.active_streams

    def stop(self) -> None:
        svc = self.svc
        if svc is not None and self._thread.is_alive():
            if isinstance(svc, GeventRPCService | ThreadingRPCService):
                svc.stop(grace=0)
            else:
                assert self.loop is not None
                asyncio.run_coroutine_threadsafe(svc.stop(grace=0), self.loop).result(10)
        self._thread.join(10)
        assert not self._thread.is_alive(), f"{self.kind} service thread did not stop"
        if svc is not None and not svc.socket.closed:  # pragma: no cover - a failed stop
            svc.socket.close(linger=0)
        if self.error is not None:
            raise self.error


# ----------------------------------------------------------------------------- clients


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` (from a plain thread or greenlet) until true or ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


class BlockingDriver:
    """The sync and gevent clients are the interface already."""

    def __init__(self, kind: str, ctx: zmq.Context[Any], url: str, **options: Any) -> None:
        cls = GeventRPCClient if kind == "gevent" else SyncRPCClient
        self.kind = kind
        self.client = cls(context=ctx, **{"timeout": 5.0, **options})
        self.client.connect(url)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.client.call(method, *args, **kwargs)

    def dotted(self, method: str, *args: Any) -> Any:
        return functools.reduce(getattr, method.split("."), self.client)(*args)

    def stream(self, method: str, *args: Any) -> list[Any]:
        return list(self.client.call(method, *args))

    def gen(self, method: str, *args: Any) -> Any:
        return self.client.call(method, *args)

    def concurrently(self, method: str, args_list: list[tuple[Any, ...]]) -> list[Any]:
        if self.kind == "gevent":
            gs = [gevent.spawn(self.call, method, *a) for a in args_list]
            gevent.joinall(gs, raise_error=True, timeout=10)
            return [g.value for g in gs]
        results: list[Any] = [None] * len(args_list)

        def run(i: int) -> None:
            results[i] = self.call(method, *args_list[i])

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args_list))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        return results

    def idle(self) -> None:
        """Let the client's machinery run scheduled work (it runs in its own thread)."""

    def close(self) -> None:
        self.client.close()

    teardown = close


class AsyncDriver:
    """An asyncio (or Tornado) client, each operation run to completion on its own loop."""

    def __init__(self, kind: str, ctx: zmq.Context[Any], url: str, **options: Any) -> None:
        self.kind = kind
        if kind == "tornado":
            self.ioloop: Any = IOLoop(make_current=False)
            self.loop: asyncio.AbstractEventLoop = self.ioloop.asyncio_loop
            cls: type[RPCClient] = TornadoRPCClient
        else:
            self.ioloop = None
            self.loop = asyncio.new_event_loop()
            cls = RPCClient
        self.client = cls(context=ctx, **{"timeout": 5.0, **options})
        self.client.connect(url)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self.ioloop is not None:
            return self.ioloop.run_sync(lambda: coro, timeout=20)
        return self.loop.run_until_complete(asyncio.wait_for(coro, 20))

    async def _await(self, aw: Any) -> Any:
        return await aw

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.run(self._await(self.client.call(method, *args, **kwargs)))

    def dotted(self, method: str, *args: Any) -> Any:
        return self.run(
            self._await(functools.reduce(getattr, method.split("."), self.client)(*args))
        )

    def stream(self, method: str, *args: Any) -> list[Any]:
        async def collect() -> list[Any]:
            return [x async for x in self.client.call(method, *args)]

        return self.run(collect())

    def gen(self, method: str, *args: Any) -> AsyncGenFacade:
        return AsyncGenFacade(self, self.run(self._await(self.client.call(method, *args))))

    def concurrently(self, method: str, args_list: list[tuple[Any, ...]]) -> list[Any]:
        async def many() -> list[Any]:
            return list(await asyncio.gather(*(self.client.call(method, *a) for a in args_list)))

        return self.run(many())

    def idle(self) -> None:
        """Run the loop a little: between operations nothing runs it."""
        self.run(asyncio.sleep(0.05))

    def close(self) -> None:
        self.client.close()

    def teardown(self) -> None:
        self.client.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        if self.ioloop is not None:
            self.ioloop.close(all_fds=False)
        else:
            self.loop.close()


class AsyncGenFacade:
    """A core RemoteGenerator driven as a plain generator, for the shared test cases."""

    def __init__(self, driver: AsyncDriver, gen: Any) -> None:
        self.driver = driver
        self.agen = gen

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        try:
            return self.driver.run(self.agen.asend(value))
        except StopAsyncIteration:
            raise StopIteration from None

    def throw(self, typ: Any, val: Any = None) -> Any:
        try:
            return self.driver.run(self.agen.athrow(typ, val))
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self.driver.run(self.agen.aclose())


def make_driver(
    kind: str, ctx: zmq.Context[Any], url: str, **options: Any
) -> BlockingDriver | AsyncDriver:
    """A client of ``kind`` connected to ``url``; ``options`` are more client arguments."""
    if kind in ("gevent", "sync"):
        return BlockingDriver(kind, ctx, url, **options)
    return AsyncDriver(kind, ctx, url, **options)


# ----------------------------------------------------------------------------- subprocesses


def run_python(
    code: str, *args: str, env: dict[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` in the tests directory; return the finished process."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=TESTS_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_subprocess_header(patched: bool) -> str:
    """The first lines of a gevent subprocess: patch (or not) before anything else."""
    lines = ["import sys"]
    if patched:
        lines = ["from gevent import monkey", "monkey.patch_all()", *lines]
    lines.append(f"sys.path.insert(0, {str(TESTS_DIR)!r})")
    return "\n".join(lines) + "\n"


__all__ = [
    "CLIENT_KINDS",
    "SERVICE_KINDS",
    "AppError",
    "AsyncDriver",
    "BlockingDriver",
    "ServiceThread",
    "in_subprocess_header",
    "make_driver",
    "run_python",
    "wait_for",
]
