"""netcall.testing, introspection and the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import netcall_env
from netcall import MethodNotFoundError, RPCService
from netcall.testing import free_tcp_endpoint, service_client_pair

ROOT = Path(__file__).resolve().parents[1]


def make_service() -> RPCService:
    service = RPCService()

    @service.register
    async def echo(s):
        """Return s."""
        return s

    @service.register
    def count(n):
        yield from range(n)

    return service


async def test_service_client_pair_serves_and_cleans_up() -> None:
    service = make_service()
    async with service_client_pair(service, timeout=2.0) as client:
        assert await client.echo("hi") == "hi"
        assert [x async for x in client.count(3)] == [0, 1, 2]
        with pytest.raises(MethodNotFoundError):
            await client.nope()
    assert service.closed and client.closed


async def test_methods_lists_signatures_and_docs() -> None:
    async with service_client_pair(make_service(), timeout=2.0) as client:
        methods = await client.methods()
    assert methods == {
        "count": {"signature": "(n)", "doc": ""},
        "echo": {"signature": "(s)", "doc": "Return s."},
    }


def test_free_tcp_endpoint() -> None:
    url = free_tcp_endpoint()
    assert url.startswith("tcp://127.0.0.1:") and int(url.rsplit(":", 1)[1]) > 0


@pytest.mark.timeout(30)
def test_cli_serve_call_methods() -> None:
    url = free_tcp_endpoint()
    cli = [sys.executable, "-m", "netcall.cli"]
    server = subprocess.Popen(
        [*cli, "serve", "echo_service:service", "--bind", url],
        cwd=ROOT / "examples",
        env=netcall_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert "serving" in server.stdout.readline()

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*cli, *args],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
                env=netcall_env(),
            )

        out = run("call", url, "echo", '"hi"')
        assert out.returncode == 0 and out.stdout.strip() == '"hi"'
        out = run("call", url, "hello", "World")
        assert out.stdout.strip() == '"Hello World"'
        out = run("call", url, "count", "3")
        assert out.stdout.split() == ["0", "1", "2"]
        out = run("methods", url)
        assert "echo(s)" in out.stdout and "count(n)" in out.stdout
        out = run("call", url, "nope")
        assert out.returncode == 1 and "MethodNotFound" in out.stderr
        out = run("call", url, "echo", "x", "--timeout", "0.5", "--serializer", "json")
        assert out.returncode == 1 and "Serializer" in out.stderr
    finally:
        server.terminate()
        assert server.wait(timeout=10) == 0
        server.stdout.close()


@pytest.mark.timeout(30)
def test_demo_shows_a_call_a_remote_error_a_timeout_and_a_stream() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "echo('hi') -> hi" in out
    assert "remote error: ZeroDivisionError - division by zero" in out
    assert "timeout:" in out and "cancelled" in out
    assert "count(5) -> [0, 1, 2, 3, 4]" in out


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_oversized_message_is_dropped_and_others_are_served(transport, tmp_path) -> None:
    """A peer sending more than max_message_size is cut off; the service keeps serving."""
    import zmq

    from netcall import ConnectionLostError, RPCClient, RPCTimeoutError

    url = free_tcp_endpoint() if transport == "tcp" else f"ipc://{tmp_path}/big.ipc"
    ctx = zmq.Context()  # not the shared default context: see the closing note of session 1
    service = RPCService(max_message_size=10_000, context=ctx)
    service.register(lambda s: len(s), name="size")
    service.bind(url)
    hostile = RPCClient(timeout=1.0, context=ctx)
    honest = RPCClient(timeout=5.0, context=ctx)
    try:
        async with service:
            hostile.connect(url)
            honest.connect(url)
            assert await honest.size("x" * 100) == 100
            with pytest.raises((ConnectionLostError, RPCTimeoutError)):
                await hostile.size("x" * 100_000)
            assert await honest.size("y" * 5_000) == 5_000
            assert service.active_calls == 0
    finally:
        hostile.close()
        honest.close()
        ctx.destroy(linger=0)


async def test_max_concurrent_refuses_the_excess_and_recovers() -> None:
    import asyncio

    from netcall import ServiceBusyError

    service = RPCService(max_concurrent=3)
    release = asyncio.Event()

    @service.register
    async def wait():
        await release.wait()
        return "done"

    @service.register
    def quick():
        return "quick"

    async with service_client_pair(service, timeout=5.0) as client:
        running = [asyncio.ensure_future(client.wait()) for _ in range(3)]
        while service.active_calls < 3:
            await asyncio.sleep(0.01)
        with pytest.raises(ServiceBusyError):
            await client.wait()
        assert await client.quick() == "quick"  # inline sync handlers never count
        release.set()
        assert await asyncio.gather(*running) == ["done"] * 3
        assert await client.wait() == "done"  # room again


def test_works_under_anyio_with_cancel_scopes() -> None:
    """anyio (asyncio backend): calls and streams work, and a cancel scope that expires
    cancels the remote handler like a timeout does."""
    import anyio

    service = RPCService()
    cancelled = []

    @service.register
    async def slow():
        try:
            await anyio.sleep(30)
        except BaseException:
            cancelled.append(True)
            raise

    @service.register
    async def count(n):
        for i in range(n):
            yield i

    async def main() -> None:
        async with service_client_pair(service, timeout=5.0) as client:
            assert [x async for x in client.count(3)] == [0, 1, 2]
            with anyio.move_on_after(0.2) as scope:
                await client.slow()
            assert scope.cancelled_caught
            with anyio.fail_after(2):
                while not cancelled:
                    await anyio.sleep(0.01)
            assert client.pending == 0

    anyio.run(main, backend="asyncio")
