#!/usr/bin/env python
"""CPU cost per call, both ends in one process: a measure that holds on a busy machine.

    python benchmarks/cpu.py                                # netcall vs naive zmq.asyncio
    python benchmarks/cpu.py --sizes 16,1048576 --reps 5
    python benchmarks/cpu.py --src /tmp/old/src --label old # another checkout, same run

Wall-clock throughput needs a quiet machine. This measures what a call costs in CPU time:
client and service run on one asyncio loop in one process, over TCP loopback, and
``time.process_time()`` (every thread of the process, user and system, so ZeroMQ's I/O
threads and the kernel's copies count) is divided by the number of calls. Each
(system, size, mode) runs in a fresh process, and the repetitions are interleaved, so drift
on the machine hits every system alike; the median is reported, with the range.

Systems: ``zmq-asyncio`` (naive ``zmq.asyncio``: one msgpack frame per message, awaited
send/recv, the baseline of ``run.py``) and ``netcall`` (an ``echo`` handler). ``--src`` adds
netcall from another source tree as a third system (``--label`` names it), to compare
commits. ``calls per CPU-second`` is ``1e6 / cpu_us``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

SIZES = [16, 1024, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20]
MODES = ["seq", "c64"]


def _calls(size: int, mode: str) -> int:
    budget = 128 << 20 if mode == "seq" else 256 << 20  # bytes each way per measurement
    n = max(64 if mode == "c64" else 16, min(3000, budget // max(size, 1)))
    return n - n % 64 if mode == "c64" else n


async def _drive(call: Any, payload: bytes, mode: str, n: int) -> tuple[float, float]:
    for _ in range(min(n, 20)):
        assert len(await call(payload)) == len(payload)
    c0, t0 = time.process_time(), time.perf_counter()
    if mode == "seq":
        for _ in range(n):
            await call(payload)
    else:

        async def worker(k: int) -> None:
            for _ in range(k):
                await call(payload)

        await asyncio.gather(*(worker(n // 64) for _ in range(64)))
    return time.process_time() - c0, time.perf_counter() - t0


async def _zmq_asyncio(size: int, mode: str, n: int) -> tuple[float, float]:
    import msgpack
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    server = ctx.socket(zmq.ROUTER)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.DEALER)
    client.connect(f"tcp://127.0.0.1:{port}")
    loop = asyncio.get_running_loop()
    pending: dict[int, asyncio.Future[Any]] = {}

    async def serve() -> None:
        while True:
            peer, msg = await server.recv_multipart()
            rid, _method, args = msgpack.unpackb(msg)
            await server.send_multipart([peer, msgpack.packb([rid, 0, args[0]])])

    async def read() -> None:
        while True:
            rid, _kind, value = msgpack.unpackb(await client.recv())
            pending.pop(rid).set_result(value)

    ids = iter(range(1 << 62))

    async def call(arg: bytes) -> Any:
        rid = next(ids)
        fut = pending[rid] = loop.create_future()
        await client.send(msgpack.packb([rid, "echo", [arg]]))
        return await fut

    tasks = [asyncio.ensure_future(serve()), asyncio.ensure_future(read())]
    try:
        return await _drive(call, b"x" * size, mode, n)
    finally:
        for t in tasks:
            t.cancel()
        client.close(0)
        server.close(0)
        ctx.term()


async def _netcall(size: int, mode: str, n: int) -> tuple[float, float]:
    import zmq

    from netcall import RPCClient, RPCService

    ctx = zmq.Context()
    svc = RPCService(context=ctx)
    svc.register(lambda x: x, name="echo")
    port = svc.bind_ports()
    svc.start()
    cli = RPCClient(context=ctx, timeout=60.0)
    cli.connect(f"tcp://127.0.0.1:{port}")
    try:
        return await _drive(cli.echo, b"x" * size, mode, n)
    finally:
        cli.close()
        await svc.stop()
        ctx.term()


def _child(system: str, size: int, mode: str) -> None:
    n = _calls(size, mode)
    run = _zmq_asyncio if system == "zmq-asyncio" else _netcall
    cpu, wall = asyncio.run(run(size, mode, n))
    print(json.dumps({"cpu_us": cpu / n * 1e6, "calls_s": n / wall, "n": n}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", help="comma-separated payload sizes in bytes")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--c64-max", type=int, default=4 << 20, help="largest size run at 64 in flight")
    ap.add_argument("--src", help="also measure netcall from this source tree")
    ap.add_argument("--label", default="other", help="the name of --src's system")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--plot", help="write a throughput-vs-payload-size plot here (matplotlib)")
    ap.add_argument("--from-json", help="only plot/print the results of an earlier --json")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child(a.child[0], int(a.child[1]), a.child[2])
        return 0
    if a.from_json:
        with open(a.from_json) as f:
            saved = json.load(f)
        if a.plot:
            plot(saved["sizes"], saved["results"], a.plot)
        return 0
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else SIZES
    here = os.path.dirname(os.path.abspath(__file__))
    mine = os.path.join(os.path.dirname(here), "src")
    systems = {"zmq-asyncio": mine, "netcall": mine}
    if a.src:
        systems[a.label] = os.path.abspath(a.src)
    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    for _rep in range(a.reps):
        for size in sizes:
            for mode in a.modes.split(","):
                if mode == "c64" and size > a.c64_max:
                    continue
                for system, src in systems.items():
                    env = dict(os.environ, PYTHONPATH=src)
                    kind = "zmq-asyncio" if system == "zmq-asyncio" else "netcall"
                    res = subprocess.run(
                        [sys.executable, __file__, "--child", kind, str(size), mode],
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=600,
                    )
                    if res.returncode:
                        print(f"{system} {size} {mode}: failed\n{res.stderr[-2000:]}")
                        continue
                    key = f"{size} {mode}"
                    out.setdefault(system, {}).setdefault(key, []).append(
                        json.loads(res.stdout.splitlines()[-1])
                    )
    print(f"{'size':>9} {'mode':>4}  " + "  ".join(f"{s:>26}" for s in systems))
    for size in sizes:
        for mode in a.modes.split(","):
            cells = []
            for system in systems:
                runs = out.get(system, {}).get(f"{size} {mode}", [])
                cpu = sorted(r["cpu_us"] for r in runs)
                if not cpu:
                    cells.append(f"{'-':>26}")
                    continue
                med = statistics.median(cpu)
                cells.append(f"{med:>10.1f} µs ({cpu[0]:.0f}-{cpu[-1]:.0f})".rjust(26))
            print(f"{size:>9} {mode:>4}  " + "  ".join(cells))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"sizes": sizes, "results": out}, f, indent=1)
    if a.plot:
        plot(sizes, out, a.plot)
    return 0


def plot(sizes: list[int], out: dict[str, dict[str, list[dict[str, float]]]], path: str) -> None:
    """Payload MiB moved per CPU-second (both directions, both ends), against the size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        print(f"plot skipped: {exc}")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, by_key in out.items():
        for mode, style in (("seq", "-"), ("c64", "--")):
            xs, ys = [], []
            for size in sizes:
                runs = by_key.get(f"{size} {mode}")
                if runs:
                    cpu_us = statistics.median(r["cpu_us"] for r in runs)
                    xs.append(size)
                    ys.append(2 * size / (1 << 20) / (cpu_us / 1e6))  # echo: there and back
            if xs:
                label = f"{system} ({'sequential' if mode == 'seq' else '64 in flight'})"
                ax.plot(xs, ys, style, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("payload size, bytes")
    ax.set_ylabel("MiB echoed per CPU-second (both ends)")
    ax.set_title("echo throughput per CPU-second vs payload size (one process, tcp loopback)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
