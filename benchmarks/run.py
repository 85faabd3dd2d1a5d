#!/usr/bin/env python
"""netcall benchmark harness: netcall vs raw pyzmq vs peer RPC libraries, as ratios.

    python benchmarks/run.py                 # full run (a few minutes)
    python benchmarks/run.py --quick         # smoke run, a few seconds
    python benchmarks/run.py --systems raw-zmq-asyncio,netcall-asyncio --out /tmp/b
    python benchmarks/run.py --figures payload --no-memory   # only the payload figures
    python benchmarks/run.py --figures sweep --reps 3        # only the payload-size sweep

Each server runs in its own process; each client too (so gevent, uvloop and
threads never share an interpreter).  Repetitions are interleaved: for each
repetition every system is measured once, so drift on the machine hits every
system alike; the reported figure is the median over repetitions.  Every figure is
also reported as a ratio to ``raw-zmq-asyncio`` measured in the same run.
Writes ``results.json``, ``results.md``, ``throughput.png`` (calls/s vs calls in flight)
and ``payload_throughput.png`` (MiB/s and calls/s vs payload size) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from worker import (  # noqa: E402
    FIGURES,
    PAYLOAD_FIGURES,
    SWEEP_FIGURES,
    SWEEP_SIZES,
    SYSTEMS,
    size_label,
)

BASELINE = "raw-zmq-asyncio"
ALL_SYSTEMS = list(SYSTEMS)
QUICK_SYSTEMS = ["raw-zmq-asyncio", "raw-zmq-fd", "netcall-asyncio", "netcall-curve"]
INFLIGHT = [1, 8, 64, 512]

FULL_CFG: dict[str, Any] = {
    "time": 1.0,
    "warmup": 0.5,
    "reps": 5,
    "seq_calls": 100_000,
    "conc_calls": 1_000_000,
    "stream_items": 10_000_000,
    "mib_calls": 10_000,
    "mib16_calls": 1_000,
    "big_stream_items": 100_000,
    "inflight": INFLIGHT,
    "mem_calls": 10_000,
    "mem_streams": 1_000,
    # the payload-size sweep: a budget per size much smaller than "time" (10 sizes), and only
    # in the first sweep_reps repetitions, so it adds about a minute to a full run
    "sweep_time": 0.1,
    "sweep_calls": 100_000,
    "sweep_reps": 3,
}
QUICK_CFG: dict[str, Any] = {
    "time": 0.15,
    "warmup": 0.1,
    "reps": 1,
    "seq_calls": 2_000,
    "conc_calls": 5_000,
    "stream_items": 20_000,
    "mib_calls": 50,
    "mib16_calls": 3,
    "big_stream_items": 12,
    "inflight": INFLIGHT,
    "mem_calls": 1_000,
    "mem_streams": 100,
    "sweep_time": 0.02,
    "sweep_calls": 20,
    "sweep_reps": 1,
}

# (metric, field, column title, higher is better): small messages ('hello', integers)
COLUMNS = [
    ("seq", "calls_s", "sequential calls/s", True),
    ("seq", "p50_us", "p50 µs", False),
    ("seq", "p99_us", "p99 µs", False),
    ("c1", "calls_s", "1 in flight", True),
    ("c8", "calls_s", "8 in flight", True),
    ("c64", "calls_s", "64 in flight", True),
    ("c512", "calls_s", "512 in flight", True),
    ("stream", "items_s", "stream items/s", True),
]
# ... and payloads (bytes echoed, a numpy array echoed, a stream of 1 MiB bytes items)
PAYLOAD_COLUMNS = [
    ("kib1", "calls_s", "1 KiB seq calls/s", True),
    ("kib1_c64", "calls_s", "1 KiB 64 in flight", True),
    ("mib1", "calls_s", "1 MiB seq calls/s", True),
    ("mib1_c64", "calls_s", "1 MiB 64 in flight", True),
    ("mib16", "calls_s", "16 MiB seq calls/s", True),
    ("numpy", "calls_s", "numpy 1 MiB seq calls/s", True),
    ("stream_mib", "items_s", "stream of 1 MiB items, items/s", True),
    ("stream_mib", "mib_s", "stream MiB/s", True),
]
# ... and the payload-size sweep: MiB/s of payload each way (calls/s x size), per size
SWEEP_COLUMNS = [
    (name, "mib_s", size_label(size, " "), True)
    for name, size in zip(SWEEP_FIGURES, SWEEP_SIZES, strict=True)
]
# --figures shortcuts
FIGURE_GROUPS = {
    "payload": PAYLOAD_FIGURES,
    "sweep": SWEEP_FIGURES,
    "small": [f for f in FIGURES if f not in PAYLOAD_FIGURES and f not in SWEEP_FIGURES],
}


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process in its own process group, always killed by ``stop``."""

    def __init__(self, args: list[str], log: str) -> None:
        self.log_path = log
        self.log = open(log, "wb")  # noqa: SIM115 - open for the process lifetime
        self.p = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "worker.py"), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=os.path.dirname(HERE),
        )
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait(self, timeout: float) -> bool:
        try:
            self.p.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        if self.p.poll() is None:
            for sig, grace in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    break
                if self.wait(grace):
                    break
        else:
            # the leader exited; make sure nothing it started is left in its group
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.log.close()

    def tail(self, n: int = 600) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace").strip()
        except OSError:
            return ""


