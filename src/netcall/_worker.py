"""One worker process of :mod:`netcall.workers` (run as ``python -m netcall._worker``).

::

    python -m netcall._worker <module:attribute> <backend url> <parent fd> <grace> [<options>]

It loads the service (see :func:`load_service`; with ``<options>``, a JSON object of ``netcall
serve``'s, it builds what ``netcall serve`` would: :func:`build_as_serve`), connects it out to
the pool's broker and serves until it is told to stop, then stops gracefully
(:meth:`RPCService.stop`). ``<parent fd>`` is the read end of a pipe whose write end only the
parent holds: the pool's stop writes the seconds of its grace that are left on it (a stop with
that grace), and the worker reads end-of-file the moment the parent exits, however it died (a
stop with ``<grace>``). SIGINT and SIGTERM are ignored: Ctrl-C, systemd's stop and ``kill -TERM
-<pgid>`` reach the whole process group, and the parent orders the shutdown (a worker stopping
on its own would refuse calls the broker still sends it, and its exit would look like a crash to
the pool). SIGTERM has a handler that does nothing, not ``SIG_IGN``, so processes a handler
starts do not inherit the ignoring.

Exit codes: 0 after a stop, :data:`BAD_TARGET` when the service cannot be loaded (the pool does
not restart such a worker), 70 when a stop ordered over the pipe overran its grace by 2 s.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

from .service import RPCService

__all__ = ["BAD_TARGET", "build_as_serve", "load_service"]

#: The exit code of a worker whose service cannot be loaded.
BAD_TARGET = 3


def load_service(spec: str) -> RPCService:
    """The service ``module:attribute`` names: an :class:`RPCService`, a subclass of it
    (instantiated), or a function of no arguments returning one (attribute default:
    ``service``).

    Raises:
        ImportError: the module cannot be imported.
        AttributeError: the module has no such attribute.
        TypeError: the attribute is not, and does not make, an RPCService.
    """
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "service").split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, RPCService) and callable(obj):
        obj = obj()
    if not isinstance(obj, RPCService):
        raise TypeError(f"{spec} is not an RPCService, an RPCService subclass or a factory of one")
    return obj


def _watch_parent(fd: int, loop: asyncio.AbstractEventLoop, stop: Any, grace: float) -> None:
    """In a thread: when the pool says so (the grace it has left) or the parent's pipe closes,
    stop; if that overruns, exit anyway (a handler that never yields must not keep an orphan
    alive, nor the pool's stop waiting)."""
    try:
        said = os.read(fd, 64)  # one short write: a pipe delivers it whole
    except OSError:
        said = b""
    if said:
        grace = float(said)
    try:
        loop.call_soon_threadsafe(stop, grace)
    except RuntimeError:  # the loop is closed: the worker is exiting anyway
        return
    time.sleep(grace + 2.0)
    os._exit(70)


def build_as_serve(spec: str, grace: float, options: dict[str, Any]) -> RPCService:
    """The service ``netcall serve SPEC`` would build, for ``netcall serve SPEC --workers N``:
    ``spec`` is any of its forms (a module, a file, a class, an object, a function, an
    RPCService or a subclass), and ``options`` are its ``serializer``, ``executor``,
    ``threads`` and ``max_concurrent`` (CURVE is the pool's broker's, on the public endpoint).

    Raises:
        netcall._cli_util.CLIError: nothing to serve, the import failed, or options a
            ready-made RPCService cannot take.
    """
    import argparse

    from ._cli_serve import build_service, load_target

    ns = argparse.Namespace(
        spec=spec,
        serializer=options.get("serializer"),
        executor=options.get("executor", "inline"),
        threads=options.get("threads"),
        max_concurrent=options.get("max_concurrent"),
        grace=grace,
        curve_server_key=None,
        curve_keypair=None,
        allow=None,
    )
    obj, attr = load_target(spec)
    service, _ = build_service(obj, attr, ns)
    return service


async def _serve(
    spec: str, backend: str, parent_fd: int, grace: float, options: dict[str, Any] | None = None
) -> int:
    from ._cli_util import CLIError

    try:
        service = load_service(spec) if options is None else build_as_serve(spec, grace, options)
    except CLIError as exc:  # (netcall serve's own words: one line)
        print(f"netcall: {exc}", file=sys.stderr, flush=True)
        return BAD_TARGET
    except Exception:
        traceback.print_exc()
        return BAD_TARGET
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def stop(within: float) -> None:
        stopping.append(loop.create_task(service.stop(within)))

    threading.Thread(target=_watch_parent, args=(parent_fd, loop, stop, grace), daemon=True).start()
    service.connect(backend)
    await service.serve()
    if stopping:
        await stopping[0]
    return 0


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    spec, backend, fd, grace = args[:4]
    options = json.loads(args[4]) if len(args) > 4 else None  # netcall serve's options
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: None)  # from the start: also while loading
    return asyncio.run(_serve(spec, backend, int(fd), float(grace), options))


if __name__ == "__main__":
    sys.exit(main())
