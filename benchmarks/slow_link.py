#!/usr/bin/env python
"""Stream throughput over a slow link: a TCP proxy in the client's process delays every
chunk ``--delay`` seconds each way between the client and a service in a process of its own,
and the client reads one stream of ``--items`` items of ``--item-mib`` MiB.

    python benchmarks/slow_link.py                        # 50 ms each way, 2,000 items of 1 MiB
    python benchmarks/slow_link.py --stream-buffer-mib 4  # the client's default budget
    PYTHONPATH=/tmp/old/src python benchmarks/slow_link.py

What it shows: how much of a long link's bandwidth-delay product stream credit keeps full.
The client grants credit up to its ``stream_buffer`` bytes' worth (``--stream-buffer-mib``,
64 here); the service sends at most ``Limits.max_stream_window_bytes`` (4 MiB) on the credit
granted blind with the CALL, and a CREDIT's count of items at their average size after that.
The proxy forwards without flow control of its own (it is a measuring tool, not a model of a
network with loss).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

SERVICE = r"""
import asyncio
from netcall import RPCService

async def main():
    svc = RPCService()

    @svc.register
    def chunks(n, size):
        chunk = b"x" * size
        for _ in range(n):
            yield chunk

    port = svc.bind_ports()
    async with svc:
        print(port, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def _forward(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(2**20):
            loop.call_later(delay, writer.write, data)
    finally:
        loop.call_later(delay + 0.01, writer.close)


async def measure(
    delay: float, item_bytes: int, items: int, stream_buffer: int, window: int
) -> float:
    """MiB/s of one stream through the delaying proxy."""
    from netcall import RPCClient

    proc = subprocess.Popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE, text=True)
    tasks: set[asyncio.Task[None]] = set()
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            for a, b in ((reader, up_writer), (up_reader, writer)):
                task = asyncio.ensure_future(_forward(a, b, delay))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
        proxy_port = proxy.sockets[0].getsockname()[1]
        client = RPCClient(window=window, stream_buffer=stream_buffer, timeout=60.0)
        try:
            client.connect(f"tcp://127.0.0.1:{proxy_port}")
            async for _ in client.chunks(3, 10):  # connected, and a first round trip made
                pass
            got = 0
            t0 = time.perf_counter()
            async for item in client.chunks(items, item_bytes):
                got += len(item)
            return got / (time.perf_counter() - t0) / 2**20
        finally:
            client.close()
            proxy.close()
            for task in list(tasks):
                task.cancel()
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay", type=float, default=0.05, help="seconds each way (default 0.05)")
    ap.add_argument("--item-mib", type=float, default=1.0, help="MiB per item (default 1)")
    ap.add_argument("--items", type=int, default=2000, help="items in the stream (default 2000)")
    ap.add_argument(
        "--stream-buffer-mib", type=float, default=64.0, help="the client's budget (default 64)"
    )
    ap.add_argument("--window", type=int, default=1024, help="the client's window (default 1024)")
    a = ap.parse_args(argv)
    item_bytes = int(a.item_mib * 2**20)
    rate = asyncio.run(
        measure(a.delay, item_bytes, a.items, int(a.stream_buffer_mib * 2**20), a.window)
    )
    print(
        f"{a.items} items of {a.item_mib:g} MiB, {a.delay * 2000:g} ms round trips, "
        f"stream_buffer {a.stream_buffer_mib:g} MiB: {rate:.0f} MiB/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
