"""The client's API: endpoints, dotted names, one-way calls, concurrency, load spreading."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

from _helpers import wait_until
from netcall import (
    MethodNotFoundError,
    RPCClient,
    RPCError,
)

pytestmark = pytest.mark.timeout(20)


async def named_service(make_service, make_url, name, kind="tcp"):
    svc = make_service(name=name)

    @svc.register
    async def whoami(delay=0.0):
        if delay:
            await asyncio.sleep(delay)
        return name

    @svc.register
    async def echo(x):
        return x

    url = make_url(kind)
    svc.bind(url)
    svc.start()
    return svc, url


# ---------------------------------------------------------------- connect


def test_connect_and_connected(ctx, make_url):
    cli = RPCClient(context=ctx)
    try:
        a, b, c = make_url("tcp"), make_url("ipc"), make_url("inproc")
        assert cli.connected == set()
        cli.connect(a)
        cli.connect([b, c])
        assert cli.connected == {a, b, c}
        cli.connect(a)  # idempotent
        assert cli.connected == {a, b, c}
        cli.connect([c], only=True)
        assert cli.connected == {c}
        cli.disconnect(c)
        assert cli.connected == set()
    finally:
        cli.close()


async def test_connect_only_moves_calls(make_service, make_client, make_url):
    _, url_a = await named_service(make_service, make_url, "a")
    _, url_b = await named_service(make_service, make_url, "b")
    cli = make_client()
    cli.connect(url_a)
    assert await cli.whoami() == "a"
    cli.connect(url_b, only=True)
    assert cli.connected == {url_b}
    assert {await cli.whoami() for _ in range(10)} == {"b"}


async def test_disconnect_stops_using_service(make_service, make_client, make_url):
    _, url_a = await named_service(make_service, make_url, "a")
    _, url_b = await named_service(make_service, make_url, "b")
    cli = make_client()
    cli.connect([url_a, url_b])
    cli.disconnect(url_a)
    assert {await cli.whoami() for _ in range(10)} == {"b"}


async def test_call_without_any_connection_is_a_clear_error(make_client):
    cli = make_client(timeout=5)
    with pytest.raises(RPCError) as info:
        await asyncio.wait_for(cli.echo(1), 2)
    assert "connect" in str(info.value)


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda c, s: c.call(123), TypeError),
        (lambda c, s: c.call(b"echo"), TypeError),
        (lambda c, s: c.call("echo", 1, timeout="1"), TypeError),
        (lambda c, s: c.call("echo", 1, timeout=True), TypeError),
        (lambda c, s: c.call("echo", 1, timeout=float("nan")), ValueError),
        (lambda c, s: c.with_options(timeout="1"), TypeError),
        (lambda c, s: c.with_options(timeout=1).call(7), TypeError),
        (lambda c, s: RPCClient(timeout="1"), TypeError),
        (lambda c, s: RPCClient(timeout=float("nan")), ValueError),
        (lambda c, s: c.connect(5555), TypeError),
        (lambda c, s: c.connect(["tcp://127.0.0.1:5555", None]), TypeError),
        (lambda c, s: c.bind(b"tcp://127.0.0.1:*"), TypeError),
        (lambda c, s: s.bind(123), TypeError),
        (lambda c, s: s.connect([1]), TypeError),
    ],
)
async def test_misuse_is_a_clear_error_at_once(service, client, make, error):
    """A wrong type for a method name, a timeout or an endpoint fails where it is given, with
    a message that names it (not an AttributeError from deep inside, or later at a call)."""
    with pytest.raises(error, match=r"method name|timeout|endpoint"):
        make(client, service)
    assert client.pending == 0
    assert await client.echo("still fine") == "still fine"
    # A number type other than float and int is taken as seconds.
    from fractions import Fraction

    assert await client.call("echo", 2, timeout=Fraction(5, 2)) == 2


async def test_dotted_names(service, client):
    service.register(lambda a, b: a + b, name="math.add")
    service.register(lambda: "deep", name="a.b.c.d.e")
    assert await client.math.add(1, 2) == 3
    assert await client.call("math.add", 3, 4) == 7
    assert await client.a.b.c.d.e() == "deep"
    with pytest.raises(MethodNotFoundError):
        await client.math.sub(1, 2)


async def test_private_names_are_not_remote(service, client):
    # Python's protocols (copy, pickle, inspect) probe dunder and private names: they must not
    # turn into remote calls.
    assert not hasattr(client, "__wrapped__")
    with pytest.raises(AttributeError):
        _ = client._private
    with pytest.raises(AttributeError):
        _ = client.math._private


async def test_nothing_is_sent_until_awaited(service, client):
    calls = []
    service.register(lambda: calls.append(1), name="mark")
    pending_call = client.mark()
    await asyncio.sleep(0.2)
    assert calls == []
    assert client.pending == 0
    await pending_call
    assert calls == [1]


# ---------------------------------------------------------------- one-way


async def test_oneway_call_runs_handler_and_returns_none(service, client):
    got = asyncio.Event()
    log = []

    @service.register
    async def log_it(x):
        log.append(x)
        got.set()
        return "ignored"

    assert await client.call("log_it", "msg", oneway=True) is None
    await asyncio.wait_for(got.wait(), 2)
    assert log == ["msg"]
    assert client.pending == 0


async def test_oneway_returns_on_acceptance_not_completion(service, client):
    release = asyncio.Event()
    done = []

    @service.register
    async def long_job():
        await release.wait()
        done.append(True)

    await asyncio.wait_for(client.call("long_job", oneway=True), 2)
    assert done == []  # returned while the handler still runs
    release.set()
    assert await wait_until(lambda: done == [True], 2)


async def test_oneway_failure_does_not_reach_client_or_break_service(service, client):
    @service.register
    def explode():
        raise ValueError("nobody listens")

    assert await client.call("explode", oneway=True) is None
    assert await client.with_options(oneway=True).explode() is None
    assert await client.echo("alive") == "alive"
    assert service.active_calls == 0


async def test_oneway_many(service, client):
    seen = []
    service.register(lambda i: seen.append(i), name="collect")
    await asyncio.gather(*(client.call("collect", i, oneway=True) for i in range(200)))
    assert await wait_until(lambda: len(seen) == 200, 3)
    assert sorted(seen) == list(range(200))


# ---------------------------------------------------------------- with_options


async def test_with_options_passes_clashing_keywords(service, client):
    @service.register
    def configure(timeout=None, oneway=None):
        return [timeout, oneway]

    view = client.with_options(timeout=3.0)
    assert await view.configure(timeout=7, oneway="yes") == [7, "yes"]
    assert await view.call("configure", timeout=1) == [1, None]
    # via call(), timeout= is the call's option, not an argument
    assert await client.call("configure", 8, timeout=2.0) == [8, None]


async def test_with_options_dotted(service, client):
    service.register(lambda x: x * 2, name="ns.double")
    assert await client.with_options(timeout=1).ns.double(4) == 8


# ---------------------------------------------------------------- concurrency


async def test_hundreds_of_concurrent_calls_matched_by_id(service, client):
    n = 500
    order = list(range(n))
    random.Random(7).shuffle(order)
    # finish in a scrambled order: each reply must find its own call
    results = await asyncio.gather(*(client.sleep((k % 23) * 0.002, k) for k in order))
    assert results == order
    assert client.pending == 0
    assert service.active_calls == 0


async def test_concurrent_calls_with_mixed_payloads(service, client):
    payloads = [
        i
        if i % 4 == 0
        else str(i) * (i % 50)
        if i % 4 == 1
        else [i, {"k": i}]
        if i % 4 == 2
        else bytes([i % 256]) * 1000
        for i in range(300)
    ]
    results = await asyncio.gather(*(client.echo(x) for x in payloads))
    assert results == payloads


async def test_client_context_manager(service, make_client, endpoint):
    cli = make_client()
    cli.connect(endpoint)
    async with cli as c:
        assert c is cli
        assert await c.echo(1) == 1
    assert cli.closed


async def test_aclose(service, make_client, endpoint):
    cli = make_client()
    cli.connect(endpoint)
    assert await cli.echo(1) == 1
    await cli.aclose()
    assert cli.closed
    cli.close()  # idempotent


# ---------------------------------------------------------------- spreading load


async def test_concurrent_load_spread_across_two_services(make_service, make_client, make_url):
    _, url_a = await named_service(make_service, make_url, "a", "tcp")
    _, url_b = await named_service(make_service, make_url, "b", "ipc")
    cli = make_client()
    cli.connect([url_a, url_b])
    results = await asyncio.gather(*(cli.whoami(0.05) for _ in range(40)))
    counts = collections.Counter(results)
    assert set(counts) == {"a", "b"}
    assert min(counts.values()) >= 10, counts


async def test_sequential_load_spread_across_two_services(make_service, make_client, make_url):
    _, url_a = await named_service(make_service, make_url, "a")
    _, url_b = await named_service(make_service, make_url, "b")
    cli = make_client()
    cli.connect([url_a, url_b])
    counts = collections.Counter([await cli.whoami() for _ in range(100)])
    assert set(counts) == {"a", "b"}
    assert min(counts.values()) >= 20, counts


async def test_slower_service_gets_fewer_calls(make_service, make_client, make_url):
    """Calls prefer the less-loaded service: a slow one ends up with a smaller share."""
    svc_a, url_a = await named_service(make_service, make_url, "slow")
    svc_b, url_b = await named_service(make_service, make_url, "fast")

    @svc_a.register(name="work")
    async def work_a():
        await asyncio.sleep(0.03)
        return "slow"

    @svc_b.register(name="work")
    async def work_b():
        return "fast"

    cli = make_client()
    cli.connect([url_a, url_b])
    counts: collections.Counter[str] = collections.Counter()

    async def worker():
        for _ in range(10):
            counts[await cli.work()] += 1

    await asyncio.gather(*(worker() for _ in range(8)))
    assert sum(counts.values()) == 80
    assert counts["fast"] > counts["slow"], counts
