"""The service's API: registration, reserved names, objects, subclasses, endpoints, lifecycle."""

from __future__ import annotations

import asyncio
import random

import pytest
import zmq

from _helpers import wait_until
from netcall import (
    ConnectionLostError,
    MethodNotFoundError,
    RPCClient,
    RPCService,
    RPCTimeoutError,
    ServiceStoppingError,
)

pytestmark = pytest.mark.timeout(20)


async def serve_on(make_service, make_url, kind="tcp", **kwargs):
    svc = make_service(**kwargs)
    url = make_url(kind)
    svc.bind(url)
    svc.start()
    return svc, url


def connected(make_client, url, **kwargs):
    cli = make_client(**kwargs)
    cli.connect(url)
    return cli


# ---------------------------------------------------------------- register


async def test_register_spellings_return_the_function(make_service, make_client, make_url):
    svc, url = await serve_on(make_service, make_url)

    @svc.register
    def bare(x):
        return ("bare", x)

    @svc.register(name="named")
    def whatever(x):
        return ("named", x)

    def direct(x):
        return ("direct", x)

    assert svc.register(direct, name="direct_name") is direct

    @svc.task
    def tasked(x):
        return ("task", x)

    # decorators leave the function usable locally
    assert bare(1) == ("bare", 1)
    assert whatever(2) == ("named", 2)
    assert tasked(3) == ("task", 3)

    cli = connected(make_client, url)
    assert await cli.bare(1) == ("bare", 1)
    assert await cli.named(2) == ("named", 2)
    assert await cli.direct_name(3) == ("direct", 3)
    assert await cli.tasked(4) == ("task", 4)
    with pytest.raises(MethodNotFoundError):
        await cli.whatever(1)  # registered under its given name only
    with pytest.raises(MethodNotFoundError):
        await cli.direct(1)


@pytest.mark.parametrize(
    "name",
    ["bind", "bind_ports", "connect", "register", "task", "start", "stop", "serve", "close"],
)
def test_reserved_names_cannot_be_registered(ctx, name):
    svc = RPCService(context=ctx)
    try:
        with pytest.raises(ValueError):
            svc.register(lambda: None, name=name)
        with pytest.raises(ValueError):

            @svc.register(name=name)
            def f():
                pass

        # the bare decorator uses the function's own name
        def fn():
            pass

        fn.__name__ = name
        with pytest.raises(ValueError):
            svc.register(fn)
        assert name not in svc.methods()
    finally:
        svc.close()


def test_register_rejects_non_callables(ctx):
    svc = RPCService(context=ctx)
    try:
        with pytest.raises(TypeError):
            svc.register(42, name="answer")
    finally:
        svc.close()


async def test_service_methods_are_not_remotely_callable(make_service, make_client, make_url):
    """A client must never reach the service's own API (stop, bind, register, ...)."""
    svc, url = await serve_on(make_service, make_url)
    svc.register(lambda: "ok", name="ok")
    cli = connected(make_client, url)
    for name in ["stop", "close", "bind", "register", "start", "methods", "_handlers", "__init__"]:
        with pytest.raises(MethodNotFoundError):
            await cli.call(name)
    assert await cli.ok() == "ok"
    assert not svc.closed


# ---------------------------------------------------------------- objects and namespaces


class Calculator:
    factor = 10  # not callable: not exposed

    def add(self, a, b):
        return a + b

    async def mul(self, a, b):
        await asyncio.sleep(0)
        return a * b

    def secret(self):
        return "leak"

    def _private(self):
        return "leak"

    @staticmethod
    def static(x):
        return -x


async def test_register_object_with_namespace(make_service, make_client, make_url):
    svc, url = await serve_on(make_service, make_url)
    names = svc.register_object(Calculator(), namespace="calc", restricted=["secret"])
    assert set(names) >= {"calc.add", "calc.mul", "calc.static"}
    assert "calc.secret" not in names and "calc._private" not in names
    cli = connected(make_client, url)
    assert await cli.calc.add(2, 3) == 5
    assert await cli.calc.mul(4, 5) == 20
    assert await cli.calc.static(1) == -1
    assert await cli.call("calc.add", 1, 1) == 2
    for hidden in ["calc.secret", "calc._private", "calc.factor", "add", "calc"]:
        with pytest.raises(MethodNotFoundError):
            await cli.call(hidden)


