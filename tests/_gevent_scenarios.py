"""gevent scenarios, each run by ``test_gevent.py`` in a fresh process, with and without
``gevent.monkey.patch_all()`` (the process patches before importing this module).

Each scenario raises on failure and prints ``OK`` when everything held.
"""

from __future__ import annotations

import gc
import sys
import time
from typing import Any

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer

from netcall import RPCTimeoutError, _bridge
from netcall.green import GeventRPCClient, GeventRPCService, GreenRPCClient, GreenRPCService


def make_service() -> tuple[GeventRPCService, str, dict[str, Any]]:
    state: dict[str, Any] = {"killed": 0, "closed": gevent.event.Event(), "running": 0}
    svc = GeventRPCService()

    @svc.register
    def slow(seconds: float, result: Any = None) -> Any:
        state["running"] += 1
        try:
            gevent.sleep(seconds)
        except gevent.GreenletExit:
            state["killed"] += 1
            raise
        finally:
            state["running"] -= 1
        return result

    @svc.register
    def echo(value: Any = None) -> Any:
        print("S> Execution starts when 'next()' is called for the first time.")
        try:
            while True:
                try:
                    value = yield value
                except Exception as e:
                    value = f"{type(e).__name__}({e})"
        finally:
            print("S> Don't forget to clean up when 'close()' is called.")
            state["closed"].set()

    port = svc.bind_ports()
    return svc, f"tcp://127.0.0.1:{port}", state


def finish(svc: GeventRPCService, *clients: GeventRPCClient) -> None:
    for c in clients:
        c.close()
    svc.stop(grace=0)
    assert _bridge._bridge is None, "the loop thread is still running"
    print("OK")


def concurrency() -> None:
    """50 greenlets x a 0.3 s method: only the calling greenlet blocks, on both ends."""
    svc, url, _state = make_service()
    svc.start()
    client = GeventRPCClient(timeout=5)
    client.connect(url)
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(20)])
    assert client.slow(0.3, "one") == "one"
    assert len(ticks) >= 10, f"the hub was blocked during a call ({len(ticks)} ticks)"
    ticker.join()
    start = time.monotonic()
    greenlets = [gevent.spawn(client.slow, 0.3, i) for i in range(50)]
    gevent.joinall(greenlets, raise_error=True, timeout=10)
    elapsed = time.monotonic() - start
    assert [g.value for g in greenlets] == list(range(50))
    assert elapsed < 1.5, f"50 x 0.3 s took {elapsed:.2f} s"
    print(f"50x0.3s: {elapsed:.3f}s")
    finish(svc, client)


def generators() -> None:
    """The seed README's generator example, including close on garbage collection."""
    svc, url, state = make_service()
    svc.start()
    client = GeventRPCClient(timeout=5)
    client.connect(url)
    generator = client.echo(1)
    assert next(generator) == 1
    assert next(generator) is None
    assert generator.send(2) == 2
    assert generator.throw(TypeError, "spam") == "TypeError(spam)"
    generator = None  # implicitly call generator.close()
    gc.collect()
    assert state["closed"].wait(5), "close on garbage collection did not reach the service"

    state["closed"].clear()
    gen = client.echo("a")
    assert next(gen) == "a"
    gen.close()
    assert state["closed"].is_set()  # close() waits for the finally block
    try:
        next(gen)
    except StopIteration:
        pass
    else:
        raise AssertionError("a closed generator went on")
    finish(svc, client)


