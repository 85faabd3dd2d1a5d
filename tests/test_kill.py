"""Processes that die: a service or a client killed with SIGKILL, across a real process boundary."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import pytest

from _helpers import wait_until
from conftest import TESTS_DIR, netcall_env, tcp_url
from netcall import ConnectionLostError, RPCError, RPCTimeoutError

pytestmark = pytest.mark.timeout(40)

HELPER = str(TESTS_DIR / "_proc_helper.py")


@pytest.fixture
async def spawn():
    """Start ``_proc_helper.py`` children; each is killed and reaped at teardown."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str, ready: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            HELPER,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=netcall_env(),
        )
        procs.append(proc)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
        except asyncio.TimeoutError:
            line = b""
        if line.strip() != ready.encode():
            proc.kill()
            _, err = await proc.communicate()
            raise AssertionError(f"child did not get {ready}: {line!r}\n{err.decode()[-3000:]}")
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:  # pragma: no cover
            pass


async def kill9(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(proc.wait(), 5) == -signal.SIGKILL


# ---------------------------------------------------------------- a service process dies


async def test_call_across_processes(spawn, make_client):
    url = tcp_url()
    await spawn("service", url, ready="READY")
    cli = make_client()
    cli.connect(url)
    assert await cli.echo("across") == "across"
    assert [x async for x in _take(cli.endless(), 5)] == [0, 1, 2, 3, 4]


async def _take(stream, n):
    i = 0
    async for x in stream:
        yield x
        i += 1
        if i == n:
            break


async def test_killed_service_fails_calls_in_bounded_time(spawn, make_client):
    url = tcp_url()
    proc = await spawn("service", url, ready="READY")
    cli = make_client(timeout=2.0)
    cli.connect(url)
    assert await cli.echo(1) == 1
    in_flight = [asyncio.ensure_future(cli.slow(30)) for _ in range(5)]
    assert await cli.echo(2) == 2  # a round trip behind them: the slow calls have arrived
    await kill9(proc)
    t0 = time.monotonic()
    results = await asyncio.wait_for(asyncio.gather(*in_flight, return_exceptions=True), 10)
    assert time.monotonic() - t0 < 2.0 + 1.5  # at most the call timeout, never a hang
    # The connection break is seen at once (ConnectionLostError); the timeout is the backstop.
    assert all(isinstance(r, ConnectionLostError | RPCTimeoutError) for r in results), results
    # new calls to the dead service fail too, within their timeout
    t0 = time.monotonic()
    with pytest.raises((RPCTimeoutError, ConnectionLostError)):
        await asyncio.wait_for(cli.echo(2), 10)
    assert time.monotonic() - t0 < 2.0 + 1.5
    assert cli.pending == 0


async def test_killed_service_mid_stream(spawn, make_client):
    url = tcp_url()
    proc = await spawn("service", url, ready="READY")
    cli = make_client(timeout=1.0)
    cli.connect(url)
    got = []
    t0 = None
    with pytest.raises(RPCError):  # RPCTimeoutError, or a clearer error if the loss is detected
        async for x in cli.endless():
            got.append(x)
            if x == 5:
                await kill9(proc)
                t0 = time.monotonic()
    assert got[:6] == list(range(6))
    assert time.monotonic() - t0 < 1.0 + 1.5
    assert await wait_until(lambda: cli.open_streams == 0, 2)
    assert cli.pending == 0


async def test_client_reaches_a_restarted_service(spawn, make_client):
    url = tcp_url()
    proc = await spawn("service", url, ready="READY")
    cli = make_client(timeout=1.0)
    cli.connect(url)
    assert await cli.echo("first life") == "first life"
    await kill9(proc)
    # Lost with the connection (ConnectionLostError), or queued for a reconnection that does
    # not come in time (RPCTimeoutError), depending on when the break is seen.
    with pytest.raises((RPCTimeoutError, ConnectionLostError)):
        await cli.echo("nobody")
    await spawn("service", url, ready="READY")
    cli2 = cli.with_options(timeout=5.0)
    assert await cli2.echo("second life") == "second life"


# ---------------------------------------------------------------- a client process dies


@pytest.mark.parametrize("mode", ["async-for", "lockstep"])
async def test_killed_client_stream_is_reaped_within_lease(spawn, make_service, mode):
    lease = 1.0
    svc = make_service(stream_lease=lease)
    state = {"started": 0, "finalized": 0}

    @svc.register
    async def endless():
        state["started"] += 1
        i = 0
        try:
            while True:
                yield i
                i += 1
                await asyncio.sleep(0.01)
        finally:
            state["finalized"] += 1

    url = tcp_url()
    svc.bind(url)
    svc.start()
    proc = await spawn("client", url, mode, ready="STREAMING")
    assert svc.active_streams == 1
    # a live client keeps its stream past the lease: it pings while it holds streams
    await asyncio.sleep(lease * 1.6)
    assert svc.active_streams == 1
    assert state["finalized"] == 0

    await kill9(proc)
    t0 = time.monotonic()
    assert await wait_until(lambda: svc.active_streams == 0, lease * 3 + 1)
    elapsed = time.monotonic() - t0
    assert elapsed < lease * 2 + 0.5, elapsed  # within the documented lease (plus a check period)
    assert await wait_until(lambda: state["finalized"] == state["started"] == 1, 2)
    assert svc.active_calls == 0
