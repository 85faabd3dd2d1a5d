"""A bridged client's lone call goes out in the first turn of the loop it runs (session 22).

A lone blocking caller runs netcall's loop itself for its call, and a lone greenlet runs it a
turn at a time. The call is started after what the turn's select found is read (a broken
connection, a service's HELLO: see ``test_bridge_lead.py``), in that same turn, and its
message leaves at once (``netcall._reactor.LONE_STARTS``). Counted here: the turns (selects of
the bridge's loop) a sequential call takes, which were 5 for a thread and 6 for a greenlet
before, against real services over tcp, ipc and inproc, and for greenlets in a fresh process
with and without ``gevent.monkey.patch_all()``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from _adapter_helpers import ServiceThread, in_subprocess_header, run_python
from conftest import netcall_env
from netcall import _reactor
from netcall.errors import SerializationError
from netcall.sync import SyncRPCClient

pytestmark = pytest.mark.timeout(60)

CALLS = 60


@pytest.fixture(autouse=True)
def no_gevent_hub_here() -> None:
    """The calls here are a plain thread's: a gevent hub left in this thread by an earlier
    test would make them a greenlet's (see ``test_bridge_lead.py``)."""
    if "gevent" not in sys.modules:
        return
    from gevent._hub_local import get_hub_if_exists

    hub = get_hub_if_exists()
    if hub is not None:
        hub.destroy(destroy_loop=True)


@contextlib.contextmanager
def counted_turns(loop: Any) -> Iterator[list[float | None]]:
    """The timeouts of the selects ``loop`` makes meanwhile (one per turn)."""
    selector = loop._selector
    real = selector.select
    seen: list[float | None] = []

    def select(timeout: float | None = None) -> Any:
        seen.append(timeout)
        return real(timeout)

    selector.select = select
    try:
        yield seen
    finally:
        del selector.select


@pytest.fixture(params=["tcp", "ipc", "inproc"])
def remote(request: pytest.FixtureRequest, ctx: Any, make_url: Any) -> Iterator[ServiceThread]:
    svc = ServiceThread("asyncio", ctx, make_url(request.param)).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def lone_client(ctx: Any, remote: ServiceThread) -> Iterator[SyncRPCClient]:
    cli = SyncRPCClient(context=ctx, timeout=5)
    try:
        assert cli._bridge.users == 1, "another netcall client or service was left open"
        cli.connect(remote.url)
        yield cli
    finally:
        cli.close()


def test_a_lone_threads_call_takes_three_turns(lone_client: SyncRPCClient) -> None:
    bridge = lone_client._bridge
    for i in range(20):  # (connected, warm)
        assert lone_client.echo(i) == i
    with counted_turns(bridge.loop) as turns:
        for i in range(CALLS):
            assert lone_client.echo(i) == i
    assert not bridge._threaded  # the caller ran the loop itself
    # Per call: the first turn reads what came meanwhile and sends the call; the second waits
    # for the reply; the third runs the call's bookkeeping. (Before: 5.)
    assert len(turns) <= 3 * CALLS + 3, len(turns) / CALLS
    assert not _reactor.LONE_STARTS


def test_a_call_that_cannot_be_encoded_leaves_nothing_behind(lone_client: SyncRPCClient) -> None:
    """A lone start that raises (the arguments do not encode) unmarks the loop, leaves no call
    pending, and the calls after it still take three turns each."""
    bridge = lone_client._bridge
    assert lone_client.echo(1) == 1
    with pytest.raises(SerializationError):
        lone_client.echo(object())
    assert not _reactor.LONE_STARTS
    assert lone_client.pending == 0
    with counted_turns(bridge.loop) as turns:
        for i in range(CALLS):
            assert lone_client.echo(i) == i
    assert len(turns) <= 3 * CALLS + 3


GREEN_TURNS = """
import gevent
from _gevent_lone import remote
from netcall import _reactor
from netcall.green import GeventRPCClient

with remote() as url:
    client = GeventRPCClient(timeout=5)
    client.connect(url)
    bridge = client._bridge
    selector = bridge.loop._selector
    real = selector.select
    turns = []

    def select(timeout=None):
        turns.append(timeout)
        return real(timeout)

    def calls(n):
        return [client.echo(i) for i in range(n)]

    assert gevent.spawn(calls, 20).get() == list(range(20))
    selector.select = select
    assert gevent.spawn(calls, {calls}).get() == list(range({calls}))
    del selector.select
    assert not bridge._threaded, "a lone greenlet runs the loop itself"
    # Per call: the first turn sends it, then the greenlet waits on its hub; once the reply
    # is readable, one turn reads it and one runs the call's bookkeeping. (Before: 6.)
    assert len(turns) <= 3 * {calls} + 3, len(turns) / {calls}
    assert not _reactor.LONE_STARTS
    client.close()
print("OK")
"""


@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patched"])
def test_a_lone_greenlets_call_takes_three_turns(patched: bool) -> None:
    code = in_subprocess_header(patched) + GREEN_TURNS.replace("{calls}", str(CALLS))
    proc = run_python(code, env=netcall_env(), timeout=50)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


STRAY_STOP = """
import asyncio
import gevent
from _gevent_lone import remote
from netcall.green import GeventRPCClient

with remote() as url:
    client = GeventRPCClient(timeout=5)
    client.connect(url)
    bridge = client._bridge
    loop = bridge.loop
    selector = loop._selector
    real = selector.select
    turns = []

    def select(timeout=None):
        turns.append(timeout)
        return real(timeout)

    assert gevent.spawn(lambda: [client.echo(i) for i in range(20)]).get() == list(range(20))
    # A stray loop.stop() (a thread's call that ended, a deferred signal's wake-up) ends a
    # greenlet's turns in a turn where the check that ends them had scheduled itself again.
    loop.call_soon(loop.stop)
    gevent.spawn(bridge.run, asyncio.sleep(0)).get()
    selector.select = select
    for _ in range(3):
        turns.clear()
        assert gevent.spawn(client.slow, 0.3, "x").get() == "x"
        # (a check left behind turned the loop, and the greenlet's waits at 0 s, for good:
        # thousands of selects while the call waited)
        assert len(turns) <= 10, len(turns)
    del selector.select
    client.close()
print("OK")
"""


@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patched"])
def test_a_stray_stop_amid_a_greenlets_turns_leaves_no_spin(patched: bool) -> None:
    proc = run_python(in_subprocess_header(patched) + STRAY_STOP, env=netcall_env(), timeout=50)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
