#!/usr/bin/env python
"""The floor under the bridged clients: N callers round-tripping through an asyncio loop in
another thread, with no ZeroMQ and no netcall, batched the way netcall's bridge batches.

    python benchmarks/bridge_model.py                      # 64 greenlets, 2 s
    python benchmarks/bridge_model.py --kind threads --callers 512

Each caller queues a small item in an inbox (the loop is woken once per batch, by
``call_soon_threadsafe``), the loop completes a future per item at once, and the future's
done callback wakes the caller: for greenlets, through a deque and one ``async_`` watcher of
their hub (as :class:`netcall._hub.HubPort` does); for threads, by releasing a bare lock (as
``Bridge._wait_in_thread`` does). Printed: round trips a second and the CPU per round trip (for
greenlets, split between their thread and the loop's, from ``/proc``: Linux). A bridged netcall call costs at least this on top of what
the asyncio client spends on the same call; ``benchmarks/README.md`` (session 21) compares.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each thread of this process, by thread id."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


class LoopThread:
    """An asyncio loop in a thread of its own, with an inbox woken once per batch."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.inbox: deque[tuple[Any, Callable[[Any], None]]] = deque()
        self.lock = threading.Lock()
        self.wake_pending = False
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, item: Any, done: Callable[[Any], None]) -> None:
        with self.lock:
            self.inbox.append((item, done))
            pending, self.wake_pending = self.wake_pending, True
        if not pending:
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self.lock:
            items = list(self.inbox)
            self.inbox.clear()
            self.wake_pending = False
        for item, done in items:
            fut = self.loop.create_future()
            fut.add_done_callback(done)
            fut.set_result(item)  # the "reply", at once

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def run_greenlets(callers: int, seconds: float) -> tuple[int, float]:
    import gevent
    from gevent.hub import Waiter, get_hub

    hub = get_hub()
    ready: deque[Callable[[], Any]] = deque()
    watcher = hub.loop.async_()

    def drain() -> None:
        while ready:
            ready.popleft()()

    watcher.start(drain)
    lt = LoopThread()
    count = [0]
    end = time.perf_counter() + seconds

    def call(x: Any) -> Any:
        waiter = Waiter(hub)
        switch = functools.partial(waiter.switch, None)

        def done(_fut: Any) -> None:
            ready.append(switch)
            watcher.send()

        lt.submit(x, done)
        waiter.get()
        return x

    def caller() -> None:
        while time.perf_counter() < end:
            call("hello")
            count[0] += 1

    t0 = time.perf_counter()
    gevent.joinall([gevent.spawn(caller) for _ in range(callers)])
    elapsed = time.perf_counter() - t0
    lt.stop()
    return count[0], elapsed


def run_threads(callers: int, seconds: float) -> tuple[int, float]:
    lt = LoopThread()
    counts = [0] * callers
    end = time.perf_counter() + seconds

    def caller(i: int) -> None:
        lock = threading.Lock()
        done = lambda _fut: lock.release()  # noqa: E731
        n = 0
        while time.perf_counter() < end:
            lock.acquire()
            lt.submit("hello", done)
            lock.acquire()  # until the loop's done callback releases it
            lock.release()
            n += 1
        counts[i] = n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lt.stop()
    return sum(counts), elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--kind", choices=["gevent", "threads"], default="gevent")
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--time", type=float, default=2.0, help="seconds")
    a = ap.parse_args()
    before, cpu0 = thread_cpu(), time.process_time()
    main_tid = str(threading.get_native_id())
    run = run_greenlets if a.kind == "gevent" else run_threads
    n, elapsed = run(a.callers, a.time)
    after, cpu1 = thread_cpu(), time.process_time()
    line = (
        f"{a.kind}, {a.callers} callers: {n / elapsed:,.0f} round trips/s; "
        f"CPU per round trip {(cpu1 - cpu0) / n * 1e6:.1f} µs"
    )
    if a.kind == "gevent":  # (the callers' threads are gone by now: no split for threads)
        mine = (after[main_tid] - before[main_tid]) / n * 1e6
        line += f" (the greenlets' thread {mine:.1f} µs, the loop's {(cpu1 - cpu0) / n * 1e6 - mine:.1f})"
    print(line)


if __name__ == "__main__":
    main()
