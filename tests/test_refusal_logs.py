"""A started CURVE service or broker logs the handshakes ZeroMQ refused before asking ZAP (a
client without CURVE): libzmq keeps one monitor per socket, and the service's and broker's own
monitors replace the ZAP handler's, so they pass those events on to it."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from _helpers import wait_until
from conftest import ipc_url
from netcall import AuthenticationError, RPCClient, RPCService
from netcall.broker import Broker
from netcall.security import Curve, Keypair

pytestmark = pytest.mark.timeout(30)


async def _refused_by(url: str, caplog: pytest.LogCaptureFixture, ctx: Any) -> None:
    plain = RPCClient(context=ctx, timeout=2)
    try:
        plain.connect(url)
        with pytest.raises(AuthenticationError):
            await plain.call("anything")
    finally:
        plain.close()
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
