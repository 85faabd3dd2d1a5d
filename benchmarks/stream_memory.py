#!/usr/bin/env python
"""What an idle stream of large items holds: the service (in a process of its own) yields
``bytes`` items of ``--item-mib`` MiB without end; the client reads ``--read`` of them, waits
``--wait`` seconds, and prints how much both processes' resident memory grew (Linux:
``/proc/PID/status``).

    python benchmarks/stream_memory.py                  # 8 MiB items, 1 read, 2 s
    PYTHONPATH=/tmp/old/src python benchmarks/stream_memory.py --item-mib 16

A client grants its first 16 items of credit before it has seen one; what bounds the bytes in
flight is the service's ``Limits.max_stream_window_bytes`` (4 MiB by default, one item always
goes) and then the client's ``stream_buffer``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys

SERVICE = r"""
import asyncio, sys
from netcall import RPCService

async def main(size):
    svc = RPCService()

    @svc.register
    def chunks():
        i = 0
        while True:
            yield bytes([i % 256]) * size
            i += 1

    port = svc.bind_ports()
    async with svc:
        print(f"tcp://127.0.0.1:{port}", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1])))
"""


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def measure(item_mib: float, read: int, wait: float) -> tuple[float, float]:
    from netcall import RPCClient

    proc = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(int(item_mib * 2**20))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        client = RPCClient(timeout=30.0)
        try:
            client.connect(endpoint)
            await client.methods()  # connected, before the baseline
            base_client, base_service = rss_mib(os.getpid()), rss_mib(proc.pid)
            items = client.chunks().__aiter__()
            for _ in range(read):
                await items.__anext__()
            await asyncio.sleep(wait)  # what the service sends ahead arrives meanwhile
            grown = rss_mib(os.getpid()) - base_client, rss_mib(proc.pid) - base_service
            await items.aclose()
            return grown
        finally:
            client.close()
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--item-mib", type=float, default=8.0, help="MiB per item (default 8)")
    ap.add_argument("--read", type=int, default=1, help="items the client reads (default 1)")
    ap.add_argument("--wait", type=float, default=2.0, help="seconds it then waits (default 2)")
    a = ap.parse_args(argv)
    client, service = asyncio.run(measure(a.item_mib, a.read, a.wait))
    print(
        f"stream of {a.item_mib:g} MiB items, {a.read} read, idle {a.wait:g} s: "
        f"client RSS +{client:.0f} MiB, service RSS +{service:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
