"""Which security mechanism a service speaks, read from its ZMTP greeting (RFC 23).

Why the client asks: a CURVE service (libzmq) that reads a plain client's version and
mechanism in one read sees the mismatch and closes the connection before its own mechanism has
gone out. The client then reads end-of-file in the middle of the greeting; its monitor reports
``HANDSHAKE_FAILED_NO_DETAIL`` (``EPIPE``), not the mechanism mismatch, and libzmq reconnects,
every reconnect interval, mostly the same way (on loopback, nearly always under load). That
event cannot tell a refusal from a service that went away mid-handshake, so the client opens
a connection of its own and sends only the signature and the major version: a ZMTP/3 peer
answers with its whole greeting, mechanism included, and waits for the rest of ours, which
never comes. Then the connection is closed.

The same happens the other way round (a plain service hanging up on a CURVE client, which
then reads like a wrong service key) and to a service connecting out to a broker's backend:
:func:`mismatch` turns the answer into the refusal it was, for the client
(:mod:`netcall._client.peers`) and for a service's connections out
(:mod:`netcall._service.upstream`).
"""

from __future__ import annotations

import asyncio

import zmq

from .errors import AuthenticationError
from .security import handshake_error

__all__ = ["PROBE_TIMEOUT", "address", "mismatch", "parse_mechanism", "peer_mechanism"]

#: Seconds the client waits for a service's greeting when it asks for its mechanism.
PROBE_TIMEOUT = 2.0

# The signature (0xFF, 8 bytes of padding, 0x7F) and major version 3, as libzmq sends them.
_OPENING = b"\xff" + b"\x00" * 7 + b"\x01\x7f" + b"\x03"
_GREETING = 64  # signature 10, version 2, mechanism 20, as-server 1, filler 31
_MECHANISM = slice(12, 32)


def address(url: str) -> tuple[str, int] | str | None:
    """Where to reach ``url``: ``(host, port)`` for tcp, a socket path for ipc (``"\\0..."``
    in the abstract namespace), ``None`` for a transport without a greeting to read."""
    if url.startswith("tcp://"):
        where = url[6:].rpartition(";")[2]  # tcp://SOURCE;HOST:PORT
        host, _, port = where.rpartition(":")
        if not host or not port.isdigit():
            return None
        return host.strip("[]"), int(port)
    if url.startswith("ipc://") and len(url) > 6:
        path = url[6:]
        return "\0" + path[1:] if path.startswith("@") else path
    return None


def parse_mechanism(greeting: bytes) -> str | None:
    """The mechanism named in a (possibly partial) ZMTP/3 greeting, or ``None``."""
    if len(greeting) < _MECHANISM.stop or greeting[0] != 0xFF or not greeting[9] & 1:
        return None
    if greeting[10] < 3:  # ZMTP/1 or /2: no mechanism (NULL)
        return "NULL"
    return greeting[_MECHANISM].rstrip(b"\0").decode("ascii", "replace")


async def peer_mechanism(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """The security mechanism (``"NULL"``, ``"CURVE"``, ...) of the ZeroMQ peer at ``url``,
    or ``None`` when it cannot be learned (unsupported transport, nothing listening, not a
    ZMTP/3 peer, no greeting within ``timeout`` seconds). Never raises (but cancellation)."""
    where = address(url)
    if where is None:
        return None
    try:
        return await asyncio.wait_for(_read_mechanism(where), timeout)
    except (OSError, EOFError, asyncio.TimeoutError, UnicodeError, ValueError):
        return None


async def mismatch(url: str, secure: bool) -> AuthenticationError | None:
    """After a handshake with ``url`` ended with no detail (the peer hung up): the refusal
    it was when the peer speaks another mechanism than this end (``secure``: this end uses
    CURVE), as if ZeroMQ had reported the mismatch; ``None`` when the peer speaks CURVE like
    this end, or NULL like this end, or cannot be asked. Never raises (but cancellation)."""
    mechanism = await peer_mechanism(url)
    if mechanism is None or secure == (mechanism == "CURVE"):
        return None
    return handshake_error(
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, url, secure
    )


async def _read_mechanism(where: tuple[str, int] | str) -> str | None:
    if isinstance(where, str):
        reader, writer = await asyncio.open_unix_connection(where)
    else:
        reader, writer = await asyncio.open_connection(*where)
    try:
        writer.write(_OPENING)
        try:
            greeting = await reader.readexactly(_GREETING)
        except asyncio.IncompleteReadError as exc:
            greeting = exc.partial
        return parse_mechanism(greeting)
    finally:
        writer.close()