def timeouts() -> None:
    """Timeouts raise RPCTimeoutError and kill the handler's greenlet; so does a
    gevent.Timeout around a call."""
    svc, url, state = make_service()
    svc.start()
    client = GeventRPCClient(timeout=5)
    client.connect(url)
    start = time.monotonic()
    try:
        client.call("slow", 5, timeout=0.2)
    except RPCTimeoutError:
        pass
    else:
        raise AssertionError("no timeout")
    assert time.monotonic() - start < 2
    deadline = time.monotonic() + 5
    while state["killed"] < 1 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert state["killed"] == 1, "the handler's greenlet was not killed"

    with gevent.Timeout(0.2, False):
        client.slow(5)
        raise AssertionError("gevent.Timeout did not interrupt the call")
    while state["killed"] < 2 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert state["killed"] == 2, "the interrupted call's handler was not killed"
    assert client.slow(0.01, "still fine") == "still fine"

    short = GreenRPCClient(timeout=0.2)
    short.connect(url)
    try:
        short.slow(5)
    except TimeoutError:
        pass
    else:
        raise AssertionError("no default timeout")
    finish(svc, client, short)


def start_and_serve() -> None:
    """start() returns a joinable greenlet that ends when the service stops; serve() blocks."""
    svc, url, _state = make_service()
    serving = svc.start()
    assert svc.start() is serving
    client = GeventRPCClient(timeout=5)
    client.connect(url)
    assert client.slow(0, "up") == "up"
    serving.join(timeout=0.1)
    assert not serving.ready(), "start()'s greenlet ended while the service was running"
    gevent.spawn_later(0.1, svc.stop)
    serving.join(timeout=5)
    assert serving.ready()
    assert svc.closed

    svc2 = GreenRPCService()
    svc2.register(lambda n: f"Hello {n}", name="hello")
    port = svc2.bind_ports()
    client.connect(f"tcp://127.0.0.1:{port}", only=True)
    answers = []
    gevent.spawn(lambda: (answers.append(client.hello("World")), svc2.stop()))
    start = time.monotonic()
    svc2.serve()  # returns once the greenlet above stopped the service
    assert answers == ["Hello World"]
    assert time.monotonic() - start < 5
    finish(svc2, client)


def ctrl_c_in_a_handler() -> None:
    """A Ctrl-C that lands while a handler runs reaches serve() (it used to be swallowed as the
    call's error, and the service served on)."""
    import os
    import signal

    svc = GeventRPCService()
    started = _bridge._original("_thread", "allocate_lock")()  # a real lock, patched or not
    started.acquire()

    @svc.register
    def spin(seconds: float) -> str:
        started.release()
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # busy: the signal is raised in this greenlet
            pass
        return "done"

    port = svc.bind_ports()
    client = GeventRPCClient(timeout=5)
    client.connect(f"tcp://127.0.0.1:{port}")
    call = gevent.spawn(client.spin, 3.0)

    def interrupt_soon() -> None:  # from a real thread, once the handler spins
        if started.acquire(True, 20):
            _bridge._original("time", "sleep")(0.1)
        os.kill(os.getpid(), signal.SIGINT)

    _bridge._start_real_thread(interrupt_soon)
    gevent.get_hub().exception_stream = None  # gevent would print the handler's Ctrl-C
    try:
        svc.serve()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("serve() returned without the KeyboardInterrupt")
    assert svc.closed
    call.join(timeout=5)
    assert call.ready()
    client.close()
    assert _bridge._bridge is None, "the loop thread is still running"
    print("OK")


REMOTE_SERVICE = """
import asyncio, sys
from netcall import RPCService
svc = RPCService()
svc.register(lambda x=None: x, name="echo")
@svc.register
async def slow(seconds, result=None):
    await asyncio.sleep(seconds)
    return result
async def main():
    port = svc.bind_ports()
    print(f"tcp://127.0.0.1:{port}", flush=True)
    await svc.serve()
asyncio.run(main())
"""


