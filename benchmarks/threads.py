#!/usr/bin/env python
"""Many OS threads making blocking calls: what the hand-off to netcall's loop costs, against
threads that each own a ZeroMQ socket and hand nothing off.

    python benchmarks/threads.py                 # 64 threads, 3 rounds of 2 s
    python benchmarks/threads.py --threads 512 --rounds 5

One service process (``netcall_systems.serve``, the harness's echo); in this process, in turn
each round:

- ``asyncio``: ``RPCClient``, that many coroutines calling ``echo("hello")`` at once;
- ``blocking``: ``SyncRPCClient``, that many threads, each call handed to netcall's loop thread
  and its answer handed back;
- ``socket-per-thread``: no netcall client at all: each thread owns a DEALER socket and makes
  the same CALL (netcall's protocol, ``send_multipart``/``recv_multipart``) with no hand-off.

Prints calls/s and this process's CPU per call for each. The third is the floor of any design
that gives each thread its own socket instead of sharing one loop (issue 14's blocking-client
target).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE)]

import msgpack  # noqa: E402
import zmq  # noqa: E402

from netcall import RPCClient  # noqa: E402
from netcall import protocol as p  # noqa: E402
from netcall.sync import SyncRPCClient  # noqa: E402

SERVICE = (
    "import asyncio, sys; sys.path.insert(0, sys.argv[1]); import netcall_systems as m; "
    "asyncio.run(m.serve(lambda e: print(e, flush=True)))"
)
Result = tuple[float, float]  # calls/s, CPU µs per call in this process


def run_asyncio(endpoint: str, n: int, seconds: float) -> Result:
    async def main() -> Result:
        async with RPCClient() as client:
            client.connect(endpoint)
            for _ in range(300):
                await client.echo("hello")
            calls = 0
            end = time.perf_counter() + seconds

            async def caller() -> None:
                nonlocal calls
                while time.perf_counter() < end:
                    await client.echo("hello")
                    calls += 1

            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(caller() for _ in range(n)))
            return calls / (time.perf_counter() - t0), (time.process_time() - c0) / calls * 1e6

    return asyncio.run(main())


def in_threads(
    n: int, seconds: float, setup: Callable[[], Any], call: Callable[[Any], Any]
) -> Result:
    total = [0]
    lock = threading.Lock()
    ready = threading.Barrier(n + 1)
    end = [0.0]

    def body() -> None:
        state = setup()
        for _ in range(20):
            call(state)
        ready.wait()
        calls = 0
        while time.perf_counter() < end[0]:
            call(state)
            calls += 1
        with lock:
            total[0] += calls

    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    end[0] = time.perf_counter() + seconds + 0.05
    ready.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    return total[0] / (time.perf_counter() - t0), (time.process_time() - c0) / total[0] * 1e6


def run_blocking(endpoint: str, n: int, seconds: float) -> Result:
    client = SyncRPCClient()
    client.connect(endpoint)
    try:
        for _ in range(100):
            client.echo("hello")
        return in_threads(n, seconds, lambda: None, lambda _: client.echo("hello"))
    finally:
        client.close()


def run_socket_per_thread(endpoint: str, n: int, seconds: float) -> Result:
    ctx = zmq.Context()
    args = msgpack.packb(["hello"])
    sockets: list[zmq.Socket[Any]] = []

    def setup() -> list[Any]:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sockets.append(sock)
        return [sock, 0]

    def call(state: list[Any]) -> Any:
        sock = state[0]
        state[1] += 1
        sock.send_multipart(p.Call(state[1], "echo", "msgpack", args).to_frames())
        reply = p.decode(sock.recv_multipart())
        while type(reply) is p.Pong:  # a service's probe after another client left: ignored
            reply = p.decode(sock.recv_multipart())
        if type(reply) is not p.Result:
            raise RuntimeError(f"unexpected reply {reply!r}")
        return msgpack.unpackb(reply.payload)

    try:
        return in_threads(n, seconds, setup, call)
    finally:
        for sock in sockets:
            sock.close(0)
        ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=64, help="threads (and coroutines) calling")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--time", type=float, default=2.0, help="seconds per measurement")
    opts = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(HERE)], stdout=subprocess.PIPE, text=True, env=env
    )
    runs: dict[str, Callable[[str, int, float], Result]] = {
        "asyncio": run_asyncio,
        "blocking": run_blocking,
        "socket-per-thread": run_socket_per_thread,
    }
    got: dict[str, list[Result]] = {name: [] for name in runs}
    try:
        assert service.stdout is not None
        endpoint = service.stdout.readline().strip()
        for _ in range(opts.rounds):
            for name, run in runs.items():
                got[name].append(run(endpoint, opts.threads, opts.time))
    finally:
        service.terminate()
        service.wait(10)
    base = statistics.median(r for r, _ in got["asyncio"])
    print(f"{opts.threads} callers, {opts.rounds} rounds of {opts.time:g} s, medians")
    for name, results in got.items():
        rate = statistics.median(r for r, _ in results)
        cpu = statistics.median(c for _, c in results)
        spread = ", ".join(f"{r:,.0f}" for r, _ in results)
        print(
            f"{name:18s} {rate:9,.0f} calls/s ({rate / base:.2f}x asyncio; {spread})"
            f"  CPU per call here {cpu:5.1f} µs"
        )
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
