"""CPU time per call of netcall's hot path, service and client in one process (inproc), with
and without one no-op middleware on each side (issue 12: what the hooks cost).

    python benchmarks/hooks.py                  # no middleware
    python benchmarks/hooks.py --middleware     # one no-op middleware per side
    python benchmarks/hooks.py --rounds 10      # repeat, print each round

Prints, per round: CPU µs per sequential call, per call with 256 in flight, per stream item.
CPU time (``time.process_time``), not wall time, so a busy machine skews it less; compare two
checkouts by running this alternately with ``PYTHONPATH`` pointing at each ``src``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import zmq


async def _noop_service(ctx: Any, call_next: Any) -> Any:
    return await call_next()


async def _noop_client(call: Any, call_next: Any) -> Any:
    return await call_next(call)


async def one_round(middleware: bool) -> list[float]:
    from netcall import RPCClient, RPCService

    ctx = zmq.Context()
    # (no middleware argument at all without --middleware: runs against older checkouts too)
    svc = RPCService(context=ctx, **({"middleware": [_noop_service]} if middleware else {}))

    @svc.register
    async def echo(s: Any) -> Any:
        return s

    @svc.register
    async def count(n: int) -> Any:
        for i in range(n):
            yield i

    svc.bind("inproc://netcall-hooks")
    svc.start()
    cli = RPCClient(context=ctx, **({"middleware": [_noop_client]} if middleware else {}))
    cli.connect("inproc://netcall-hooks")
    try:
        for _ in range(500):  # warm-up
            await cli.echo("hello")
        out = []
        n = 3000
        t = time.process_time()
        for _ in range(n):
            await cli.echo("hello")
        out.append((time.process_time() - t) / n * 1e6)
        t = time.process_time()
        for _ in range(20):
            await asyncio.gather(*(cli.echo("hello") for _ in range(256)))
        out.append((time.process_time() - t) / (20 * 256) * 1e6)
        t = time.process_time()
        items = 0
        async for _ in cli.count(50_000):
            items += 1
        out.append((time.process_time() - t) / items * 1e6)
        return out
    finally:
        cli.close()
        await svc.stop(grace=0)
        ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--middleware", action="store_true", help="one no-op middleware per side")
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    rounds = [asyncio.run(one_round(a.middleware)) for _ in range(a.rounds)]
    line = "seq {:.2f}  256-in-flight {:.2f}  stream-item {:.2f}  (CPU us)"
    for r in rounds:
        print(line.format(*r))
    if a.rounds > 1:
        print("median: " + line.format(*(statistics.median(c) for c in zip(*rounds))))


if __name__ == "__main__":
    main()
