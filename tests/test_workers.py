"""netcall.workers: N service processes behind one endpoint, every worker a real process.

Worker pids come back from the handlers, so a test sees which process served a call; the
parent itself runs as a subprocess where a test kills it or signals it (or its process group).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from _helpers import wait_until
from conftest import tcp_url
from netcall import ConnectionLostError, RPCClient, RPCTimeoutError, ServiceStoppingError
from netcall.workers import WorkerPool

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return False


async def wait_gone(pids: set[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if alive(p)]}"
        await asyncio.sleep(0.05)


async def pids_seen(client: RPCClient, n: int, timeout: float = 15.0) -> set[int]:
    """Call pid() (64 at a time) until ``n`` different workers answered."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        assert time.monotonic() < deadline, f"only {seen} answered"
        got = await asyncio.gather(*[client.slow(0.01) for _ in range(16)], return_exceptions=True)
        # A call that reached a worker as it was killed fails (the broker then drops it).
        assert all(isinstance(x, int | ConnectionLostError) for x in got), got
        seen.update(x for x in got if isinstance(x, int))
    return seen


@pytest.fixture
def pool_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(TESTS))


@pytest.fixture
async def client(ctx):
    c = RPCClient(timeout=10, context=ctx)
    yield c
    c.close()


@pytest.mark.parametrize("target", ["_workers_service:service", "_workers_service:make_service"])
async def test_calls_spread_over_workers(pool_env, ctx, client, target):
    url = tcp_url()
    async with WorkerPool(target, 2, bind=url, context=ctx) as pool:
        await pool.wait_ready()
        assert len(pool.pids) == 2
        client.connect(url)
        got = await asyncio.gather(*[client.pid() for _ in range(40)])
        assert set(got) == set(pool.pids)
        assert len(pool.stats()["broker"]["services"]) == 2
        pids = set(pool.pids)
    await wait_gone(pids, timeout=2)
    assert not Path(pool.backend[len("ipc://") :]).parent.exists()


async def test_a_factory_passed_as_a_function(pool_env, ctx, client):
    import _workers_service

    url = tcp_url()
    async with WorkerPool(_workers_service.make_service, 1, bind=url, context=ctx) as pool:
        assert pool.spec == "_workers_service:make_service"
        await pool.wait_ready()
        client.connect(url)
        assert await client.pid() == pool.pids[0]


def test_targets_that_cannot_be_named():
    with pytest.raises(ValueError, match="importable by name"):
        WorkerPool(lambda: None, 1, bind="tcp://127.0.0.1:1")
    with pytest.raises(ValueError, match="at least 1"):
        WorkerPool("x:y", 0, bind="tcp://127.0.0.1:1")


@pytest.mark.parametrize("target", ["_workers_service:not_a_service", "no_such_module_x:service"])
async def test_a_target_that_does_not_load_is_reported_not_restarted(pool_env, ctx, target):
    async with WorkerPool(target, 2, bind=tcp_url(), context=ctx) as pool:
        with pytest.raises(RuntimeError, match="cannot load"):
            await pool.wait_ready()
        await asyncio.sleep(0.3)
        assert all(w["restarts"] == 0 for w in pool.stats()["workers"])


async def test_a_killed_worker_is_restarted(pool_env, ctx, client):
    url = tcp_url()
    async with WorkerPool("_workers_service:service", 2, bind=url, context=ctx) as pool:
        await pool.wait_ready()
        client.connect(url)
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        await wait_gone({victim})
        # The other worker serves meanwhile; the pool brings a new one up.
        await pids_seen(client, 1)
        deadline = time.monotonic() + 10
        while not (len(pool.pids) == 2 and victim not in pool.pids):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await pool.wait_ready()
        seen = await pids_seen(client, 2)
        assert victim not in seen and seen == set(pool.pids)
        assert sum(w["restarts"] for w in pool.stats()["workers"]) == 1
        assert [-signal.SIGKILL] in [w["exits"] for w in pool.stats()["workers"]]


