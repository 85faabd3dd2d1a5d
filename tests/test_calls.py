"""Calls end to end: arguments, sync and async handlers, results, the call context."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

import pytest

from netcall import CallContext, current_call

pytestmark = pytest.mark.timeout(20)


# ---------------------------------------------------------------- every transport


async def test_async_handler_returns_value(service, client):
    assert await client.echo("hi") == "hi"


async def test_sync_handler_returns_value(service, client):
    assert await client.add(2, 3) == 5


async def test_call_spelling(service, client):
    assert await client.call("add", 40, 2) == 42
    assert await client.call("echo", x="kw") == "kw"


async def test_positional_keyword_and_default_arguments(service, client):
    @service.register
    def signature(a, b=2, *args, c=3, **kw):
        return [a, b, list(args), c, kw]

    assert await client.signature(1) == [1, 2, [], 3, {}]
    assert await client.signature(1, 5) == [1, 5, [], 3, {}]
    assert await client.signature(1, 5, 6, 7) == [1, 5, [6, 7], 3, {}]
    assert await client.signature(a=9, c=8) == [9, 2, [], 8, {}]
    assert await client.signature(1, extra="x", c=0) == [1, 2, [], 0, {"extra": "x"}]


async def test_none_result_and_no_arguments(service, client):
    @service.register
    def nothing():
        return None

    assert await client.nothing() is None


async def test_lambda_registered_with_name(service, client):
    service.register(lambda n: f"Hello {n}", name="hello")
    assert await client.hello("World") == "Hello World"


async def test_named_task_2014_spelling(service, client):
    @service.task
    def legacy(x):
        return x * 2

    @service.task(name="renamed")
    def whatever(x):
        return -x

    assert await client.legacy(21) == 42
    assert await client.renamed(1) == -1


async def test_handler_registered_after_start_is_callable(service, client):
    assert await client.echo(1) == 1  # already serving

    @service.register
    async def late():
        return "late"

    assert await client.late() == "late"


async def test_large_payload_round_trip(service, client):
    blob = bytes(range(256)) * 8192  # 2 MiB
    assert await client.echo(blob) == blob


async def test_many_sequential_calls(service, client):
    for i in range(300):
        assert await client.add(i, 1) == i + 1


# ---------------------------------------------------------------- tcp only


async def test_handler_returning_awaitable_from_sync_function(make_service, make_client, make_url):
    svc = make_service()

    async def later(x):
        await asyncio.sleep(0.01)
        return x + 1

    @svc.register
    def indirect(x):
        return later(x)  # a sync function returning a coroutine: awaited by the service

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client()
    cli.connect(url)
    assert await cli.indirect(1) == 2


async def test_two_clients_one_service(make_service, make_client, make_url):
    svc = make_service()

    @svc.register
    async def ident(who, i):
        await asyncio.sleep(0.001)
        return (who, i)

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    a, b = make_client(), make_client()
    a.connect(url)
    b.connect(url)
    res_a, res_b = await asyncio.gather(
        asyncio.gather(*(a.ident("a", i) for i in range(50))),
        asyncio.gather(*(b.ident("b", i) for i in range(50))),
    )
    assert res_a == [("a", i) for i in range(50)]
    assert res_b == [("b", i) for i in range(50)]


async def test_current_call_context(make_service, make_client, make_url):
    svc = make_service()
    seen: list[CallContext] = []

    @svc.register
    async def introspect():
        ctx = current_call()
        seen.append(ctx)
        return [ctx.method, ctx.time_remaining()]

    @svc.register(name="ns.sync_introspect")
    def sync_introspect():
        return current_call().method

    url = make_url("tcp")
    svc.bind(url)
    svc.start()
    cli = make_client(timeout=None)
    cli.connect(url)

    method, remaining = await cli.introspect()
    assert method == "introspect"
    assert remaining is None  # no timeout, no deadline
    assert seen[-1].deadline is None

    method, remaining = await cli.call("introspect", timeout=3.0)
    assert method == "introspect"
    assert 0 < remaining <= 3.0
    assert seen[-1].deadline is not None and 0 < seen[-1].deadline.remaining() <= 3.0

    assert await cli.ns.sync_introspect() == "ns.sync_introspect"


def test_current_call_outside_handler_is_an_error():
    with pytest.raises(RuntimeError):
        current_call()


async def test_executor_keeps_loop_free_for_other_calls(make_service, make_client, make_url):
    """A blocking sync handler sent to an executor does not freeze the service's loop."""
    pool = concurrent.futures.ThreadPoolExecutor(2)
    try:
        svc = make_service(executor=pool)
        release = threading.Event()
        threads = []

        @svc.register
        def blocking():
            threads.append(threading.current_thread().name)
            release.wait(5)
            return "unblocked"

        @svc.register
        async def quick():
            return "quick"

        url = make_url("tcp")
        svc.bind(url)
        svc.start()
        cli = make_client()
        cli.connect(url)

        slow = asyncio.ensure_future(cli.blocking())
        while not threads:
            await asyncio.sleep(0.005)
        # The blocking handler holds a worker thread; the loop still answers.
        assert await cli.quick() == "quick"
        assert not slow.done()
        release.set()
        assert await slow == "unblocked"
        assert threads[0] != threading.main_thread().name
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


async def test_current_call_inside_executor(make_service, make_client, make_url):
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        svc = make_service(executor=pool)

        @svc.register
        def where():
            return current_call().method

        url = make_url("tcp")
        svc.bind(url)
        svc.start()
        cli = make_client()
        cli.connect(url)
        assert await cli.where() == "where"
    finally:
        pool.shutdown(wait=False)


async def test_call_immediately_after_connect(make_service, make_client, make_url):
    """No settle time is needed between connect() and the first call."""
    url = make_url("tcp")
    svc = make_service()
    svc.register(lambda: "up", name="ping_me")
    svc.bind(url)
    svc.start()
    for _ in range(5):
        cli = make_client()
        cli.connect(url)
        assert await cli.ping_me() == "up"
        cli.close()


async def test_call_waits_for_a_service_that_binds_later(make_service, make_client, make_url):
    """A call made before the service is up succeeds once it comes up within the timeout."""
    url = make_url("tcp")
    cli = make_client(timeout=5.0)
    cli.connect(url)
    call = asyncio.ensure_future(cli.echo("early"))
    await asyncio.sleep(0.3)
    assert not call.done()
    svc = make_service()

    @svc.register
    async def echo(x):
        return x

    svc.bind(url)
    svc.start()
    assert await asyncio.wait_for(call, 4.5) == "early"


async def test_handler_results_do_not_cross(service, client):
    """Results come back to the call that asked, whatever order handlers finish in."""
    n = 200
    delays = [(n - i) * 0.0005 for i in range(n)]
    results = await asyncio.gather(*(client.sleep(d, i) for i, d in enumerate(delays)))
    assert results == list(range(n))


async def test_keyword_named_like_client_method(service, client):
    @service.register
    def kwargs_passthrough(**kw: Any):
        return sorted(kw)

    # Names that are not the reserved call options go through to the handler.
    assert await client.kwargs_passthrough(name="x", method="y", args=1) == [
        "args",
        "method",
        "name",
    ]
