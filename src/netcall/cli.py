"""The ``netcall`` command line.

::

    netcall call tcp://127.0.0.1:5555 echo '"hi"'        # arguments are JSON, else strings
    netcall call tcp://127.0.0.1:5555 count 5             # a stream prints one item a line
    netcall methods tcp://127.0.0.1:5555
    netcall serve examples.echo_service:service --bind tcp://127.0.0.1:5555
    netcall serve examples.echo_service:service --bind tcp://127.0.0.1:5555 --workers 2
    netcall broker --frontend tcp://0.0.0.0:5555 --backend tcp://0.0.0.0:5556
    netcall keygen server --dir keys                      # CURVE keys (see --curve-* flags)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .client import RemoteGenerator, RPCClient
from .errors import RPCError
from .service import RPCService

__all__ = ["main"]


def _arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _show(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


async def _call(ns: argparse.Namespace) -> int:
    args = [_arg(a) for a in ns.args]
    kwargs = {k: _arg(v) for k, v in (kv.split("=", 1) for kv in ns.kw)}
    async with RPCClient(ns.serializer, timeout=ns.timeout, security=_security(ns)) as client:
        client.connect(ns.url)
        result = await client.call(ns.method, *args, **kwargs)
        if isinstance(result, RemoteGenerator):
            async with result:
                async for item in result:
                    print(_show(item), flush=True)
        else:
            print(_show(result))
    return 0


async def _methods(ns: argparse.Namespace) -> int:
    async with RPCClient(ns.serializer, timeout=ns.timeout, security=_security(ns)) as client:
        client.connect(ns.url)
        for name, info in (await client.methods()).items():
            doc = info["doc"].splitlines()[0] if info["doc"] else ""
            print(f"{name}{info['signature']}" + (f"  -- {doc}" if doc else ""))
    return 0


def _security(ns: argparse.Namespace, server: bool = False) -> Any:
    """The CURVE security the --curve-server-key, --curve-keypair and --allow flags ask for."""
    from .security import from_options

    try:
        return from_options(
            server=server, server_key=ns.curve_server_key, keypair=ns.curve_keypair, allow=ns.allow
        )
    except (OSError, ValueError) as exc:
        raise SystemExit(f"netcall: {exc}") from None


def _security_options(p: argparse.ArgumentParser, server: bool) -> None:
    p.add_argument(
        "--curve-server-key",
        metavar="KEY",
        help="the service's CURVE public key (Z85, or its .key file)"
        + (" (checked against --curve-keypair)" if server else ""),
    )
    p.add_argument(
        "--curve-keypair",
        metavar="FILE",
        help="this end's CURVE key pair (a .key_secret file)"
        + ("" if server else "; default: an ephemeral one"),
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="KEY|FOLDER",
        help="(serve) client keys let in: a folder of .key files, or keys (repeatable)",
    )


async def _keygen(ns: argparse.Namespace) -> int:
    from .security import Keypair

    try:
        public, secret = Keypair.generate().save(ns.dir, ns.name, overwrite=ns.force)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"netcall: {exc}") from None
    print(f"wrote {public} (public) and {secret} (secret, owner-only)")
    return 0


def _load_service(spec: str) -> RPCService:
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, ".")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr or "service")
    if isinstance(obj, type) and issubclass(obj, RPCService):
        obj = obj()
    if not isinstance(obj, RPCService):
        raise SystemExit(f"{spec} is not an RPCService")
    return obj


async def _serve_workers(ns: argparse.Namespace) -> int:
    from .workers import WorkerPool

    sys.path.insert(0, ".")  # the workers import the service from here too
    pool = WorkerPool(ns.service, ns.workers, bind=ns.bind, security=_security(ns, server=True))
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopping.add(loop.create_task(pool.stop())))
    print(f"serving {ns.service} on {', '.join(ns.bind)} with {pool.size} workers", flush=True)
    try:
        await pool.serve()
    except RuntimeError as exc:
        raise SystemExit(f"netcall: {exc}") from None
    return 0


async def _serve(ns: argparse.Namespace) -> int:
    if ns.workers:
        return await _serve_workers(ns)
    service = _load_service(ns.service)
    security = _security(ns, server=True)
    if security is not None:  # CURVE options count for the endpoints bound after them only
        from .security import secure_socket

        if service.bound or service.security is not None:
            raise SystemExit(f"netcall: {ns.service} is bound or secured already")
        service._zap = secure_socket(service.socket, security, server=True, name=service.name)
        service.security = security
    service.bind(ns.bind)
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopping.add(loop.create_task(service.stop())))
    print(f"serving {ns.service} on {', '.join(sorted(service.bound))}", flush=True)
    await service.serve()
    return 0


def _stats_line(stats: dict[str, Any]) -> str:
    errors = " ".join(f"{k}={v}" for k, v in stats["errors"].items() if v)
    return (
        f"services={len(stats['services'])} methods={len(stats['methods'])} "
        f"in_flight={stats['in_flight']} streams={stats['streams']} queued={stats['queued']} "
        f"clients={stats['clients']} errors: {errors or 'none'}"
    )


async def _broker(ns: argparse.Namespace) -> int:
    from .broker import Broker

    broker = Broker(
        frontend=ns.frontend,
        backend=ns.backend,
        heartbeat=ns.heartbeat,
        max_queue=ns.max_queue,
        security=_security(ns, server=True),
        backend_security=_backend_security(ns),
    )
    loop = asyncio.get_running_loop()
    stopping: set[asyncio.Task[None]] = set()  # drains: calls in flight finish (5 s grace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopping.add(loop.create_task(broker.stop())))
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


def _backend_security(ns: argparse.Namespace) -> Any:
    from .security import from_options

    if ns.backend_allow and ns.backend_curve_keypair is None:
        raise SystemExit("netcall: --backend-allow needs --backend-curve-keypair")
    try:
        return from_options(
            server=True, keypair=ns.backend_curve_keypair, allow=ns.backend_allow or ()
        )
    except (OSError, ValueError) as exc:
        raise SystemExit(f"netcall: {exc}") from None


def _add_broker_command(sub: Any) -> None:
    p = sub.add_parser("broker", help="run a broker: one address for many services")
    p.add_argument("--frontend", action="append", required=True, help="endpoint for clients")
    p.add_argument("--backend", action="append", required=True, help="endpoint for services")
    p.add_argument("--heartbeat", type=float, default=1.0, help="seconds (default 1)")
    p.add_argument("--max-queue", type=int, default=1000, help="calls waiting (default 1000)")
    p.add_argument(
        "--stats-every", type=float, default=10.0, help="print stats every N s (0: never)"
    )
    _security_options(p, server=True)  # CURVE on the frontend
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
    p.set_defaults(run=_broker)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``netcall`` command. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="netcall", description=__doc__.splitlines()[1])
    parser.add_argument("--version", action="version", version=f"netcall {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("url", help="service endpoint, e.g. tcp://127.0.0.1:5555")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
        p.add_argument("--serializer", default="msgpack", choices=["msgpack", "json"])

    p_call = sub.add_parser("call", help="call a method and print the result")
    client_options(p_call)
    p_call.add_argument("method")
    p_call.add_argument("args", nargs="*", help="positional arguments (JSON, else strings)")
    p_call.add_argument("--kw", action="append", default=[], metavar="NAME=VALUE")
    _security_options(p_call, server=False)
    p_call.set_defaults(run=_call)

    p_methods = sub.add_parser("methods", help="list a service's methods")
    client_options(p_methods)
    _security_options(p_methods, server=False)
    p_methods.set_defaults(run=_methods)

    p_serve = sub.add_parser("serve", help="serve an RPCService from a module")
    p_serve.add_argument("service", help="module:attribute of an RPCService (or subclass)")
    p_serve.add_argument("--bind", action="append", required=True, help="endpoint (repeatable)")
    p_serve.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run N service processes behind the endpoint (netcall.workers; default: serve here)",
    )
    _security_options(p_serve, server=True)
    p_serve.set_defaults(run=_serve)

    _add_broker_command(sub)
    p_keygen = sub.add_parser("keygen", help="make a CURVE key pair: NAME.key and NAME.key_secret")
    p_keygen.add_argument("name")
    p_keygen.add_argument("--dir", default=".", help="folder for the two files (default: .)")
    p_keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    p_keygen.set_defaults(run=_keygen)

    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.WARNING)
    try:
        return int(asyncio.run(ns.run(ns)))
    except RPCError as exc:
        print(f"netcall: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
