"""One behavioural suite over every adapter: clients {asyncio, tornado, gevent, sync} against
services {asyncio, tornado, gevent, threading (the 2014 ThreadingRPCService)}, on real sockets.

Each service runs in its own thread (its loop, IOLoop, hub, or blocked in ``serve()``); the
test drives the client from the test's thread through one blocking interface (see
``_adapter_helpers``). gevent runs unpatched here; the monkey-patched runs are in
``test_gevent.py``, in subprocesses.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import pytest

from _adapter_helpers import (
    CLIENT_KINDS,
    SERVICE_KINDS,
    AsyncDriver,
    BlockingDriver,
    ServiceThread,
    make_driver,
    wait_for,
)
from conftest import tcp_url
from netcall import (
    ClientClosedError,
    MethodNotFoundError,
    RemoteRPCError,
    RPCError,
    RPCTimeoutError,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=SERVICE_KINDS)
def remote(request: pytest.FixtureRequest, ctx: Any) -> Iterator[ServiceThread]:
    """A service of each kind, serving in its own thread."""
    svc = ServiceThread(request.param, ctx, tcp_url()).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(params=CLIENT_KINDS)
def drv(request: pytest.FixtureRequest, ctx: Any, remote: ServiceThread) -> Iterator[Any]:
    """A client of each kind connected to ``remote``."""
    driver = make_driver(request.param, ctx, remote.url)
    try:
        yield driver
    finally:
        driver.teardown()


Driver = BlockingDriver | AsyncDriver


def test_calls(drv: Driver) -> None:
    assert drv.call("echo", "hi") == "hi"
    assert drv.call("echo") is None
    assert drv.call("add", 2, 3) == 5
    assert drv.call("pair", 1) == [1, 2]
    assert drv.call("pair", 1, b=5) == [1, 5]
    assert drv.call("echo", (1, b"\x00", {"k": [1.5]})) == (1, b"\x00", {"k": [1.5]})
    assert drv.call("hello", "World") == "Hello World"
    assert drv.dotted("math.add", 1, 2) == 3
    assert drv.dotted("math.mul", 3, 4) == 12


def test_remote_errors(drv: Driver) -> None:
    with pytest.raises(ValueError, match="boom") as info:
        drv.call("fail", "boom")
    assert isinstance(info.value, RemoteRPCError)
    assert info.value.type_name == "ValueError"
    assert "fail" in info.value.traceback

    with pytest.raises(RemoteRPCError) as info2:
        drv.call("app_fail")
    assert info2.value.type_name.endswith("AppError")
    assert info2.value.message == "custom"

    with pytest.raises(MethodNotFoundError):
        drv.call("no_such_method")
    with pytest.raises(TypeError):
        drv.call("add", 1, 2, 3)
    # nothing above broke the client
    assert drv.call("echo", 1) == 1


def test_timeout_cancels_the_handler(drv: Driver, remote: ServiceThread) -> None:
    start = time.monotonic()
    with pytest.raises(RPCTimeoutError) as info:
        drv.call("slow", 5, timeout=0.3)
    assert isinstance(info.value, RPCError)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - start < 3
    assert wait_for(lambda: remote.active_calls == 0), "the handler was not cancelled"
    assert drv.call("slow", 0.01, "ok", timeout=2) == "ok"


def test_concurrent_calls(drv: Driver) -> None:
    start = time.monotonic()
    results = drv.concurrently("slow", [(0.3, i) for i in range(20)])
    assert results == list(range(20))
    assert time.monotonic() - start < 2.5  # 20 x 0.3 s in sequence would be 6 s


def test_stream(drv: Driver, remote: ServiceThread) -> None:
    assert drv.stream("count", 5) == [0, 1, 2, 3, 4]
    assert drv.stream("count", 0) == []
    assert drv.stream("count", 300) == list(range(300))
    assert drv.stream("sync_count", 3) == [0, 1, 2]
    assert drv.stream("sync_count", 200) == list(range(200))
    counter = drv.gen("sync_count", 1)
    assert next(counter) == 0
    with pytest.raises(StopIteration):
        next(counter)
    assert wait_for(lambda: remote.active_streams == 0)


def test_generator_protocol(drv: Driver, remote: ServiceThread) -> None:
    gen = drv.gen("echo_gen", 1)
    assert next(gen) == 1
    assert next(gen) is None
    assert gen.send(2) == 2
    assert gen.throw(TypeError, "spam") == "caught TypeError: spam"
    assert gen.send("x") == "x"
    gen.close()
    assert remote.closed == ["echo_gen"]  # close() waits for the finally block
    with pytest.raises(StopIteration):
        next(gen)
    gen.close()  # closing twice is fine

    counter = drv.gen("count", 2)
    assert next(counter) == 0
    assert next(counter) == 1
    with pytest.raises(StopIteration):
        next(counter)
    assert wait_for(lambda: remote.active_streams == 0)


def test_generator_closed_when_dropped(drv: Driver, remote: ServiceThread) -> None:
    gen = drv.gen("echo_gen", "a")
    assert next(gen) == "a"
    assert remote.active_streams == 1
    del gen
    gc.collect()
    drv.idle()
    assert wait_for(lambda: remote.closed == ["echo_gen"]), "finally did not run"
    assert wait_for(lambda: remote.active_streams == 0)


def test_closed_client(drv: Driver) -> None:
    assert drv.call("echo", 1) == 1
    drv.close()
    with pytest.raises(ClientClosedError):
        drv.call("echo", 1, timeout=0.5)
