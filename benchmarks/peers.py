"""Peer libraries: zerorpc (gevent), aiozmq.rpc and grpc.aio (generic handler, bytes in/out).

Each is imported only inside the process that runs it.  zerorpc and grpc.aio also serve
``count_big(n, size)``, a stream of one ``size``-byte object (made once per size) sent ``n``
times.  None of them carries a numpy array (no ``echo_array``: reported n/a).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any

# =========================================================================== zerorpc (gevent)


def serve_zerorpc(endpoint_cb: Callable[[str], None], host: str = "127.0.0.1") -> None:
    import zerorpc

    class Bench:
        def echo(self, s: Any) -> Any:
            return s

        @zerorpc.stream
        def count(self, n: int) -> Iterator[int]:
            return iter(range(n))

        @zerorpc.stream
        def count_big(self, n: int, size: int) -> Iterator[bytes]:
            return repeat(_big(size), n)

    server = zerorpc.Server(Bench(), heartbeat=None)
    port = _free_port(host)
    endpoint = f"tcp://{host}:{port}"
    server.bind(endpoint)
    endpoint_cb(endpoint)
    server.run()


class ZerorpcClient:
    spawner = "gevent"

    def __init__(self, endpoint: str) -> None:
        import zerorpc

        self.client = zerorpc.Client(timeout=60, heartbeat=None)
        self.client.connect(endpoint)
        self.echo = self.client.echo

    def stream(self, n: int) -> Any:
        return self.client.count(n)

    def stream_big(self, n: int, size: int) -> Any:
        return self.client.count_big(n, size)

    def close(self) -> None:
        self.client.close()


# =========================================================================== aiozmq.rpc


async def serve_aiozmq(endpoint_cb: Callable[[str], None], host: str = "127.0.0.1") -> None:
    import aiozmq.rpc

    class Handler(aiozmq.rpc.AttrHandler):
        @aiozmq.rpc.method
        def echo(self, s: Any) -> Any:
            return s

    port = _free_port(host)
    endpoint = f"tcp://{host}:{port}"
    server = await aiozmq.rpc.serve_rpc(Handler(), bind=endpoint, log_exceptions=True)
    endpoint_cb(endpoint)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()


class AiozmqClient:
    async def open(self, endpoint: str) -> AiozmqClient:
        import aiozmq.rpc

        self.client = await aiozmq.rpc.connect_rpc(connect=endpoint, timeout=60)
        call = self.client.call
        self.echo = lambda s: call.echo(s)
        return self

    def stream(self, n: int) -> Any:
        raise NotImplementedError("aiozmq.rpc has no streams")

    async def close(self) -> None:
        self.client.close()
        await self.client.wait_closed()


# =========================================================================== grpc.aio


def _grpc_handlers() -> Any:
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def count(request: bytes, context: Any) -> Any:
        for i in range(int(request)):
            yield b"%d" % i

    async def count_big(request: bytes, context: Any) -> Any:
        n, size = (int(x) for x in request.split(b","))
        item = _big(size)
        for _ in range(n):
            yield item

    return grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "CountBig": grpc.unary_stream_rpc_method_handler(count_big),
        },
    )


# room for the 16 MiB echo
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 40 << 20),
    ("grpc.max_receive_message_length", 40 << 20),
]


async def serve_grpc(endpoint_cb: Callable[[str], None], host: str = "127.0.0.1") -> None:
    import grpc

    server = grpc.aio.server(options=_GRPC_OPTIONS)
    server.add_generic_rpc_handlers((_grpc_handlers(),))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    endpoint_cb(f"{host}:{port}")
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(0)


class GrpcClient:
    """Echo sends bytes and gets bytes back (str args are encoded, results decoded)."""

    async def open(self, endpoint: str) -> GrpcClient:
        import grpc

        self.channel = grpc.aio.insecure_channel(endpoint, options=_GRPC_OPTIONS)
        await self.channel.channel_ready()
        self._echo = self.channel.unary_unary("/bench.Bench/Echo")
        self._count = self.channel.unary_stream("/bench.Bench/Count")
        self._count_big = self.channel.unary_stream("/bench.Bench/CountBig")
        return self

    async def echo(self, s: Any) -> Any:
        if isinstance(s, str):
            return (await self._echo(s.encode())).decode()
        return await self._echo(s)

    def stream(self, n: int) -> Any:
        return _GrpcStream(self._count(b"%d" % n))

    def stream_big(self, n: int, size: int) -> Any:
        return _GrpcStream(self._count_big(b"%d,%d" % (n, size)), convert=False)

    async def close(self) -> None:
        await self.channel.close()


class _GrpcStream:
    def __init__(self, call: Any, convert: bool = True) -> None:
        self.call = call
        self.it = call.__aiter__()
        self.convert = convert

    def __aiter__(self) -> _GrpcStream:
        return self

    async def __anext__(self) -> Any:
        item = await self.it.__anext__()
        return int(item) if self.convert else item

    async def aclose(self) -> None:
        self.call.cancel()


# ---------------------------------------------------------------------------

_BIG: dict[int, bytes] = {}


def _big(size: int) -> bytes:
    """One ``size``-byte object per size, made once (a stream sends the same one)."""
    item = _BIG.get(size)
    if item is None:
        item = _BIG[size] = b"s" * size
    return item


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
