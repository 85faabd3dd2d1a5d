"""A lone caller (the thread or greenlet running netcall's loop itself) gives up on a call, by
Ctrl-C, ``gevent.kill`` or ``gevent.Timeout``, and makes no call afterwards: the service's
handler is cancelled at once all the same (the CANCEL goes out without waiting for a next call
to run the loop). Run by ``test_lone_cancel.py`` in a fresh process (gevent: with and without
``monkey.patch_all()``), against a service in a process of its own, which prints ``started``
and ``cancelled`` from its handler. Prints ``OK`` when everything held."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

SERVICE = """
import asyncio, sys
from netcall import RPCService
svc = RPCService()
svc.register(lambda x=None: x, name="echo")
@svc.register
async def slow(seconds, result=None):
    print("started", flush=True)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        print("cancelled", flush=True)
        raise
    return result
async def main():
    port = svc.bind_ports()
    print(f"tcp://127.0.0.1:{port}", flush=True)
    await svc.serve()
asyncio.run(main())
"""

#: Seconds the service's handler may take to hear of the cancel: the bug left it running for
#: good (until another call), so this is a bound, not a race.
CANCEL_WITHIN = 5.0


class Lines:
    """The service's stdout, a line at a time, with a deadline (``select``: the blocking
    module's, or gevent's, which lets the hub run meanwhile)."""

    def __init__(self, proc: subprocess.Popen[bytes], select: Callable[..., Any]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.select = select
        self.buffer = b""

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return ""
            if self.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    return ""
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


@contextlib.contextmanager
def remote(select: Callable[..., Any]) -> Iterator[tuple[str, Lines]]:
    proc = subprocess.Popen([sys.executable, "-c", SERVICE], stdout=subprocess.PIPE)
    try:
        lines = Lines(proc, select)
        url = lines.next(20)
        assert url.startswith("tcp://"), url
        yield url, lines
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def check_cancelled(client: Any, lines: Lines) -> None:
    """The handler heard of the cancel, and the client forgot the call, with no call since."""
    bridge = client._bridge
    assert lines.next(CANCEL_WITHIN) == "cancelled", (
        f"the service's handler was not cancelled within {CANCEL_WITHIN} s "
        f"(client pending: {client.pending}, threaded: {bridge._threaded})"
    )
    assert client.pending == 0, client.pending
    assert not bridge._lead.locked() or bridge._threaded
    assert client.echo("after") == "after"  # (the loop goes on as before)
    assert bridge._waiting == 0 and not bridge._green_driver


def ctrl_c() -> None:
    """Ctrl-C in the main thread while it runs the loop for its blocking call."""
    import select
    import threading

    from netcall.sync import SyncRPCClient

    with remote(select.select) as (url, lines):
        client = SyncRPCClient(timeout=30)
        client.connect(url)
        assert client.echo(0) == 0
        assert not client._bridge._threaded
        sent: list[float] = []

        def interrupt() -> None:
            assert lines.next(10) == "started"
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

        helper = threading.Thread(target=interrupt)
        helper.start()
        try:
            client.slow(30, "late")
        except KeyboardInterrupt:
            took = time.monotonic() - sent[0]
        else:
            raise AssertionError("the call returned despite Ctrl-C")
        helper.join(10)
        assert took < 2, f"KeyboardInterrupt {took:.2f} s after Ctrl-C"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        check_cancelled(client, lines)
        client.close()
        print("OK")


def green(how: str) -> None:
    """A lone greenlet's call ended by ``gevent.kill`` (``how='kill'``) or by a
    ``gevent.Timeout`` around it (``how='timeout'``)."""
    import gevent
    import gevent.select

    from netcall.green import GeventRPCClient

    with remote(gevent.select.select) as (url, lines):
        client = GeventRPCClient(timeout=30)
        client.connect(url)
        assert client.echo(0) == 0
        bridge = client._bridge
        assert not bridge._threaded
        if how == "kill":
            caller = gevent.spawn(client.slow, 30, "late")
            assert lines.next(10) == "started"
            assert bridge._green_driver
            started = time.monotonic()
            caller.kill(block=True)
            assert caller.dead
        else:
            # (the timeout itself is the trigger: it must fire amid the call, which the
            # service starts within milliseconds; "started" is checked below)
            started = time.monotonic()
            try:
                with gevent.Timeout(0.5):
                    client.slow(30, "late")
            except gevent.Timeout:
                pass
            else:
                raise AssertionError("the call returned despite the timeout")
            started += 0.5
            assert lines.next(10) == "started"
        assert time.monotonic() - started < 2
        check_cancelled(client, lines)
        client.close()
        print("OK")
