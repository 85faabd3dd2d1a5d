"""Hostile peers for netcall, over raw pyzmq, each in a process of its own.

    python fuzz_peer.py attack <url> [--seconds S] [--seed N] [--attacks a,b] [--json]
        a hostile client: throws the named attacks (default: all) at a service for S seconds,
        then prints a JSON line with what it sent.
    python fuzz_peer.py campaign [--seconds S] [--seed N] [--attackers K] [--serializer json]
        the whole exercise: starts a target service process (_hostile_target.py) and K
        attackers, keeps an honest client calling it throughout, samples the service's RSS,
        and prints a JSON report; exits 1 when the service died, an honest call took 1 s or
        more, or the service's memory grew beyond the bound (``--max-growth-mb``).

Attacks (see ATTACKS): random frames; valid headers with random bodies; every message kind
with hostile fields; calls whose arguments nest deep, declare huge lengths or are garbage;
credit and stream-protocol violations; window bombs (a stream asked for 2**32-1 items by a
peer that never reads); non-reading callers (replies pile up); stream hogs (open streams,
never read); churn (connect, open a stream, vanish).

``tests/test_fuzz.py`` runs a short campaign; ``nox -s fuzz`` a long one.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zmq

HERE = Path(__file__).resolve().parent
TARGET = str(HERE / "_hostile_target.py")

# The wire format (see netcall/protocol.py), spelled out again on purpose: a hostile peer
# must not depend on the code it attacks.
MAGIC = b"NC"
VERSION = 2
CALL, RESULT, ERROR, CANCEL, ACK, STREAM, NEXT, THROW, CREDIT, ITEM, END, PING, PONG = range(1, 14)
MAX_U32 = 2**32 - 1


def header(kind: int, rid: int, version: int = VERSION) -> bytes:
    return struct.pack("!2sBBQ", MAGIC, version, kind, rid)


def call_head(
    rid: int,
    method: str,
    serializer: str = "msgpack",
    window: int = 0,
    timeout: float = 0.0,
    flags: int = 0,
) -> bytes:
    ser = serializer.encode()
    return (
        header(CALL, rid)
        + struct.pack("!dBIB", timeout, flags, window, len(ser))
        + ser
        + method.encode()
    )


# ---------------------------------------------------------------- hostile values


@functools.lru_cache(maxsize=64)  # the attacker's CPU is shared with the service
def deep_ext_tuples(depth: int) -> bytes:
    data = msgpack.packb(1)
    for _ in range(depth):
        data = msgpack.packb(msgpack.ExtType(1, b"\x91" + data))
    return data


@functools.lru_cache(maxsize=64)
def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value (structure, not noise)."""
    pick = rng.random()
    if depth > 4 or pick < 0.5:
        return rng.choice(
            [
                None,
                True,
                rng.randint(-(2**63), 2**64 - 1),
                rng.random(),
                "s" * rng.randint(0, 50),
                rng.randbytes(rng.randint(0, 64)),
            ]
        )
    if pick < 0.75:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {str(i): random_value(rng, depth + 1) for i in range(rng.randint(0, 5))}


def hostile_args(rng: random.Random, serializer: str) -> bytes:
    """Arguments a hostile client might send (a valid CALL head precedes them)."""
    if serializer == "json":
        return rng.choice(
            [
                lambda: deep_json(rng.choice([101, 1_000, 5_000, 100_000])),
                lambda: b"[" * 50_000,
                lambda: b'{"a":' * 10_000,
                lambda: rng.randbytes(rng.randint(0, 100)),
                lambda: b'"\xff\xfe"',
                lambda: json.dumps([random_value_json(rng)]).encode(),
            ]
        )()
    return rng.choice(
        [
            lambda: deep_ext_tuples(rng.choice([101, 150, 200, 1_000, 5_000])),
            lambda: b"\x91" * rng.choice([1_000, 100_000]) + b"\x01",
            lambda: b"\xdd" + struct.pack("!I", rng.choice([MAX_U32, 10**8, 10**6])),
            lambda: b"\xdf" + struct.pack("!I", rng.choice([MAX_U32, 10**8])) + b"\x01",
            lambda: b"\xdb" + struct.pack("!I", rng.choice([MAX_U32, 10**8])),
            lambda: b"\xc9" + struct.pack("!I", 10**8) + b"\x01",
            lambda: b"\xc7\x05\x01\xdd" + struct.pack("!I", 10**8),  # a tuple of 100M
            lambda: b"\x91\xc7\x03\x0b\x91\xa1",  # a truncated exception
            lambda: b"\x91\xd4\x63\x00",  # an unknown extension type
            lambda: msgpack.packb({"not": "a list"}),
            lambda: msgpack.packb([random_value(rng)]),
            lambda: rng.randbytes(rng.randint(0, 200)),
            lambda: msgpack.packb([1]) + b"trailing",
        ]
    )()


