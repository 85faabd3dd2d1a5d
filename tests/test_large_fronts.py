"""Large payloads (issue 14) through every front, not only the asyncio client: 1 MiB and
16 MiB bytes, ``bytearray`` and ``memoryview`` arguments, numpy arrays and streams of 1 MiB
items, from the blocking client (one thread, and eight at once), the Tornado client and the
trio client, to services of every kind (asyncio, Tornado, gevent, threading), each serving in
a thread of its own over TCP. The gevent client's share is the ``large_payloads`` scenario
of ``test_gevent.py`` (its own process, with and without ``monkey.patch_all()``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from _adapter_helpers import SERVICE_KINDS, ServiceThread, serving
from conftest import tcp_url
from netcall import RPCClient
from netcall.sync import SyncRPCClient
from netcall.tornado import TornadoRPCClient

pytestmark = pytest.mark.timeout(60)

MIB = bytes(range(256)) * 4096
HUGE = MIB * 16  # 16 MiB


@pytest.fixture(params=SERVICE_KINDS)
def remote(request: pytest.FixtureRequest, ctx: Any) -> Iterator[ServiceThread]:
    yield from serving(request.param, ctx, tcp_url())


def numpy_array() -> Any:
    np = pytest.importorskip("numpy")
    return np.arange(1 << 17, dtype="f8").reshape(512, 256)  # 1 MiB


def check_array(out: Any, arr: Any) -> None:
    assert type(out) is type(arr) and out.dtype == arr.dtype and out.shape == arr.shape
    assert (out == arr).all()
    assert not out.flags.owndata  # it lies over the received message: no copy on receipt


def test_blocking_client(remote: ServiceThread, ctx: Any) -> None:
    with SyncRPCClient(context=ctx, timeout=30) as client:
        client.connect(remote.url)
        assert client.echo(MIB) == MIB
        assert client.echo(HUGE) == HUGE
        assert client.kinds(MIB, bytearray(MIB), memoryview(MIB)) == ["bytes"] * 3
        assert list(client.repeat(MIB, 8)) == [MIB] * 8
        arr = numpy_array()
        check_array(client.echo(arr), arr)
        with ThreadPoolExecutor(8) as pool:  # 8 threads, 32 calls of 1 MiB
            assert list(pool.map(client.echo, [MIB] * 32)) == [MIB] * 32
            assert list(pool.map(lambda n: list(client.repeat(MIB, n)), [3] * 8)) == [[MIB] * 3] * 8


def test_tornado_client(ctx: Any) -> None:
    remote = ServiceThread("asyncio", ctx, tcp_url()).start()
    ioloop = IOLoop(make_current=False)

    async def main() -> None:
        client = TornadoRPCClient(context=ctx, timeout=30)
        try:
            client.connect(remote.url)
            assert await client.echo(HUGE) == HUGE
            assert await client.kinds(bytearray(MIB), memoryview(MIB)) == ["bytes"] * 2
            assert [x async for x in client.repeat(MIB, 8)] == [MIB] * 8
            answers = await asyncio.gather(*(client.echo(MIB) for _ in range(16)))
            assert answers == [MIB] * 16
            arr = numpy_array()
            check_array(await client.echo(arr), arr)
        finally:
            client.close()

    try:
        ioloop.run_sync(main, timeout=45)
    finally:
        ioloop.close(all_fds=False)
        remote.stop()


def test_trio_client(ctx: Any) -> None:
    trio = pytest.importorskip("trio")
    remote = ServiceThread("asyncio", ctx, tcp_url()).start()
    arrays: list[Any] = []

    async def main() -> None:
        async with RPCClient(context=ctx, timeout=30) as client:
            client.connect(remote.url)
            assert await client.echo(HUGE) == HUGE
            assert await client.kinds(bytearray(MIB), memoryview(MIB)) == ["bytes"] * 2
            assert [x async for x in client.repeat(MIB, 8)] == [MIB] * 8
            answers: list[Any] = []

            async def one() -> None:
                answers.append(await client.echo(MIB))

            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(one)
            assert answers == [MIB] * 16
            if arrays:
                check_array(await client.echo(arrays[0]), arrays[0])

    async def bounded() -> None:
        with trio.fail_after(45):
            await main()

    try:
        arrays.append(numpy_array())
    except pytest.skip.Exception:  # (numpy is optional; the rest runs without it)
        pass
    try:
        trio.run(bounded, strict_exception_groups=True)
    finally:
        remote.stop()
