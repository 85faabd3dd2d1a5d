"""Call metadata on real sockets: calls, streams, with_options, middleware, limits, and a client
that skips its own checks."""

from __future__ import annotations

from typing import Any

import pytest
import zmq

from _helpers import wait_until
from netcall import (
    MAX_METADATA_BYTES,
    MAX_METADATA_ITEMS,
    RPCClient,
    RPCService,
    current_call,
)
from netcall import protocol as p


@pytest.fixture
async def svc_cli(make_service: Any, make_client: Any, make_url: Any) -> Any:
    url = make_url("tcp")
    svc: RPCService = make_service()
    calls: list[dict[str, str]] = []

    @svc.register
    def meta() -> dict[str, str]:
        md = dict(current_call().metadata)
        calls.append(md)
        return md

    @svc.register
    async def meta_stream(n: int) -> Any:
        md = dict(current_call().metadata)
        for i in range(n):
            yield [i, md]

    svc.bind(url)
    svc.start()
    cli: RPCClient = make_client()
    cli.connect(url)
    return svc, cli, calls, url


async def test_metadata_reaches_calls_and_streams(svc_cli: Any) -> None:
    _, cli, _, _ = svc_cli
    assert await cli.meta() == {}
    md = {"request-id": "42", "authorization": "Bearer é"}
    assert await cli.call("meta", metadata=md) == md
    view = cli.with_options(metadata={"tenant": "acme"}, timeout=2)
    assert await view.meta() == {"tenant": "acme"}
    assert await view.call("meta") == {"tenant": "acme"}
    assert [x async for x in view.meta_stream(2)] == [
        [0, {"tenant": "acme"}],
        [1, {"tenant": "acme"}],
    ]
    gen = await cli.call("meta_stream", 1, metadata={"k": "v"})
    assert await gen.asend(None) == [0, {"k": "v"}]
    await gen.aclose()
    assert md == {"request-id": "42", "authorization": "Bearer é"}  # the caller's dict untouched


@pytest.mark.parametrize(
    "bad",
    [
        {"Upper": "x"},
        {"a b": "x"},
        {"k": 1},
        {f"k{i}": "v" for i in range(MAX_METADATA_ITEMS + 1)},
        {"big": "x" * MAX_METADATA_BYTES},
    ],
)
async def test_bad_metadata_fails_locally_and_is_never_sent(svc_cli: Any, bad: Any) -> None:
    _, cli, calls, _ = svc_cli
    with pytest.raises(ValueError):
        await cli.call("meta", metadata=bad)
    with pytest.raises(ValueError):
        await cli.with_options(metadata=bad).meta()
    with pytest.raises(ValueError):
        async for _ in cli.with_options(metadata=bad).meta_stream(1):
            pass
    assert calls == []
    assert cli.pending == 0
    assert await cli.call("meta", metadata={"ok": "1"}) == {"ok": "1"}


async def test_metadata_just_under_the_limit_passes(svc_cli: Any) -> None:
    _, cli, _, _ = svc_cli
    md = {"big": "x" * (MAX_METADATA_BYTES - 3)}
    assert await cli.call("meta", metadata=md) == md
    many = {f"k{i}": str(i) for i in range(MAX_METADATA_ITEMS)}
    assert await cli.call("meta", metadata=many) == many


async def test_middleware_added_metadata_is_checked_too(svc_cli: Any) -> None:
    _, cli, calls, _ = svc_cli

    async def bad(call: Any, call_next: Any) -> Any:
        call.metadata["Not-Lowercase"] = "x"
        return await call_next(call)

    cli.add_middleware(bad)
    with pytest.raises(ValueError, match="lowercase"):
        await cli.meta()
    assert calls == []


async def test_a_service_refuses_metadata_over_the_limits(svc_cli: Any, ctx: Any) -> None:
    """A client that skips its own checks (raw frames) is refused, and nothing runs."""
    _, _, calls, url = svc_cli
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        call = p.Call(7, "meta", "msgpack", b"\x90", metadata={"Bad Key": "v"}, timeout=5.0)
        sock.send_multipart(call.to_frames())
        assert await wait_until(lambda: bool(sock.poll(0)))
        reply = p.decode(sock.recv_multipart())
    finally:
        sock.close()
    assert isinstance(reply, p.Error)
    assert "metadata" in reply.message
    assert calls == []
