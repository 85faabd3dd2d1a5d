#!/usr/bin/env python
"""Every core: a CPU-bound handler served by 1 and by 2 worker processes, in one run.

    python benchmarks/workers.py                      # 5 interleaved reps of 3 s, 16 in flight
    python benchmarks/workers.py --reps 3 --time 2 --in-flight 32 --ms 1.0
    python benchmarks/workers.py --cli                # through `netcall serve --workers N`

Both pools (``netcall.workers.WorkerPool`` over ``tests/_workers_service.py``'s ``burn``) run
side by side; repetitions alternate between them, so drift on the machine hits both alike. The
handler's work is calibrated here to ``--ms`` milliseconds of *CPU time* (``process_time``),
so a loaded machine does not shrink it. The client runs in this process, on the loop of the
pools' brokers. Prints the medians, the ratio (2 workers / 1 worker) and the load average.

With ``--cli`` the pools are ``netcall serve _workers_service --workers N`` processes (the
command line's broker and workers), and this process is only the client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent / "tests")]

from netcall import RPCClient  # noqa: E402
from netcall.workers import WorkerPool  # noqa: E402


def calibrate(ms: float) -> int:
    """Iterations of ``burn`` that take ``ms`` milliseconds of CPU time here."""
    import _workers_service

    n = 20000
    t0 = time.process_time()
    for _ in range(50):
        _workers_service.burn(n)
    per = (time.process_time() - t0) / 50
    return max(1, int(n * ms / 1000 / per))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def measure(client: RPCClient, iterations: int, in_flight: int, seconds: float) -> float:
    done = 0
    end = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < end:
            await client.burn(iterations)
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*[caller() for _ in range(in_flight)])
    return done / (time.monotonic() - t0)


class Served:
    """``netcall serve _workers_service --workers N`` in a process of its own (``--cli``)."""

    def __init__(self, n: int, port: int) -> None:
        here = HERE.parent
        env = dict(os.environ, PYTHONPATH=f"{here / 'src'}{os.pathsep}{here / 'tests'}")
        url = f"tcp://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "netcall", "serve", "_workers_service", "--bind", url]
        self.proc = subprocess.Popen(
            [*cmd, "--workers", str(n)], env=env, stdout=subprocess.DEVNULL
        )

    @property
    def pids(self) -> list[int]:
        """The command's process and its workers."""
        pid = self.proc.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [pid, *map(int, f.read().split())]

    def start(self) -> None:
        pass

    async def wait_ready(self) -> None:
        pass  # the client's first calls wait for the workers (see main)

    async def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 30)


async def main(a: argparse.Namespace) -> None:
    iterations = calibrate(a.ms)
    ports = {n: free_port() for n in (1, 2)}
    pools: dict[int, Any] = {
        n: Served(n, p)
        if a.cli
        else WorkerPool("_workers_service:service", n, bind=f"tcp://127.0.0.1:{p}")
        for n, p in ports.items()
    }
    clients = {}
    for pool in pools.values():
        pool.start()
    for n, pool in pools.items():
        await pool.wait_ready()
        clients[n] = RPCClient(timeout=60)
        clients[n].connect(f"tcp://127.0.0.1:{ports[n]}")
        for _ in range(n * 20):  # each worker has said HELLO to the broker
            await clients[n].pid()
        await measure(clients[n], iterations, a.in_flight, 0.5)  # warm-up
    load0 = os.getloadavg()
    figures: dict[int, list[float]] = {1: [], 2: []}
    workers_ms: list[float] = []  # CPU per call in the workers, and in this process
    parent_ms: list[float] = []
    try:
        for rep in range(a.reps):
            for n in (1, 2):
                pids = pools[n].pids
                w0, p0, t0 = cpu_of(pids), time.process_time(), time.monotonic()
                rate = await measure(clients[n], iterations, a.in_flight, a.time)
                calls = rate * (time.monotonic() - t0)
                workers_ms.append((cpu_of(pids) - w0) / calls * 1e3)
                parent_ms.append((time.process_time() - p0) / calls * 1e3)
                figures[n].append(rate)
                print(f"rep {rep + 1}: {n} worker(s): {rate:8.1f} calls/s", flush=True)
    finally:
        for c in clients.values():
            c.close()
        for pool in pools.values():
            await pool.stop()
    load1 = os.getloadavg()
    one, two = (statistics.median(figures[n]) for n in (1, 2))
    print(f"\nhandler: {iterations} iterations = {a.ms} ms of CPU here; {a.in_flight} in flight")
    print(f"1 worker : {one:8.1f} calls/s (median of {a.reps})")
    print(f"2 workers: {two:8.1f} calls/s")
    print(
        f"ratio 2/1: {two / one:.2f}   (per-rep ratios: "
        + ", ".join(f"{b / o:.2f}" for o, b in zip(figures[1], figures[2]))
        + ")"
    )
    w, p = statistics.median(workers_ms), statistics.median(parent_ms)
    if a.cli:
        print(
            f"CPU per call: {w:.3f} ms in netcall serve's processes (broker + workers), "
            f"{p:.3f} ms in this process (the client)"
        )
    else:
        print(
            f"CPU per call: {w:.3f} ms in a worker, {p:.3f} ms in this process (broker + "
            f"client); so on 2 idle cores 2/1 would be about 2w/(w+p) = {2 * w / (w + p):.2f}"
        )
    print(f"cpus: {os.cpu_count()}  load average before: {load0[0]:.1f}  after: {load1[0]:.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--time", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--ms", type=float, default=1.0, help="CPU milliseconds per call")
    ap.add_argument("--cli", action="store_true", help="pools started as `netcall serve`")
    asyncio.run(main(ap.parse_args()))
