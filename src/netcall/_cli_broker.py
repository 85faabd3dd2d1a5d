"""``netcall broker``: one address for many services (see :mod:`netcall.broker`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from ._cli_util import add_security_options, security_from


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frontend", action="append", required=True, help="endpoint for clients")
    p.add_argument("--backend", action="append", required=True, help="endpoint for services")
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds (default 1)")
    p.add_argument("--max-queue", type=int, default=1000, help="calls waiting (default 1000)")
    p.add_argument(
        "--stats-every", type=float, default=10.0, help="print stats every N s (0: never)"
    )
    add_security_options(p, server=True)  # CURVE on the frontend


def _stats_line(stats: dict[str, Any]) -> str:
    errors = " ".join(f"{k}={v}" for k, v in stats["errors"].items() if v)
    return (
        f"services={len(stats['services'])} methods={len(stats['methods'])} "
        f"in_flight={stats['in_flight']} streams={stats['streams']} queued={stats['queued']} "
        f"clients={stats['clients']} errors: {errors or 'none'}"
    )


async def run(ns: argparse.Namespace) -> int:
    from .broker import Broker

    broker = Broker(
        frontend=ns.frontend,
        backend=ns.backend,
        heartbeat=ns.heartbeat,
        max_queue=ns.max_queue,
        security=security_from(ns, server=True),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, broker.close)
    broker.start()
    print(
        f"broker: clients connect to {', '.join(ns.frontend)}; "
        f"services connect to {', '.join(ns.backend)}",
        flush=True,
    )

    async def report() -> None:
        while True:
            await asyncio.sleep(ns.stats_every)
            print(_stats_line(broker.stats()), flush=True)

    reporter = loop.create_task(report()) if ns.stats_every > 0 else None
    try:
        await broker.serve()
    finally:
        if reporter is not None:
            reporter.cancel()
    print(_stats_line(broker.stats()), flush=True)
    return 0
