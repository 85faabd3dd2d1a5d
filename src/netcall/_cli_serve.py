"""``netcall serve``: find what to serve, build the service, run it until Ctrl-C.

What can be served (``SPEC`` is ``module``, ``module:attr``, ``path/to/file.py`` or
``path/to/file.py:attr``, looked up from the current directory first):

- an :class:`~netcall.RPCService` instance, as it is;
- an :class:`~netcall.RPCService` subclass, built with the command's options;
- a module without ``:attr``: its one module-level ``RPCService`` if it has exactly one,
  otherwise its public functions (``netcall serve random``);
- any other class (built with no arguments) or object: its public methods;
- a function: that one function.

Stopping: the first Ctrl-C (or SIGTERM) stops gracefully, giving calls in flight ``--grace``
seconds; a second one stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib
import importlib.util
import inspect
import logging
import os
import signal
import sys
import threading
import time
import types
from typing import Any

import zmq

from ._cli_stop import Interrupts, stopping_message
from ._cli_util import CLIError, add_security_options, check_endpoint, security_from
from .service import RPCService

EXIT_STOPPED_NOW = 130


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec",
        metavar="SPEC",
        help="module[:attr] or file.py[:attr]: an RPCService, a service class, a module, "
        "a class or an object whose public functions/methods to serve",
    )
    p.add_argument(
        "--bind", action="append", default=[], metavar="URL", help="endpoint to bind (repeatable)"
    )
    p.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="URL",
        help="endpoint to connect to, e.g. a broker (repeatable)",
    )
    p.add_argument(
        "--serializer",
        choices=["msgpack", "json", "pickle"],
        help="wire format (default msgpack; pickle for trusted networks only)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds calls in flight may finish after Ctrl-C (default 5)",
    )
    p.add_argument(
        "--executor",
        choices=["inline", "threads"],
        default="inline",
        help="where sync handlers run: on the event loop (default) or in a thread pool",
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="thread pool size with --executor threads"
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="refuse calls beyond N running at once (default: no limit)",
    )
    add_security_options(p, server=True)
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run N service processes behind the --bind endpoints (netcall.workers; "
        "SPEC must then be module:attr naming an RPCService, a subclass or a factory)",
    )
    p.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        default="INFO",
        help="(default INFO; -v means DEBUG)",
    )


# -- finding the target ---------------------------------------------------------------------


def load_target(spec: str) -> tuple[Any, str]:
    """Import what ``spec`` names. Returns ``(object, attr)``; ``attr`` is ``""`` when the
    spec names a module alone.

    Raises:
        CLIError: no such module, file or attribute, or the import failed.
    """
    where, _, attr = spec.partition(":")
    if not where:
        raise CLIError(f"{spec!r}: give a module or a file before ':'", status=2)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if where.endswith(".py") or os.sep in where:
        module = _import_file(where)
    else:
        module = _import_module(where)
    obj: Any = module
    for part in attr.split(".") if attr else []:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"{where} has no attribute {attr!r}") from None
    return obj, attr


def _import_module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise CLIError(
                f"no module named {name!r} (looked in {os.getcwd()} and on sys.path)"
            ) from exc
        raise CLIError(f"importing {name} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise CLIError(f"importing {name} failed: {type(exc).__name__}: {exc}") from exc


def _import_file(path: str) -> types.ModuleType:
    if not os.path.isfile(path):
        raise CLIError(f"no file {path}")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CLIError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def build_service(obj: Any, attr: str, ns: argparse.Namespace) -> tuple[RPCService, bool]:
    """The service to run for ``obj``. Returns ``(service, built_here)``: a service built
    here takes the command's options; an existing one keeps its own.

    Raises:
        CLIError: nothing to serve, or options that an existing service cannot take.
    """
    if isinstance(obj, types.ModuleType) and not attr:
        found = [v for v in vars(obj).values() if isinstance(v, RPCService)]
        if len(found) == 1:
            obj = found[0]
    if isinstance(obj, RPCService):
        given = [
            flag
            for flag, value in (
                ("--serializer", ns.serializer),
                ("--executor threads", ns.executor == "threads" or None),
                ("--max-concurrent", ns.max_concurrent),
            )
            if value is not None
        ]
        if given:
            obj.close()
            raise CLIError(
                f"{ns.spec} is an RPCService built with its own options: "
                f"{', '.join(given)} apply only to what netcall serve builds "
                "(a module, a class or an object)",
                status=2,
            )
        security = security_from(ns, server=True)
        if security is not None:
            _secure(obj, security, ns.spec)
        return obj, False
    if isinstance(obj, (str, bytes, int, float, complex, list, tuple, dict, set, type(None))):
        raise CLIError(
            f"{ns.spec} is a {type(obj).__name__}: serve a module, a class, an object, "
            "a function or an RPCService",
            status=2,
        )
    options = _service_options(ns)
    if isinstance(obj, type) and issubclass(obj, RPCService):
        return obj(**options), True
    service = RPCService(**options)
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise CLIError(f"cannot build {ns.spec}(): {type(exc).__name__}: {exc}") from exc
    if inspect.isroutine(obj):
        service.register(obj)
        return service, True
    try:
        names = service.register_object(obj)
    except ValueError as exc:
        raise CLIError(f"cannot serve {ns.spec}: {exc}") from exc
    if not names:
        service.close()
        raise CLIError(f"{ns.spec} ({type(obj).__name__}) has no public functions or methods")
    return service, True


def _secure(service: RPCService, security: Any, spec: str) -> None:
    """CURVE for a ready-made service: only before it binds (options apply to later binds)."""
    from .security import secure_socket

    if service.bound or service.security is not None:
        service.close()
        raise CLIError(f"{spec} is bound or secured already: --curve-* cannot apply", status=2)
    service._zap = zap = secure_socket(service.socket, security, server=True, name=service.name)
    service.security = security
    if zap is not None:
        # As RPCService._make_socket does: the service's own monitor (opened when it starts)
        # replaces the ZAP handler's (libzmq keeps one per socket), so the handshakes ZeroMQ
        # fails before asking ZAP (a client without CURVE) are logged only if it passes them on.
        service._upstreams.listeners.append(zap.on_monitor_event)


def _service_options(ns: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"serializer": ns.serializer, "grace": ns.grace}
    security = security_from(ns, server=True)
    if security is not None:
        options["security"] = security
    if ns.max_concurrent is not None:
        options["max_concurrent"] = ns.max_concurrent
    if ns.executor == "threads":
        ns.pool = options["executor"] = concurrent.futures.ThreadPoolExecutor(
            ns.threads, thread_name_prefix="netcall-handler"
        )
    return options


# -- running --------------------------------------------------------------------------------


def attach(service: RPCService, ns: argparse.Namespace) -> None:
    """Bind and connect as asked.

    Raises:
        CLIError: no endpoint given, a malformed one, or one that cannot be bound.
    """
    if not ns.bind and not ns.connect:
        raise CLIError("give at least one --bind URL (or --connect URL)", status=2)
    for url in [*ns.bind, *ns.connect]:
        check_endpoint(url)
    for url in ns.bind:
        try:
            service.bind(url)
        except zmq.ZMQError as exc:
            raise CLIError(f"cannot bind {url}: {_why(exc)}") from exc
    if ns.connect:
        connect = getattr(service, "connect", None)
        if connect is None:
            raise CLIError("--connect needs a service that can connect (a broker worker)")
        for url in ns.connect:
            try:
                connect(url)
            except zmq.ZMQError as exc:
                raise CLIError(f"cannot connect to {url}: {_why(exc)}") from exc


def _why(exc: zmq.ZMQError) -> str:
    """ZeroMQ's own reason (``Address already in use``), without netcall's or pyzmq's
    restatement of the address."""
    cause = exc.__cause__ if isinstance(exc.__cause__, zmq.ZMQError) else exc
    return str(cause.strerror).split(" (addr=")[0]


async def run(ns: argparse.Namespace) -> int:
    """``netcall serve``: serve until the first Ctrl-C has drained or the second one."""
    netcall_log = logging.getLogger("netcall")
    if not ns.verbose:  # a mistake is one line: the service's own INFO lines wait until it runs
        netcall_log.setLevel(logging.WARNING)
    if ns.workers:
        return await _run_workers(ns)
    obj, attr = load_target(ns.spec)
    service, _ = build_service(obj, attr, ns)
    try:
        attach(service, ns)
    except BaseException:
        service.close()
        raise
    netcall_log.setLevel(logging.NOTSET)
    loop = asyncio.get_running_loop()
    stopper: list[asyncio.Task[None]] = []

    def first(say: bool, grace: float) -> None:  # on the loop, after the first signal
        if say:
            busy = service.active_calls + service.active_streams
            print(f"netcall: {stopping_message(ns.grace, busy)}", file=sys.stderr, flush=True)
        if not service.closed:
            stopper.append(loop.create_task(service.stop(grace=grace)))

    def second(say: bool) -> None:
        if say:
            print("netcall: stopping now", file=sys.stderr, flush=True)
        service.close()

    interrupts = Interrupts(loop, service, ns.grace, first, second)
    interrupts.install()
    endpoints = ", ".join([*sorted(service.bound), *ns.connect])
    print(f"serving {ns.spec} on {endpoints} (Ctrl-C to stop)", flush=True)
    pool = getattr(ns, "pool", None)
    try:
        await service.serve()
        if stopper and interrupts.stops == 1:
            await stopper[0]  # the graceful stop also waits for cancelled handlers to unwind
    except BaseException:
        _close(service, stopper, interrupts)
        if pool is not None:
            _shutdown_pool(pool, EXIT_STOPPED_NOW)
        raise
    _close(service, stopper, interrupts)
    status = EXIT_STOPPED_NOW if interrupts.stops > 1 else 0
    if status == 0:
        # ZeroMQ drops what is still queued when a process exits without terminating its
        # context: let the last replies leave (the service closed with a 200 ms linger).
        service.context.destroy(linger=200)
    if pool is not None:
        _shutdown_pool(pool, status)
    return status


def _close(service: RPCService, stopper: list[asyncio.Task[None]], interrupts: Interrupts) -> None:
    interrupts.remove()
    if not service.closed:
        service.close()
    for task in stopper:
        task.cancel()


async def _run_workers(ns: argparse.Namespace) -> int:
    """``netcall serve --workers N``: a broker here, N service processes connected to it."""
    from .workers import WorkerPool

    if not ns.bind:
        raise CLIError("--workers needs at least one --bind URL", status=2)
    if ns.connect:
        raise CLIError(
            "--connect does not go with --workers (the workers connect to their own broker, "
            "bound on --bind): to add processes to another broker, run `netcall serve SPEC "
            "--connect URL` once per process",
            status=2,
        )
    for url in ns.bind:
        check_endpoint(url)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # the workers import the service from here too
    pool = WorkerPool(
        ns.spec, ns.workers, bind=ns.bind, grace=ns.grace, security=security_from(ns, server=True)
    )
    # Each worker builds what `netcall serve SPEC` builds, with the same options.
    pool._serve_options = {
        "serializer": ns.serializer,
        "executor": ns.executor,
        "threads": ns.threads,
        "max_concurrent": ns.max_concurrent,
    }
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Future[None]] = []

    def on_signal() -> None:
        if stopping:
            # The workers watch a pipe from this process: they stop when it is gone.
            print("netcall: stopping now", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(EXIT_STOPPED_NOW)
        print(f"netcall: stopping {pool.size} workers (grace {ns.grace:g} s)", file=sys.stderr)
        stopping.append(pool._begin_stop())  # new calls are refused from now on

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    print(f"serving {ns.spec} on {', '.join(ns.bind)} with {pool.size} workers", flush=True)
    try:
        await pool.serve()
    except RuntimeError as exc:
        raise CLIError(str(exc)) from exc
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def _shutdown_pool(pool: concurrent.futures.ThreadPoolExecutor, status: int) -> None:
    """No new work for the handler threads; a handler still running after the stop (its call
    was cancelled: a thread cannot be interrupted) is left behind, and the process exits with
    ``status`` at once, instead of waiting for it."""
    pool.shutdown(wait=False, cancel_futures=True)
    threads = [t for t in threading.enumerate() if t.name.startswith("netcall-handler")]
    until = time.monotonic() + 0.5  # idle threads end as soon as they see the shutdown
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
    busy = sum(thread.is_alive() for thread in threads)
    if busy:
        print(
            f"netcall: leaving {busy} handler thread{'s' if busy != 1 else ''} still running",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