async def test_register_object_n_levels_deep(make_service, make_client, make_url):
    svc, url = await serve_on(make_service, make_url)
    svc.register_object(Calculator(), namespace="a.b.c.d", restricted=["secret"])
    svc.register_object(Calculator(), namespace="a", restricted=["secret"])
    svc.register_object(Calculator(), restricted=["secret"])  # no namespace: top level
    cli = connected(make_client, url)
    assert await cli.a.b.c.d.add(1, 2) == 3
    assert await cli.a.add(1, 3) == 4
    assert await cli.add(1, 4) == 5
    with pytest.raises(MethodNotFoundError):
        await cli.a.b.add(1, 2)


async def test_register_object_module_random(make_service, make_client, make_url):
    """The 2014 suite's case: a whole module exposed under a namespace."""
    svc, url = await serve_on(make_service, make_url)
    svc.register_object(random, namespace="random")
    cli = connected(make_client, url)
    assert await cli.random.randint(7, 7) == 7
    value = await cli.random.random()
    assert isinstance(value, float) and 0 <= value < 1
    assert await cli.random.choice(["only"]) == "only"
    with pytest.raises(MethodNotFoundError):
        await cli.call("random._inst")


def test_register_object_skips_reserved_names(ctx):
    class Mixed:
        def stop(self):
            pass

        def go(self):
            pass

    svc = RPCService(context=ctx)
    try:
        assert svc.register_object(Mixed()) == ["go"]  # top-level "stop" is reserved: skipped
        assert "stop" not in svc.methods()
        svc.register_object(Mixed(), namespace="ns")  # "ns.stop" is fine
        assert "ns.stop" in svc.methods()
        with pytest.raises(ValueError):
            svc.register_object(Mixed(), namespace="stop")  # a reserved namespace
    finally:
        svc.close()


# ---------------------------------------------------------------- subclass


class Greeter(RPCService):
    def hello(self, name):
        return f"Hello {name}"

    async def shout(self, name):
        return f"HELLO {name.upper()}"

    def _helper(self):
        return "private"


class LoudGreeter(Greeter):
    def hello(self, name):  # overrides
        return f"HI {name}!"

    def extra(self):
        return "extra"


async def test_subclass_exposes_public_methods(make_service, make_client, make_url):
    svc, url = await serve_on(make_service, make_url, cls=Greeter)
    cli = connected(make_client, url)
    assert await cli.hello("World") == "Hello World"
    assert await cli.shout("x") == "HELLO X"
    with pytest.raises(MethodNotFoundError):
        await cli.call("_helper")
    assert set(svc.methods()) >= {"hello", "shout"}
    assert "_helper" not in svc.methods() and "stop" not in svc.methods()


async def test_subclass_of_subclass(make_service, make_client, make_url):
    _, url = await serve_on(make_service, make_url, cls=LoudGreeter)
    cli = connected(make_client, url)
    assert await cli.hello("x") == "HI x!"
    assert await cli.shout("y") == "HELLO Y"
    assert await cli.extra() == "extra"


def test_subclass_cannot_shadow_service_api_remotely(ctx):
    class Sneaky(RPCService):
        def useful(self):
            return 1

    svc = Sneaky(context=ctx)
    try:
        methods = svc.methods()
        assert "useful" in methods
        assert not {"bind", "stop", "register", "serve", "close"} & set(methods)
    finally:
        svc.close()


# ---------------------------------------------------------------- introspection


