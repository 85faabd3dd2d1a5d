"""Measurement loops shared by every system.

Every loop is bounded twice: by a count and by wall-clock time, whichever comes
first, and a rate is always ``completed / elapsed``.  Two families:

* ``a_*``: asyncio drivers.  ``echo(x)`` returns an awaitable, ``stream(n)`` an
  async iterable.  "N in flight" means N tasks, each calling sequentially.
* ``b_*``: blocking drivers for gevent and threads.  ``echo(x)`` blocks the
  calling greenlet/thread, ``stream(n)`` is a plain iterable.  "N in flight"
  means N greenlets (``spawner='gevent'``) or N threads (``spawner='thread'``),
  each calling sequentially.

Payloads are made once by the caller, never inside a timed loop.  With ``size`` given,
the length of every reply (``len()``: bytes, or a numpy array's first dimension) is
checked as it arrives, outside the timed part of sequential calls.  The ``*_big``
stream drivers consume a stream of ``size``-byte items and also report MiB/s.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

perf = time.perf_counter


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class CheckError(AssertionError):
    pass


def same(got: Any, want: Any) -> bool:
    """``got == want``, also for numpy arrays (same dtype, shape and values)."""
    if hasattr(want, "__array_interface__"):
        import numpy as np

        return (
            isinstance(got, np.ndarray)
            and got.dtype == want.dtype
            and got.shape == want.shape
            and bool(np.array_equal(got, want))
        )
    return bool(got == want)


def check(got: Any, want: Any, what: str) -> None:
    if not same(got, want):
        raise CheckError(f"{what}: got {got!r:.60}, expected {want!r:.60}")


def check_len(reply: Any, size: int) -> None:
    if len(reply) != size:
        raise CheckError(f"reply of {len(reply)} items or bytes, expected {size}")


# --------------------------------------------------------------------------- asyncio


async def a_seq(
    echo: Callable[[Any], Any], arg: Any, max_calls: int, max_time: float, size: int | None = None
) -> dict[str, float]:
    """Sequential calls: calls/s, p50 and p99 latency in microseconds."""
    check(await echo(arg), arg, "echo")
    lat: list[int] = []
    ns = time.perf_counter_ns
    t0 = perf()
    deadline_ns = ns() + int(max_time * 1e9)
    append = lat.append
    for _ in range(max_calls):
        s = ns()
        r = await echo(arg)
        e = ns()
        append(e - s)
        if size is not None:
            check_len(r, size)
        if e > deadline_ns:
            break
    elapsed = perf() - t0
    lat.sort()
    return {
        "calls_s": len(lat) / elapsed,
        "p50_us": percentile(lat, 50) / 1000.0,
        "p99_us": percentile(lat, 99) / 1000.0,
        "n": len(lat),
    }


async def a_conc(
    echo: Callable[[Any], Any],
    arg: Any,
    inflight: int,
    max_calls: int,
    max_time: float,
    size: int | None = None,
) -> dict[str, float]:
    """``inflight`` tasks, each calling sequentially, until count or time runs out."""
    check(await echo(arg), arg, "echo")
    issued = 0
    done = 0
    stop = False  # once one task sees the deadline, every task stops after its current call
    t0 = perf()
    deadline = t0 + max_time

    async def worker() -> None:
        nonlocal issued, done, stop
        while issued < max_calls and not stop:
            issued += 1
            r = await echo(arg)
            if size is not None:
                check_len(r, size)
            done += 1
            if (done & 63) == 0 and perf() > deadline:
                stop = True

    await _gather([worker for _ in range(inflight)])
    elapsed = perf() - t0
    return {"calls_s": done / elapsed, "n": done}


async def _gather(fns: list[Callable[[], Any]]) -> None:
    """Run every ``fn()`` concurrently: asyncio.gather, or a nursery under trio."""
    if asyncio._get_running_loop() is not None:
        await asyncio.gather(*(fn() for fn in fns))
        return
    import trio

    async with trio.open_nursery() as nursery:
        for fn in fns:
            nursery.start_soon(fn)


async def a_stream(
    stream: Callable[[int], Any], max_items: int, max_time: float
) -> dict[str, float]:
    """Items/s of one stream consumed to its end.

    A short probe stream sizes the measured one to about ``max_time`` seconds (at most
    ``max_items``), so no system depends on how it handles a ``break`` mid-stream.
    """
    items = []
    async for x in stream(5):
        items.append(x)
    check(items, [0, 1, 2, 3, 4], "stream(5)")
    probe = max(min(2000, max_items // 4), 10)
    t0 = perf()
    async for _ in stream(probe):
        pass
    n = _stream_size(probe, perf() - t0, max_items, max_time)

    count = 0
    last = None
    t0 = perf()
    hard_deadline = t0 + max_time * 3 + 5
    it = stream(n).__aiter__()
    try:
        async for last in it:  # noqa: B007 - checked after the loop
            count += 1
            if (count & 1023) == 0 and perf() > hard_deadline:
                raise TimeoutError(f"stream of {n} items: only {count} after {perf() - t0:.1f} s")
        elapsed = perf() - t0
    finally:
        if count < n:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
    check((count, last), (n, n - 1), "stream length and last item")
    return {"items_s": count / elapsed, "n": count}


async def a_stream_big(
    stream: Callable[[int], Any], size: int, max_items: int, max_time: float
) -> dict[str, float]:
    """Items/s and MiB/s of one stream of ``size``-byte items consumed to its end, every
    item's length checked; sized by a short probe stream like :func:`a_stream`."""
    first = [x async for x in stream(2)]
    check(len(first), 2, "stream_big(2) length")
    for x in first:
        check_len(x, size)
    probe = max(min(16, max_items // 4), 2)
    t0 = perf()
    async for _ in stream(probe):
        pass
    n = _stream_size(probe, perf() - t0, max_items, max_time)

    count = 0
    t0 = perf()
    hard_deadline = t0 + max_time * 3 + 5
    it = stream(n).__aiter__()
    try:
        async for x in it:
            if len(x) != size:
                check_len(x, size)
            count += 1
            if perf() > hard_deadline:
                raise TimeoutError(f"stream of {n} items: only {count} after {perf() - t0:.1f} s")
        elapsed = perf() - t0
    finally:
        if count < n:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
    check(count, n, "stream length")
    return {"items_s": count / elapsed, "mib_s": count * size / elapsed / (1 << 20), "n": count}


def _stream_size(probe: int, probe_time: float, max_items: int, max_time: float) -> int:
    rate = probe / max(probe_time, 1e-6)
    return int(max(min(rate * max_time, max_items), probe))


# --------------------------------------------------------------------------- blocking (gevent / threads)


def _spawn_all(spawner: str, n: int, fn: Callable[[], None]) -> None:
    if spawner == "gevent":
        import gevent

        glets = [gevent.spawn(fn) for _ in range(n)]
        gevent.joinall(glets, raise_error=True)
    elif spawner == "thread":
        import threading

        errors: list[BaseException] = []

        def wrapped() -> None:
            try:
                fn()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=wrapped, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    else:
        raise ValueError(spawner)


def b_seq(
    echo: Callable[[Any], Any], arg: Any, max_calls: int, max_time: float, size: int | None = None
) -> dict[str, float]:
    check(echo(arg), arg, "echo")
    lat: list[int] = []
    ns = time.perf_counter_ns
    t0 = perf()
    deadline_ns = ns() + int(max_time * 1e9)
    append = lat.append
    for _ in range(max_calls):
        s = ns()
        r = echo(arg)
        e = ns()
        append(e - s)
        if size is not None:
            check_len(r, size)
        if e > deadline_ns:
            break
    elapsed = perf() - t0
    lat.sort()
    return {
        "calls_s": len(lat) / elapsed,
        "p50_us": percentile(lat, 50) / 1000.0,
        "p99_us": percentile(lat, 99) / 1000.0,
        "n": len(lat),
    }


def b_conc(
    echo: Callable[[Any], Any],
    arg: Any,
    inflight: int,
    max_calls: int,
    max_time: float,
    spawner: str,
    size: int | None = None,
) -> dict[str, float]:
    import threading

    check(echo(arg), arg, "echo")
    lock = threading.Lock()
    state = {"issued": 0, "done": 0}
    t0 = perf()
    deadline = t0 + max_time

    def worker() -> None:
        while True:
            with lock:
                if state["issued"] >= max_calls:
                    return
                state["issued"] += 1
            r = echo(arg)
            if size is not None:
                check_len(r, size)
            with lock:
                state["done"] += 1
            if perf() > deadline:
                return

    _spawn_all(spawner, inflight, worker)
    elapsed = perf() - t0
    return {"calls_s": state["done"] / elapsed, "n": state["done"]}


def b_stream(stream: Callable[[int], Any], max_items: int, max_time: float) -> dict[str, float]:
    """Blocking twin of :func:`a_stream`."""
    check(list(stream(5)), [0, 1, 2, 3, 4], "stream(5)")
    probe = max(min(2000, max_items // 4), 10)
    t0 = perf()
    for _ in stream(probe):
        pass
    n = _stream_size(probe, perf() - t0, max_items, max_time)

    count = 0
    last = None
    t0 = perf()
    hard_deadline = t0 + max_time * 3 + 5
    it = iter(stream(n))
    try:
        for last in it:  # noqa: B007 - checked after the loop
            count += 1
            if (count & 1023) == 0 and perf() > hard_deadline:
                raise TimeoutError(f"stream of {n} items: only {count} after {perf() - t0:.1f} s")
        elapsed = perf() - t0
    finally:
        if count < n:
            close = getattr(it, "close", None)
            if close is not None:
                close()
    check((count, last), (n, n - 1), "stream length and last item")
    return {"items_s": count / elapsed, "n": count}


def b_stream_big(
    stream: Callable[[int], Any], size: int, max_items: int, max_time: float
) -> dict[str, float]:
    """Blocking twin of :func:`a_stream_big`."""
    first = list(stream(2))
    check(len(first), 2, "stream_big(2) length")
    for x in first:
        check_len(x, size)
    probe = max(min(16, max_items // 4), 2)
    t0 = perf()
    for _ in stream(probe):
        pass
    n = _stream_size(probe, perf() - t0, max_items, max_time)

    count = 0
    t0 = perf()
    hard_deadline = t0 + max_time * 3 + 5
    it = iter(stream(n))
    try:
        for x in it:
            if len(x) != size:
                check_len(x, size)
            count += 1
            if perf() > hard_deadline:
                raise TimeoutError(f"stream of {n} items: only {count} after {perf() - t0:.1f} s")
        elapsed = perf() - t0
    finally:
        if count < n:
            close = getattr(it, "close", None)
            if close is not None:
                close()
    check(count, n, "stream length")
    return {"items_s": count / elapsed, "mib_s": count * size / elapsed / (1 << 20), "n": count}
