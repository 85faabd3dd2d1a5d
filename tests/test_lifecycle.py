"""Clean lifecycles, each run as a real process under ``python -X dev -W error`` and checked by
its exit status, its time and its output (issue 13): Ctrl-C of ``await service.serve()`` is a
graceful stop and a second one stops now; unused services and clients hold no sockets and are
quiet when collected; IPC files go away; a client outlives one ``asyncio.run()``; handler
failures are logged once, without a doubled prefix."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import ipc_url, netcall_env, tcp_url

pytestmark = pytest.mark.timeout(60)

STRICT = [sys.executable, "-X", "dev", "-W", "error"]

SERVICE = """
import asyncio, logging, sys
from netcall import RPCService

logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
service = RPCService(grace=float(sys.argv[2]))

@service.register
async def slow(seconds):
    # "started" once the handler waits (printed from the handler itself, a Ctrl-C sent on
    # reading it could land inside the handler's step: on 3.10, a KeyboardInterrupt there)
    asyncio.get_running_loop().call_soon(lambda: print("started", flush=True))
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if sys.argv[3:] != ["stubborn"]:
            raise
        await asyncio.sleep(seconds)  # one cancellation is not enough
    return "done"

async def main():
    service.bind(sys.argv[1])
    print("serving", flush=True)
    await service.serve()

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("interrupted", flush=True)
# At exit ZeroMQ drops messages still queued unless the context is terminated (docs/services.md)
service.context.destroy(linger=200)
"""


def run(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STRICT, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=netcall_env(),
        timeout=timeout,
        check=False,
    )


def start_service(url: str, grace: float, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*STRICT, "-c", SERVICE, url, str(grace), *extra],
        env=netcall_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C must raise KeyboardInterrupt even if this test run ignores SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None and proc.stdout.readline() == "serving\n"
    return proc


def call_slow(url: str, seconds: float) -> subprocess.Popen[str]:
    code = f"""
        import asyncio
        from netcall import RPCClient, ServiceStoppingError

        async def main():
            async with RPCClient(timeout=20) as client:
                client.connect({url!r})
                try:
                    print(await client.slow({seconds}), flush=True)
                except ServiceStoppingError:
                    print("stopped", flush=True)
                except Exception as exc:
                    print(type(exc).__name__, flush=True)

        asyncio.run(main())
    """
    return subprocess.Popen(
        [*STRICT, "-c", textwrap.dedent(code)],
        env=netcall_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_busy(service: subprocess.Popen[str]) -> None:
    """Until the service has a call in flight (its handler says so)."""
    assert service.stdout is not None and service.stdout.readline() == "started\n"


def test_ctrl_c_of_serve_lets_the_call_in_flight_finish(tmp_path: Path) -> None:
    url = ipc_url(tmp_path)
    service = start_service(url, grace=10)
    client = call_slow(url, 1.5)
    wait_busy(service)
    start = time.monotonic()
    service.send_signal(signal.SIGINT)
    out, err = service.communicate(timeout=20)
    took = time.monotonic() - start
    assert service.returncode == 0 and out == "interrupted\n", err
    assert "stopping, waiting up to 10 s for" in err  # 1 call (3.10: 0, see below)
    assert "Warning" not in err and "Traceback" not in err, err
    assert took < 5, took  # it waited for the call (~0.5 s left), not for the grace
    # Python 3.10's asyncio.run() cancels every task on Ctrl-C (or interrupts the one running),
    # the handler's too: the caller gets an error at once. From 3.11 it cancels only the main
    # task: the call finishes. (On 3.10 the caller twice heard ConnectionLostError instead,
    # in CI runs of the whole suite, never reproduced alone. One way that happens was found
    # and fixed in session 9: the client's loop read the monitor's "disconnected" before the
    # answer waiting on its socket (tests/test_disconnect_order.py). Whether that was the
    # cause here is not shown, so ConnectionLostError is still accepted.)
    answer = client.communicate(timeout=20)[0]
    if sys.version_info >= (3, 11):
        assert answer == "done\n"
    else:
        assert answer in ("stopped\n", "RemoteRPCError\n", "ConnectionLostError\n")
    assert not Path(url[len("ipc://") :]).exists()  # the socket file is gone


def test_second_ctrl_c_stops_now(tmp_path: Path) -> None:
    # On 3.10 the first Ctrl-C makes asyncio.run() cancel every task, the handler's too: the
    # stop then waited for nothing, and the second Ctrl-C raced the end of the program (now
    # and then it landed in the script's context.destroy(): a traceback, 2 runs in 200). So
    # there the handler outlives one cancellation, and the stop waits for it as on 3.11+.
    # (Not on 3.11+: there the second Ctrl-C cancels the handler once, which it would ignore.)
    url = tcp_url()
    service = start_service(url, 30, *(["stubborn"] if sys.version_info < (3, 11) else []))
    client = call_slow(url, 20)
    wait_busy(service)
    start = time.monotonic()
    service.send_signal(signal.SIGINT)
    assert service.stderr is not None
    log = []
    for _ in range(10):  # the log: bound ..., then stopping ...
        log.append(service.stderr.readline())
        if "stopping, waiting up to 30 s for 1 call;" in log[-1]:
            break
    else:
        raise AssertionError(f"no 'stopping' line: {log}")
    service.send_signal(signal.SIGINT)
    out, err = service.communicate(timeout=20)
    took = time.monotonic() - start
    err = "".join(log) + err
    assert took < 5, (took, service.returncode, out, err)
    assert service.returncode == 0 and out == "interrupted\n", err
    assert "Warning" not in err and "Traceback" not in err, err
    client.kill()
    client.communicate(timeout=5)


def test_unused_service_and_client_hold_no_sockets_and_are_quiet() -> None:
    done = run(
        """
        import gc
        from netcall import RPCClient, RPCService

        class Calculator(RPCService):
            def square(self, x):
                return x * x

        print(sorted(Calculator().methods()))
        service, client = RPCService(), RPCClient()
        assert service._socket is None and client._sockets.socket is None
        used = RPCService()
        used.bind_ports()  # a socket, never closed: collected quietly
        unclosed = RPCClient()
        unclosed.connect("tcp://127.0.0.1:1")
        del used, unclosed
        gc.collect()
        print("ok")
        """
    )
    assert done.returncode == 0 and done.stdout == "['square']\nok\n", done.stderr
    assert done.stderr == ""


def test_a_client_outlives_one_asyncio_run() -> None:
    done = run(
        """
        import asyncio, threading
        from netcall import RPCClient, RPCService

        service = RPCService()
        service.register(lambda x: x, name="echo")
        port = service.bind_ports()
        ready, stop = threading.Event(), threading.Event()

        async def serve():
            async with service:
                ready.set()
                await asyncio.get_running_loop().run_in_executor(None, stop.wait)

        thread = threading.Thread(target=asyncio.run, args=(serve(),))
        thread.start()
        ready.wait()
        client = RPCClient(timeout=5)
        client.connect(f"tcp://127.0.0.1:{port}")

        async def once(x):
            return await client.echo(x)

        try:
            print(asyncio.run(once(1)), asyncio.run(once(2)))
        finally:
            client.close()
            stop.set()
            thread.join()
        """
    )
    assert done.returncode == 0 and done.stdout == "1 2\n", done.stderr
    assert done.stderr == ""


def test_handler_failures_are_logged_once_without_a_doubled_prefix() -> None:
    done = run(
        """
        import asyncio, logging
        from netcall import RPCService
        from netcall.testing import service_client_pair

        logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
        service = RPCService()

        @service.register
        def fail(x):
            raise ValueError(f"bad {x}")

        async def main():
            async with service_client_pair(service, timeout=5) as client:
                for i in range(3):
                    try:
                        await client.fail(i)
                    except ValueError:
                        pass
                await client.call("fail", 9, oneway=True)
                await asyncio.sleep(0.2)

        asyncio.run(main())
        """
    )
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "netcall: netcall:" not in err
    assert err.count("netcall: WARNING: fail raised ValueError (client ") == 3, err
    assert "netcall: WARNING: one-way call fail raised ValueError" in err, err
    assert "ValueError: bad 0" in err and "bad 9" in err, err
    assert "netcall: INFO: RPCService bound to inproc://" in err
    assert "netcall: INFO: RPCService stopped" in err
