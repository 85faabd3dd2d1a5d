"""One service of a chain of processes (A calls B calls C), for test_chain.py.

    python _chain_node.py NAME EVENTS_FILE [--next URL] [--otel SPANS_FILE]

Binds a random tcp port, prints ``READY <url>``, serves until SIGTERM (or stdin closes), then
writes its finished OpenTelemetry spans to SPANS_FILE (with ``--otel``). Each handler appends
JSON lines ``{"node", "event", "t", ...}`` to EVENTS_FILE, ``t`` from ``time.monotonic()``
(the same clock in every process on Linux). A node calls the next one with an asyncio client,
and with a blocking client from its executor thread (``threaded_nested``).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import signal
import sys
import time
from typing import Any

from netcall import RPCClient, RPCService, RPCTimeoutError, current_call


class Node:
    def __init__(self, name: str, events: str) -> None:
        self.name = name
        self.events_path = events
        self.client: RPCClient | None = None
        self.sync_client: Any = None
        self.tasks: set[asyncio.Task[Any]] = set()

    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"node": self.name, "event": event, "t": time.monotonic(), **fields})
        with open(self.events_path, "a") as f:
            f.write(line + "\n")

    def remaining(self) -> float | None:
        try:
            return current_call().time_remaining()
        except RuntimeError:
            return None

    # -- handlers ------------------------------------------------------------------------------

    async def chain_sleep(self, seconds: float) -> str:
        """Sleep at the end of the chain; every node records start, cancel and end."""
        self.record("start", remaining=self.remaining())
        try:
            if self.client is not None:
                result = await self.client.chain_sleep(seconds)
            else:
                await asyncio.sleep(seconds)
                result = "slept"
        except asyncio.CancelledError:
            self.record("cancelled")
            raise
        except BaseException as exc:
            self.record("error", type=type(exc).__name__)
            raise
        self.record("done")
        return f"{self.name}>{result}"

    async def remaining_chain(self) -> list[Any]:
        """Each node's time remaining, down the chain."""
        mine = [self.name, self.remaining()]
        if self.client is None:
            return [mine]
        rest = await self.client.remaining_chain()
        return [mine, *rest]

    async def metadata_chain(self) -> list[Any]:
        """Each node's metadata, down the chain (it is not forwarded on its own)."""
        mine = [self.name, dict(current_call().metadata)]
        if self.client is None:
            return [mine]
        return [mine, *(await self.client.metadata_chain())]

    async def shielded_nested(self, left: float) -> str:
        """Wait until ``left`` seconds remain, then call the next node's 10 s sleep from a
        shielded task with a 30 s client: it must fail by the deadline all the same."""
        remaining = self.remaining()
        assert remaining is not None, "call me with a timeout"
        await asyncio.sleep(max(0.0, remaining - left))
        task = asyncio.ensure_future(self._nested(left))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return await asyncio.shield(task)

    async def _nested(self, left: float) -> str:
        assert self.client is not None
        t0 = time.monotonic()
        self.record("nested-start", remaining=self.remaining())
        try:
            await self.client.call("chain_sleep", 10, timeout=30)
        except RPCTimeoutError:
            self.record("nested-timeout", elapsed=time.monotonic() - t0)
            return "timeout"
        except BaseException as exc:
            self.record("nested-error", type=type(exc).__name__, elapsed=time.monotonic() - t0)
            raise
        self.record("nested-done", elapsed=time.monotonic() - t0)
        return "done"

    def threaded_nested(self, left: float) -> str:
        """A sync handler in an executor thread: the same, through a blocking client."""
        remaining = self.remaining()
        assert remaining is not None, "call me with a timeout"
        time.sleep(max(0.0, remaining - left))
        t0 = time.monotonic()
        self.record("nested-start", remaining=self.remaining())
        try:
            self.sync_client.call("chain_sleep", 10, timeout=30)
        except RPCTimeoutError:
            self.record("nested-timeout", elapsed=time.monotonic() - t0)
            return "timeout"
        except BaseException as exc:
            self.record("nested-error", type=type(exc).__name__, elapsed=time.monotonic() - t0)
            raise
        self.record("nested-done", elapsed=time.monotonic() - t0)
        return "done"


async def serve(args: argparse.Namespace) -> None:
    node = Node(args.name, args.events)
    executor = concurrent.futures.ThreadPoolExecutor(4)
    service = RPCService(executor=executor, name=args.name)
    for fn in (
        node.chain_sleep,
        node.remaining_chain,
        node.metadata_chain,
        node.shielded_nested,
        node.threaded_nested,
    ):
        service.register(fn)
    if args.next:
        node.client = RPCClient(timeout=30)
        node.client.connect(args.next)
        from netcall.sync import SyncRPCClient

        node.sync_client = SyncRPCClient(timeout=30)
        node.sync_client.connect(args.next)
    if args.otel:
        from netcall.otel import instrument

        instrument(service)
        if node.client is not None:
            instrument(node.client)
        if node.sync_client is not None:
            instrument(node.sync_client)
    port = service.bind_ports("127.0.0.1")
    service.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not os.read(0, 4096) else None)
    print(f"READY tcp://127.0.0.1:{port}", flush=True)
    await stop.wait()
    loop.remove_reader(sys.stdin.fileno())
    service.close()
    if node.client is not None:
        node.client.close()
    if node.sync_client is not None:
        node.sync_client.close()
    executor.shutdown(wait=False, cancel_futures=True)


def dump_spans(path: str, exporter: Any) -> None:
    spans = []
    for s in exporter.get_finished_spans():
        spans.append(
            {
                "node": os.environ.get("CHAIN_NODE", ""),
                "name": s.name,
                "kind": s.kind.name,
                "trace_id": format(s.context.trace_id, "032x"),
                "span_id": format(s.context.span_id, "016x"),
                "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                "attributes": dict(s.attributes or {}),
                "status": s.status.status_code.name,
            }
        )
    with open(path, "w") as f:
        json.dump(spans, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("events")
    parser.add_argument("--next")
    parser.add_argument("--otel")
    args = parser.parse_args()
    exporter = None
    if args.otel:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        os.environ["CHAIN_NODE"] = args.name
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    asyncio.run(serve(args))
    if exporter is not None:
        dump_spans(args.otel, exporter)


if __name__ == "__main__":
    main()
