"""One benchmark process: a server (``worker.py server KIND``) or a client
(``worker.py client SYSTEM``).  Started by ``run.py``; not meant to be run by hand.

A server writes its endpoint to ``--ready FILE`` once it is bound and serves until
killed.  A client writes its figures to ``--result FILE`` (JSON) after every
measurement, so a client killed at its time limit still leaves what it measured.
Both exit on their own if the harness that started them disappears.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

# --------------------------------------------------------------------------- systems

# system -> (server kind, client kind ("async"/"blocking"), loop ("asyncio"/"uvloop"/"trio"/None))
SYSTEMS: dict[str, tuple[str, str, str | None]] = {
    "raw-zmq-asyncio": ("raw-asyncio", "async", "asyncio"),
    "raw-zmq-fd": ("raw-fd", "async", "asyncio"),
    # the fd loop with payloads in frames of their own and glibc tuned: the payloads' floor
    "raw-zmq-floor": ("raw-floor", "async", "asyncio"),
    "netcall-asyncio": ("netcall", "async", "asyncio"),
    "netcall-uvloop": ("netcall-uvloop", "async", "uvloop"),
    "netcall-gevent": ("netcall", "blocking", None),
    "netcall-sync": ("netcall", "blocking", None),
    "netcall-tornado": ("netcall", "async", "asyncio"),
    "netcall-trio": ("netcall", "async", "trio"),
    # through a broker: a broker process, and 1, 2 or 4 service processes connected out to it
    "netcall-broker-1": ("netcall-broker-1", "async", "asyncio"),
    "netcall-broker-2": ("netcall-broker-2", "async", "asyncio"),
    "netcall-broker-4": ("netcall-broker-4", "async", "asyncio"),
    "netcall-curve": ("netcall-curve", "async", "asyncio"),
    # netcall-asyncio with one no-op middleware on each side (the cost of the hook)
    "netcall-middleware": ("netcall-mw", "async", "asyncio"),
    "aiozmq-rpc": ("aiozmq", "async", "asyncio"),
    "grpc-aio": ("grpc", "async", "asyncio"),
    "zerorpc": ("zerorpc", "blocking", None),
}

NETCALL_SYSTEMS = [s for s in SYSTEMS if s.startswith("netcall")]


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _watch_parent(max_seconds: float) -> None:
    """Exit if the harness goes away or the process outlives its limit."""
    parent = os.getppid()
    start = time.monotonic()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent or time.monotonic() - start > max_seconds:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def _new_loop(kind: str | None) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


# --------------------------------------------------------------------------- servers


def run_server(kind: str, ready: str) -> None:
    def endpoint_cb(endpoint: str) -> None:
        tmp = ready + ".tmp"
        with open(tmp, "w") as f:
            f.write(endpoint)
        os.replace(tmp, ready)

    if kind == "zerorpc":
        import peers

        peers.serve_zerorpc(endpoint_cb)
        return
    if kind == "raw-asyncio":
        import raw

        coro_fn: Callable[..., Any] = raw.serve_asyncio
    elif kind == "raw-fd":
        import raw

        coro_fn = raw.serve_fd
    elif kind == "raw-floor":
        import raw

        coro_fn = raw.serve_floor
    elif kind in ("netcall", "netcall-uvloop"):
        import netcall_systems

        coro_fn = netcall_systems.serve
    elif kind == "netcall-many":  # the memory figures: per-client limits raised
        import functools

        import netcall_systems

        coro_fn = functools.partial(netcall_systems.serve, many=True)
    elif kind.startswith("netcall-broker-"):
        import functools

        import netcall_systems

        coro_fn = functools.partial(
            netcall_systems.serve_broker, services=int(kind.rsplit("-", 1)[1])
        )
    elif kind == "netcall-curve":
        import functools

        import netcall_systems

        coro_fn = functools.partial(
            netcall_systems.serve, curve_dir=netcall_systems.curve_dir(ready)
        )
    elif kind == "netcall-mw":
        import functools

        import netcall_systems

        coro_fn = functools.partial(netcall_systems.serve, middleware=True)
    elif kind == "aiozmq":
        import peers

        coro_fn = peers.serve_aiozmq
    elif kind == "grpc":
        import peers

        coro_fn = peers.serve_grpc
    else:
        raise SystemExit(f"unknown server kind {kind}")
    loop = _new_loop("uvloop" if kind == "netcall-uvloop" else None)
    asyncio.set_event_loop(loop)
    loop.run_until_complete(coro_fn(endpoint_cb))


# --------------------------------------------------------------------------- clients


class Recorder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"metrics": {}, "errors": {}, "info": {}}
        self.save()

    def save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)

    def metric(self, name: str, value: dict[str, Any]) -> None:
        self.data["metrics"][name] = value
        self.save()

    def error(self, name: str, exc: BaseException | str) -> None:
        if isinstance(exc, BaseException):
            msg = f"{type(exc).__name__}: {exc}".strip()
            self.data.setdefault("tracebacks", {})[name] = traceback.format_exc()[-2000:]
        else:
            msg = exc
        self.data["errors"][name] = msg[:300]
        self.save()


KIB = 1 << 10
MIB = 1 << 20
# every figure a client can measure, in the order measured (run.py's --figures)
SMALL_FIGURES = ["seq", "c1", "c8", "c64", "c512", "stream", "stream_sync", "stream_push"]
PAYLOAD_FIGURES = ["kib1", "kib1_c64", "mib1", "mib1_c64", "mib16", "numpy", "stream_mib"]
# the payload-size sweep: sequential echo of bytes of each size, 16 B to 16 MiB
SWEEP_SIZES = [16, 256, KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB, 4 * MIB, 16 * MIB]


def size_label(size: int, sep: str = "") -> str:
    """``16B``, ``4KiB``, ``16MiB`` (``sep=" "``: ``16 B``, ``4 KiB``, ...)."""
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{sep}{unit}"
    return f"{size}{sep}B"


SWEEP_FIGURES = [f"sweep_{size_label(s)}" for s in SWEEP_SIZES]
FIGURES = SMALL_FIGURES + PAYLOAD_FIGURES + SWEEP_FIGURES

_PAYLOADS: dict[int, bytes] = {}


def payload(size: int) -> bytes:
    """The ``size``-byte echo payload, made once per process (never in a timed loop)."""
    p = _PAYLOADS.get(size)
    if p is None:
        p = _PAYLOADS[size] = bytes([120 + len(_PAYLOADS)]) * size
    return p


def numpy_array() -> Any:
    """A 1 MiB float64 array (made once), or None when numpy is not importable."""
    try:
        import numpy as np
    except ImportError:
        return None
    return np.arange(MIB // 8, dtype=np.float64)


# (metric name, driver kind, parameters, reply length to check or None)
Step = tuple[str, str, Any, "int | None"]


def _plan(cfg: dict[str, Any], cli: Any) -> list[Step]:
    """Every figure to measure, its payload made here, once, for the selected figures only."""
    only = cfg.get("only")

    def want(name: str) -> bool:
        return not only or name in only

    t = cfg["time"]
    plan: list[Step] = []
    if want("seq"):
        plan.append(("seq", "seq", ("hello", cfg["seq_calls"], t), None))
    for c in cfg["inflight"]:
        if want(f"c{c}"):
            plan.append((f"c{c}", "conc", ("hello", c, cfg["conc_calls"], t), None))
    for kind in ("stream", "stream_sync", "stream_push"):
        if want(kind) and (kind == "stream" or hasattr(cli, kind)):
            plan.append((kind, kind, (cfg["stream_items"], t), None))
    mib_calls = cfg["mib_calls"]
    sweep = [
        (name, size)
        for name, size in zip(SWEEP_FIGURES, SWEEP_SIZES, strict=True)
        if cfg.get("sweep", True) and want(name)
    ]
    if cfg.get("payload_warmup", True) and (sweep or any(want(f) for f in PAYLOAD_FIGURES)):
        # Not recorded: one 1 MiB and one 16 MiB echo first.  glibc raises its mmap and trim
        # thresholds the first time it frees a large mapped block, which makes later large
        # messages cheaper for the raw baselines; measured (raw-zmq-asyncio, numpy 1 MiB echo,
        # loaded machine): 119 calls/s before any 16 MiB echo, 290 after.  Warming up puts every
        # payload figure, in both processes, in that state whatever figures run and in what order.
        # run.py --cold-payloads skips it (then the order of the figures matters).
        plan.append(("payload_warmup", "warm", (payload(MIB), payload(16 * MIB)), None))
    sizes = {"kib1": KIB, "kib1_c64": KIB, "mib1": MIB, "mib1_c64": MIB, "mib16": 16 * MIB}
    for name, size in sizes.items():
        if not want(name):
            continue
        if name == "kib1":
            plan.append((name, "seq", (payload(size), cfg["seq_calls"], t), size))
        elif name == "kib1_c64":
            plan.append((name, "conc", (payload(size), 64, cfg["conc_calls"], t), size))
        elif name == "mib1":
            plan.append((name, "seq", (payload(size), mib_calls, t), size))
        elif name == "mib1_c64":
            plan.append((name, "conc", (payload(size), 64, mib_calls, t), size))
        else:  # sequential only: 64 x 16 MiB in flight would be 1 GiB at each end
            plan.append((name, "seq", (payload(size), cfg.get("mib16_calls", 200), t), size))
    if want("numpy"):
        arr = numpy_array()
        n = None if arr is None else len(arr)
        plan.append(("numpy", "array", (arr, mib_calls, t), n))
    if want("stream_mib"):
        plan.append(("stream_mib", "stream_big", (cfg.get("big_stream_items", 100_000), t), MIB))
    # the sweep: each size sequentially, for at most sweep_calls calls and sweep_time seconds
    # (run.py gives it a budget per size smaller than --time, to keep a full run short)
    sweep_calls = cfg.get("sweep_calls", cfg["seq_calls"])
    sweep_time = cfg.get("sweep_time", t)
    for name, size in sweep:
        plan.append((name, "sweep", (payload(size), sweep_calls, sweep_time), size))
    return plan


def _bandwidth(res: dict[str, Any], size: int) -> dict[str, Any]:
    """A sweep figure: calls/s and latency, plus the size and MiB/s of payload each way."""
    return dict(res, size=size, mib_s=res["calls_s"] * size / MIB)


def _not_available(system: str, kind: str, params: Any, cli: Any) -> str | None:
    """Why a figure cannot be measured for this system, or None."""
    if kind == "array":
        if params[0] is None:
            return "n/a: numpy is not importable"
        if not hasattr(cli, "echo_array"):
            return f"n/a: {system} carries no numpy arrays (bytes or its own types only)"
    if kind == "stream_big" and not hasattr(cli, "stream_big"):
        return f"n/a: {system} has no stream of large items here"
    return None


def _big_stream(cli: Any, size: int) -> Callable[[int], Any]:
    """``stream(n)`` of ``size``-byte items, for the ``*_stream_big`` drivers."""
    return lambda n: cli.stream_big(n, size)


def _under_trio() -> bool:
    trio = sys.modules.get("trio")
    return trio is not None and trio.lowlevel.in_trio_run()


async def _limit(aw: Any, seconds: float) -> Any:
    """``asyncio.wait_for``, or its trio equivalent under trio."""
    if _under_trio():
        import trio

        with trio.fail_after(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)


async def _async_client(system: str, endpoint: str, cfg: dict[str, Any], rec: Recorder) -> None:
    import drivers

    if system == "raw-zmq-asyncio":
        import raw

        cli: Any = raw.AsyncioClient(endpoint)
    elif system == "raw-zmq-fd":
        import raw

        cli = raw.FdClient(endpoint)
    elif system == "raw-zmq-floor":
        import raw

        cli = raw.FloorClient(endpoint)
    elif system in ("netcall-asyncio", "netcall-uvloop", "netcall-trio") or system.startswith(
        "netcall-broker-"
    ):
        import netcall_systems

        cli = await netcall_systems.AsyncioClient().open(endpoint)
    elif system == "netcall-tornado":
        import netcall_systems

        cli = await netcall_systems.TornadoClient().open(endpoint)
    elif system == "netcall-curve":
        import netcall_systems

        keys = netcall_systems.curve_dir(rec.path)
        cli = await netcall_systems.AsyncioClient(curve_dir=keys).open(endpoint)
    elif system == "netcall-middleware":
        import netcall_systems

        cli = await netcall_systems.AsyncioClient(middleware=True).open(endpoint)
    elif system == "aiozmq-rpc":
        import peers

        cli = await peers.AiozmqClient().open(endpoint)
    elif system == "grpc-aio":
        import peers

        cli = await peers.GrpcClient().open(endpoint)
    else:
        raise SystemExit(f"unknown system {system}")
    rec.data["info"]["loop"] = (
        "trio" if _under_trio() else type(asyncio.get_running_loop()).__module__
    )
    try:
        if system == "aiozmq-rpc":
            rec.error("stream", "n/a: aiozmq.rpc has no streams")
            rec.error("stream_mib", "n/a: aiozmq.rpc has no streams")
        # warm-up: not recorded
        wt = cfg["warmup"]
        try:
            await _limit(drivers.a_conc(cli.echo, "hello", 64, 10**9, wt), wt * 4 + 10)
            await _limit(drivers.a_seq(cli.echo, "hello", 10**9, wt / 2), wt * 4 + 10)
        except Exception as e:
            rec.error("warmup", e)
        for name, kind, params, size in _plan(cfg, cli):
            if name in rec.data["errors"]:
                continue
            na = _not_available(system, kind, params, cli)
            if na:
                rec.error(name, na)
                continue
            limit = cfg["time"] * 4 + 15
            t0 = time.perf_counter()
            try:
                if kind == "warm":
                    for p in params:
                        drivers.check_len(await _limit(cli.echo(p), limit), len(p))
                    continue
                if kind in ("seq", "sweep"):
                    res = await _limit(drivers.a_seq(cli.echo, *params, size=size), limit)
                elif kind == "array":
                    res = await _limit(drivers.a_seq(cli.echo_array, *params, size=size), limit)
                elif kind == "conc":
                    res = await _limit(drivers.a_conc(cli.echo, *params, size=size), limit)
                elif kind == "stream_big":
                    big = _big_stream(cli, size)
                    res = await _limit(drivers.a_stream_big(big, size, *params), limit)
                else:
                    res = await _limit(drivers.a_stream(getattr(cli, kind), *params), limit)
                if kind == "sweep":
                    res = _bandwidth(res, size)
                rec.metric(name, dict(res, wall_s=time.perf_counter() - t0))
            except Exception as e:
                rec.error("warmup" if kind == "warm" else name, e)
        if cfg.get("memory"):
            await _memory(cli, cfg, rec)
    finally:
        try:
            await _limit(cli.close(), 10)
        except Exception as e:
            rec.error("close", e)


async def _memory(cli: Any, cfg: dict[str, Any], rec: Recorder) -> None:
    """RSS deltas (client process and service process) for N calls in flight and M open streams."""
    spid = cfg["server_pid"]
    c = cli.client
    n_calls = cfg["mem_calls"]
    n_streams = cfg["mem_streams"]
    what = cfg["memory"]
    if what == "calls":
        await _memory_calls(c, spid, n_calls, rec)
    else:
        await _memory_streams(c, spid, n_streams, rec)


async def _memory_calls(c: Any, spid: int, n_calls: int, rec: Recorder) -> None:
    try:
        await c.release()
        base_c, base_s = rss_kib(), rss_kib(spid)
        tasks = [asyncio.ensure_future(c.hold()) for _ in range(n_calls)]
        t_end = time.perf_counter() + 60
        while await c.held() < n_calls and time.perf_counter() < t_end:
            await asyncio.sleep(0.05)
        held = await c.held()
        peak_c, peak_s = rss_kib(), rss_kib(spid)
        await c.release()
        await _limit(asyncio.gather(*tasks), 60)
        rec.metric(
            "mem_calls",
            {
                "n": n_calls,
                "held": held,
                "client_mib": (peak_c - base_c) / 1024,
                "server_mib": (peak_s - base_s) / 1024,
                "client_kib_each": (peak_c - base_c) / max(held, 1),
                "server_kib_each": (peak_s - base_s) / max(held, 1),
            },
        )
    except Exception as e:
        rec.error("mem_calls", e)


async def _memory_streams(c: Any, spid: int, n_streams: int, rec: Recorder) -> None:
    try:
        base_c, base_s = rss_kib(), rss_kib(spid)
        its = []
        for _ in range(n_streams):
            it = c.count(10**9).__aiter__()
            its.append(it)
            await it.__anext__()  # the stream is open and has produced
        await asyncio.sleep(0.3)  # let prefetch windows fill
        peak_c, peak_s = rss_kib(), rss_kib(spid)
        for it in its:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
        rec.metric(
            "mem_streams",
            {
                "n": n_streams,
                "client_mib": (peak_c - base_c) / 1024,
                "server_mib": (peak_s - base_s) / 1024,
                "client_kib_each": (peak_c - base_c) / n_streams,
                "server_kib_each": (peak_s - base_s) / n_streams,
            },
        )
    except Exception as e:
        rec.error("mem_streams", e)


def _blocking_client(system: str, endpoint: str, cfg: dict[str, Any], rec: Recorder) -> None:
    if system == "zerorpc":
        import peers

        cli: Any = peers.ZerorpcClient(endpoint)
    elif system == "netcall-gevent":
        import netcall_systems

        cli = netcall_systems.GeventClient(endpoint)
    elif system == "netcall-sync":
        import netcall_systems

        cli = netcall_systems.SyncClient(endpoint)
    else:
        raise SystemExit(f"unknown system {system}")
    import drivers

    spawner = cli.spawner
    rec.data["info"]["spawner"] = spawner
    try:
        wt = cfg["warmup"]
        try:
            drivers.b_conc(cli.echo, "hello", 8, 10**9, wt, spawner)
            drivers.b_seq(cli.echo, "hello", 10**9, wt / 2)
        except Exception as e:
            rec.error("warmup", e)
        for name, kind, params, size in _plan(cfg, cli):
            na = _not_available(system, kind, params, cli)
            if na:
                rec.error(name, na)
                continue
            t0 = time.perf_counter()
            try:
                if kind == "warm":
                    for p in params:
                        drivers.check_len(cli.echo(p), len(p))
                    continue
                if kind in ("seq", "sweep"):
                    res = drivers.b_seq(cli.echo, *params, size=size)
                elif kind == "array":
                    res = drivers.b_seq(cli.echo_array, *params, size=size)
                elif kind == "conc":
                    res = drivers.b_conc(cli.echo, *params, spawner, size=size)
                elif kind == "stream_big":
                    res = drivers.b_stream_big(_big_stream(cli, size), size, *params)
                else:
                    res = drivers.b_stream(getattr(cli, kind), *params)
                if kind == "sweep":
                    res = _bandwidth(res, size)
                rec.metric(name, dict(res, wall_s=time.perf_counter() - t0))
            except Exception as e:
                rec.error("warmup" if kind == "warm" else name, e)
    finally:
        try:
            cli.close()
        except Exception as e:
            rec.error("close", e)


def run_client(system: str, endpoint: str, cfg: dict[str, Any], result: str) -> None:
    rec = Recorder(result)
    rec.data["info"]["pid"] = os.getpid()
    _server, kind, loop_kind = SYSTEMS[system]
    try:
        if loop_kind == "trio":
            import trio

            trio.run(_async_client, system, endpoint, cfg, rec)
        elif kind == "async":
            loop = _new_loop(loop_kind)
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(_async_client(system, endpoint, cfg, rec))
            finally:
                loop.close()
        else:
            _blocking_client(system, endpoint, cfg, rec)
    except BaseException as e:
        rec.error("client", e)
        raise
    rec.data["info"]["rss_kib_end"] = rss_kib()
    rec.data["done"] = True
    rec.save()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("name")
    ap.add_argument("--ready")
    ap.add_argument("--endpoint")
    ap.add_argument("--config", default="{}")
    ap.add_argument("--result")
    ap.add_argument("--max-seconds", type=float, default=900)
    a = ap.parse_args()
    _watch_parent(a.max_seconds)
    if a.role == "server":
        assert a.ready
        run_server(a.name, a.ready)
    else:
        assert a.endpoint and a.result
        run_client(a.name, a.endpoint, json.loads(a.config), a.result)
    sys.stdout.flush()
    sys.stderr.flush()
    # do not wait for libraries' non-daemon threads at exit (they could hang)
    os._exit(0)


if __name__ == "__main__":
    main()