async def until(check, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def two_workers(ctx, client):  # type: ignore[no-untyped-def]
    """A pool of 2 workers behind a broker pinging every 0.2 s, both seen serving: the pool,
    and its broker's ``stats``."""
    url = tcp_url()
    async with WorkerPool(
        "_workers_service:service", 2, bind=url, context=ctx, heartbeat=0.2
    ) as pool:
        await pool.wait_ready()
        client.connect(url)
        assert len(await pids_seen(client, 2)) == 2
        assert pool.broker is not None
        yield pool, pool.broker.stats


async def test_a_worker_whose_loop_is_stuck_gets_no_new_calls(pool_env, ctx, client):
    """A handler that blocks its worker's loop (here time.sleep; in life a deadlock or a
    runaway loop) must not take the calls that follow down with it: its worker still holds its
    connection (libzmq answers ZeroMQ's heartbeats), and its calls time out, which freed it at
    the broker, so it looked idle and got every other call. The broker now stops sending to a
    service that answers none of two pings in a row, and sends to it again once it does."""
    async with two_workers(ctx, client) as (pool, stats):

        def responsive() -> list[bool]:
            return [svc["responsive"] for svc in stats()["services"]]

        with pytest.raises(RPCTimeoutError):
            await client.call("block", 3.0, timeout=0.3)
        await until(
            lambda: responsive() == [True, False] or responsive() == [False, True],
            f"no service marked unresponsive: {stats()}",
            3.0,
        )
        # Every call goes to the worker that reads: none waits for the stuck one.
        got = await asyncio.gather(
            *[client.call("pid", timeout=1.5) for _ in range(40)], return_exceptions=True
        )
        assert all(isinstance(x, int) for x in got), got
        assert len(set(got)) == 1
        # Once its handler returns, it reads the pings, answers, and gets calls again.
        await until(lambda: responsive() == [True, True], f"not responsive again: {stats()}")
        assert await pids_seen(client, 2) == set(pool.pids)
        assert stats()["errors"]["services_unresponsive"] == 1


async def test_workers_busy_with_a_backlog_are_not_taken_for_stuck(pool_env, ctx, client):
    """Workers going through a backlog of slow sync handlers (CPU-bound, what worker processes
    are for) answer a call every 25 ms: the broker must hear them. It did not: a service held
    the answers of handlers it ran from one wake-up of its reader until 32 were ready (0.8 s
    here, 3.2 s with 100 ms handlers), and the broker, hearing nothing for two pings, took
    both workers for stuck and held new calls in its queue (beyond ``max_queue``, refused
    them as busy)."""
    async with two_workers(ctx, client) as (_, stats):
        backlog = [asyncio.ensure_future(client.call("spin", 0.025)) for _ in range(120)]
        flagged = []
        while not all(f.done() for f in backlog):
            flagged += [s for s in stats()["services"] if not s["responsive"]]
            await asyncio.sleep(0.02)
        assert len(set(await asyncio.gather(*backlog))) == 2
        assert not flagged, flagged
        assert stats()["errors"]["services_unresponsive"] == 0


async def test_slow_inline_handlers_answer_as_they_finish(pool_env, ctx, client):
    """A backlog of slow sync handlers (run inline by the worker's reader, one after the
    other): each answer leaves as its handler returns, not corked until 32 of them are ready
    or the backlog is done (the first of 20 calls of 100 ms came back after 2 s, with all the
    others)."""
    url = tcp_url()
    async with WorkerPool("_workers_service:service", 1, bind=url, context=ctx) as pool:
        await pool.wait_ready()
        client.connect(url)
        await client.call("pid")
        start = time.monotonic()
        calls = [asyncio.ensure_future(client.call("spin", 0.1)) for _ in range(20)]
        await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
        first = time.monotonic() - start
        await asyncio.gather(*calls)
        assert first < 1.0, f"the first answer came back after {first:.2f} s"


async def _reached(mark: Path, n: int) -> None:
    """Wait until ``n`` calls of ``slow(..., mark)`` have started in the workers."""
    started = await wait_until(lambda: mark.exists() and mark.stat().st_size >= n, timeout=10)
    assert started, "the calls did not reach the workers within 10 s"


def _parent(url: str, grace: float = 5, cli: bool = False, **popen: Any) -> subprocess.Popen[bytes]:
    """A process running a pool of 2 workers: ``serve_workers``, or ``netcall serve --workers 2``
    with ``cli``."""
    if cli:
        code = "import sys; from netcall.cli import main; sys.exit(main())"
        args = ["serve", "_workers_service:service", "--bind", url, "--workers", "2"]
        args += ["--grace", str(grace)]
    else:
        code = (
            "import logging; from netcall.workers import serve_workers; logging.basicConfig(); "
            f"serve_workers('_workers_service:service', 2, bind={url!r}, grace={grace})"
        )
        args = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=TESTS, **popen)


async def test_workers_exit_when_the_parent_is_killed(ctx, client):
    url = tcp_url()
    parent = _parent(url)
    try:
        client.connect(url)
        pids = await pids_seen(client, 2)
        parent.kill()
        parent.wait()
        await wait_gone(pids, timeout=10)
    finally:
        parent.kill()
        parent.wait()


async def test_a_busy_worker_exits_too_when_the_parent_is_killed(ctx, client):
    # A handler that never yields keeps the worker's loop from stopping: the parent-death
    # watch exits the process anyway, grace + 2 s later.
    url = tcp_url()
    parent = _parent(url, grace=0.5)
    try:
        client.connect(url)
        pids = await pids_seen(client, 2)
        busy = [asyncio.ensure_future(client.call("burn", 10**9, timeout=30)) for _ in range(2)]
        await asyncio.sleep(0.5)
        parent.kill()
        parent.wait()
        t0 = time.monotonic()
        await wait_gone(pids, timeout=15)
        assert time.monotonic() - t0 > 1.5  # the fallback, not a graceful stop
        for call in busy:
            call.cancel()
    finally:
        parent.kill()
        parent.wait()