def start_server(kind: str, tmp: str, timeout: float = 20.0) -> tuple[Proc, str]:
    ready = os.path.join(tmp, f"server-{kind}-{time.monotonic_ns()}.ready")
    # A server lives as long as the run (the harness stops it; it also exits if the harness
    # goes away): a generous bound, not the worker's 900 s default that a full run outlasts.
    proc = Proc(["server", kind, "--ready", ready, "--max-seconds", "21600"], ready + ".log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(ready):
            with open(ready) as f:
                return proc, f.read().strip()
        if not proc.alive():
            break
        time.sleep(0.02)
    proc.stop()
    raise RuntimeError(f"server {kind} did not start: {proc.tail() or 'timeout'}")


def run_client(
    system: str, endpoint: str, server_pid: int, cfg: dict[str, Any], tmp: str, timeout: float
) -> dict[str, Any]:
    result = os.path.join(tmp, f"client-{system}-{time.monotonic_ns()}.json")
    ccfg = dict(cfg, server_pid=server_pid)
    proc = Proc(
        [
            "client",
            system,
            "--endpoint",
            endpoint,
            "--result",
            result,
            "--config",
            json.dumps(ccfg),
            "--max-seconds",
            str(timeout + 30),
        ],
        result + ".log",
    )
    try:
        finished = proc.wait(timeout)
    finally:
        proc.stop()
    data: dict[str, Any] = {"metrics": {}, "errors": {}, "info": {}}
    if os.path.exists(result):
        with open(result) as f:
            data = json.load(f)
    if not finished:
        data["errors"]["client"] = f"killed after {timeout:.0f} s time limit"
    elif not data.get("done") and "client" not in data["errors"]:
        data["errors"]["client"] = f"client exited with {proc.p.returncode}: {proc.tail(300)}"
    return data


# --------------------------------------------------------------------------- availability


def probe(system: str) -> str | None:
    """None if the system's modules import, else the reason it is skipped."""
    mods = {
        "netcall-asyncio": ["netcall"],
        "netcall-uvloop": ["netcall", "uvloop"],
        "netcall-gevent": ["netcall.green", "gevent"],
        "netcall-sync": ["netcall.sync"],
        "netcall-tornado": ["netcall.tornado", "tornado"],
        "netcall-curve": ["netcall.security"],
        "netcall-middleware": ["netcall"],
        "aiozmq-rpc": ["aiozmq.rpc"],
        "grpc-aio": ["grpc"],
        "zerorpc": ["zerorpc"],
    }.get(system, ["zmq", "msgpack"])
    code = "import " + ", ".join(mods)
    try:
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=os.path.dirname(HERE),
        )
    except subprocess.TimeoutExpired:
        return f"n/a: importing {', '.join(mods)} timed out"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"n/a: {last}"
    return None