def random_value_json(rng: random.Random, depth: int = 0) -> Any:
    if depth > 4 or rng.random() < 0.5:
        return rng.choice([None, True, rng.randint(-(2**53), 2**53), rng.random(), "s"])
    return [random_value_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]


# ---------------------------------------------------------------- attacks


class Peer:
    """One hostile client: a few DEALER sockets, some of which never read."""

    def __init__(self, ctx: zmq.Context[Any], url: str, rng: random.Random, ser: str) -> None:
        self.ctx = ctx
        self.url = url
        self.rng = rng
        self.ser = ser
        self.sent: Counter[str] = Counter()
        self.reader = self._socket(reads=True)
        # Never read: its pipe fills, then the service must stop or drop what it sends.
        self.deaf = self._socket(reads=False)
        self.rid = 1

    def _socket(self, reads: bool) -> zmq.Socket[Any]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.SNDTIMEO, 0)
        if not reads:
            sock.setsockopt(zmq.RCVHWM, 1)
            sock.setsockopt(zmq.RCVBUF, 4096)
        sock.connect(self.url)
        return sock

    def next_id(self) -> int:
        self.rid += 1
        return self.rid

    def send(self, what: str, frames: list[bytes], sock: zmq.Socket[Any] | None = None) -> None:
        try:
            (sock or self.reader).send_multipart(frames, flags=zmq.NOBLOCK)
            self.sent[what] += 1
        except zmq.Again:
            self.sent[what + " (would block)"] += 1

    def drain(self) -> None:
        while True:
            try:
                self.reader.recv_multipart(flags=zmq.NOBLOCK)
                self.sent["replies read"] += 1
            except zmq.Again:
                return

    def close(self) -> None:
        self.reader.close(0)
        self.deaf.close(0)


def random_frames(p: Peer) -> None:
    r = p.rng
    frames = [r.randbytes(r.randint(0, 64)) for _ in range(r.randint(1, 5))]
    p.send("random frames", frames)


def random_headers(p: Peer) -> None:
    """Valid magic, any version, any kind (known or not), random tails and extra frames."""
    r = p.rng
    version = VERSION if r.random() < 0.8 else r.randint(0, 255)
    kind = r.randint(0, 20)
    head = header(kind, r.getrandbits(64), version) + r.randbytes(r.choice([0, 0, 1, 4, 8, 30]))
    p.send(
        "random headers", [head] + [r.randbytes(r.randint(0, 30)) for _ in range(r.randint(0, 4))]
    )


def hostile_calls(p: Peer) -> None:
    r = p.rng
    method = r.choice(
        ["echo", "add", "count", "nope", "a.b.c", "_netcall.methods", "__init__", "echo.__class__"]
    )
    frames = [call_head(p.next_id(), method, p.ser, window=r.choice([0, 1, 16])), b""]
    frames[1] = hostile_args(r, p.ser)
    if r.random() < 0.2:  # kwargs too: garbage, or keys that are not strings
        frames.append(r.choice([msgpack.packb({1: 2}), r.randbytes(10), b"\xc1"]))
    p.send("hostile calls", frames)


