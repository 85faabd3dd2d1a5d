"""Metadata, middleware and deadline propagation on every adapter: clients {asyncio, tornado,
gevent, sync} against services {asyncio, tornado, gevent}, on real sockets (as test_adapters)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from _adapter_helpers import (
    CLIENT_KINDS,
    SERVICE_KINDS,
    AsyncDriver,
    BlockingDriver,
    ServiceThread,
    make_driver,
)
from conftest import tcp_url
from netcall import (
    MAX_METADATA_BYTES,
    CallContext,
    OutgoingCall,
    RPCClient,
    RPCService,
    current_call,
    observe_stream,
)
from netcall.green import GeventRPCClient, GeventRPCService

pytestmark = pytest.mark.timeout(30)


class CallsService(ServiceThread):
    """The behavioural suite's service, with a middleware and the handlers of this file."""

    def _make(self, cls: type[RPCService]) -> RPCService:
        svc = super()._make(cls)
        self.seen: list[Any] = []
        seen = self.seen

        async def tag(ctx: CallContext, call_next: Any) -> Any:
            seen.append((ctx.method, dict(ctx.metadata)))
            result = await call_next()
            if not hasattr(result, "__anext__"):
                return result

            async def doubled() -> AsyncIterator[Any]:
                async for item in result:
                    yield item * 2

            return doubled()

        svc.add_middleware(tag)
        url = self.url

        @svc.register
        def meta() -> dict[str, str]:
            return dict(current_call().metadata)

        @svc.register
        def left() -> float | None:
            return current_call().time_remaining()

        if isinstance(svc, GeventRPCService):

            @svc.register
            def nested_left() -> Any:
                # A gevent client, from the handler's greenlet.
                with GeventRPCClient(context=self.ctx, timeout=30) as inner:
                    inner.connect(url)
                    return inner.left()

        else:

            @svc.register
            async def nested_left() -> Any:
                async with RPCClient(context=self.ctx, timeout=30) as inner:
                    inner.connect(url)
                    return await inner.left()

        return svc


@pytest.fixture(params=SERVICE_KINDS)
def remote(request: pytest.FixtureRequest, ctx: Any) -> Iterator[CallsService]:
    svc = CallsService(request.param, ctx, tcp_url()).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(params=CLIENT_KINDS)
def drv(request: pytest.FixtureRequest, ctx: Any, remote: CallsService) -> Iterator[Any]:
    driver = make_driver(request.param, ctx, remote.url)
    try:
        yield driver
    finally:
        driver.teardown()


def _add_client_middleware(drv: AsyncDriver | BlockingDriver, log: list[Any]) -> None:
    async def stamp(call: OutgoingCall, call_next: Any) -> Any:
        call.metadata["x-client"] = drv.kind
        log.append(call.method)
        return await call_next(call)

    async def watch(call: OutgoingCall, call_next: Any) -> Any:
        result = await call_next(call)
        if hasattr(result, "__anext__"):
            return observe_stream(result, log.append, lambda exc: log.append(("end", exc)))
        return result

    drv.client.add_middleware(stamp)
    drv.client.add_middleware(watch)


def test_metadata_and_middleware_on_every_adapter(
    drv: AsyncDriver | BlockingDriver, remote: CallsService
) -> None:
    log: list[Any] = []
    assert drv.call("meta", metadata={"request-id": "7"}) == {"request-id": "7"}
    _add_client_middleware(drv, log)
    assert drv.call("meta", metadata={"request-id": "8"}) == {
        "request-id": "8",
        "x-client": drv.kind,
    }
    assert drv.call("echo", 3) == 3
    assert drv.stream("count", 3) == [0, 2, 4]  # the service middleware doubled them
    assert drv.stream("sync_count", 2) == [0, 2]
    assert log == [
        "meta",
        "echo",
        "count",
        *[0, 2, 4],
        ("end", None),
        "sync_count",
        *[0, 2],
        ("end", None),
    ]
    assert ("meta", {"request-id": "8", "x-client": drv.kind}) in remote.seen
    assert ("count", {"x-client": drv.kind}) in remote.seen
    with pytest.raises(ValueError):
        drv.call("meta", metadata={"big": "x" * MAX_METADATA_BYTES})
    with pytest.raises(ValueError):
        drv.call("meta", metadata={"Upper": "x"})
    assert drv.call("echo", 4) == 4


def test_deadline_propagation_on_every_adapter(
    drv: AsyncDriver | BlockingDriver, remote: CallsService
) -> None:
    """The service's handler calls the service again (an asyncio client, or a gevent client
    on the gevent service): the nested call has the outer call's time remaining."""
    assert 3.0 < drv.call("nested_left") <= 5.0  # the driver's default timeout is 5 s
    assert 1.0 < drv.call("nested_left", timeout=2.0) <= 2.0
