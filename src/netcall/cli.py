# PYTHON_ARGCOMPLETE_OK
"""The ``netcall`` command line (also ``python -m netcall``).

::

    netcall tcp://127.0.0.1:5555 echo '"hi"'              # short for: netcall call URL METHOD ...
    netcall call tcp://127.0.0.1:5555 count 3             # a stream prints one item a line
    netcall call tcp://127.0.0.1:5555 add -d '[1, 2]'     # JSON from -d, -d @file or -d @- (stdin)
    netcall methods tcp://127.0.0.1:5555
    netcall describe tcp://127.0.0.1:5555 echo
    netcall serve random --bind tcp://127.0.0.1:5555      # a module's public functions
    netcall keygen server --dir keys                      # CURVE keys (see the --curve-* flags)
    netcall broker --frontend tcp://0.0.0.0:5555 --backend tcp://0.0.0.0:5556

Arguments are JSON if they parse as JSON, else strings. Results print as JSON (bytes as base64,
dates and times as ISO 8601; ``--raw`` prints Python reprs). A mistake prints one line on
stderr and exits non-zero; ``-v`` adds the traceback.

Each subcommand is one entry of :data:`COMMANDS`: a function adding its options and a
coroutine function running it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, NoReturn

import zmq

from . import __version__, _cli_broker, _cli_serve
from ._cli_util import (
    CLIError,
    add_security_options,
    check_endpoint,
    data_arguments,
    keyword_values,
    probe,
    read_data,
    render,
    security_from,
    word_value,
)
from .client import RemoteGenerator, RPCClient
from .errors import MethodNotFoundError, RemoteRPCError, RPCError, RPCTimeoutError

__all__ = ["COMMANDS", "Command", "main"]

log = logging.getLogger("netcall.cli")


class Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Awaitable[int]]


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake as one line (``netcall call: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- client commands ------------------------------------------------------------------------


def _client_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="URL",
        help="another endpoint to spread calls over (repeatable)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for an answer (default 10)",
    )
    p.add_argument(
        "--serializer",
        choices=["msgpack", "json", "pickle"],
        default="msgpack",
        help="must match the service's (default msgpack)",
    )
    add_security_options(p, server=False)


def _call_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "words",
        nargs="*",
        metavar="URL METHOD [ARG]",
        help="endpoint (unless given with --connect), method, then arguments: JSON, else strings",
    )
    p.add_argument("--kw", action="append", default=[], metavar="NAME=VALUE", help="keyword arg")
    p.add_argument(
        "-d",
        "--data",
        metavar="JSON|@FILE|@-",
        help="arguments as JSON: an array (positional), an object (keywords); "
        "@FILE reads a file, @- standard input",
    )
    p.add_argument("--oneway", action="store_true", help="do not wait for the result")
    p.add_argument("--raw", action="store_true", help="print Python reprs instead of JSON")
    _client_arguments(p)


def _endpoint_arguments(p: argparse.ArgumentParser, *more: str) -> None:
    p.add_argument("words", nargs="*", metavar=" ".join(["URL", *more]))
    _client_arguments(p)


def _split(ns: argparse.Namespace, wanted: int, what: str) -> tuple[list[str], list[str]]:
    """``(endpoints, words)``: the leading URL word (if any) plus ``--connect`` endpoints,
    and the ``wanted`` words after it (more are left in place for ``call``)."""
    words = list(ns.words)
    urls = list(ns.connect)
    if words and "://" in words[0]:
        urls.insert(0, words.pop(0))
    if not urls:
        raise CLIError(f"give the service's endpoint: netcall {ns.command} URL {what}", 2)
    if len(words) < wanted:
        raise CLIError(f"missing {what}: netcall {ns.command} URL {what}", 2)
    for url in urls:
        check_endpoint(url)
    return urls, words


async def _connected(ns: argparse.Namespace, urls: list[str]) -> RPCClient:
    """A client connected to every endpoint that something listens on.

    Raises:
        CLIError: nothing listens on any of them.
    """
    probe_timeout = min(2.0, ns.timeout) if ns.timeout else 2.0
    loop = asyncio.get_running_loop()
    reasons = await asyncio.gather(
        *(loop.run_in_executor(None, probe, url, probe_timeout) for url in urls)
    )
    live = [url for url, why in zip(urls, reasons) if why is None]
    for url, why in zip(urls, reasons):
        if why is not None and live:
            print(f"netcall: skipping {url}: {why}", file=sys.stderr)
    if not live:
        tried = "; ".join(f"{url}: {why}" for url, why in zip(urls, reasons))
        raise CLIError(f"cannot reach {tried} (is a service bound there?)")
    client = RPCClient(ns.serializer, timeout=ns.timeout or None, security=security_from(ns))
    ns.tried = live
    try:
        client.connect(live)
    except zmq.ZMQError as exc:
        client.close()
        raise CLIError(f"cannot connect to {', '.join(live)}: {exc.strerror}") from exc
    return client


async def _call(ns: argparse.Namespace) -> int:
    urls, words = _split(ns, 1, "METHOD")
    method, words = words[0], words[1:]
    args: list[Any] = [word_value(w) for w in words]
    kwargs = keyword_values(ns.kw)
    if ns.data is not None:
        d_args, d_kwargs = data_arguments(read_data(ns.data), ns.data)
        args += d_args
        kwargs.update(d_kwargs)
    ns.what = f"{method}()"
    async with await _connected(ns, urls) as client:
        result = await client.call(method, *args, oneway=ns.oneway, **kwargs)
        if isinstance(result, RemoteGenerator):
            async with result:
                async for item in result:
                    print(render(item, ns.raw), flush=True)
        elif not ns.oneway:
            print(render(result, ns.raw))
    return 0


async def _methods(ns: argparse.Namespace) -> int:
    urls, _ = _split(ns, 0, "")
    ns.what = "the list of methods"
    async with await _connected(ns, urls) as client:
        for name, info in (await client.methods()).items():
            doc = info["doc"].splitlines()[0] if info["doc"] else ""
            print(f"{name}{info['signature']}" + (f"  -- {doc}" if doc else ""))
    return 0


async def _describe(ns: argparse.Namespace) -> int:
    urls, words = _split(ns, 1, "METHOD")
    ns.what = "the list of methods"
    async with await _connected(ns, urls) as client:
        methods = await client.methods()
    info = methods.get(words[0])
    if info is None:
        raise CLIError(f"no method named {words[0]!r} at {urls[0]} (netcall methods lists them)")
    print(f"{words[0]}{info['signature']}")
    if info["doc"]:
        print()
        print(info["doc"])
    return 0


def _keygen_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="NAME.key (public) and NAME.key_secret (secret) are written")
    p.add_argument("--dir", default=".", help="folder for the two files (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")


async def _keygen(ns: argparse.Namespace) -> int:
    from .security import Keypair

    try:
        public, secret = Keypair.generate().save(ns.dir, ns.name, overwrite=ns.force)
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote {public} (public) and {secret} (secret, owner-only)")
    return 0


COMMANDS: dict[str, Command] = {
    "call": Command("call a method and print its result (or stream)", _call_arguments, _call),
    "methods": Command("list a service's methods", _endpoint_arguments, _methods),
    "describe": Command(
        "show one method's signature and docstring",
        lambda p: _endpoint_arguments(p, "METHOD"),
        _describe,
    ),
    "serve": Command(
        "serve a module, class, object or RPCService", _cli_serve.add_arguments, _cli_serve.run
    ),
    "keygen": Command(
        "make a CURVE key pair: NAME.key and NAME.key_secret", _keygen_arguments, _keygen
    ),
    "broker": Command(
        "run a broker: one address for many services", _cli_broker.add_arguments, _cli_broker.run
    ),
}


# -- entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="netcall",
        description="Call, list, describe and serve netcall RPC methods.",
        epilog="Short form: netcall URL METHOD [ARG ...] is netcall call URL METHOD [ARG ...].",
    )
    parser.add_argument("--version", action="version", version=f"netcall {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors"
    )
    verbose = _Parser(add_help=False)  # -v after the command too (without resetting it)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[verbose])
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def _short_form(argv: list[str]) -> list[str]:
    """``netcall [-v] URL METHOD ...`` becomes ``netcall [-v] call URL METHOD ...``."""
    for i, word in enumerate(argv):
        if not word.startswith("-"):
            if "://" in word:
                return [*argv[:i], "call", *argv[i:]]
            break
    return argv


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    ns, extra = parser.parse_known_args(_short_form(argv))
    # Words after an option (netcall call URL --timeout 1 echo hi) come back as extras.
    unknown = [w for w in extra if w.startswith("-") and w != "-"]
    if unknown or (extra and not hasattr(ns, "words")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        ns.words = [*ns.words, *extra]
    return ns


def _message(exc: BaseException, ns: argparse.Namespace) -> str:
    if isinstance(exc, RPCTimeoutError):
        tried = ", ".join(getattr(ns, "tried", [])) or "the endpoint"
        return (
            f"no answer from {tried} within {ns.timeout:g} s to {getattr(ns, 'what', 'the call')}"
            f" (a connection was made: is it a netcall service using the {ns.serializer}"
            " serializer, and is the method quick enough? --timeout S waits longer)"
        )
    if isinstance(exc, MethodNotFoundError):
        return f"MethodNotFoundError: {exc.message} (netcall methods URL lists them)"
    if isinstance(exc, RemoteRPCError) and exc.type_name.startswith("netcall."):
        return f"{type(exc).__name__}: {exc.message}"
    if isinstance(exc, (RemoteRPCError, CLIError)):
        return str(exc)  # a remote error's str() is already "TypeName: message"
    if isinstance(exc, RPCError):
        return f"{type(exc).__name__}: {exc}"
    hint = "" if ns.verbose else " (-v shows the traceback)"
    return f"{type(exc).__name__}: {exc}{hint}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``netcall`` command. Returns the exit status."""
    parser = build_parser()
    try:
        import argcomplete  # optional: `pip install netcall[cli]`
    except ImportError:
        pass
    else:
        argcomplete.autocomplete(parser)
    ns = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    level = "DEBUG" if ns.verbose else getattr(ns, "log_level", "WARNING")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(asyncio.run(ns.run(ns)))
    except KeyboardInterrupt:
        print("netcall: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure is one line; -v adds the traceback
        status = exc.status if isinstance(exc, CLIError) else 1
        if ns.verbose:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        print(f"netcall: {_message(exc, ns)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