async def test_without_restart_a_dead_worker_is_reported(pool_env, ctx, client, caplog):
    url = tcp_url()
    async with WorkerPool(
        "_workers_service:service", 2, bind=url, context=ctx, restart=False
    ) as pool:
        await pool.wait_ready()
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while len(pool.pids) != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert len(pool.pids) == 1 and victim not in pool.pids
        assert any("exited with code -9" in r.getMessage() for r in caplog.records)
        client.connect(url)
        assert await pids_seen(client, 1) == set(pool.pids)


async def test_sigint_stops_gracefully_calls_in_flight_finish(ctx, client, tmp_path):
    url = tcp_url()
    parent = _parent(url)
    try:
        client.connect(url)
        pids = await pids_seen(client, 2)
        mark = tmp_path / "started"
        calls = [asyncio.ensure_future(client.slow(1.0, str(mark))) for _ in range(4)]
        await _reached(mark, 4)
        parent.send_signal(signal.SIGINT)
        got = await asyncio.gather(*calls)
        assert set(got) <= pids
        t0 = time.monotonic()
        while parent.poll() is None:
            assert time.monotonic() - t0 < 10
            await asyncio.sleep(0.05)
        assert parent.returncode == 0
        await wait_gone(pids, timeout=2)
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.parametrize("cli", [False, True], ids=["serve_workers", "cli"])
@pytest.mark.parametrize("late", [0.0, 1.5])
async def test_sigterm_to_the_process_group_stops_as_one_to_the_parent(
    ctx, client, late, cli, tmp_path
):
    # systemd's stop, `kill -TERM -<pgid>`: every process gets SIGTERM at once, and the stop
    # is the same as that of a SIGTERM to the parent alone. With ``late``, the parent handles
    # its own that much later (a loaded machine): the workers must not stop on their own
    # meanwhile (they did: their answers could find no broker reading them, and the pool took
    # their exits for crashes, "restarting"). The call made after the answers is refused:
    # both signal handlers refuse new calls as they run (WorkerPool._begin_stop), not a loop
    # turn later.
    url = tcp_url()
    parent = _parent(url, cli=cli, start_new_session=True, stderr=subprocess.PIPE)
    try:
        client.connect(url)
        pids = await pids_seen(client, 2)
        mark = tmp_path / "started"
        calls = [asyncio.ensure_future(client.slow(1.0, str(mark))) for _ in range(4)]
        await _reached(mark, 4)
        if late:
            os.kill(parent.pid, signal.SIGSTOP)
        os.killpg(parent.pid, signal.SIGTERM)
        if late:
            await asyncio.sleep(late)
            os.kill(parent.pid, signal.SIGCONT)
        assert set(await asyncio.gather(*calls)) <= pids
        with pytest.raises(ServiceStoppingError):
            await client.slow(0.01)
        _, err = await asyncio.to_thread(parent.communicate, timeout=10)
        assert parent.returncode == 0
        assert b"restarting" not in err, err.decode()
        await wait_gone(pids, timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


async def test_the_whole_stop_is_bounded_by_grace_plus_2_s(pool_env, ctx, client):
    # A call that outlasts the grace: the worker gets what is left of the grace once the broker
    # has drained (none), not a fresh one; the stop once took 2 * grace (6 s here).
    url, grace = tcp_url(), 3.0
    async with WorkerPool(
        "_workers_service:service", 1, bind=url, context=ctx, grace=grace
    ) as pool:
        await pool.wait_ready()
        pids = set(pool.pids)
        client.connect(url)
        call = asyncio.ensure_future(client.slow(60))
        deadline = time.monotonic() + 10
        while pool.stats()["broker"]["in_flight"] != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        await pool.stop()
        took = time.monotonic() - t0
    assert took < grace + 2, f"stop() took {took:.1f} s"
    with pytest.raises(ServiceStoppingError):  # cancelled, and the answer still went out
        await call
    await wait_gone(pids, timeout=2)


async def test_netcall_serve_workers_on_the_command_line(ctx, client):
    url = tcp_url()
    code = "import sys; from netcall.cli import main; sys.exit(main())"
    args = ["serve", "_workers_service:service", "--bind", url, "--workers", "2"]
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=TESTS, env=env, stdout=subprocess.PIPE
    )
    try:
        client.connect(url)
        pids = await pids_seen(client, 2)
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.to_thread(proc.communicate, timeout=15)
        assert proc.returncode == 0
        assert b"with 2 workers" in out
        await wait_gone(pids, timeout=2)
    finally:
        proc.kill()
        proc.wait()
