"""Peer libraries: zerorpc (gevent), aiozmq.rpc and grpc.aio (generic handler, bytes in/out).

Each is imported only inside the process that runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
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

    return grpc.method_handlers_generic_handler(
        "bench.Bench",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )


_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.max_receive_message_length", 8 << 20),
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
        return self

    async def echo(self, s: Any) -> Any:
        if isinstance(s, str):
            return (await self._echo(s.encode())).decode()
        return await self._echo(s)

    def stream(self, n: int) -> Any:
        return _GrpcStream(self._count(b"%d" % n))

    async def close(self) -> None:
        await self.channel.close()


class _GrpcStream:
    def __init__(self, call: Any) -> None:
        self.call = call
        self.it = call.__aiter__()

    def __aiter__(self) -> _GrpcStream:
        return self

    async def __anext__(self) -> int:
        return int(await self.it.__anext__())

    async def aclose(self) -> None:
        self.call.cancel()


# ---------------------------------------------------------------------------


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