def hostile_fields(p: Peer) -> None:
    """Well-formed kinds with hostile fields: NaN/negative/huge timeouts, ids reused, bad names."""
    r = p.rng
    rid = r.choice([0, 1, MAX_U32, 2**64 - 1, p.rid])
    choice = r.randint(0, 5)
    args = msgpack.packb([1]) if p.ser == "msgpack" else b"[1]"
    if choice == 0:
        head = call_head(
            rid, "echo", p.ser, timeout=r.choice([float("nan"), -1.0, 1e300, 1e-9, float("inf")])
        )
        p.send("hostile fields", [head, args])
    elif choice == 1:
        p.send("hostile fields", [call_head(rid, "echo", "no-such-serializer"), args])
    elif choice == 2:
        p.send("hostile fields", [header(CALL, rid) + b"\x00" * 14 + b"\xff" + b"x", args])
    elif choice == 3:
        bad_name = call_head(rid, "x", p.ser)[:-1] + b"\xff\xfe"  # not UTF-8
        p.send("hostile fields", [bad_name, args])
    elif choice == 4:
        p.send("hostile fields", [header(r.choice([RESULT, ITEM, STREAM, PONG, ACK]), rid)])
    else:
        p.send("hostile fields", [header(THROW, rid), b"\xff\xfe", b"x"])


def credit_abuse(p: Peer) -> None:
    """Stream-protocol violations: credit for nothing, huge credit, NEXT while flowing."""
    r = p.rng
    rid = p.next_id()
    args = msgpack.packb([10**6]) if p.ser == "msgpack" else b"[1000000]"
    p.send("credit abuse", [call_head(rid, "count", p.ser, window=r.choice([0, 4])), args])
    for _ in range(r.randint(1, 5)):
        kind = r.choice([CREDIT, CREDIT, NEXT, THROW, CANCEL])
        if kind == CREDIT:
            frames = [header(CREDIT, r.choice([rid, rid + 1000])) + struct.pack("!I", MAX_U32)]
        elif kind == NEXT:
            frames = [header(NEXT, rid) + r.choice([b"\xc0", b"\xc1", b""])]
        elif kind == THROW:
            frames = [header(THROW, rid), b"ValueError", b"x"]
        else:
            frames = [header(CANCEL, rid)]
        p.send("credit abuse", frames)


def window_bomb(p: Peer) -> None:
    """Failure 2: a stream asked for 2**32-1 items, from a peer that never reads."""
    args = msgpack.packb([10**9]) if p.ser == "msgpack" else b"[1000000000]"
    method = p.rng.choice(["count", "count_sync"])
    p.send("window bombs", [call_head(p.next_id(), method, p.ser, window=MAX_U32), args], p.deaf)


def blob_bomb(p: Peer) -> None:
    """A window bomb of 64 KiB items."""
    args = msgpack.packb([65536, 10**9]) if p.ser == "msgpack" else b"[65536, 1000000000]"
    p.send("blob bombs", [call_head(p.next_id(), "blob", p.ser, window=MAX_U32), args], p.deaf)


def deaf_calls(p: Peer) -> None:
    """Failure 4: calls whose replies are never read."""
    payload = "x" * p.rng.choice([10, 1000, 16000])
    args = msgpack.packb([payload]) if p.ser == "msgpack" else json.dumps([payload]).encode()
    for _ in range(20):
        p.send("unread calls", [call_head(p.next_id(), "echo", p.ser), args], p.deaf)


def stream_hog(p: Peer) -> None:
    """Streams opened and never read (lock-step and flowing)."""
    args = msgpack.packb([5]) if p.ser == "msgpack" else b"[5]"
    window = p.rng.choice([0, 1, 1024])
    p.send("stream hogs", [call_head(p.next_id(), "endless", p.ser, window=window), args], p.deaf)


def churn(p: Peer) -> None:
    """Connect, open a flowing stream, vanish (the service must close it)."""
    sock = p._socket(reads=False)
    args = msgpack.packb([7]) if p.ser == "msgpack" else b"[7]"
    p.send("churn", [call_head(1, "endless", p.ser, window=16), args], sock)
    time.sleep(0.01)
    sock.close(0)


