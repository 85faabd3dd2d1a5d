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
        ctx = CallContext(call.method, b"peer", None)
        return await run_service_chain(
            [server_t.server],
            _WithMetadata(ctx, call.metadata),  # type: ignore[arg-type]
            handler,
        )

    chain = compose_client([client_t.client], endpoint)
    return await chain(OutgoingCall(method, (1, 2), {}, {}, 5.0))


class _WithMetadata:
    """A CallContext stand-in carrying metadata (until the core gives CallContext its own)."""

    def __init__(self, ctx: CallContext, metadata: dict[str, str]) -> None:
        self.method = ctx.method
        self.peer = ctx.peer
        self.metadata = dict(metadata)


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
