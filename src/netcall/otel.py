"""OpenTelemetry tracing and metrics for netcall: ``pip install "netcall[otel]"``.

::

    from netcall.otel import instrument

    instrument(service)      # SERVER spans, context extracted from the call's metadata
    instrument(client)       # CLIENT spans, context injected into the call's metadata

Built on the OpenTelemetry API only: spans and metrics go to whatever SDK the application
configured (``trace.set_tracer_provider`` / ``metrics.set_meter_provider``), or nowhere. The
trace context travels in metadata under the global propagator's keys (W3C: ``traceparent``,
``tracestate``, and ``baggage`` when set), so a chain client → A → B is one trace when every
client and service on the way is instrumented. netcall itself never imports this module.

Spans follow OpenTelemetry's RPC conventions: named after the method (``"math.add"``), kind
CLIENT or SERVER, attributes ``rpc.system="netcall"``, ``rpc.method`` and, for a dotted name,
``rpc.service`` (the part before the last dot). A call that fails, times out or is cancelled
has status ERROR with ``error.type`` (the remote type name for remote errors) and the
exception recorded; a success leaves the status unset. A stream's span lasts until the stream
ends or is closed, and is current while the service's generator runs.

Metrics, per side (``client`` / ``server``), with the same attributes:

- ``rpc.{side}.duration`` — histogram of call (or stream) durations, in ms;
- ``netcall.{side}.calls`` — calls and streams started;
- ``netcall.{side}.errors`` — those that failed (with ``error.type``);
- ``netcall.{side}.active_calls`` — in flight now.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeVar

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import __version__
from ._context import CallContext
from ._middleware import OutgoingCall, observe_stream
from .errors import RemoteRPCError

__all__ = ["instrument"]

T = TypeVar("T")

_SYSTEM = "netcall"
_instrumented: weakref.WeakSet[Any] = weakref.WeakSet()


class _MetadataSetter(Setter[MutableMapping[str, str]]):
    """Metadata keys are lowercase tokens: header-style names (``X-B3-TraceId``) are folded."""

    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key.lower()] = value


class _MetadataGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_SETTER = _MetadataSetter()
_GETTER = _MetadataGetter()


def instrument(
    target: T,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    propagator: TextMapPropagator | None = None,
) -> T:
    """Trace and measure every call and stream of ``target``: an
    :class:`~netcall.RPCService` (any adapter's) or a client (``RPCClient``,
    ``SyncRPCClient``, ``GeventRPCClient``, ``TornadoRPCClient``). Returns ``target``.

    The middleware goes outermost, so its span covers the target's other middleware (and a
    client's retries). Instrumenting the same object again does nothing.

    Args:
        tracer_provider: default: the global one.
        meter_provider: default: the global one.
        propagator: default: the global one (``opentelemetry.propagate``), looked up per call.

    Raises:
        TypeError: ``target`` is neither a netcall service nor a netcall client.
    """
    from .service import RPCService  # here, so importing this module stays light

    if target in _instrumented:
        return target
    add = getattr(target, "add_middleware", None)
    if add is None:
        raise TypeError(f"cannot instrument {target!r}: not a netcall service or client")
    side = "server" if isinstance(target, RPCService) else "client"
    tele = _Telemetry(side, tracer_provider, meter_provider, propagator)
    add(tele.server if side == "server" else tele.client, outermost=True)
    _instrumented.add(target)
    return target


class _Telemetry:
    """The tracer, the instruments and the two middleware functions of one instrumentation."""

    def __init__(
        self,
        side: str,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        propagator: TextMapPropagator | None,
    ) -> None:
        self.tracer = trace.get_tracer("netcall.otel", __version__, tracer_provider)
        meter = metrics.get_meter("netcall.otel", __version__, meter_provider)
        self.propagator = propagator
        self.duration = meter.create_histogram(
            f"rpc.{side}.duration", unit="ms", description="Duration of netcall calls and streams"
        )
        self.calls = meter.create_counter(
            f"netcall.{side}.calls", unit="{call}", description="netcall calls and streams started"
        )
        self.errors = meter.create_counter(
            f"netcall.{side}.errors", unit="{call}", description="netcall calls and streams failed"
        )
        self.active = meter.create_up_down_counter(
            f"netcall.{side}.active_calls", unit="{call}", description="netcall calls in flight"
        )

    def _propagator(self) -> TextMapPropagator:
        return self.propagator or propagate.get_global_textmap()

    # -- one span ---------------------------------------------------------------------------

    def _start(self, method: str, kind: SpanKind, parent: Context | None) -> _Span:
        attrs = _attributes(method)
        span = self.tracer.start_span(method, context=parent, kind=kind, attributes=attrs)
        self.calls.add(1, attrs)
        self.active.add(1, attrs)
        return _Span(self, span, attrs)

    # -- middleware ---------------------------------------------------------------------------

    async def client(
        self, call: OutgoingCall, call_next: Callable[[OutgoingCall], Awaitable[Any]]
    ) -> Any:
        rec = self._start(call.method, SpanKind.CLIENT, None)
        self._propagator().inject(
            call.metadata, context=trace.set_span_in_context(rec.span), setter=_SETTER
        )
        try:
            with trace.use_span(rec.span, record_exception=False, set_status_on_exception=False):
                result = await call_next(call)
        except BaseException as exc:
            rec.end(exc)
            raise
        if isinstance(result, AsyncIterator):
            return observe_stream(result, on_end=rec.end)
        rec.end(None)
        return result

    async def server(self, ctx: CallContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        parent = self._propagator().extract(ctx.metadata, getter=_GETTER)
        rec = self._start(ctx.method, SpanKind.SERVER, parent)
        try:
            # The handler runs inside call_next: its own spans are children of this one.
            with trace.use_span(rec.span, record_exception=False, set_status_on_exception=False):
                result = await call_next()
        except BaseException as exc:
            rec.end(exc)
            raise
        if isinstance(result, AsyncIterator):
            span = rec.span
            return observe_stream(
                result,
                on_end=rec.end,
                around=lambda: trace.use_span(
                    span, record_exception=False, set_status_on_exception=False
                ),
            )
        rec.end(None)
        return result


class _Span:
    """A started span with its metric attributes; ``end`` records the outcome once."""

    __slots__ = ("attrs", "done", "span", "start", "tele")

    def __init__(self, tele: _Telemetry, span: trace.Span, attrs: dict[str, str]) -> None:
        self.tele = tele
        self.span = span
        self.attrs = attrs
        self.start = time.perf_counter()
        self.done = False

    def end(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        tele = self.tele
        attrs = self.attrs
        elapsed_ms = (time.perf_counter() - self.start) * 1000.0
        if error is not None:
            kind = _error_type(error)
            span = self.span
            span.set_attribute("error.type", kind)
            if isinstance(error, Exception):
                span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, _describe(error)))
            attrs = {**attrs, "error.type": kind}
            tele.errors.add(1, attrs)
        tele.duration.record(elapsed_ms, attrs)
        tele.active.add(-1, self.attrs)
        self.span.end()


def _attributes(method: str) -> dict[str, str]:
    attrs = {"rpc.system": _SYSTEM, "rpc.method": method}
    service, dot, _ = method.rpartition(".")
    if dot:
        attrs["rpc.service"] = service
    return attrs


def _error_type(error: BaseException) -> str:
    if isinstance(error, RemoteRPCError):
        return error.type_name
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"


def _describe(error: BaseException) -> str:
    if isinstance(error, RemoteRPCError):
        return f"{error.type_name}: {error.message}" if error.message else error.type_name
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