# --------------------------------------------------------------------------- the run


def versions() -> dict[str, str]:
    """Versions as the worker processes see them (same interpreter, cwd and environment)."""
    code = (
        "import json, importlib.metadata as md, zmq, sys\n"
        "v = {'python': sys.version.split()[0], 'pyzmq': zmq.__version__, 'libzmq': zmq.zmq_version()}\n"
        "for d in ['msgpack', 'netcall', 'uvloop', 'gevent', 'tornado', 'zerorpc', 'aiozmq', 'grpcio', 'numpy']:\n"
        "    try: v[d] = md.version(d)\n"
        "    except Exception: v[d] = 'not installed'\n"
        "try:\n"
        "    import netcall; v['netcall_path'] = netcall.__file__ or '?'\n"
        "    if v['netcall'] == 'not installed': v['netcall'] = getattr(netcall, '__version__', '?')\n"
        "except Exception as e: v['netcall_path'] = f'not importable: {e}'\n"
        "print(json.dumps(v))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(HERE),
    )
    v = json.loads(r.stdout) if r.returncode == 0 else {}
    v["nproc"] = str(os.cpu_count())
    v["loadavg_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    v["platform"] = platform.platform()
    v["cpu"] = _cpu_model()
    v["git"] = git_describe(v.get("netcall_path", ""))
    return v


def _git(cwd: str, *args: str) -> str | None:
    try:
        r = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=cwd, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_describe(netcall_file: str) -> str:
    """The commit of the git checkout the imported ``netcall`` package comes from, with
    ``-dirty`` when that checkout has uncommitted changes (tracked or not) in the package's
    source directory (``src/``); ``?`` with the reason when it is not from a checkout."""
    if not netcall_file or not os.path.isabs(netcall_file):
        return f"? (netcall {netcall_file or 'not importable'})"
    pkg = os.path.dirname(netcall_file)
    parent = os.path.dirname(pkg)
    src = parent if os.path.basename(parent) == "src" else pkg
    sha = _git(pkg, "rev-parse", "--short", "HEAD")
    if not sha:
        return f"? (netcall from {pkg}, not a git checkout)"
    status = _git(src, "status", "--porcelain", "--", ".")
    if status is None:
        return sha + "-unknown"
    return sha + ("-dirty" if status else "")


# environment variables that change the figures: recorded in the command line
_ENV_IN_COMMAND = (
    "PYTHONPATH",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "GLIBC_TUNABLES",
    "NETCALL_MALLOC_TUNING",
    "PYTHONMALLOC",
)


def command_line(argv: list[str]) -> str:
    """The command as run, with the environment settings that change the figures."""
    import shlex

    env = [f"{k}={shlex.quote(os.environ[k])}" for k in _ENV_IN_COMMAND if k in os.environ]
    return " ".join([*env, "python benchmarks/run.py", *(shlex.quote(a) for a in argv)])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def aggregate(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field over the repetitions that produced it."""
    out: dict[str, Any] = {}
    names = {m for r in reps for m in r.get("metrics", {})}
    for m in names:
        runs = [r["metrics"][m] for r in reps if m in r.get("metrics", {})]
        fields = {k for run in runs for k in run}
        agg: dict[str, Any] = {}
        for k in fields:
            vals = [run[k] for run in runs if isinstance(run.get(k), (int, float))]
            if vals:
                agg[k] = statistics.median(vals)
        agg["reps"] = len(runs)
        out[m] = agg
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: tiny counts, a few systems (< 30 s)"
    )
    ap.add_argument("--systems", help=f"comma-separated subset of: {', '.join(ALL_SYSTEMS)}")
    ap.add_argument(
        "--out",
        help="output directory (default: benchmarks/results, or benchmarks/results-quick"
        " with --quick, so a smoke run never overwrites the published results)",
    )
    ap.add_argument("--reps", type=int, help="repetitions (median reported)")
    ap.add_argument("--time", type=float, help="seconds per measurement")
    ap.add_argument(
        "--sweep-time",
        type=float,
        help="seconds per payload size in the sweep (default 0.1; --quick: 0.02)",
    )
    ap.add_argument(
        "--sweep-reps",
        type=int,
        help="repetitions that include the sweep (default: the first 3 in a full run; every "
        "repetition when --figures is given)",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the RSS measurements")
    ap.add_argument(
        "--cold-payloads",
        action="store_true",
        help="no unrecorded 1 MiB and 16 MiB echo before the payload figures (glibc's malloc "
        "thresholds then depend on which large figures ran before)",
    )
    ap.add_argument(
        "--figures",
        help="comma-separated subset of figures to measure (default: all): "
        f"{', '.join(FIGURES)}, memory; or a group: "
        + ", ".join(f"{g} ({','.join(fs)})" for g, fs in FIGURE_GROUPS.items()),
    )
    ap.add_argument(
        "--from-json", metavar="FILE", help="only rewrite the reports from a results.json"
    )
    a = ap.parse_args(argv)
    if a.out is None:
        a.out = os.path.join(HERE, "results-quick" if a.quick else "results")
    if a.from_json:
        with open(a.from_json) as f:
            results = json.load(f)
        return write_reports(results, a.out)

    cfg = dict(QUICK_CFG if a.quick else FULL_CFG)
    if a.reps:
        cfg["reps"] = a.reps
    if a.time:
        cfg["time"] = a.time
    if a.sweep_time:
        cfg["sweep_time"] = a.sweep_time
    elif a.time:
        cfg["sweep_time"] = min(cfg["sweep_time"], a.time)
    if a.figures:
        cfg["sweep_reps"] = cfg["reps"]
    if a.sweep_reps is not None:
        cfg["sweep_reps"] = a.sweep_reps
    if a.cold_payloads:
        cfg["payload_warmup"] = False
    if a.systems:
        systems = [s.strip() for s in a.systems.split(",") if s.strip()]
        bad = [s for s in systems if s not in SYSTEMS]
        if bad:
            ap.error(f"unknown systems {bad}; known: {', '.join(ALL_SYSTEMS)}")
    else:
        systems = list(QUICK_SYSTEMS if a.quick else ALL_SYSTEMS)
    if BASELINE not in systems:
        systems.insert(0, BASELINE)  # ratios need the baseline in the same run
    figures = list(FIGURES)
    if a.figures:
        figures = []
        for f in (x.strip() for x in a.figures.split(",")):
            figures += FIGURE_GROUPS.get(f, [f] if f else [])
        bad = [f for f in figures if f not in FIGURES and f != "memory"]
        if bad:
            ap.error(f"unknown figures {bad}; known: {', '.join([*FIGURES, 'memory'])}")
        if "memory" not in figures:
            a.no_memory = True
        figures = [f for f in figures if f != "memory"] or ["none"]
        cfg["only"] = figures

    # wall-clock bound for one client process: metrics x (time + slack) + warm-up + start-up
    n_metrics = len([f for f in figures if f in FIGURES and f not in SWEEP_FIGURES])
    n_sweep = len([f for f in figures if f in SWEEP_FIGURES])
    client_timeout = (
        n_metrics * (cfg["time"] * 3 + 3)
        + n_sweep * (cfg["sweep_time"] * 3 + 3)
        + cfg["warmup"] * 3
        + 20
    )
    if a.quick:
        client_timeout = 25.0

    t_start = time.time()
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="netcall-bench-")
    results: dict[str, Any] = {
        "command": command_line(sys.argv[1:] if argv is None else argv),
        "config": cfg,
        "baseline": BASELINE,
        "env": versions(),
        "systems": {},
    }
    status: dict[str, str] = {}
    servers: dict[str, tuple[Proc, str]] = {}
    raw_reps: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    try:
        for s in systems:
            reason = probe(s)
            if reason:
                status[s] = reason
                print(f"[bench] {s}: {reason}", flush=True)
        for s in systems:
            if s in status:
                continue
            kind = SYSTEMS[s][0]
            if kind not in servers:
                try:
                    servers[kind] = start_server(kind, tmp)
                except Exception as e:
                    status[s] = f"n/a: {e}"[:300]
                    print(f"[bench] {s}: {status[s]}", flush=True)
        for rep in range(cfg["reps"]):
            for s in systems:
                if s in status:
                    continue
                kind = SYSTEMS[s][0]
                proc, endpoint = servers[kind]
                if not proc.alive():
                    status[s] = f"n/a: server died: {proc.tail(300)}"
                    continue
                t0 = time.monotonic()
                # the sweep only in the first sweep_reps repetitions (its median is over those)
                rcfg = cfg if rep < cfg["sweep_reps"] else dict(cfg, sweep=False)
                data = run_client(s, endpoint, proc.pid, rcfg, tmp, client_timeout)
                raw_reps[s].append(data)
                errs = {
                    k: v.splitlines()[0] for k, v in data["errors"].items() if k != "warmup" and v
                }
                print(
                    f"[bench] rep {rep + 1}/{cfg['reps']} {s}: {time.monotonic() - t0:.1f} s"
                    + (f"; errors: {errs}" if errs else ""),
                    flush=True,
                )
                if not data["metrics"] and "client" in data["errors"]:
                    status[s] = "n/a: " + data["errors"]["client"]
        # memory: netcall's asyncio client against a fresh service, in a fresh client
        # process for each figure (a heap that already grew would hide the growth)
        if not a.no_memory:
            for s in [x for x in ("netcall-asyncio",) if x in systems and x not in status]:
                mem: dict[str, Any] = {"metrics": {}, "errors": {}}
                results.setdefault("memory", {})[s] = mem
                for what in ("calls", "streams"):
                    try:
                        # per-client limits raised: one client holds all of them
                        proc, endpoint = start_server("netcall-many", tmp)
                    except Exception as e:
                        mem["errors"]["mem_" + what] = f"n/a: {e}"
                        continue
                    try:
                        mcfg = dict(cfg, memory=what, only=["none"], warmup=0.05)
                        data = run_client(
                            s, endpoint, proc.pid, mcfg, tmp, 150.0 if not a.quick else 20.0
                        )
                    finally:
                        proc.stop()
                    mem["metrics"].update(
                        {k: v for k, v in data["metrics"].items() if k.startswith("mem")}
                    )
                    mem["errors"].update(
                        {
                            k: v
                            for k, v in data["errors"].items()
                            if k.startswith("mem") or k == "client"
                        }
                    )
                print(f"[bench] memory {s}: {mem}", flush=True)
    finally:
        for proc, _ in servers.values():
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    for s in systems:
        reps = raw_reps[s]
        errors: dict[str, str] = {}
        for r in reps:
            for k, v in r.get("errors", {}).items():
                errors.setdefault(k, v)
        tracebacks: dict[str, str] = {}
        for r in reps:
            tracebacks.update(r.get("tracebacks", {}))
        results["systems"][s] = {
            "status": status.get(s, "ok"),
            "metrics": aggregate(reps),
            "errors": errors,
            "tracebacks": tracebacks,
            "info": reps[-1]["info"] if reps else {},
        }
    add_ratios(results)
    results["elapsed_s"] = round(time.time() - t_start, 1)
    results["env"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return write_reports(results, a.out)


def write_reports(results: dict[str, Any], out: str) -> int:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    md = markdown(results)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    notes = {
        "throughput.png": plot(results, os.path.join(out, "throughput.png")),
        "payload_throughput.png": plot_sweep(results, os.path.join(out, "payload_throughput.png")),
    }
    print(md)
    for note in notes.values():
        if note:
            print(note)
    pngs = "".join(f", {name}" for name, note in notes.items() if not note)
    print(f"[bench] wrote {out}/results.json, results.md{pngs} in {results.get('elapsed_s')} s")
    return 0


def add_ratios(results: dict[str, Any]) -> None:
    base = results["systems"].get(BASELINE, {}).get("metrics", {})
    for sysres in results["systems"].values():
        ratios: dict[str, float] = {}
        for m, field, _title, higher in COLUMNS + PAYLOAD_COLUMNS + SWEEP_COLUMNS:
            v = sysres["metrics"].get(m, {}).get(field)
            b = base.get(m, {}).get(field)
            if isinstance(v, (int, float)) and isinstance(b, (int, float)) and v > 0 and b > 0:
                ratios[f"{m}.{field}"] = v / b if higher else b / v
        sysres["ratios"] = ratios


# --------------------------------------------------------------------------- reports


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"  # small MiB/s (16 B payloads): three significant digits


def cell(sysres: dict[str, Any], m: str, field: str, with_ratio: bool = True) -> str:
    v = sysres["metrics"].get(m, {}).get(field)
    if not isinstance(v, (int, float)):
        err = sysres["errors"].get(m) or (sysres["status"] if sysres["status"] != "ok" else "")
        return "n/a" if err else "–"  # noqa: RUF001
    r = sysres.get("ratios", {}).get(f"{m}.{field}")
    if with_ratio and r is not None:
        return f"{_fmt(v)} ({r:.2f}×)"  # noqa: RUF001
    return _fmt(v)


def table(
    results: dict[str, Any],
    columns: list[tuple[str, str, str, bool]],
    ratio_fields: tuple[str, ...] = ("calls_s", "items_s"),
) -> list[str]:
    """One markdown table, a row per system; columns nobody measured are left out (no table
    at all when nothing in it was measured).  Fields in ``ratio_fields`` carry the ratio."""
    systems = results["systems"]
    measured = [c for c in columns if any(c[0] in r["metrics"] for r in systems.values())]
    if not measured:
        return []
    columns = measured
    header = ["system"] + [c[2] for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s, r in systems.items():
        row = [f"`{s}`"]
        for m, field, _title, _h in columns:
            row.append(cell(r, m, field, with_ratio=field in ratio_fields))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    env = results["env"]
    lines = [
        "## Results",
        "",
        f"`{results['command']}` — {env.get('nproc')} cores ({env.get('cpu')}), Python {env.get('python')}, "
        f"pyzmq {env.get('pyzmq')}, libzmq {env.get('libzmq')}, netcall {env.get('netcall')} (git {env.get('git')}); "
        f"{results['config']['reps']} repetitions of {results['config']['time']} s, median; "
        f"echo of `'hello'` (payloads: below) over tcp://127.0.0.1, service and client in separate processes; "
        f"load average {env.get('loadavg_start', '?')} at the start, {env.get('loadavg_end', '?')} at the end.",
        "",
        f"Ratios in parentheses are to `{BASELINE}` in the same run (throughput: system/baseline; "
        "latency: baseline/system; above 1 is better).",
    ]
    main_table = table(results, COLUMNS)
    if main_table:
        lines += ["", *main_table]
    payload_table = table(results, PAYLOAD_COLUMNS)
    if payload_table:
        lines += [
            "",
            "### Payloads",
            "",
            "Echo of `bytes` of 1 KiB, 1 MiB and 16 MiB (made once; the length of every reply "
            "checked), of a 1 MiB numpy float64 array (the raw baselines send `arr.tobytes()` and "
            "rebuild with `np.frombuffer`), and one stream of 1 MiB `bytes` items; "
            f"ratios to `{BASELINE}` in the same run:",
            "",
            *payload_table,
        ]
    sweep_table = table(results, SWEEP_COLUMNS, ratio_fields=("mib_s",))
    if sweep_table:
        cfg = results["config"]
        n_reps = min(cfg.get("sweep_reps", cfg["reps"]), cfg["reps"])
        over = "one repetition" if n_reps == 1 else f"median of the first {n_reps} repetitions"
        lines += [
            "",
            "### Payload sizes",
            "",
            "MiB/s of payload each way (calls/s * size) of sequential `echo(payload)`, `bytes` of "
            f"16 B to 16 MiB made once per size, for at most {cfg.get('sweep_time')} s and "
            f"{cfg.get('sweep_calls', 0):,} calls per size, {over}; "
            f"calls/s, p50 and p99 per size in `results.json`; ratios to `{BASELINE}` "
            "in the same run:",
            "",
            *sweep_table,
        ]
    for key, title in (
        ("stream_sync", "Streams from a plain (sync) generator on the service"),
        ("stream_push", "Raw streams with no flow control (plain push, unbounded HWM)"),
    ):
        extra = [(s, r) for s, r in results["systems"].items() if key in r["metrics"]]
        if extra:
            lines += ["", f"{title}:", ""]
            for s, r in extra:
                lines.append(f"- `{s}`: {cell(r, key, 'items_s', False)} items/s")
    lines += curve_lines(results)
    mem = results.get("memory")
    if mem:
        lines += [
            "",
            "### Memory (RSS growth)",
            "",
            "| system | what | client | service |",
            "|---|---|---|---|",
        ]
        for s, d in mem.items():
            for key, what in (("mem_calls", "calls in flight"), ("mem_streams", "open streams")):
                v = d["metrics"].get(key)
                if v:
                    lines.append(
                        f"| `{s}` | {v['n']:,} {what} | {v['client_mib']:.1f} MiB ({v['client_kib_each']:.2f} KiB each) "
                        f"| {v['server_mib']:.1f} MiB ({v['server_kib_each']:.2f} KiB each) |"
                    )
                else:
                    lines.append(
                        f"| `{s}` | {what} | n/a: {d['errors'].get(key) or d['errors'].get('client', '?')} | |"
                    )
    notes = []
    for s, r in results["systems"].items():
        if r["status"] != "ok":
            notes.append(f"- `{s}`: {r['status']}")
        for k, v in r["errors"].items():
            if k not in ("warmup",) and r["status"] == "ok":
                first = v.splitlines()[0] if v else "?"
                notes.append(f"- `{s}` {k}: {first}")
    if notes:
        lines += ["", "Not measured / errors:", "", *notes]
    lines.append("")
    return "\n".join(lines)


# (metric, field, title) compared between netcall with and without CURVE
CURVE_ROWS = [
    ("c64", "calls_s", "64 in flight"),
    ("seq", "calls_s", "sequential"),
    ("stream", "items_s", "stream items"),
]


def curve_lines(results: dict[str, Any]) -> list[str]:
    """The cost of CURVE: ``netcall-curve`` against plain ``netcall-asyncio``, same run."""
    systems = results["systems"]
    curve, plain = systems.get("netcall-curve"), systems.get("netcall-asyncio")
    if not curve or not plain or not any(m in plain["metrics"] for m, _f, _t in CURVE_ROWS):
        return []
    lines = [
        "",
        "### CURVE encryption",
        "",
        "`netcall-curve` (the same service and client with `Curve.server`/`Curve.client`) "
        "against plain `netcall-asyncio`, in the same run:",
        "",
        "| | plain | CURVE | CURVE / plain |",
        "|---|---|---|---|",
    ]
    for m, field, title in CURVE_ROWS:
        c = curve["metrics"].get(m, {}).get(field)
        p = plain["metrics"].get(m, {}).get(field)
        if isinstance(c, (int, float)) and isinstance(p, (int, float)) and p > 0:
            lines.append(f"| {title} | {_fmt(p)}/s | {_fmt(c)}/s | {c / p:.2f}× |")  # noqa: RUF001
        else:
            lines.append(f"| {title} | n/a | n/a | n/a |")
    return lines


def plot(results: dict[str, Any], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"[bench] plot skipped: matplotlib not importable ({e})"
    if not any(
        f"c{c}" in r["metrics"]
        for r in results["systems"].values()
        for c in results["config"]["inflight"]
    ):
        return "[bench] plot skipped: no calls-in-flight figures in this run"
    fig, ax = plt.subplots(figsize=(8, 5))
    looks = _looks(list(results["systems"]))
    for s, r in results["systems"].items():
        xs, ys = [], []
        for c in results["config"]["inflight"]:
            v = r["metrics"].get(f"c{c}", {}).get("calls_s")
            if isinstance(v, (int, float)):
                xs.append(c)
                ys.append(v)
        if xs:
            style = "--" if s.startswith("raw") else "-"
            ax.plot(
                xs,
                ys,
                style,
                label=s,
                linewidth=2.5 if s.startswith("netcall-asyncio") else 1.5,
                **looks[s],
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(results["config"]["inflight"])
    ax.set_xticklabels([str(c) for c in results["config"]["inflight"]])
    ax.set_xlabel("calls in flight")
    ax.set_ylabel("calls/s (echo 'hello')")
    env = results["env"]
    ax.set_title(
        f"throughput vs calls in flight — {env.get('nproc')} cores, Python {env.get('python')}, pyzmq {env.get('pyzmq')}"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, results, path)
    return None


def _looks(systems: list[str]) -> dict[str, dict[str, Any]]:
    """A color and a marker per system, none shared (matplotlib's default cycle has 10
    colors, and a full run plots 16 systems)."""
    import matplotlib

    colors = matplotlib.colormaps["tab20"].colors
    markers = "osD^v<>ph*"
    return {
        s: {"color": colors[i % len(colors)], "marker": markers[i % len(markers)]}
        for i, s in enumerate(systems)
    }


def _provenance(results: dict[str, Any]) -> str:
    """The footer of a plot: the command and the git commit of the netcall measured."""
    return f"{results['command']}  (netcall git {results['env'].get('git', '?')})"


def _save(fig: Any, results: dict[str, Any], path: str) -> None:
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.01, _provenance(results), fontsize=7, color="0.35", wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sweep(results: dict[str, Any], path: str) -> str | None:
    """MiB/s (left) and calls/s (right) against payload size, log-log, a line per system."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        return f"[bench] payload plot skipped: matplotlib not importable ({e})"
    lines: dict[str, tuple[list[int], list[float], list[float]]] = {}
    for s, r in results["systems"].items():
        xs: list[int] = []
        mib: list[float] = []
        calls: list[float] = []
        for name, size in zip(SWEEP_FIGURES, SWEEP_SIZES, strict=True):
            m = r["metrics"].get(name, {})
            if isinstance(m.get("mib_s"), (int, float)) and isinstance(
                m.get("calls_s"), (int, float)
            ):
                xs.append(size)
                mib.append(m["mib_s"])
                calls.append(m["calls_s"])
        if xs:
            lines[s] = (xs, mib, calls)
    if not lines:
        return "[bench] payload plot skipped: no payload-size sweep in this run"
    fig, (ax_mib, ax_calls) = plt.subplots(1, 2, figsize=(12, 5))
    looks = _looks(list(results["systems"]))
    for s, (xs, mib, calls) in lines.items():
        style = "--" if s.startswith("raw") else "-"
        width = 2.5 if s == "netcall-asyncio" else 1.5
        ax_mib.plot(xs, mib, style, label=s, linewidth=width, **looks[s])
        ax_calls.plot(xs, calls, style, label=s, linewidth=width, **looks[s])
    for ax, ylabel in (
        (ax_mib, "MiB/s of payload each way (calls/s * size)"),
        (ax_calls, "calls/s"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(SWEEP_SIZES)
        ax.set_xticklabels([size_label(x, " ") for x in SWEEP_SIZES], rotation=45, fontsize=8)
        ax.set_xlabel("payload size (bytes echoed, sequential calls)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_mib.legend(fontsize=8)
    env = results["env"]
    fig.suptitle(
        f"echo throughput vs payload size — {env.get('nproc')} cores, Python {env.get('python')}, "
        f"pyzmq {env.get('pyzmq')}"
    )
    _save(fig, results, path)
    return None


if __name__ == "__main__":
    sys.exit(main())
