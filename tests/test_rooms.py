"""The seams of the core: metadata and deadline into the call's context, errors at one edge,
adapters that derive their options, reserved names derived, netcall.testing with several
services."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import msgpack
import pytest
import zmq

from netcall import (
    RESERVED_NAMES,
    RPCClient,
    RPCError,
    RPCService,
    current_call,
)
from netcall import protocol as p
from netcall._deadline import MIN_REMAINING, Deadline
from netcall._edge import TransportError
from netcall.client import ClientOptions
from netcall.errors import EncodingError, StreamBusyError
from netcall.testing import serve


@pytest.fixture
async def pair(ctx: Any) -> Any:
    """Two services on one context, served by netcall.testing, and one client for both."""
    services = []
    for label in ("first", "second"):
        svc = RPCService(context=ctx, name=label)

        @svc.register
        def who(label: str = label) -> str:
            return label

        @svc.register
        def context_seen() -> list[Any]:
            ctx_ = current_call()
            return [dict(ctx_.metadata), ctx_.time_remaining()]

        @svc.register
        async def count(n: int) -> Any:
            for i in range(n):
                await asyncio.sleep(0.01)
                yield i

        services.append(svc)
    async with serve(*services, timeout=5.0) as client:
        yield services, client


async def test_serve_spreads_calls_over_several_services(pair: Any) -> None:
    services, client = pair
    answers = {await client.who() for _ in range(20)}
    assert answers == {"first", "second"}
    assert all(not svc.closed for svc in services)


async def test_serve_needs_services_on_one_context(ctx: Any) -> None:
    other = zmq.Context()
    try:
        a, b = RPCService(context=ctx), RPCService(context=other)
        with pytest.raises(ValueError):
            async with serve(a, b):
                pass  # pragma: no cover
        a.close()
        b.close()
    finally:
        other.term()


async def test_metadata_and_deadline_reach_the_call_context(pair: Any) -> None:
    services, client = pair
    # Plain calls: empty metadata, the client's timeout as the time remaining.
    metadata, remaining = await client.context_seen()
    assert metadata == {} and 4.0 < remaining <= 5.0
    # Metadata travels in the CALL (the client API for it comes later: a raw peer here).
    svc = services[0]
    url = "inproc://rooms-metadata"
    svc.bind(url)
    raw = svc.context.socket(zmq.DEALER)
    raw.connect(url)
    try:
        raw.send_multipart(
            p.Call(
                1,
                "context_seen",
                "msgpack",
                msgpack.packb([]),
                timeout=2.0,
                metadata={"trace": "t-1", "user": "\u00e9"},
            ).to_frames()
        )
        for _ in range(300):
            try:
                reply = p.decode(raw.recv_multipart(zmq.NOBLOCK))
                break
            except zmq.Again:
                await asyncio.sleep(0.01)
        else:  # pragma: no cover
            pytest.fail("no reply")
        assert isinstance(reply, p.Result)
        metadata, remaining = msgpack.unpackb(reply.payload)
        assert metadata == {"trace": "t-1", "user": "\u00e9"}
        assert 1.0 < remaining <= 2.0
    finally:
        raw.close(0)


def test_deadline_object() -> None:
    assert Deadline.from_timeout(None) is None
    assert Deadline.from_timeout(0) is None
    d = Deadline.from_timeout(10.0)
    assert d is not None and not d.expired and 9.0 < d.remaining() <= 10.0
    assert 9.0 < d.for_wire() <= 10.0
    past = Deadline.from_timeout(-1.0)
    assert past is not None and past.expired and past.remaining() == 0.0
    assert 0 < past.for_wire() < MIN_REMAINING  # spent, but never "no deadline"


async def test_foreign_errors_are_mapped_at_the_edge(ctx: Any, pair: Any) -> None:
    _, client = pair
    first = RPCService(context=ctx)
    second = RPCService(context=ctx)
    try:
        port = first.bind_ports()
        with pytest.raises(TransportError) as info:
            second.bind(f"tcp://127.0.0.1:{port}")
        assert isinstance(info.value, RPCError) and isinstance(info.value, zmq.ZMQError)
        assert isinstance(info.value.__cause__, zmq.ZMQError)
        with pytest.raises(EncodingError) as enc:
            await client.call("who\ud800")
        assert isinstance(enc.value, UnicodeEncodeError)
        assert isinstance(enc.value.__cause__, UnicodeEncodeError)
        assert client.pending == 0
    finally:
        first.close()
        second.close()


async def test_two_readers_get_a_stream_busy_error(pair: Any) -> None:
    _, client = pair
    gen = await client.count(3)
    first = asyncio.ensure_future(gen.asend(None))
    await asyncio.sleep(0)  # one loop turn: the first step starts
    with pytest.raises(StreamBusyError) as info:
        await gen.asend(None)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, RPCError)
    assert await first == 0
    await gen.aclose()


def test_adapters_take_exactly_the_core_options() -> None:
    core = inspect.signature(RPCClient).parameters
    keyword = {n for n, prm in core.items() if prm.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(ClientOptions.__annotations__) == keyword


def test_reserved_names_are_derived_from_the_public_classes(ctx: Any) -> None:
    for name in ("name", "timeout", "window", "stream_buffer", "connect", "stop", "bind"):
        assert name in RESERVED_NAMES
    svc = RPCService(context=ctx)
    try:
        with pytest.raises(ValueError):
            svc.register(lambda: None, name="name")
    finally:
        svc.close()


async def test_handler_runner_hook_runs_sync_handlers(ctx: Any) -> None:
    ran: list[str] = []

    async def runner(fn: Any) -> Any:
        ran.append("hook")
        return fn()

    svc = RPCService(context=ctx, handler_runner=runner)
    svc.register(lambda x: x * 2, name="double")
    async with serve(svc, timeout=5.0) as client:
        assert await client.double(21) == 42
    assert ran == ["hook"]
