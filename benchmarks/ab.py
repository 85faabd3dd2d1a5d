#!/usr/bin/env python
"""Interleaved A/B of netcall source trees (or the raw baselines): a service process and a
client process per system and repetition, calls/s and CPU per call on each side.

    python benchmarks/ab.py SRC_A SRC_B                 # 3 reps of 2 s, 64 in flight
    python benchmarks/ab.py raw-fd src /tmp/old/src --reps 5 --mode seq
    python benchmarks/ab.py src --mode c64 --in-flight 512
    python benchmarks/ab.py src src@gevent /tmp/old/src@gevent src@sync

A system is a directory holding the ``netcall`` package (``src`` of a checkout, or a tree made
with ``git archive <commit> src | tar -x -C /tmp/old``), or ``raw-fd``, ``raw-asyncio`` or
``raw-floor`` (``raw.py``'s baselines). ``DIR@gevent`` and ``DIR@sync`` measure that tree's bridged clients
(``GeventRPCClient`` in greenlets, ``SyncRPCClient`` in threads) against the same service.
Repetitions alternate between the systems, so drift on the machine hits each alike; the
medians are printed, with the range. CPU per call counts every thread of each process
(libzmq's I/O thread too): the client's from ``time.process_time()``, the service's from
``/proc/PID/stat`` (Linux).

Modes: ``seq`` (one call at a time), ``c64`` (``--in-flight`` coroutines calling at once, 64 by
default), ``mib`` and ``mib64`` (a 1 MiB ``bytes`` echo, sequential and at 64 in flight),
``stream`` (items of one endless stream). The client warms up with 300 sequential calls.
This is the script behind the A/B tables of session 8 in ``benchmarks/README.md``;
``run.py`` is the harness of record.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The harness's own services: raw.py's baselines, netcall_systems.py's netcall service (the
# same echo and count the harness measures).
SERVICE = r"""
import asyncio, sys
kind = sys.argv[1]
sys.path.insert(0, sys.argv[2])
if kind.startswith("raw"):
    import raw
    serve = {"raw-fd": raw.serve_fd, "raw-floor": raw.serve_floor}.get(kind, raw.serve_asyncio)
else:
    import netcall_systems
    serve = netcall_systems.serve
asyncio.run(serve(lambda endpoint: print(endpoint, flush=True)))
"""

CLIENT = r"""
import asyncio, sys, time
kind, mode, seconds, endpoint, here, in_flight = sys.argv[1:7]
seconds, in_flight = float(seconds), int(in_flight)
sys.path.insert(0, here)

async def main():
    if kind.startswith("raw"):
        import raw
        cls = {"raw-fd": raw.FdClient, "raw-floor": raw.FloorClient}.get(kind, raw.AsyncioClient)
        c = cls(endpoint)
        stream = lambda: c.stream(10**9)
    else:
        import netcall
        c = netcall.RPCClient()
        c.connect(endpoint)
        stream = lambda: c.count(10**9)
    for _ in range(300):
        await c.echo("hello")
    payload = b"y" * (1 << 20) if mode in ("mib", "mib64") else "hello"
    n = 0
    end = time.perf_counter() + seconds
    t0, c0 = time.perf_counter(), time.process_time()
    print("go", flush=True)
    if mode in ("seq", "mib"):
        while time.perf_counter() < end:
            await c.echo(payload)
            n += 1
    elif mode == "stream":
        async for _ in stream():
            n += 1
            if n % 1000 == 0 and time.perf_counter() > end:
                break
    else:
        async def worker():
            nonlocal n
            while time.perf_counter() < end:
                await c.echo(payload)
                n += 1
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - t0
    print(n / elapsed, (time.process_time() - c0) / n * 1e6, n, flush=True)
    closed = c.close()
    if asyncio.iscoroutine(closed):
        await closed

