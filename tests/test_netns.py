"""Across hosts: a client, a broker and services in three network namespaces on a private
bridge, and links taken down mid-run (a silent loss: no packet says goodbye). Also a client that
binds, with services in another namespace connecting to it.

Layout (``ip netns``, veth pairs on a bridge of their own)::

    ns "c"  10.213.0.1   a client process holding a stream
    ns "b"  10.213.0.2   the broker (frontend :5555, backend :5556)
    ns "s"  10.213.0.3   two math services, connected out to the broker
    bridge  10.213.0.254 this test process (an observer client)

Needs root and iproute2 (``.ci/run`` installs it; CI runs as root); skipped, with the reason,
otherwise. The fixture removes everything it made, also when the test fails.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid

import pytest

from _cluster import Procs
from netcall import ConnectionLostError, RPCError

pytestmark = pytest.mark.timeout(90)

SUBNET = "10.213.0"
BROKER = f"{SUBNET}.2"


def _why_not() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (the `ip` command)"
    probe = f"ncprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class Net:
    """Three namespaces on a private bridge; :meth:`down` / :meth:`up` cut and restore a host's
    link (its veth end on the bridge)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"ncbr{tag}"
        self.ns = {role: f"nc{tag}{role}" for role in "cbs"}
        self.veth = {role: f"nc{tag}{role}h" for role in "cbs"}  # the bridge-side ends
        self.made_ns: list[str] = []
        self.made_bridge = False

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self.made_bridge = True
        _ip("addr", "add", f"{SUBNET}.254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, role in enumerate("cbs", start=1):
            ns = self.ns[role]
            _ip("netns", "add", ns)
            self.made_ns.append(ns)
            inner = f"nc{role}in{i}"
            _ip("link", "add", self.veth[role], "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", self.veth[role], "master", self.bridge)
            _ip("link", "set", self.veth[role], "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def prefix(self, role: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role]]

    def down(self, role: str) -> None:
        _ip("link", "set", self.veth[role], "down")

    def up(self, role: str) -> None:
        _ip("link", "set", self.veth[role], "up")

    def destroy(self) -> None:
        for ns in self.made_ns:  # deleting a namespace deletes its veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for veth in self.veth.values():
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        if self.made_bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture
def net():
    reason = _why_not()
    if reason is not None:
        print(f"test_netns skipped: {reason}")
        pytest.skip(reason)
    n = Net()
    try:
        n.create()
        yield n
    finally:
        n.destroy()


@pytest.fixture
async def procs():
    p = Procs()
    yield p
    await p.cleanup()


async def _until(what: str, fn, timeout: float):  # type: ignore[no-untyped-def]
    """Await ``fn()`` until it returns a true value (RPC errors count as not yet)."""
    t0 = time.monotonic()
    while True:
        try:
            value = await fn()
            if value:
                return time.monotonic() - t0
        except RPCError:
            pass
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.1)


async def test_across_namespaces_with_a_link_down(net, procs, make_client):
    front, back = f"tcp://{BROKER}:5555", f"tcp://{BROKER}:5556"
    await procs.broker(front, back, prefix=net.prefix("b"))
    await asyncio.gather(
        procs.service("math-a", "math", back, prefix=net.prefix("s")),
        procs.service("math-b", "math", back, prefix=net.prefix("s")),
    )
    cli = make_client(timeout=3, heartbeat=1.0)
    cli.connect(front)

    async def both_serve() -> bool:
        names = await asyncio.gather(*[cli.math.whoami() for _ in range(8)])
        return set(names) == {"math-a", "math-b"}

    await _until("both services reachable through the broker", both_serve, 10)
    assert await cli.math.add(20, 22) == 42

    async def closed() -> int:
        seen: dict[str, int] = {}
        while len(seen) < 2:
            stats = await cli.math.stats()
            seen[stats["name"]] = stats["closed"]
        return sum(seen.values())

    # A client in its own namespace holds a stream; its link goes silent.
    before = await closed()
    await procs.start("client", front, "async-for", ready="STREAMING", prefix=net.prefix("c"))
    net.down("c")
    took = await _until(
        "the broker found the silent client and the service closed its generator",
        lambda: _gt(closed(), before),
        10,
    )
    print(f"silent client loss handled in {took:.1f} s")

    # The services' link goes silent with calls in flight: they fail, and come back after.
    slow = [asyncio.ensure_future(cli.call("math.slow", 30, timeout=20)) for _ in range(4)]
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    net.down("s")
    results = await asyncio.gather(*slow, return_exceptions=True)
    lost_after = time.monotonic() - t0
    assert all(isinstance(r, ConnectionLostError) for r in results), results
    assert lost_after < 10, lost_after
    print(f"silent service loss found in {lost_after:.1f} s")
    net.up("s")
    took = await _until("services announced again after the link came back", both_serve, 15)
    print(f"services back {took:.1f} s after the link came up")
    assert await cli.math.add(1, 1) == 2


async def _gt(value, than: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await value > than)


async def test_client_that_binds_across_namespaces(net, procs, make_client):
    # The client (this process, on the bridge) binds; services in their namespace connect to it.
    cli = make_client(timeout=3, heartbeat=1.0)
    url = f"tcp://{SUBNET}.254:{5600 + os.getpid() % 300}"
    cli.bind(url)
    await asyncio.gather(
        procs.service("math-a", "math", url, prefix=net.prefix("s")),
        procs.service("math-b", "math", url, prefix=net.prefix("s")),
    )

    async def both_serve() -> bool:
        names = await asyncio.gather(*[cli.math.whoami() for _ in range(8)])
        return set(names) == {"math-a", "math-b"}

    await _until("both services announced to the client", both_serve, 10)
    slow = [asyncio.ensure_future(cli.call("math.slow", 30, timeout=20)) for _ in range(4)]
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    net.down("s")
    results = await asyncio.gather(*slow, return_exceptions=True)
    lost_after = time.monotonic() - t0
    assert all(isinstance(r, ConnectionLostError) for r in results), results
    assert lost_after < 10, lost_after
    print(f"silent loss of services that connected to the client found in {lost_after:.1f} s")
    net.up("s")
    took = await _until("services announced again after the link came back", both_serve, 15)
    print(f"services back {took:.1f} s after the link came up")
