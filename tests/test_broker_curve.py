"""CURVE on the broker's backend: services connect out as CURVE clients with real keys over
real tcp (``service.connect(url, security=Curve.client(...))``), the broker's allowlist lets in
the services it knows and refuses the rest, and a service's own ``security=`` stays on the
endpoints it binds."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from conftest import tcp_url
from netcall import Broker, RPCClient, current_call
from netcall.security import Curve, Keypair

pytestmark = pytest.mark.timeout(30)

BACKEND = Keypair.generate()
FRONTEND = Keypair.generate()
SVC = Keypair.generate()
OTHER = Keypair.generate()
ALICE = Keypair.generate()
DIRECT = Keypair.generate()  # a service's own key on the endpoints it binds


def whoami(make_service, **kw):  # type: ignore[no-untyped-def]
    svc = make_service(**kw)

    @svc.register
    def who() -> list[str | None]:
        return [svc.name, current_call().peer_key]

    return svc


async def joined(broker: Broker, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(broker.stats()["services"]) < n:
        assert time.monotonic() < deadline, broker.stats()
        await asyncio.sleep(0.02)


async def warned(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("own", [False, True], ids=["plain service", "Curve.server service"])
async def test_a_service_joins_a_curve_backend_and_serves(make_service, ctx, own):
    front, back = tcp_url(), tcp_url()
    backend = Curve.server(BACKEND, allow=[SVC.public])
    frontend = Curve.server(FRONTEND, allow=[ALICE.public])
    # A service that is itself a CURVE server (on its binds) still believes the broker it
    # authenticated as the CURVE client of the backend's key.
    security = Curve.server(DIRECT) if own else None
    svc = whoami(make_service, name="svc", security=security)
    svc.connect(back, security=Curve.client(BACKEND.public, keypair=SVC))
    client = RPCClient(timeout=5, context=ctx, security=Curve.client(FRONTEND.public, ALICE))
    async with Broker(front, back, context=ctx, security=frontend, backend_security=backend) as b:
        svc.start()
        await joined(b, 1)
        client.connect(front)
        try:
            # Both sides CURVE, each with its own allowlist in one context; the service sees
            # the client's key, vouched for by its broker.
            assert await client.who() == ["svc", ALICE.public.decode()]
        finally:
            client.close()


@pytest.mark.parametrize(
    "case, expect",
    [
        ("unlisted key", "refused this service's key"),
        ("plain", "requires CURVE"),
        ("wrong broker key", "public key is not the one"),
    ],
)
async def test_refused_services_never_join(make_service, ctx, caplog, case, expect):
    caplog.set_level(logging.WARNING, logger="netcall")
    front, back = tcp_url(), tcp_url()
    good = whoami(make_service, name="good")
    good.connect(back, security=Curve.client(BACKEND.public, keypair=SVC))
    bad = whoami(make_service, name="bad")
    if case == "unlisted key":
        bad.connect(back, security=Curve.client(BACKEND.public, keypair=OTHER))
    elif case == "plain":
        bad.connect(back)
    else:
        bad.connect(back, security=Curve.client(OTHER.public, keypair=SVC))
    backend = Curve.server(BACKEND, allow=[SVC.public])
    client = RPCClient(timeout=5, context=ctx)
    async with Broker(front, back, context=ctx, backend_security=backend) as b:
        bad.start()
        good.start()
        await joined(b, 1)
        await warned(caplog, expect)
        client.connect(front)
        try:
            names = {(await client.who())[0] for _ in range(20)}
            assert names == {"good"}
            assert len(b.stats()["services"]) == 1
        finally:
            client.close()


@pytest.mark.parametrize("bind_first", [False, True])
async def test_curve_out_and_curve_in_on_one_service(make_service, ctx, bind_first):
    """A Curve.server service that also connects out as a CURVE client: its bound endpoint
    keeps its own key and allowlist, whichever came first."""
    front, back, direct = tcp_url(), tcp_url(), tcp_url()
    svc = whoami(make_service, name="both", security=Curve.server(DIRECT, allow=[ALICE.public]))
    if bind_first:
        svc.bind(direct)
    svc.connect(back, security=Curve.client(BACKEND.public, keypair=SVC))
    if not bind_first:
        svc.bind(direct)
    backend = Curve.server(BACKEND, allow=[SVC.public])
    via_broker = RPCClient(timeout=5, context=ctx)
    straight = RPCClient(timeout=5, context=ctx, security=Curve.client(DIRECT.public, ALICE))
    async with Broker(front, back, context=ctx, backend_security=backend) as b:
        svc.start()
        await joined(b, 1)
        via_broker.connect(front)
        straight.connect(direct)
        try:
            assert await via_broker.who() == ["both", None]
            assert await straight.who() == ["both", ALICE.public.decode()]
        finally:
            via_broker.close()
            straight.close()


async def test_a_plain_service_binds_plain_after_a_curve_connect(make_service, ctx):
    front, back, direct = tcp_url(), tcp_url(), tcp_url()
    svc = whoami(make_service, name="plain")
    svc.connect(back, security=Curve.client(BACKEND.public, keypair=SVC))
    svc.bind(direct)  # the NULL mechanism came back after the connect
    svc.connect(tcp_url())  # and a plain connection out stays plain (nobody there)
    straight = RPCClient(timeout=5, context=ctx)
    async with Broker(front, back, context=ctx, backend_security=Curve.server(BACKEND)) as b:
        svc.start()
        await joined(b, 1)
        straight.connect(direct)
        try:
            assert await straight.who() == ["plain", None]
        finally:
            straight.close()


def test_connect_takes_a_curve_client_only(make_service):
    svc = make_service()
    with pytest.raises(TypeError, match=r"Curve\.client"):
        svc.connect(tcp_url(), security=Curve.server(BACKEND))


async def test_netcall_broker_with_a_curve_backend(make_service, ctx, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    front, back = tcp_url(), tcp_url()
    _, secret = BACKEND.save(tmp_path, "backend")
    public, _ = SVC.save(tmp_path, "svc")
    src = Path(__file__).resolve().parents[1] / "src"
    code = "import sys; from netcall.cli import main; sys.exit(main())"
    args = ["broker", "--frontend", front, "--backend", back, "--stats-every", "0"]
    args += ["--backend-curve-keypair", str(secret), "--backend-allow", str(public)]
    env = dict(os.environ, PYTHONPATH=str(src))
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    good = whoami(make_service, name="good")
    good.connect(back, security=Curve.client(BACKEND.public, keypair=SVC))
    bad = whoami(make_service, name="bad")
    bad.connect(back, security=Curve.client(BACKEND.public, keypair=OTHER))
    good.start()
    bad.start()
    client = RPCClient(timeout=5, context=ctx)
    client.connect(front)
    try:
        deadline = time.monotonic() + 20
        while True:  # until the broker is up and the good service has joined
            try:
                names = {(await client.call("who", timeout=1))[0] for _ in range(10)}
                break
            except Exception:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert names == {"good"}
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        client.close()
        proc.kill()
        proc.wait()