ATTACKS: dict[str, tuple[Callable[[Peer], None], float]] = {
    # name: (attack, relative weight)
    "random_frames": (random_frames, 10),
    "random_headers": (random_headers, 10),
    "hostile_calls": (hostile_calls, 10),
    "hostile_fields": (hostile_fields, 5),
    "credit_abuse": (credit_abuse, 5),
    "window_bomb": (window_bomb, 0.2),
    "blob_bomb": (blob_bomb, 0.1),
    "deaf_calls": (deaf_calls, 3),
    "stream_hog": (stream_hog, 0.5),
    "churn": (churn, 0.3),
}


def attack(
    url: str, seconds: float, seed: int, names: list[str], ser: str, rate: float = 0.0
) -> dict[str, Any]:
    """Attack ``url`` for ``seconds``; at most ``rate`` attacks per second (0: as fast as the
    CPU allows, with a pause every 50 so an honest client can share the CPU)."""
    rng = random.Random(seed)
    ctx: zmq.Context[Any] = zmq.Context()
    peer = Peer(ctx, url, rng, ser)
    chosen = [ATTACKS[n] for n in names]
    fns = [fn for fn, _ in chosen]
    weights = [w for _, w in chosen]
    start = time.monotonic()
    end = start + seconds
    n = 0
    try:
        while time.monotonic() < end:
            rng.choices(fns, weights)[0](peer)
            n += 1
            if n % 50 == 0:
                peer.drain()
                ahead = n / rate - (time.monotonic() - start) if rate else 0.002
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        peer.close()
        ctx.term()
    return {"attacks": n, "sent": dict(peer.sent)}


# ---------------------------------------------------------------- the campaign


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return -1.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return -1.0


def env() -> dict[str, str]:
    src = str(HERE.parent / "src")
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(x for x in (src, out.get("PYTHONPATH", "")) if x)
    out["PYTHONUNBUFFERED"] = "1"
    return out


def free_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def read_to_end(stream: Any) -> None:
    """Read ``stream`` to its end, keeping nothing."""
    for _ in stream:
        pass


