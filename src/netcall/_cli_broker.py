"""``netcall broker``: one address for many services (see :mod:`netcall.broker`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from typing import Any

from ._cli_util import CLIError, add_security_options, security_from
from ._reactor import MAX_QUEUED, MAX_QUEUED_BYTES


def _number(convert: Callable[[str], Any], zero_ok: bool) -> Callable[[str], Any]:
    """An argparse ``type``: ``convert(text)``, above 0 (or at least 0 with ``zero_ok``).
    What it returns raises ``argparse.ArgumentTypeError`` (argparse prints it as a usage
    error) for anything else."""
    what = ("a non-negative " if zero_ok else "a positive ") + (
        "integer" if convert is int else "number"
    )

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or value != value or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


_positive = _number(int, zero_ok=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frontend", action="append", required=True, help="endpoint for clients")
    p.add_argument("--backend", action="append", required=True, help="endpoint for services")
    p.add_argument(
        "--heartbeat", type=_number(float, zero_ok=False), default=1.0, help="seconds (default 1)"
    )
    p.add_argument(
        "--max-queue",
        type=_number(int, zero_ok=True),
        default=1000,
        help="calls waiting (default 1000)",
    )
    p.add_argument(
        "--max-queued",
        type=_positive,
        default=MAX_QUEUED,
        metavar="N",
        help="messages that may wait at the broker for one client or service that does not "
        "read, beyond its full pipe; over it, the peer is cut off (default %(default)s)",
    )
    p.add_argument(
        "--max-queued-bytes",
        type=_positive,
        default=MAX_QUEUED_BYTES,
        metavar="N",
        help="bytes that may wait so (default %(default)s)",
    )
    p.add_argument(
        "--stats-every",
        type=_number(float, zero_ok=True),
        default=10.0,
        help="print stats every N s (0: never)",
    )
    add_security_options(p, server=True)  # CURVE on the frontend
    p.add_argument(
        "--backend-curve-keypair",
        metavar="FILE",
        help="CURVE on the backend: the broker's .key_secret file for it (services connect "
        "with security=Curve.client(<its public key>, keypair=...))",
    )
    p.add_argument(
        "--backend-allow",
        action="append",
        metavar="KEY",
        help="service keys let in on the backend: a folder of .key files, or keys (repeatable)",
    )


def _backend_security(ns: argparse.Namespace) -> Any:
    from .security import from_options

    if ns.backend_allow and ns.backend_curve_keypair is None:
        raise CLIError("--backend-allow needs --backend-curve-keypair", status=2)
    try:
        return from_options(
            server=True, keypair=ns.backend_curve_keypair, allow=ns.backend_allow or ()
        )
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from exc


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
        max_queued=ns.max_queued,
        max_queued_bytes=ns.max_queued_bytes,
        security=security_from(ns, server=True),
        backend_security=_backend_security(ns),
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal() -> None:  # the first drains (calls in flight finish), the second closes
        if stopping:
            broker.close()
        else:
            stopping.append(loop.create_task(broker.stop()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
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
