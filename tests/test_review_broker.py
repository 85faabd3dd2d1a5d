"""Adversarial review of security (issue 10), the broker and clients that bind (issues 11, 15):
the issues' own spelling, across processes where they say so. Bugs found in review are
regression tests here."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _helpers import wait_until
from netcall import AuthenticationError, ConnectionLostError, RPCClient, current_call
from netcall.security import Curve, Keypair

pytestmark = pytest.mark.timeout(60)

SRC = str(Path(__file__).resolve().parent.parent / "src")

SERVICE = """
import asyncio, os, sys
from netcall import RPCService, current_call

async def main():
    service = RPCService()

    @service.register
    async def add(a, b):
        return a + b

    @service.register
    async def whoami():
        return current_call().peer_key

    @service.register
    async def slow(seconds):
        await asyncio.sleep(seconds)
        return os.getpid()

    service.connect(sys.argv[1])
    async with service:
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )


def _netcall(*args: str) -> subprocess.Popen[str]:
    """The ``netcall`` command, as its console script runs it."""
    return _spawn("-c", "import sys; from netcall.cli import main; sys.exit(main())", *args)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


async def _call_until_ok(client: RPCClient, limit: float) -> float:
    """Seconds until ``client.add(1, 2)`` answers (each try bounded to 1 s)."""
    start = time.monotonic()
    while True:
        try:
            assert await asyncio.wait_for(client.add(1, 2), 1.0) == 3
            return time.monotonic() - start
        except (asyncio.TimeoutError, Exception):
            if time.monotonic() - start > limit:
                raise
            await asyncio.sleep(0.05)


async def test_issue_snippets_across_processes(tmp_path: Path) -> None:
    """Issue 10's and 11's spelling: keys from ``netcall keygen``, ``Keypair.load``, a CURVE
    broker from ``netcall broker``, services that ``connect()`` then ``async with``."""
    keys = tmp_path / "keys"
    for name, folder in (("server", keys), ("alice", keys / "clients")):
        gen = _netcall("keygen", name, "--dir", str(folder))
        assert gen.wait(20) == 0
        _stop(gen)
    server = Keypair.load(keys / "server.key_secret")
    alice = Keypair.load(str(keys / "clients" / "alice.key_secret"))
    ipc = f"ipc://{tmp_path}"
    front, back = f"{ipc}/front", f"{ipc}/back"
    script = tmp_path / "svc.py"
    script.write_text(SERVICE)
    broker = _netcall(
        "broker", "--frontend", front, "--backend", back,
        "--curve-keypair", str(keys / "server.key_secret"), "--allow", str(keys / "clients"),
    )  # fmt: skip
    procs = [broker, _spawn(str(script), back), _spawn(str(script), back)]
    client = RPCClient(security=Curve.client(server.public, keypair=alice))
    stranger = RPCClient(security=Curve.client(server.public, keypair=Keypair.generate()))
    try:
        for proc in procs[1:]:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        client.connect(front)
        await _call_until_ok(client, 10)
        assert await client.whoami() == alice.public.decode()
        stranger.connect(front)
        start = time.monotonic()
        with pytest.raises(AuthenticationError):
            await stranger.add(1, 2)
        assert time.monotonic() - start < 1.0

        # kill -9 of a service: its calls in flight fail within about 2 s
        pids = {procs[1].pid, procs[2].pid}
        seen: set[int] = set()
        for _ in range(200):  # both services have joined the broker
            seen.update(await asyncio.gather(*[client.slow(0) for _ in range(4)]))
            if seen == pids:
                break
            await asyncio.sleep(0.02)
        assert seen == pids
        calls = [asyncio.ensure_future(client.slow(30)) for _ in range(4)]
        await asyncio.sleep(0.3)
        os.kill(procs[1].pid, signal.SIGKILL)
        start = time.monotonic()
        done, _ = await asyncio.wait(calls, timeout=2.5, return_when=asyncio.FIRST_EXCEPTION)
        assert time.monotonic() - start < 2.5
        assert any(isinstance(c.exception(), ConnectionLostError) for c in done)
        for c in calls:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        assert await client.slow(0) in pids - {procs[1].pid}

        # kill -9 of the broker, restart on the same addresses: new calls within 5 s
        os.kill(broker.pid, signal.SIGKILL)
        _stop(broker)
        procs[0] = _netcall(*broker.args[3:])  # type: ignore[index]
        assert await _call_until_ok(client, 5) < 5
        assert await client.whoami() == alice.public.decode()
    finally:
        client.close()
        stranger.close()
        for proc in procs:
            _stop(proc)


