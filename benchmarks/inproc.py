#!/usr/bin/env python
"""CPU time per call of one end of netcall, in one process over inproc: an A/B of source trees
that the network, libzmq's I/O threads and the other end's process do not blur.

    python benchmarks/inproc.py service /tmp/base/src src      # the service's side
    python benchmarks/inproc.py client /tmp/base/src src --runs 8

``service``: a raw DEALER sends ``echo('hello')`` CALLs, ``--in-flight`` at a time, to the
benchmark service (``netcall_systems.make_service``) and reads its answers. ``client``: an
``RPCClient`` makes ``--in-flight`` calls at a time to a raw ROUTER that answers every CALL
with the same RESULT. Either way the raw peer's work is in the figure too, the same for every
tree: compare trees, not these figures with ``ab.py``'s.

Each run is a process of its own per tree (runs alternate between the trees, so drift on the
machine hits each alike). A run makes ``--calls`` calls in each of ``--rounds`` rounds, after
300 calls of warm-up, and reports the CPU time per call (``time.process_time``) of its
second-best round; the medians over runs are printed, with every run's figure. This is the
harness behind the in-process figures of session 17 in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import asyncio, sys, time
side, src, here, calls, rounds, in_flight = sys.argv[1:7]
calls, rounds, in_flight = int(calls), int(rounds), int(in_flight)
sys.path.insert(0, src)
sys.path.insert(0, here)
import msgpack, zmq
from netcall import protocol as p

ARGS = msgpack.packb(["hello"])
# The raw peers' messages from heads made once, with only the request id put in (the
# broker's retag, one slice and pack), so that their work is the same for every tree (not
# each tree's own encoder): a CALL's and a RESULT's head, request id 0.
CALL = p.call_head(0, "echo", "msgpack", 30.0, 0, 0)
RESULT = p.header(p.Kind.RESULT, 0)
ID = slice(4, p.HEADER_SIZE)  # where a header holds its request id


async def service():
    import netcall_systems
    svc = netcall_systems.make_service()
    svc.bind("inproc://inproc-bench")
    svc.start()
    peer = svc.context.socket(zmq.DEALER)
    peer.sndhwm = peer.rcvhwm = 0
    peer.connect("inproc://inproc-bench")
    sent = 0

    async def round_of(n):
        nonlocal sent
        got, start = 0, sent
        while got < n:
            for _ in range(min(in_flight, n - (sent - start))):
                peer.send_multipart([p.retag(CALL, sent), ARGS])
                sent += 1
            while got < sent - start:
                await asyncio.sleep(0)  # the service reads, answers
                while True:
                    try:
                        peer.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    got += 1

    try:
        return await measure(round_of)
    finally:
        peer.close(0)
        svc.close()


async def client():
    import netcall
    loop = asyncio.get_running_loop()
    ctx = zmq.Context.instance()
    peer = ctx.socket(zmq.ROUTER)
    peer.sndhwm = peer.rcvhwm = 0
    peer.bind("inproc://inproc-bench")
    answer = msgpack.packb("hello")

    def serve():
        while True:
            try:
                frames = peer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            head = frames[1]
            if len(head) >= p.HEADER_SIZE and head[3] == CALL[3]:
                peer.send_multipart([frames[0], RESULT[: ID.start] + head[ID] + answer])  # its id
        if peer.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            loop.call_soon(serve)

    loop.add_reader(peer.getsockopt(zmq.FD), serve)
    c = netcall.RPCClient()
    c.connect("inproc://inproc-bench")

    async def round_of(n):
        left = n

        async def caller():
            nonlocal left
            while left > 0:
                left -= 1
                await c.echo("hello")

        await asyncio.gather(*(caller() for _ in range(in_flight)))

    try:
        return await measure(round_of)
    finally:
        c.close()
        loop.remove_reader(peer.getsockopt(zmq.FD))
        peer.close(0)


async def measure(round_of):
    await round_of(300)
    cpu = []
    for _ in range(rounds):
        t0 = time.process_time()
        await round_of(calls)
        cpu.append((time.process_time() - t0) / calls * 1e6)
    cpu.sort()
    return cpu[1] if len(cpu) > 1 else cpu[0]


print(asyncio.run(service() if side == "service" else client()), flush=True)
"""


def _run(side: str, src: str, calls: int, rounds: int, in_flight: int) -> float:
    numbers = [str(calls), str(rounds), str(in_flight)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, side, str(Path(src).resolve()), str(HERE), *numbers],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{src}: the run failed\n{done.stderr[-3000:]}")
    return float(done.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("side", choices=["service", "client"])
    ap.add_argument("trees", nargs="+", help="netcall source dirs (holding the netcall package)")
    ap.add_argument("--runs", type=int, default=6, help="processes per tree (default 6)")
    ap.add_argument("--calls", type=int, default=20_000, help="calls per round (default 20,000)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds per run (default 7)")
    ap.add_argument("--in-flight", type=int, default=64, help="calls at a time (default 64)")
    ns = ap.parse_args()
    figures: dict[str, list[float]] = {tree: [] for tree in ns.trees}
    for _ in range(ns.runs):
        for tree in ns.trees:
            figures[tree].append(_run(ns.side, tree, ns.calls, ns.rounds, ns.in_flight))
    print(
        f"{ns.side}, {ns.in_flight} in flight, {ns.runs} runs of {ns.rounds} rounds of "
        f"{ns.calls:,} calls: CPU µs per call (median, then every run)"
    )
    width = max(len(tree) for tree in ns.trees)
    for tree, values in figures.items():
        runs = ", ".join(f"{v:.2f}" for v in sorted(values))
        print(f"{tree:{width}}  {statistics.median(values):6.2f}  ({runs})")


if __name__ == "__main__":
    main()
