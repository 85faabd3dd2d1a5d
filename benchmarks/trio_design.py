#!/usr/bin/env python
"""How netcall should run under trio: the measurements behind the design (issue 16).

    python benchmarks/trio_design.py [--time 2] [--reps 3]

Each client runs in its own process against a server in another process (tcp://127.0.0.1),
echo('hello'), sequential and 64 in flight, median of the repetitions (interleaved):

- ``raw-fd-asyncio``: plain pyzmq DEALER on ``loop.add_reader(sock.FD)`` (``raw.py``'s client)
  against ``raw.py``'s fd server: what a socket driver on asyncio reaches;
- ``raw-fd-trio``: the same client written on ``trio.lowlevel.wait_readable`` and
  ``wait_task_rescheduled``, same server: the ceiling of a native trio socket driver
  (design (a));
- ``netcall-asyncio``: ``netcall.RPCClient`` on asyncio, against a netcall service;
- ``netcall-trio``: ``netcall.RPCClient`` under ``trio.run`` (the asyncio core on netcall's
  loop thread, trio-side shim: design (b)), same service;
- ``portal-trio``: the same core reached through ``anyio.from_thread.start_blocking_portal``
  from a plain thread, for the bridges' record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


# ----------------------------------------------------------------------------- servers


def server_main(kind: str) -> None:
    import asyncio

    sys.path.insert(0, HERE)
    sys.path.insert(0, SRC)

    def say(endpoint: str) -> None:
        print(endpoint, flush=True)

    if kind == "raw":
        import raw

        asyncio.run(raw.serve_fd(say))
    else:
        import netcall_systems

        asyncio.run(netcall_systems.serve(say))


# ----------------------------------------------------------------------------- clients


async def _bench_asyncio(echo: Any, t: float) -> dict[str, float]:
    import asyncio

    for _ in range(200):
        await echo("hello")
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < t:
        await echo("hello")
        n += 1
    seq = n / (time.perf_counter() - start)
    done = 0
    stop = time.perf_counter() + t

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await echo("hello")
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(64)))
    c64 = done / (time.perf_counter() - start)
    return {"seq": seq, "c64": c64}


async def _bench_trio(echo: Any, t: float) -> dict[str, float]:
    import trio

    for _ in range(200):
        await echo("hello")
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < t:
        await echo("hello")
        n += 1
    seq = n / (time.perf_counter() - start)
    done = 0
    stop = time.perf_counter() + t

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await echo("hello")
            done += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(64):
            nursery.start_soon(worker)
    c64 = done / (time.perf_counter() - start)
    return {"seq": seq, "c64": c64}


class TrioFdClient:
    """raw.py's protocol on a plain DEALER, driven by trio.lowlevel (design (a)'s ceiling)."""

    def __init__(self, endpoint: str) -> None:
        import msgpack
        import zmq

        self.zmq = zmq
        self.packb = msgpack.packb
        self.unpackb = msgpack.unpackb
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.pending: dict[int, Any] = {}
        self.results: dict[int, Any] = {}
        self.next_id = 0

    def drain(self) -> None:
        import trio

        zmq = self.zmq
        sock = self.sock
        unpackb = self.unpackb
        while sock.EVENTS & zmq.POLLIN:
            while True:
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                cid, _kind, value = unpackb(data)
                task = self.pending.pop(cid, None)
                if task is not None:
                    trio.lowlevel.reschedule(task, _value(value))

    async def reader(self) -> None:
        import trio

        fd = self.sock.FD
        while True:
            self.drain()
            await trio.lowlevel.wait_readable(fd)

    async def echo(self, arg: Any) -> Any:
        import trio

        self.next_id += 1
        cid = self.next_id
        self.pending[cid] = trio.lowlevel.current_task()
        self.sock.send(self.packb([cid, "echo", [arg]]), self.zmq.NOBLOCK)
        self.drain()  # the ZeroMQ FD is edge-triggered: a send may have consumed the edge
        return await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)


def _value(v: Any) -> Any:
    import outcome

    return outcome.Value(v)


def client_main(system: str, endpoint: str, t: float) -> dict[str, float]:
    sys.path.insert(0, HERE)
    sys.path.insert(0, SRC)
    if system == "raw-fd-asyncio":
        import asyncio

        import raw

        async def main_a() -> dict[str, float]:
            c = raw.FdClient(endpoint)
            try:
                return await _bench_asyncio(c.echo, t)
            finally:
                await c.close()

        return asyncio.run(main_a())
    if system == "raw-fd-trio":
        import trio

        async def main_t() -> dict[str, float]:
            c = TrioFdClient(endpoint)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(c.reader)
                out = await _bench_trio(c.echo, t)
                nursery.cancel_scope.cancel()
            c.sock.close(0)
            c.ctx.term()
            return out

        return trio.run(main_t)
    if system == "netcall-asyncio":
        import asyncio

        import netcall

        async def main_n() -> dict[str, float]:
            c = netcall.RPCClient()
            c.connect(endpoint)
            try:
                return await _bench_asyncio(c.echo, t)
            finally:
                c.close()

        return asyncio.run(main_n())
    if system == "netcall-trio":
        import trio

        import netcall

        async def main_nt() -> dict[str, float]:
            async with netcall.RPCClient() as c:
                c.connect(endpoint)
                return await _bench_trio(c.echo, t)

        return trio.run(main_nt)
    if system == "netcall-trio-proto":
        # Phase-1 prototype: the core client on the bridge, reached from trio through
        # _trio.run_on_bridge (what netcall-trio does, without the public API's plumbing).
        import trio

        from netcall import _bridge, _trio
        from netcall.client import RPCClient

        async def main_p() -> dict[str, float]:
            bridge = _bridge.acquire()
            c = bridge.call(RPCClient)
            bridge.call(c.connect, endpoint)

            def echo(s: str) -> Any:
                return _trio.run_on_bridge(bridge, c._invoke("echo", (s,), {}, None, False, 0))

            try:
                return await _bench_trio(echo, t)
            finally:
                bridge.call(c.close)
                _bridge.release(bridge)

        return trio.run(main_p)
    if system in ("sync-bridge", "sync-portal"):
        from netcall.client import RPCClient

        if system == "sync-bridge":
            from netcall.sync import SyncRPCClient

            sc = SyncRPCClient()
            sc.connect(endpoint)
            echo = sc.echo
            closer = sc.close
        else:
            import anyio.from_thread

            cm = anyio.from_thread.start_blocking_portal("asyncio")
            portal = cm.__enter__()
            c = portal.call(RPCClient)
            portal.call(c.connect, endpoint)

            async def one(s: str) -> Any:
                return await c.echo(s)

            def echo(s: str) -> Any:
                return portal.call(one, s)

            def closer() -> None:
                portal.call(c.close)
                cm.__exit__(None, None, None)

        for _ in range(200):
            echo("hello")
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < t:
            echo("hello")
            n += 1
        seq = n / (time.perf_counter() - start)
        closer()
        return {"seq": seq, "c64": float("nan")}
    raise SystemExit(f"unknown system {system}")


SYSTEMS = {
    "raw-fd-asyncio": "raw",
    "raw-fd-trio": "raw",
    "netcall-asyncio": "netcall",
    "netcall-trio": "netcall",
    "netcall-trio-proto": "netcall",
    "sync-bridge": "netcall",
    "sync-portal": "netcall",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--client", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        server_main(args.server)
        return
    if args.client:
        print(json.dumps(client_main(args.client[0], args.client[1], args.time)))
        return
    systems = args.systems.split(",")
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    results: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    try:
        for kind in sorted({SYSTEMS[s] for s in systems}):
            proc = subprocess.Popen(
                [sys.executable, __file__, "--server", kind], stdout=subprocess.PIPE, text=True
            )
            assert proc.stdout is not None
            servers[kind] = (proc, proc.stdout.readline().strip())
        for _ in range(args.reps):
            for s in systems:
                endpoint = servers[SYSTEMS[s]][1]
                out = subprocess.run(
                    [sys.executable, __file__, "--time", str(args.time), "--client", s, endpoint],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if out.returncode:
                    print(s, "failed:", out.stderr[-2000:], file=sys.stderr)
                    continue
                results[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        for proc, _ in servers.values():
            proc.kill()
            proc.wait()
    print(f"| system | sequential calls/s | 64 in flight calls/s |  (median of {args.reps})")
    print("|---|---|---|")
    for s in systems:
        rs = results[s]
        if not rs:
            print(f"| `{s}` | n/a | n/a |")
            continue
        seq = statistics.median(r["seq"] for r in rs)
        c64 = statistics.median(r["c64"] for r in rs)
        print(f"| `{s}` | {seq:,.0f} | {c64:,.0f} |")


if __name__ == "__main__":
    main()
