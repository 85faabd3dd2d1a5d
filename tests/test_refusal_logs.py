"""A started CURVE service or broker logs the handshakes ZeroMQ refused before asking ZAP (a
client without CURVE): libzmq keeps one monitor per socket, and the service's and broker's own
monitors replace the ZAP handler's, so they pass those events on to it."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from _helpers import wait_until
from conftest import ipc_url, netcall_env
from netcall import AuthenticationError, RPCClient, RPCService
from netcall._greeting import _OPENING
from netcall.broker import Broker
from netcall.security import Curve, Keypair

pytestmark = pytest.mark.timeout(30)


#: A whole ZMTP 3.0 greeting offering the NULL mechanism (no CURVE), sent at once.
_NULL_GREETING = _OPENING + b"\x00" + b"NULL".ljust(20, b"\0") + bytes(32)


async def _greet_without_curve(url: str) -> None:
    """Connect to ``url`` (ipc) as a client without CURVE whose greeting arrives whole, and
    wait until the service hangs up.

    A libzmq client sends its mechanism only after the service's first bytes, and hangs up
    as soon as it reads the service's mechanism: which end reads the other's first is a race,
    and a service that finds the client gone already saw only a hang-up (logged at DEBUG, as
    a health check's). This client's mechanism is always there to read.
    """
    reader, writer = await asyncio.open_unix_connection(url.removeprefix("ipc://"))
    try:
        writer.write(_NULL_GREETING)
        await asyncio.wait_for(reader.read(), 5)  # until the service closes the connection
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _refused_by(url: str, caplog: pytest.LogCaptureFixture, ctx: Any) -> None:
    plain = RPCClient(context=ctx, timeout=2)
    try:
        plain.connect(url)
        with pytest.raises(AuthenticationError):
            await plain.call("anything")
    finally:
        plain.close()
    await _greet_without_curve(url)
    assert await wait_until(lambda: "does not use CURVE" in caplog.text, timeout=5), caplog.text


async def test_a_started_curve_service_logs_a_client_without_curve(
    ctx: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    service = RPCService(context=ctx, security=Curve.server(Keypair.generate()))
    url = ipc_url(tmp_path)
    service.bind(url)
    service.start()
    try:
        with caplog.at_level(logging.WARNING, logger="netcall.security"):
            await _refused_by(url, caplog, ctx)
        assert "refused a client on" in caplog.text
    finally:
        service.close()


async def test_a_started_curve_broker_logs_a_client_without_curve(
    ctx: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    front, back = ipc_url(tmp_path), ipc_url(tmp_path)
    broker = Broker(front, back, context=ctx, security=Curve.server(Keypair.generate()))
    broker.start()
    try:
        with caplog.at_level(logging.WARNING, logger="netcall.security"):
            await _refused_by(front, caplog, ctx)
    finally:
        broker.close()
        await asyncio.sleep(0)


_SERVED = {
    "instance": "from netcall import RPCService\n\nservice = RPCService()\n\n\n"
    "@service.register\ndef ping() -> str:\n    return 'pong'\n",
    "function": "def ping() -> str:\n    return 'pong'\n",
}


@pytest.mark.parametrize("served", sorted(_SERVED))
async def test_netcall_serve_logs_a_client_without_curve(
    ctx: Any, tmp_path: Path, served: str
) -> None:
    """``netcall serve --curve-keypair`` in a process of its own: a plain client is refused,
    and the service's log (its stderr) says why. An RPCService made by the served module
    (``app:service``) is secured by the command after its socket exists."""
    env = netcall_env()
    cli = [sys.executable, "-m", "netcall.cli"]
    made = subprocess.run(
        [*cli, "keygen", "server", "--dir", "keys"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / "app.py").write_text(_SERVED[served])
    url = ipc_url(tmp_path)
    spec = "app:service" if served == "instance" else "app:ping"
    serve = subprocess.Popen(
        [*cli, "serve", spec, "--bind", url, "--curve-keypair", "keys/server.key_secret"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(serve.stderr.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        assert serve.stdout is not None and "serving" in serve.stdout.readline()
        plain = RPCClient(context=ctx, timeout=5)
        try:
            plain.connect(url)
            with pytest.raises(AuthenticationError, match="requires CURVE"):
                await plain.call("ping")
        finally:
            plain.close()
        await _greet_without_curve(url)
        said = await wait_until(lambda: any("does not use CURVE" in x for x in lines), timeout=5)
        assert said, lines
        assert any("refused a client on" in x for x in lines), lines
    finally:
        serve.terminate()
        try:
            serve.wait(10)
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait(5)
            reader.join(10)
            for pipe in (serve.stdout, serve.stderr):
                if pipe is not None:
                    pipe.close()