def test_methods_introspection(ctx):
    svc = RPCService(context=ctx)
    try:

        @svc.register
        def documented(a, b: int = 2, *, c="x"):
            """Adds things."""
            return a

        info = svc.methods()
        assert "documented" in info
        assert "a" in info["documented"]["signature"] and "c" in info["documented"]["signature"]
        assert info["documented"]["doc"] == "Adds things."
    finally:
        svc.close()


# ---------------------------------------------------------------- endpoints


async def test_bind_several_endpoints_and_bound(make_service, make_client, make_url):
    svc = make_service()
    svc.register(lambda: "pong", name="ping")
    urls = [make_url("tcp"), make_url("ipc"), make_url("inproc")]
    svc.bind(urls[0])
    svc.bind(urls[1:])
    assert svc.bound == set(urls)
    svc.start()
    for url in urls:
        cli = connected(make_client, url)
        assert await cli.ping() == "pong"


async def test_bind_only_reconciles(make_service, make_client, make_url):
    svc = make_service()
    svc.register(lambda: "pong", name="ping")
    a, b, c = make_url("tcp"), make_url("tcp"), make_url("ipc")
    svc.bind([a, b])
    svc.start()
    svc.bind([b, c], only=True)
    assert svc.bound == {b, c}
    for url in (b, c):
        assert await connected(make_client, url).ping() == "pong"
    gone = connected(make_client, a, timeout=0.3)
    with pytest.raises(RPCTimeoutError):
        await gone.ping()


async def test_bind_is_idempotent(make_service, make_url):
    svc = make_service()
    url = make_url("tcp")
    svc.bind(url)
    svc.bind(url)  # already bound: no error
    assert svc.bound == {url}


async def test_bind_address_in_use(make_service, make_url):
    url = make_url("tcp")
    first = make_service()
    first.bind(url)
    second = make_service()
    with pytest.raises(zmq.ZMQError):
        second.bind(url)
    assert second.bound == set()


async def test_bind_ports(make_service, make_client):
    svc = make_service()
    svc.register(lambda: "pong", name="ping")
    port = svc.bind_ports("127.0.0.1")
    assert isinstance(port, int) and 0 < port < 65536
    assert f"tcp://127.0.0.1:{port}" in svc.bound
    port2 = svc.bind_ports("127.0.0.1", port=0)
    assert port2 != port
    svc.start()
    assert await connected(make_client, f"tcp://127.0.0.1:{port}").ping() == "pong"
    assert await connected(make_client, f"tcp://127.0.0.1:{port2}").ping() == "pong"


# ---------------------------------------------------------------- lifecycle


async def test_async_with_serves_then_stops(make_service, make_client, make_url):
    svc = make_service()
    svc.register(lambda: "pong", name="ping")
    url = make_url("tcp")
    svc.bind(url)
    cli = connected(make_client, url, timeout=0.5)
    async with svc:
        assert await cli.ping() == "pong"
    assert svc.closed
    with pytest.raises((RPCTimeoutError, ConnectionLostError)):
        await cli.ping()


async def test_serve_until_stop(make_service, make_client, make_url):
    svc = make_service()
    svc.register(lambda: "pong", name="ping")
    url = make_url("ipc")
    svc.bind(url)
    serving = asyncio.ensure_future(svc.serve())
    cli = connected(make_client, url)
    assert await cli.ping() == "pong"
    assert not serving.done()
    await svc.stop()
    await asyncio.wait_for(serving, 2)
    assert svc.closed


async def test_stop_is_idempotent_and_close_after_stop(make_service, make_url):
    svc = make_service()
    svc.bind(make_url("tcp"))
    svc.start()
    await svc.stop()
    await svc.stop()
    svc.close()
    assert svc.closed
    with pytest.raises(RuntimeError):
        svc.start()


async def test_endpoint_is_free_after_stop(make_service, make_client, make_url):
    """No socket is left behind: another service can bind the same address."""
    url = make_url("tcp")
    first = make_service()
    first.bind(url)
    first.start()
    await first.stop()
    second = make_service()
    second.register(lambda: "second", name="who")

    def try_bind():
        try:
            second.bind(url)
            return True
        except zmq.ZMQError:
            return False

    assert await wait_until(try_bind, 3)
    second.start()
    assert await connected(make_client, url).who() == "second"


