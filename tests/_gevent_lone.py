"""A lone greenlet runs netcall's loop itself (``netcall._bridge.Bridge._wait_green``): one
scenario, run by ``test_gevent_lone.py`` in a fresh process with and without
``gevent.monkey.patch_all()``, against a service in a process of its own. Prints ``OK`` when
everything held."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import gevent

from _gevent_scenarios import REMOTE_SERVICE
from netcall import RPCTimeoutError, _bridge
from netcall.green import GeventRPCClient


@contextlib.contextmanager
def remote() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", REMOTE_SERVICE], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def lone_greenlet() -> None:
    with remote() as url:
        client = GeventRPCClient(timeout=5)
        client.connect(url)
        bridge = client._bridge

        # Calls one at a time from greenlets: no thread of netcall's own runs the loop.
        assert gevent.spawn(lambda: [client.echo(i) for i in range(50)]).get() == list(range(50))
        assert not bridge._threaded and bridge._lead.acquire(False)
        bridge._lead.release()

        # While a call waits, the hub runs the other greenlets.
        ticks: list[float] = []
        ticker = gevent.spawn(
            lambda: [ticks.append(gevent.sleep(0.01) or time.monotonic()) for _ in range(10)]
        )
        assert client.slow(0.4, "slow") == "slow"
        answered = time.monotonic()
        ticker.join()
        assert len(ticks) == 10 and ticks[-1] < answered, "the hub was blocked during the call"
        assert not bridge._threaded

        # The loop's own timers fire while a greenlet runs it (the call's timeout).
        started = time.monotonic()
        try:
            client.call("slow", 3, timeout=0.2)
        except RPCTimeoutError:
            pass
        else:
            raise AssertionError("no timeout")
        assert time.monotonic() - started < 2

        # A greenlet killed amid its call leaves the loop to the next caller.
        victim = gevent.spawn(client.slow, 5, "never")
        gevent.sleep(0.1)
        assert bridge._green_driver
        victim.kill(block=True)
        assert not bridge._green_driver and not bridge._threaded
        assert client.echo("after the kill") == "after the kill"

        # Many greenlets at once: the bridge's thread takes over, then hands the loop back
        # once they call one at a time again.
        crowd = [gevent.spawn(client.slow, 0.05, i) for i in range(20)]
        assert [g.get() for g in crowd] == list(range(20))
        assert bridge._threaded
        deadline = time.monotonic() + 5
        while bridge._threaded:
            assert time.monotonic() < deadline, "never handed back"
            assert client.echo(1) == 1
            gevent.sleep(0.01)
        assert client.echo("back") == "back"
        assert not bridge._threaded and bridge._waiting == 0

        # A plain thread's call while the greenlet running the loop is stuck in a blocked
        # hub: the bridge's thread answers it (the greenlet holds nothing while it waits).
        waiting = gevent.spawn(client.slow, 0.5, "greenlet")
        gevent.sleep(0.1)
        assert bridge._green_driver
        answered_lock = _bridge._real_lock()
        answered_lock.acquire()
        out: list[object] = []

        def plain_thread() -> None:
            out.append(client.echo("thread"))
            answered_lock.release()

        _bridge._start_real_thread(plain_thread)
        assert answered_lock.acquire(True, 5), "the thread's call waited for the blocked hub"
        assert out == ["thread"]
        assert waiting.get() == "greenlet"

        client.close()
        assert _bridge._bridge is None
        print("OK")


def ctrl_c_while_a_greenlet_calls() -> None:
    """Ctrl-C while a spawned greenlet waits amid its call and the main greenlet sleeps: the
    KeyboardInterrupt stops the main greenlet, as it would without netcall (the greenlet
    running netcall's loop defers signals only while it runs, not while it waits)."""
    import os
    import signal

    with remote() as url:
        client = GeventRPCClient(timeout=20)
        client.connect(url)
        caller = gevent.spawn(client.slow, 10, "late")
        gevent.sleep(0.2)
        assert client._bridge._green_driver
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        def interrupt() -> None:
            time.sleep(0.3) if "gevent.monkey" not in sys.modules else _real_sleep(0.3)
            os.kill(os.getpid(), signal.SIGINT)

        _bridge._start_real_thread(interrupt)
        started = time.monotonic()
        try:
            gevent.sleep(10)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("the main greenlet slept on through Ctrl-C")
        assert time.monotonic() - started < 5
        assert not caller.dead, "the Ctrl-C went to the greenlet amid its call"
        caller.kill(block=True)
        assert client.echo("after") == "after"
        client.close()
        print("OK")


def _real_sleep(seconds: float) -> None:
    from gevent import monkey

    monkey.get_original("time", "sleep")(seconds)


def loop_code_that_switches_greenlets() -> None:
    """A middleware that switches greenlets (a sync helper sleeping, patched or not) runs
    inside the lone greenlet's turn: meanwhile the hub's other greenlets still call (they
    wait for the bridge's thread), and a blocking call from inside that turn is refused."""
    with remote() as url:
        client = GeventRPCClient(timeout=5)
        client.connect(url)
        nested: list[str] = []

        async def audit(call: Any, call_next: Any) -> Any:
            if call.method == "slow":
                gevent.sleep(0.05)  # (time.sleep under monkey-patching does the same)
                try:
                    client.echo("nested")
                except RuntimeError:
                    nested.append("refused")
            return await call_next(call)

        client.add_middleware(audit)
        other: list[object] = []

        def another_greenlet() -> None:
            gevent.sleep(0.01)  # (once the first greenlet's turn is amid the middleware)
            other.append(client.echo("other"))

        helper = gevent.spawn(another_greenlet)
        assert client.slow(0.01, "slow") == "slow"
        helper.join(5)
        assert other == ["other"], other
        assert nested == ["refused"], nested
        client.close()
        print("OK")


def hand_back_asker_gone() -> None:
    """A greenlet asks the bridge's thread for the loop back, gives up (a timeout) and its
    thread destroys its hub before the thread answers: the answer's failure is logged, and
    the bridge's thread goes on serving every caller (before: it died, or closed the loop)."""
    import threading

    with remote() as url:
        client = GeventRPCClient(timeout=5)
        client.connect(url)
        bridge = client._bridge

        def hammer() -> None:
            for _ in range(300):
                client.echo(1)

        crowd = [threading.Thread(target=hammer) for _ in range(3)]
        for t in crowd:
            t.start()
        for t in crowd:
            t.join()
        assert bridge._threaded
        deadline = time.monotonic() + 5
        while not bridge._calm:
            assert time.monotonic() < deadline, "never calm"
            time.sleep(0.05)
        bridge.call_soon(time.sleep, 0.5)  # (busy: the hand-back is answered later)
        asked: list[int] = []

        def hub_thread() -> None:
            try:
                with gevent.Timeout(0.02):
                    client.echo(2)
            except gevent.Timeout:
                pass
            asked.append(len(bridge._hand_back_notify))
            gevent.get_hub().destroy(destroy_loop=True)

        t = threading.Thread(target=hub_thread)
        t.start()
        t.join()
        assert asked == [1], asked
        assert client.echo(3) == 3
        assert bridge.alive and client.echo(4) == 4
        client.close()
        print("OK")