asyncio.run(main())
"""

# The bridged clients: N greenlets (gevent, no monkey patching) or N threads, each calling in turn.
BRIDGED = r"""
import sys, threading, time
kind, mode, seconds, endpoint, here, in_flight = sys.argv[1:7]
seconds, in_flight = float(seconds), int(in_flight)
if kind == "netcall-gevent":
    import gevent
    from netcall.green import GeventRPCClient as Client
    def run_all(fn, n):
        gevent.joinall([gevent.spawn(fn) for _ in range(n)])
else:
    from netcall.sync import SyncRPCClient as Client
    def run_all(fn, n):
        ts = [threading.Thread(target=fn) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
c = Client()
c.connect(endpoint)
for _ in range(300):
    c.echo("hello")
payload = b"y" * (1 << 20) if mode in ("mib", "mib64") else "hello"
counts = []
end = time.perf_counter() + seconds
def worker():
    n = 0
    while time.perf_counter() < end:
        c.echo(payload)
        n += 1
    counts.append(n)
t0, c0 = time.perf_counter(), time.process_time()
print("go", flush=True)
if mode == "stream":
    n = 0
    for _ in c.count(10**9):
        n += 1
        if n % 1000 == 0 and time.perf_counter() > end:
            break
    counts.append(n)
else:
    run_all(worker, 1 if mode in ("seq", "mib") else in_flight)
n = sum(counts)
elapsed = time.perf_counter() - t0
print(n / elapsed, (time.process_time() - c0) / n * 1e6, n, flush=True)
c.close()
"""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _one(system: str, mode: str, seconds: float, in_flight: int) -> tuple[float, float, float]:
    """(calls/s, client CPU µs per call, service CPU µs per call) of one repetition."""
    raw = system.startswith("raw-")
    tree, _, bridge = system.partition("@")
    kind = system if raw else f"netcall-{bridge}" if bridge else "netcall"
    env = dict(os.environ)
    if not raw:
        env["PYTHONPATH"] = str(Path(tree).resolve())
    py = sys.executable
    service = subprocess.Popen(
        [py, "-c", SERVICE, kind, str(HERE)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert service.stdout is not None
        endpoint = service.stdout.readline().strip()
        args = [kind, mode, str(seconds), endpoint, str(HERE), str(in_flight)]
        client = subprocess.Popen(
            [py, "-c", BRIDGED if bridge else CLIENT, *args],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None
        if client.stdout.readline().strip() != "go":
            raise RuntimeError(f"{system}: the client did not start")
        s0 = _cpu_seconds(service.pid)
        line = client.stdout.readline()
        s1 = _cpu_seconds(service.pid)
        client.wait(30)
        rate, client_cpu, n = map(float, line.split())
        return rate, client_cpu, (s1 - s0) / n * 1e6
    finally:
        service.terminate()
        service.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "systems",
        nargs="+",
        help="netcall source dirs (DIR@gevent, DIR@sync: its bridged clients), raw-fd, raw-asyncio "
        "or raw-floor",
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--time", type=float, default=2.0, help="seconds per repetition")
    ap.add_argument("--mode", default="c64", choices=["seq", "c64", "mib", "mib64", "stream"])
    ap.add_argument("--in-flight", type=int, default=64, help="calls in flight for c64 and mib64")
    a = ap.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {s: [] for s in a.systems}
    for _ in range(a.reps):
        for system in a.systems:
            results[system].append(_one(system, a.mode, a.time, a.in_flight))
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    unit = "items/s" if a.mode == "stream" else "calls/s"
    print(f"{a.mode}, {a.reps} reps of {a.time} s, load average at the end {load}")
    for system, runs in results.items():
        rates = [r[0] for r in runs]
        client = statistics.median(r[1] for r in runs)
        service = statistics.median(r[2] for r in runs)
        print(
            f"{system:32} {statistics.median(rates):>10,.0f} {unit} "
            f"({min(rates):,.0f}-{max(rates):,.0f})  "
            f"CPU per call: client {client:.1f} µs, service {service:.1f} µs"
        )


if __name__ == "__main__":
    main()