async def test_several_services_in_one_loop(make_service, make_client, make_url):
    clients = []
    for i in range(4):
        svc = make_service(name=f"svc{i}")

        @svc.register
        async def whoami(_i=i):
            await asyncio.sleep(0.01)
            return _i

        @svc.register(name=f"only_on_{i}")
        def only(_i=i):
            return _i

        url = make_url("tcp" if i % 2 else "ipc")
        svc.bind(url)
        svc.start()
        clients.append(connected(make_client, url))
    results = await asyncio.gather(*(c.whoami() for c in clients for _ in range(10)))
    assert results == [i for i in range(4) for _ in range(10)]
    for i, cli in enumerate(clients):
        assert await cli.call(f"only_on_{i}") == i
        with pytest.raises(MethodNotFoundError):
            await cli.call(f"only_on_{(i + 1) % 4}")


# ---------------------------------------------------------------- graceful stop


class StopTracker:
    def __init__(self):
        self.started = 0
        self.cancelled = 0
        self.finished = 0


async def slow_service(make_service, make_url):
    svc, url = await serve_on(make_service, make_url)
    t = StopTracker()

    @svc.register
    async def slow(seconds, result):
        t.started += 1
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            t.cancelled += 1
            raise
        t.finished += 1
        return result

    svc.register(lambda: "pong", name="ping")
    return svc, url, t


async def test_graceful_stop_finishes_in_flight_calls(make_service, make_client, make_url):
    svc, url, t = await slow_service(make_service, make_url)
    cli = connected(make_client, url)
    in_flight = [asyncio.ensure_future(cli.slow(0.3, i)) for i in range(5)]
    assert await wait_until(lambda: t.started == 5, 3)
    stopping = asyncio.ensure_future(svc.stop(grace=3))
    await asyncio.sleep(0.05)
    # new calls are refused at once while the old ones finish
    with pytest.raises(ServiceStoppingError):
        await cli.ping()
    assert await asyncio.gather(*in_flight) == list(range(5))
    await asyncio.wait_for(stopping, 3)
    assert t.finished == 5 and t.cancelled == 0
    assert svc.active_calls == 0
    assert svc.closed


async def test_stop_cancels_calls_past_grace(make_service, make_client, make_url):
    svc, url, t = await slow_service(make_service, make_url)
    cli = connected(make_client, url)
    call = asyncio.ensure_future(cli.slow(30, "never"))
    quick = asyncio.ensure_future(cli.slow(0.05, "quick"))
    assert await wait_until(lambda: t.started == 2, 3)
    await asyncio.wait_for(svc.stop(grace=0.3), 3)
    assert await quick == "quick"
    with pytest.raises(ServiceStoppingError):
        await asyncio.wait_for(call, 2)  # told, not left to time out
    assert t.cancelled == 1
    assert svc.active_calls == 0


async def test_stop_grace_zero(make_service, make_client, make_url):
    svc, url, t = await slow_service(make_service, make_url)
    cli = connected(make_client, url)
    call = asyncio.ensure_future(cli.slow(30, "never"))
    assert await wait_until(lambda: t.started == 1, 3)
    await asyncio.wait_for(svc.stop(grace=0), 2)
    with pytest.raises(ServiceStoppingError):
        await asyncio.wait_for(call, 2)
    assert t.cancelled == 1


async def test_bind_to_a_wildcard_port_records_the_port_chosen(ctx):
    svc = RPCService(context=ctx)
    try:
        svc.bind("tcp://127.0.0.1:*")
        (url,) = svc.bound
        assert url.startswith("tcp://127.0.0.1:") and not url.endswith("*")
        client = RPCClient(context=ctx, timeout=5)
        try:
            svc.start()
            client.connect(url)
            assert isinstance(await client.methods(), dict)
        finally:
            client.close()
    finally:
        await svc.stop()