def campaign(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    sys.path.insert(0, str(HERE.parent / "src"))
    import tempfile

    from netcall import RPCClient

    url = free_url()
    # The service's log goes to a file: a pipe nobody reads would block it once full.
    errfile = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in the finally below
    target = subprocess.Popen(
        [sys.executable, TARGET, url, args.serializer],
        stdout=subprocess.PIPE,
        stderr=errfile,
        env=env(),
        text=True,
    )
    attackers: list[subprocess.Popen[str]] = []
    report: dict[str, Any] = {"url": url, "seconds": args.seconds, "seed": args.seed}
    try:
        line = target.stdout.readline() if target.stdout else ""
        if not line.startswith("READY"):
            raise RuntimeError(f"target did not start: {line!r}")
        pid = int(line.split()[1])
        # The target writes a line per stream it closes: read them all, or once the pipe is
        # full its next write blocks the whole service (a long campaign closes thousands).
        threading.Thread(target=read_to_end, args=(target.stdout,), daemon=True).start()

        async def honest() -> dict[str, Any]:
            cli = RPCClient(args.serializer, timeout=5.0)
            cli.connect(url)
            try:
                assert await cli.echo("warm") == "warm"
                await asyncio.sleep(0.5)
                base = rss_mb(pid)
                for i in range(args.attackers):
                    attackers.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                __file__,
                                "attack",
                                url,
                                "--seconds",
                                str(args.seconds),
                                "--seed",
                                str(args.seed + i),
                                "--attacks",
                                args.attacks,
                                "--serializer",
                                args.serializer,
                                "--rate",
                                str(args.rate),
                            ],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env=env(),
                            text=True,
                        )
                    )
                latencies: list[float] = []
                slow: list[tuple[float, float]] = []  # (seconds into the attack, latency)
                failures: list[str] = []
                t_start = time.monotonic()
                peak = base
                t_end = time.monotonic() + args.seconds + 1.0
                i = 0
                while time.monotonic() < t_end:
                    t0 = time.monotonic()
                    try:
                        if i % 20 == 19:
                            got = [x async for x in cli.count_sync(50)]
                            ok = got == list(range(50))
                        else:
                            ok = await cli.echo(i) == i
                        if not ok:
                            failures.append(f"call {i}: wrong answer")
                    except Exception as exc:
                        failures.append(f"call {i}: {type(exc).__name__}: {exc}")
                    latencies.append(time.monotonic() - t0)
                    if latencies[-1] >= 0.5:
                        slow.append((round(t0 - t_start, 1), round(latencies[-1], 3)))
                    peak = max(peak, rss_mb(pid))
                    i += 1
                    await asyncio.sleep(0.02)
                for a in attackers:
                    a.wait(30)
                await asyncio.sleep(1.0)
                t0 = time.monotonic()
                try:
                    final = await cli.echo("after")
                    stats = await cli.service_stats()
                except Exception as exc:
                    final, stats = None, {"error": repr(exc)}
                latencies.sort()
                return {
                    "honest_calls": len(latencies),
                    "honest_failures": failures[:20],
                    "honest_failure_count": len(failures),
                    "honest_slow_calls": slow[:50],
                    "latency_max_s": round(latencies[-1], 4),
                    "latency_p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 4),
                    "final_call_ok": final == "after",
                    "final_latency_s": round(time.monotonic() - t0, 4),
                    "rss_base_mb": round(base, 1),
                    "rss_peak_mb": round(peak, 1),
                    "rss_end_mb": round(rss_mb(pid), 1),
                    "service_cpu_s": cpu_seconds(pid),
                    "wall_s": round(time.monotonic() - t_start, 1),
                    "service_stats": stats,
                }
            finally:
                cli.close()

        report.update(asyncio.run(honest()))
        report["attackers"] = []
        for a in attackers:
            out, err = a.communicate(timeout=30)
            lines = [x for x in out.splitlines() if x.startswith("{")]
            report["attackers"].append(json.loads(lines[-1]) if lines else {"error": err[-500:]})
        report["target_alive"] = target.poll() is None
    finally:
        for a in attackers:
            if a.poll() is None:
                a.kill()
                a.wait()
        alive = target.poll() is None
        if alive:
            target.kill()
        target.communicate(timeout=30)
        errfile.seek(0)
        log_lines = errfile.read().splitlines()
        errfile.close()
        report.setdefault("target_alive", alive)
        report["target_returncode"] = None if alive else target.returncode
        report["target_log_lines"] = len(log_lines)
        report["target_log_tail"] = log_lines[-5:]
    growth = report.get("rss_peak_mb", 0) - report.get("rss_base_mb", 0)
    problems = []
    if not report["target_alive"]:
        problems.append(f"the service died (return code {report['target_returncode']})")
    if report.get("latency_max_s", 99) >= 1.0:
        problems.append(f"an honest call took {report.get('latency_max_s')} s")
    if not report.get("final_call_ok"):
        problems.append("the service did not answer after the attack")
    if report.get("honest_failure_count", 1):
        problems.append(f"{report.get('honest_failure_count')} honest calls failed")
    if growth > args.max_growth_mb:
        problems.append(f"service RSS grew by {growth:.0f} MB")
    if report["target_log_lines"] > args.max_log_lines:
        problems.append(f"the service wrote {report['target_log_lines']} log lines")
    report["problems"] = problems
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("attack")
    a.add_argument("url")
    c = sub.add_parser("campaign")
    c.add_argument("--attackers", type=int, default=2)
    c.add_argument("--max-growth-mb", type=float, default=120.0)
    c.add_argument("--max-log-lines", type=int, default=200)
    for p in (a, c):
        p.add_argument("--seconds", type=float, default=10.0)
        p.add_argument("--seed", type=int, default=int(time.time()))
        p.add_argument("--attacks", default=",".join(ATTACKS))
        p.add_argument("--serializer", default="msgpack", choices=["msgpack", "json"])
        p.add_argument("--rate", type=float, default=0.0, help="attacks/s per attacker (0: max)")
    args = parser.parse_args()
    names = [n for n in args.attacks.split(",") if n]
    unknown = set(names) - set(ATTACKS)
    if unknown:
        parser.error(f"unknown attacks {sorted(unknown)}; choose from {sorted(ATTACKS)}")
    if args.cmd == "attack":
        print(
            json.dumps(attack(args.url, args.seconds, args.seed, names, args.serializer, args.rate))
        )
        return 0
    report = campaign(args)
    print(json.dumps(report, indent=2, default=str))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