def greenlets_while_a_thread_runs_the_loop() -> None:
    """A plain thread alone runs netcall's loop for its blocking call; greenlets then create a
    gevent client and call meanwhile: their work runs on that thread's loop until the bridge's
    own thread takes over, and the hub is never blocked."""
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-c", REMOTE_SERVICE], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        from netcall.sync import SyncRPCClient

        blocking = SyncRPCClient(timeout=5)
        blocking.connect(url)
        bridge = blocking._bridge

        assert blocking.echo(0) == 0
        # (patched, the main thread's calls are a greenlet's, which runs the loop alike)
        assert not bridge._threaded
        out: list[Any] = []
        running = _bridge._real_lock()
        running.acquire()

        def lone() -> None:
            running.release()
            out.append(blocking.slow(0.5, "slow"))

        _bridge._start_real_thread(lone)
        assert running.acquire(True, 5)
        ticks: list[None] = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(20)])
        client = GeventRPCClient(timeout=5)
        client.connect(url)
        assert [g.get() for g in [gevent.spawn(client.echo, i) for i in range(20)]] == list(
            range(20)
        )
        ticker.join()
        assert len(ticks) == 20
        deadline = time.monotonic() + 5
        while not out:
            assert time.monotonic() < deadline, "the thread's call never answered"
            gevent.sleep(0.01)
        assert out == ["slow"]
        assert bridge._threaded  # greenlets called meanwhile: the bridge's own thread took over
        assert client.echo("after") == "after" and blocking.echo(1) == 1
        client.close()
        blocking.close()
        assert _bridge._bridge is None
        print("OK")
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()  # (not left to gevent's file object at interpreter exit)


def large_payloads() -> None:
    """1 MiB and 16 MiB bytes, buffer arguments, a numpy array (when numpy is installed) and
    streams of 1 MiB items, from greenlets (one, then 16 at once) to a gevent service; the hub
    keeps ticking meanwhile."""
    from _adapter_helpers import register_handlers

    svc = GeventRPCService()
    register_handlers(svc, "gevent", [])  # echo, kinds, repeat among them
    url = f"tcp://127.0.0.1:{svc.bind_ports()}"
    svc.start()
    client = GeventRPCClient(timeout=30)
    client.connect(url)
    mib = bytes(range(256)) * 4096
    huge = mib * 16
    ticks: list[None] = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(10)])
    assert client.echo(mib) == mib
    assert client.echo(huge) == huge
    assert client.kinds(mib, bytearray(mib), memoryview(mib)) == ["bytes"] * 3
    assert list(client.repeat(mib, 8)) == [mib] * 8
    greenlets = [gevent.spawn(client.echo, mib) for _ in range(16)]
    gevent.joinall(greenlets, raise_error=True, timeout=20)
    assert [g.value for g in greenlets] == [mib] * 16
    streams = [gevent.spawn(lambda: list(client.repeat(mib, 3))) for _ in range(4)]
    gevent.joinall(streams, raise_error=True, timeout=20)
    assert [g.value for g in streams] == [[mib] * 3] * 4
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        arr = np.arange(1 << 17, dtype="f8").reshape(512, 256)
        out = client.echo(arr)
        assert out.dtype == arr.dtype and out.shape == arr.shape and (out == arr).all()
        assert not out.flags.owndata  # over the received message: no copy on receipt
    ticker.join(timeout=5)
    assert len(ticks) == 10, "the hub was blocked"
    finish(svc, client)


def wsgi_server() -> None:
    """A gevent.pywsgi server whose handler calls netcall; the test drives it over HTTP.
    GET /<n> answers ``n`` after a 0.3 s netcall call; GET /quit stops everything."""
    svc, url, _state = make_service()
    svc.start()
    client = GeventRPCClient(timeout=5)
    client.connect(url)
    done = gevent.event.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ["PATH_INFO"].strip("/")
        if path == "quit":
            done.set()
            body = b"bye"
        else:
            body = str(client.slow(0.3, path)).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    print(f"PORT {server.server_port}", flush=True)
    done.wait()
    gevent.sleep(0.05)
    server.stop(timeout=1)
    finish(svc, client)


if __name__ == "__main__":  # pragma: no cover - run by test_gevent.py
    globals()[sys.argv[1]]()
