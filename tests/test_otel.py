"""netcall.otel: spans, metrics and trace context through metadata, on the OpenTelemetry SDK's
in-memory exporter and reader."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conftest import netcall_env
from netcall import RemoteRPCError
from netcall._context import CallContext
from netcall._middleware import OutgoingCall, compose_client, run_service_chain
from netcall.otel import _Telemetry


class Otel:
    """A tracer provider with an in-memory exporter, and a meter provider with a reader."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def telemetry(self, side: str) -> _Telemetry:
        return _Telemetry(side, self.tracer_provider, self.meter_provider, None)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def metrics(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        assert data is not None
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out[metric.name] = list(metric.data.data_points)
        return out


@pytest.fixture
def otel() -> Otel:
    return Otel()


def test_import_netcall_imports_no_opentelemetry() -> None:
    code = (
        "import sys, netcall, netcall.sync, netcall.tornado, netcall.testing\n"
        "bad = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=netcall_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_instrument_refuses_other_objects() -> None:
    from netcall.otel import instrument

    with pytest.raises(TypeError):
        instrument(object())


# -- the middleware functions through the pure chain runner ---------------------------------------


async def _client_then_server(
    otel: Otel, handler: Callable[[], Awaitable[Any]], method: str = "math.add"
) -> Any:
    """CLIENT middleware → (metadata) → SERVER middleware → handler, as the core chains them."""
    client_t, server_t = otel.telemetry("client"), otel.telemetry("server")

    async def endpoint(call: OutgoingCall) -> Any:
        ctx = CallContext(call.method, b"peer", None, metadata=dict(call.metadata))
        return await run_service_chain([server_t.server], ctx, handler)

    chain = compose_client([client_t.client], endpoint)
    return await chain(OutgoingCall(method, (1, 2), {}, {}, 5.0))


async def test_client_and_server_spans_share_a_trace(otel: Otel) -> None:
    from opentelemetry import trace

    seen: list[Any] = []

    async def handler() -> int:
        seen.append(trace.get_current_span().get_span_context())
        return 3

    assert await _client_then_server(otel, handler) == 3
    spans = {s.kind: s for s in otel.spans()}
    client, server = spans[SpanKind.CLIENT], spans[SpanKind.SERVER]
    assert client.name == server.name == "math.add"
    assert client.context.trace_id == server.context.trace_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    # The handler runs inside the SERVER span.
    assert seen[0].span_id == server.context.span_id
    for s in (client, server):
        assert s.attributes is not None
        assert s.attributes["rpc.system"] == "netcall"
        assert s.attributes["rpc.method"] == "math.add"
        assert s.attributes["rpc.service"] == "math"
        assert s.status.status_code is StatusCode.UNSET


async def test_errors_set_status_and_count(otel: Otel) -> None:
    async def handler() -> None:
        raise RemoteRPCError("app.Boom", "boom")

    with pytest.raises(RemoteRPCError):
        await _client_then_server(otel, handler, method="explode")
    for s in otel.spans():
        assert s.status.status_code is StatusCode.ERROR
        assert s.attributes is not None and s.attributes["error.type"] == "app.Boom"
        assert "rpc.service" not in s.attributes
    metrics = otel.metrics()
    for side in ("client", "server"):
        assert sum(p.value for p in metrics[f"netcall.{side}.calls"]) == 1
        assert sum(p.value for p in metrics[f"netcall.{side}.errors"]) == 1
        assert sum(p.value for p in metrics[f"netcall.{side}.active_calls"]) == 0
        assert sum(p.count for p in metrics[f"rpc.{side}.duration"]) == 1


async def test_stream_span_lasts_until_the_stream_ends(otel: Otel) -> None:
    from opentelemetry import trace

    inside: list[int] = []

    async def gen() -> AsyncIterator[int]:
        for i in range(3):
            inside.append(trace.get_current_span().get_span_context().span_id)
            yield i

    async def handler() -> AsyncIterator[int]:
        return gen()

    stream = await _client_then_server(otel, handler, method="count")
    assert otel.spans() == []  # open while the stream is
    assert [x async for x in stream] == [0, 1, 2]
    spans = {s.kind: s for s in otel.spans()}
    assert set(spans) == {SpanKind.CLIENT, SpanKind.SERVER}
    assert set(inside) == {spans[SpanKind.SERVER].context.span_id}
    metrics = otel.metrics()
    assert sum(p.value for p in metrics["netcall.server.active_calls"]) == 0


# -- on real sockets ------------------------------------------------------------------------------


async def test_instrumented_service_and_client(
    otel: Otel, make_service: Any, make_client: Any, make_url: Any
) -> None:
    from opentelemetry import trace

    from netcall.otel import instrument

    url = make_url("inproc")
    svc = make_service()
    inner: list[Any] = []

    @svc.register
    async def hello(name: str) -> str:
        inner.append(trace.get_current_span().get_span_context())
        return f"hi {name}"

    @svc.register
    async def count(n: int) -> Any:
        for i in range(n):
            yield i

    @svc.register
    def boom() -> None:
        raise ValueError("no")

    svc.bind(url)
    svc.start()
    cli = make_client()
    cli.connect(url)
    kw = {"tracer_provider": otel.tracer_provider, "meter_provider": otel.meter_provider}
    assert instrument(svc, **kw) is svc
    assert instrument(cli, **kw) is cli
    instrument(cli, **kw)  # twice: no second span
    assert await cli.hello("x") == "hi x"
    assert [x async for x in cli.count(3)] == [0, 1, 2]
    with pytest.raises(ValueError):
        await cli.boom()
    spans = otel.spans()
    assert sorted((s.name, s.kind.name) for s in spans) == sorted(
        (name, kind) for name in ("hello", "count", "boom") for kind in ("CLIENT", "SERVER")
    )
    by = {(s.name, s.kind): s for s in spans}
    for name in ("hello", "count", "boom"):
        client, server = by[(name, SpanKind.CLIENT)], by[(name, SpanKind.SERVER)]
        assert server.context.trace_id == client.context.trace_id
        assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert inner[0].span_id == by[("hello", SpanKind.SERVER)].context.span_id
    assert by[("boom", SpanKind.SERVER)].status.status_code is StatusCode.ERROR
    assert by[("boom", SpanKind.CLIENT)].attributes["error.type"] == "ValueError"
    metrics = otel.metrics()
    assert sum(p.value for p in metrics["netcall.server.calls"]) == 3
    assert sum(p.value for p in metrics["netcall.client.errors"]) == 1


@pytest.mark.timeout(90)
def test_one_trace_across_three_services(tmp_path: Any) -> None:
    """client → A → B → C, each service in its own process with the SDK's in-memory exporter:
    one trace, each SERVER span the child of the CLIENT span that called it."""
    from _chain import Chain
    from netcall.otel import instrument
    from netcall.sync import SyncRPCClient

    otel = Otel()
    with Chain(tmp_path, "ABC", otel=True) as chain:
        with SyncRPCClient(timeout=10) as client:
            instrument(client, tracer_provider=otel.tracer_provider)
            client.connect(chain.url)
            assert client.chain_sleep(0.01) == "A>B>C>slept"
        chain.stop()
        remote = chain.spans()
    mine = otel.spans()
    assert [(s.name, s.kind) for s in mine] == [("chain_sleep", SpanKind.CLIENT)]
    root = mine[0]
    trace_id = format(root.context.trace_id, "032x")
    assert {s["trace_id"] for s in remote} == {trace_id}
    spans = {(s["node"], s["kind"]): s for s in remote}
    assert set(spans) == {
        ("A", "SERVER"),
        ("A", "CLIENT"),
        ("B", "SERVER"),
        ("B", "CLIENT"),
        ("C", "SERVER"),
    }
    parent_of = {
        ("A", "SERVER"): format(root.context.span_id, "016x"),
        ("A", "CLIENT"): spans[("A", "SERVER")]["span_id"],
        ("B", "SERVER"): spans[("A", "CLIENT")]["span_id"],
        ("B", "CLIENT"): spans[("B", "SERVER")]["span_id"],
        ("C", "SERVER"): spans[("B", "CLIENT")]["span_id"],
    }
    for key, parent in parent_of.items():
        assert spans[key]["parent_id"] == parent, (key, remote)
        assert spans[key]["name"] == "chain_sleep"
        assert spans[key]["attributes"]["rpc.system"] == "netcall"
        assert spans[key]["attributes"]["rpc.method"] == "chain_sleep"
