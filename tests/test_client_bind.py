"""Clients that bind: services connect to the client and announce themselves (no broker).
Routing by method, least-loaded spreading, streams and liveness work in this direction too."""

from __future__ import annotations

import asyncio
import time

import pytest

from _cluster import Procs, kill9
from netcall import ConnectionLostError, MethodNotFoundError, RPCClient, RPCError
from netcall.sync import SyncRPCClient

pytestmark = pytest.mark.timeout(60)


def make_math(make_service, name: str, **kwargs):  # type: ignore[no-untyped-def]
    svc = make_service(name=name, **kwargs)

    @svc.register(name="math.whoami")
    async def whoami() -> str:
        return name

    @svc.register(name="math.slow")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return name

    @svc.register(name="math.count")
    async def count(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield [name, i]

    return svc


async def announced(cli: RPCClient, method: str, names: set[str]) -> None:
    seen: set[str] = set()

    async def check() -> bool:
        try:
            seen.update(await asyncio.gather(*[cli.call(method, timeout=1) for _ in range(8)]))
        except RPCError:
            pass
        return names <= seen

    for _ in range(100):
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {seen} of {names} answered")


async def test_services_connect_to_a_client_that_binds(make_client, make_service):
    cli = make_client(timeout=5)
    port = cli.bind_ports("127.0.0.1")
    url = f"tcp://127.0.0.1:{port}"
    assert cli.bound == {url} and isinstance(cli.bound, set)
    assert cli.connected == set()
    with pytest.raises(RPCError, match="no service has connected"):
        await cli.math.whoami()
    a, b = make_math(make_service, "a"), make_math(make_service, "b")

    @b.register(name="users.get")
    async def get(uid: int) -> int:
        return uid

    for svc in (a, b):
        svc.connect(url)
        svc.start()
        assert svc.connected == {url}
    await announced(cli, "math.whoami", {"a", "b"})
    # Routing by method name: only b has users.get.
    assert set(await asyncio.gather(*[cli.users.get(i) for i in range(10)])) == set(range(10))
    with pytest.raises(MethodNotFoundError, match="nope"):
        await cli.nope()
    # Least loaded.
    names = await asyncio.gather(*[cli.math.slow(0.2) for _ in range(20)])
    assert names.count("a") == names.count("b") == 10
    # Streams stick.
    for _ in range(6):
        items = [x async for x in cli.math.count(50)]
        assert len({name for name, _ in items}) == 1
    # A service that registers a method later announces it again.
    a.register(lambda: "late", name="late.one")
    for _ in range(50):
        try:
            assert await cli.late.one() == "late"
            break
        except MethodNotFoundError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("the new method was not announced")
    # A service that stops says goodbye: new calls go to the other (once the client has read
    # the goodbye; calls sent before that fail).
    await a.stop()
    await asyncio.sleep(0.05)
    assert set(await asyncio.gather(*[cli.math.whoami() for _ in range(10)])) == {"b"}


async def test_a_service_that_dies_fails_its_calls(make_client, make_service):
    cli = make_client(timeout=10)
    url = f"tcp://127.0.0.1:{cli.bind_ports()}"
    a, b = make_math(make_service, "a"), make_math(make_service, "b")
    for svc in (a, b):
        svc.connect(url)
        svc.start()
    await announced(cli, "math.whoami", {"a", "b"})
    slow = [asyncio.ensure_future(cli.math.slow(30)) for _ in range(4)]
    await asyncio.sleep(0.2)
    t0 = time.monotonic()
    a.close()  # its connection closes with calls in flight
    done, _ = await asyncio.wait(slow, timeout=3, return_when=asyncio.FIRST_COMPLETED)
    assert done and all(isinstance(t.exception(), ConnectionLostError) for t in done)
    assert time.monotonic() - t0 < 2
    assert set(await asyncio.gather(*[cli.math.whoami() for _ in range(6)])) == {"b"}
    for t in slow:
        t.cancel()


async def test_kill9_of_a_service_process(make_client):
    procs = Procs()
    try:
        cli = make_client(timeout=10)
        url = f"tcp://127.0.0.1:{cli.bind_ports()}"
        victim = await procs.service("math-a", "math", url)
        await procs.service("math-b", "math", url)
        await announced(cli, "math.whoami", {"math-a", "math-b"})
        gens = [await cli.math.endless() for _ in range(4)]
        owners = [(await g.asend(None))[0] for g in gens]
        assert set(owners) == {"math-a", "math-b"}
        await kill9(victim)
        t0 = time.monotonic()
        for g, owner in zip(gens, owners):
            if owner == "math-a":
                with pytest.raises(ConnectionLostError):
                    while True:
                        await g.asend(None)
            else:
                await g.aclose()
        assert time.monotonic() - t0 < 2.5
        assert set(await asyncio.gather(*[cli.math.whoami() for _ in range(6)])) == {"math-b"}
    finally:
        await procs.cleanup()


def test_blocking_client_binds(ctx):
    import threading

    from netcall import RPCService

    cli = SyncRPCClient(timeout=5, context=ctx)
    try:
        port = cli.bind_ports()
        assert cli.bound == {f"tcp://127.0.0.1:{port}"} and cli.connected == set()
        ready = threading.Event()
        stop: list[asyncio.AbstractEventLoop] = []

        async def serve() -> None:
            svc = RPCService(context=ctx)
            svc.register(lambda a, b: a + b, name="add")
            svc.connect(f"tcp://127.0.0.1:{port}")
            async with svc:
                stop.append(asyncio.get_running_loop())
                ready.set()
                while stop:
                    await asyncio.sleep(0.02)

        t = threading.Thread(target=asyncio.run, args=(serve(),))
        t.start()
        try:
            assert ready.wait(5)
            deadline = time.monotonic() + 5
            while True:
                try:
                    assert cli.add(2, 3) == 5
                    break
                except RPCError:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
        finally:
            stop.clear()
            t.join(5)
    finally:
        cli.close()


@pytest.mark.parametrize("adapter", ["sync", "gevent"])
def test_bound_and_connected_are_local_sets_2014_spellings(adapter, ctx, tmp_path):
    from conftest import inproc_url, ipc_url, tcp_url

    if adapter == "gevent":
        pytest.importorskip("gevent")
        from netcall.green import GeventRPCClient as Client
    else:
        Client = SyncRPCClient
    urls = [tcp_url(), ipc_url(tmp_path), inproc_url()]
    extra = [tcp_url(), inproc_url()]
    for op, attr, other in (("bind", "bound", "connected"), ("connect", "connected", "bound")):
        client = Client(context=ctx)
        try:
            assert not client.bound and not client.connected
            getattr(client, op)(urls[0])
            assert getattr(client, attr) == {urls[0]} and not getattr(client, other)
            getattr(client, op)(urls)
            getattr(client, op)(urls[:2] + extra)
            assert getattr(client, attr) == set(urls + extra)
            getattr(client, op)(urls[:2] + extra, only=True)
            assert getattr(client, attr) == set(urls[:2] + extra)
            assert isinstance(getattr(client, attr), set) and not getattr(client, other)
        finally:
            client.close()
