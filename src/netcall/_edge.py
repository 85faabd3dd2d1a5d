"""The one edge where foreign exceptions become netcall's: ZeroMQ errors, encoding errors, and
whatever a third-party serializer raises. The original is always the ``__cause__``.
``asyncio.CancelledError`` (a ``BaseException``) is never touched.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import zmq

from .errors import ClientClosedError, EncodingError, RPCError, SerializationError

__all__ = ["TransportError", "endpoint_change", "endpoints", "map_exceptions", "translate"]


class TransportError(RPCError, zmq.ZMQError):
    """ZeroMQ refused an operation: an endpoint cannot be bound or connected (address in use,
    malformed address), or a socket cannot be created. Also a ``zmq.ZMQError`` with the same
    ``errno``; the original is the ``__cause__``."""

    def __init__(self, errno: int, message: str) -> None:
        zmq.ZMQError.__init__(self, errno, message)


_CLOSED = frozenset({errno.ENOTSOCK, zmq.ETERM})


def translate(exc: BaseException, what: str = "") -> BaseException | None:
    """netcall's exception for the foreign ``exc`` (to be raised ``from exc``), or ``None``
    when ``exc`` is already netcall's or is not ours to translate."""
    if isinstance(exc, RPCError) or not isinstance(exc, Exception):
        return None
    prefix = f"{what}: " if what else ""
    if isinstance(exc, zmq.ZMQError):
        if exc.errno in _CLOSED:
            return ClientClosedError(f"{prefix}the socket or context is closed")
        return TransportError(exc.errno or 0, f"{prefix}{exc.strerror}")
    if isinstance(exc, UnicodeEncodeError):
        return EncodingError(*exc.args)
    return None


def serializer_error(exc: Exception, what: str) -> Exception:
    """What a serializer's failure becomes: netcall's own errors pass, anything else (a
    third-party serializer's exception) becomes :class:`SerializationError`."""
    if isinstance(exc, RPCError):
        return exc
    mapped = translate(exc)
    if mapped is not None and isinstance(mapped, Exception):
        return mapped
    err = SerializationError(f"{what}: {exc}")
    err.__cause__ = exc
    return err


@contextmanager
def map_exceptions(what: str = "") -> Iterator[None]:
    """Translate foreign exceptions raised in the block (see :func:`translate`).

    Raises:
        TransportError, ClientClosedError, EncodingError: for a ``zmq.ZMQError`` or a
            ``UnicodeEncodeError``; anything else passes unchanged.
    """
    try:
        yield
    except Exception as exc:
        mapped = translate(exc, what)
        if mapped is None:
            raise
        raise mapped from exc


@contextmanager
def endpoint_change(what: str, check: Callable[[], None] | None) -> Iterator[None]:
    """:func:`map_exceptions` around a ``connect``, ``bind`` (or their undoing) on a socket,
    then ``check()`` whether it worked or not: the socket's driver looks at ``EVENTS`` again
    (:meth:`netcall._reactor.SocketDriver.check_soon`; ``None`` before it is driven). libzmq
    processes the socket's pending commands in those calls, which can take the ZeroMQ FD's
    edge while a message waits.

    Raises:
        TransportError, ClientClosedError, EncodingError: as :func:`map_exceptions`.
    """
    try:
        with map_exceptions(what):
            yield
    finally:
        if check is not None:
            check()


def endpoints(urls: str | Iterable[str]) -> list[str]:
    """``urls`` (one endpoint, or several) as a list.

    Raises:
        TypeError: an endpoint is not a ``str``.
    """
    if isinstance(urls, str):
        return [urls]
    try:
        wanted = list(urls)
    except TypeError:
        wanted = [urls]  # type: ignore[list-item]
    for url in wanted:
        if not isinstance(url, str):
            raise TypeError(f"an endpoint is a str such as 'tcp://host:port', not {url!r}")
    return wanted
