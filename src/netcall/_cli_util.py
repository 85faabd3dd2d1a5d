"""Pieces of the command line that do no I/O on sockets: user errors, arguments in, values out,
endpoint probes. Kept apart from :mod:`netcall.cli` so each subcommand stays short."""

from __future__ import annotations

import argparse
import base64
import datetime
import decimal
import json
import os
import socket
import stat
import sys
import uuid
from collections.abc import Iterable
from typing import Any, TextIO


class CLIError(Exception):
    """A mistake the user can fix: printed as one line on stderr, exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- CURVE security (netcall.security) ------------------------------------------------------


def add_security_options(p: argparse.ArgumentParser, server: bool) -> None:
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


def security_from(ns: argparse.Namespace, server: bool = False) -> Any:
    """The CURVE security the --curve-server-key, --curve-keypair and --allow flags ask for
    (``None`` without them).

    Raises:
        CLIError: a key file cannot be read, or the flags do not fit together.
    """
    from .security import from_options

    try:
        return from_options(
            server=server, server_key=ns.curve_server_key, keypair=ns.curve_keypair, allow=ns.allow
        )
    except (OSError, ValueError) as exc:
        raise CLIError(str(exc), status=2) from exc


# -- arguments in ---------------------------------------------------------------------------


def word_value(text: str) -> Any:
    """A command-line argument: JSON if it parses as JSON, else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def keyword_values(pairs: Iterable[str]) -> dict[str, Any]:
    """``--kw NAME=VALUE`` options as keyword arguments (values as in :func:`word_value`)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.isidentifier():
            raise CLIError(f"--kw wants NAME=VALUE, got {pair!r}", status=2)
        out[name] = word_value(value)
    return out


def read_data(spec: str, stdin: TextIO | None = None) -> str:
    """The text of ``-d``: literal JSON, ``@file``, or ``@``/``@-``/``-`` for standard input."""
    if spec in ("-", "@", "@-"):
        return (stdin or sys.stdin).read()
    if spec.startswith("@"):
        path = spec[1:]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            raise CLIError(f"cannot read -d {spec}: {exc.strerror or exc}", status=2) from exc
    return spec


def data_arguments(text: str, where: str) -> tuple[list[Any], dict[str, Any]]:
    """``-d`` data as call arguments: a JSON array gives positional arguments, an object
    keyword arguments, ``{"args": [...], "kwargs": {...}}`` both, any other value one argument.
    """
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CLIError(f"-d {where} is not valid JSON: {exc}", status=2) from exc
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        if set(value) <= {"args", "kwargs"} and value:
            args, kwargs = value.get("args", []), value.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise CLIError(f'-d {where}: "args" must be an array, "kwargs" an object', 2)
            return args, kwargs
        return [], value
    return [value], {}


# -- values out -----------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: bytes as base64, date and time values as ISO 8601,
    timedeltas as seconds, sets and tuples as arrays, other keys and values as ``str()``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [jsonable(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    return repr(value)


def _key(key: Any) -> str | int | float | bool | None:
    if key is None or isinstance(key, (str, int, float, bool)):
        return key
    converted = jsonable(key)
    return converted if isinstance(converted, str) else json.dumps(converted)


def render(value: Any, raw: bool) -> str:
    """One value as one line: JSON (see :func:`jsonable`), or its ``repr`` with ``raw``."""
    if raw:
        return repr(value)
    return json.dumps(jsonable(value), ensure_ascii=False)


# -- endpoints ------------------------------------------------------------------------------

_SCHEMES = ("tcp://", "ipc://", "inproc://", "pgm://", "epgm://", "vmci://", "ws://", "wss://")


def check_endpoint(url: str) -> None:
    """Refuse what is plainly not a ZeroMQ endpoint, with the form it should take."""
    if not url.startswith(_SCHEMES) or url.endswith("://"):
        raise CLIError(f"{url!r} is not an endpoint: use tcp://HOST:PORT or ipc:///PATH", status=2)
    if url.startswith("tcp://"):
        host, colon, port = url[6:].rpartition(":")
        if not colon or not host or not (port.isdigit() or port == "*"):
            raise CLIError(f"{url!r} is not an endpoint: use tcp://HOST:PORT", status=2)


def probe(url: str, timeout: float) -> str | None:
    """Why nothing can answer at ``url`` (connection refused, no socket file, ...), or
    ``None`` if something listens there or the transport cannot be probed."""
    if url.startswith("ipc://"):
        path = url[6:]
        if path.startswith("@"):  # abstract namespace: nothing to look at
            return None
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return f"no socket file {path}"
        except OSError as exc:
            return f"cannot look at {path}: {exc.strerror}"
        if not stat.S_ISSOCK(mode):
            return f"{path} is not a socket"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(path)
            except OSError as exc:
                return f"{path}: {exc.strerror or exc}"
        return None
    if url.startswith("tcp://"):
        host, _, port = url[6:].rpartition(":")
        host = host.strip("[]")
        if ";" in host or not port.isdigit():  # a source address, or a port we cannot probe
            return None
        try:
            with socket.create_connection((host, int(port)), timeout=timeout):
                return None
        except socket.gaierror as exc:
            return f"unknown host {host!r} ({exc.strerror})"
        except TimeoutError:
            return f"no TCP answer from {host}:{port} within {timeout:g} s"
        except OSError as exc:
            return f"{exc.strerror or exc} at {host}:{port}"
    return None