@pytest.mark.parametrize("curve", [False, True])
async def test_client_that_binds_sees_services_that_connected_before_its_first_call(
    make_client, make_service, curve: bool
) -> None:
    """Regression: a client that binds read nothing until its first call, so a call made after
    the services had connected and announced themselves failed with "no service has connected
    to this client yet"."""
    alice = Keypair.generate()
    server = Keypair.generate()
    svc = make_service(security=Curve.server(server, allow=[alice.public]) if curve else None)

    @svc.register
    async def whoami() -> str | None:
        return current_call().peer_key

    cli = make_client(security=Curve.client(server.public, keypair=alice) if curve else None)
    port = cli.bind_ports()
    svc.connect(f"tcp://127.0.0.1:{port}")
    async with svc:
        await wait_until(lambda: bool(svc._upstreams._up), timeout=5)
        await asyncio.sleep(0.2)  # the HELLO crosses
        assert await cli.whoami() == (alice.public.decode() if curve else None)


async def test_a_client_that_binds_cannot_claim_another_key(make_service, ctx) -> None:
    """Regression: a CURVE service trusted the caller key written in the metadata of any peer
    it had connected to, so a client that binds (authenticated as bob) could claim alice's key
    and pass ``register(allow=[alice])``. Over a CURVE link the link's own key is the caller's."""
    import zmq

    from netcall import protocol as p

    server, alice, bob = Keypair.generate(), Keypair.generate(), Keypair.generate()
    svc = make_service(
        security=Curve.server(server, allow=[alice.public, bob.public]), serializer="json"
    )

    @svc.register(allow=[alice.public])
    async def secret() -> str | None:
        return current_call().peer_key

    sock = ctx.socket(zmq.ROUTER)  # a hostile client that binds, authenticated as bob
    sock.curve_serverkey, sock.curve_publickey = server.public, bob.public
    sock.curve_secretkey = bob.secret
    try:
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        svc.connect(f"tcp://127.0.0.1:{port}")
        async with svc:
            assert await asyncio.to_thread(sock.poll, 5000)
            peer, *hello = sock.recv_multipart()
            assert p.decode(hello).__class__ is p.Hello
            assert await asyncio.to_thread(sock.poll, 5000)
            assert p.decode(sock.recv_multipart()[1:]).__class__ is p.Ping  # left unanswered
            call = p.Call(
                7, "secret", "json", b"[]", metadata={p.META_PEER_KEY: alice.public.decode()}
            )
            sock.send_multipart([peer, *call.to_frames()])
            assert await asyncio.to_thread(sock.poll, 5000)
            reply = p.decode(sock.recv_multipart()[1:])
            assert isinstance(reply, p.Error), reply
            assert "Permission" in reply.type_name or "ermission" in reply.message
    finally:
        sock.close(linger=0)


def test_client_bound_before_the_loop_runs_sees_services_at_its_first_call(ctx) -> None:
    from netcall import RPCService

    cli = RPCClient(context=ctx, timeout=5)
    port = cli.bind_ports()
    svc = RPCService(context=ctx)

    @svc.register
    async def answer() -> int:
        return 42

    async def main() -> int:
        svc.connect(f"tcp://127.0.0.1:{port}")
        async with svc:
            await wait_until(lambda: bool(svc._upstreams._up), timeout=5)
            await asyncio.sleep(0.2)  # the HELLO crosses
            result: int = await cli.answer()
            return result

    try:
        assert asyncio.run(main()) == 42
    finally:
        cli.close()
        svc.close()
