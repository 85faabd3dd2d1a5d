"""The ``netcall`` logger: binds, connects and stops at INFO, each call at DEBUG, a handler (or
stream) that raises at WARNING with its traceback, rate-limited."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from netcall import RPCClient, RPCService


async def test_lifecycle_calls_and_errors_are_logged(
    make_service: Any, make_client: Any, make_url: Any, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG, logger="netcall")
    url = make_url("tcp")
    svc: RPCService = make_service(name="logged")

    @svc.register
    def ok() -> int:
        return 1

    @svc.register
    async def bad_stream() -> Any:
        yield 1
        raise KeyError("gone")

    svc.bind(url)
    svc.start()
    cli: RPCClient = make_client(name="logger-client")
    cli.connect(url)
    assert await cli.ok() == 1
    with pytest.raises(KeyError):
        async for _ in cli.bad_stream():
            pass
    await svc.stop(grace=0)
    text = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, f"netcall: logged bound to {url}") in text
    assert any(lvl == logging.INFO and "logger-client connected to" in m for lvl, m in text)
    assert any(lvl == logging.DEBUG and m.startswith("netcall: call ok from ") for lvl, m in text)
    assert (logging.INFO, "netcall: logged stopped") in text
    errors = [r for r in caplog.records if "bad_stream raised KeyError" in r.getMessage()]
    assert len(errors) == 1 and errors[0].levelno == logging.WARNING
    assert errors[0].exc_info is not None
