"""netcall's exceptions.

The tree::

    RPCError                          base of everything netcall raises
    ├── RemoteRPCError                the remote handler raised; crossed the wire
    │   ├── (Remote<Builtin>)         also an instance of the builtin type, e.g. ValueError,
    │   │                             built from an allowlist, never by unpickling
    │   ├── MethodNotFoundError       no such method on the service (also an AttributeError
    │   │                             and a NotImplementedError, as 0.4.2 raised)
    │   ├── ServiceStoppingError      the service stopped before it finished the call
    │   ├── ServiceBusyError          the service is at its max_concurrent limit
    │   ├── StreamClosedError         the service has no such open stream
    │   ├── RemoteSerializationError  the service could not decode arguments or encode a result
    │   │                             (also a SerializationError)
    │   └── RemoteProtocolError       the service rejected a malformed message (also a
    │                                 ProtocolError)
    ├── RPCTimeoutError               no answer before the timeout (also a TimeoutError)
    ├── ProtocolError                 malformed frames, or a peer speaking another version
    ├── SerializationError            a value could not be encoded or decoded (also a TypeError)
    │   └── SerializerMismatchError   the client and the service use different serializers
    ├── EncodingError                 a method name cannot be encoded as UTF-8 (also a
    │                                 UnicodeEncodeError, so a ValueError)
    ├── StreamBusyError               a remote generator is already being stepped, or asend/athrow
    │                                 on a prefetching one (also a RuntimeError)
    ├── TransportError                ZeroMQ refused: an endpoint cannot be bound or connected
    │                                 (also a zmq.ZMQError; defined in netcall._edge)
    ├── ConnectionLostError           the connection to the service broke with the call in flight
    ├── AuthenticationError           the service refused this client's CURVE handshake (or one
    │                                 side lacks CURVE)
    └── ClientClosedError             the client was closed before or during the call

Foreign exceptions (``zmq.ZMQError``, ``UnicodeEncodeError``, a third-party serializer's
errors) are translated at one edge, :mod:`netcall._edge`, with the original as ``__cause__``.

``asyncio.CancelledError`` is never wrapped: a cancelled call re-raises it unchanged.
"""

from __future__ import annotations

import builtins
import sys
from typing import Any

from . import _wire_names as names

__all__ = [
    "BUILTIN_ERRORS",
    "AuthenticationError",
    "ClientClosedError",
    "ConnectionLostError",
    "EncodingError",
    "MethodNotFoundError",
    "ProtocolError",
    "RPCError",
    "RPCTimeoutError",
    "RemoteProtocolError",
    "RemoteRPCError",
    "RemoteSerializationError",
    "RemoteTraceback",
    "SerializationError",
    "SerializerMismatchError",
    "ServiceBusyError",
    "ServiceStoppingError",
    "StreamBusyError",
    "StreamClosedError",
    "exception_from_remote",
    "exception_to_remote",
    "handler_exception_to_remote",
    "remote_type_name",
]


class RPCError(Exception):
    """Base class of every error netcall raises."""


class RemoteRPCError(RPCError):
    """The remote side raised an exception.

    ``str()`` is one line, ``"TypeName: message"``. The remote traceback is kept on
    :attr:`remote_traceback` and shown when the exception is printed (a traceback printed by
    Python, ``logging.exception``, pytest): on Python 3.11+ as a note (``add_note``), on 3.10 as
    the exception's ``__cause__``, a :class:`RemoteTraceback` printed above it ("The above
    exception was the direct cause...").

    Attributes:
        type_name: the remote exception's type, e.g. ``"ValueError"`` or ``"app.models.Missing"``.
        message: ``str()`` of the remote exception.
        remote_traceback: the formatted remote traceback (may be empty); also ``traceback``.
    """

    def __init__(self, type_name: str, message: str = "", traceback: str = "") -> None:
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = traceback
        if traceback:
            text = "remote traceback:\n" + traceback.rstrip()
            if sys.version_info >= (3, 11):
                self.add_note(text)
            else:  # pragma: no cover - 3.10 has no notes
                self.__cause__ = RemoteTraceback(text)

    @property
    def traceback(self) -> str:
        """The formatted remote traceback (the same as :attr:`remote_traceback`)."""
        return self.remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (exception_from_remote, (self.type_name, self.message, self.remote_traceback))


class RemoteTraceback(Exception):
    """Python 3.10 only: carries a remote traceback as the ``__cause__`` of a
    :class:`RemoteRPCError`, so that printing the error prints it. ``str()`` is the text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class MethodNotFoundError(RemoteRPCError, AttributeError, NotImplementedError):
    """The service has no method of that name. Also an ``AttributeError``, and a
    ``NotImplementedError`` as netcall 0.4.2's unknown-method error was.

    ``str()`` reads as a remote ``NotImplementedError`` would, with 0.4.2's words, then what
    netcall found: ``NotImplementedError: Unregistered procedure 'x' (no method named 'x')``.
    :attr:`type_name` stays ``"netcall.MethodNotFound"`` and :attr:`message` is the detail.

    Attributes:
        method: the method that was called (``""`` if unknown).
    """

    method: str = ""

    def __str__(self) -> str:
        if not self.method:
            return f"NotImplementedError: {self.message}"
        return f"NotImplementedError: Unregistered procedure {self.method!r} ({self.message})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            exception_from_remote,
            (self.type_name, self.message, self.traceback),
            {"method": self.method},
        )


class ServiceStoppingError(RemoteRPCError):
    """The service is stopping: it refused the call (nothing ran; a broker, or a client that
    binds, sends such a call to another service first), or it stopped before it finished
    the call (its grace period ran out: the call may have had effects)."""


class ServiceBusyError(RemoteRPCError):
    """The service refused the call: it already runs its ``max_concurrent`` calls and streams.
    Nothing ran; retrying later (or on another service) is safe. A handler that lets through
    the ServiceBusyError of a call it made ran: its caller gets a :class:`RemoteRPCError` named
    ``netcall.errors.ServiceBusyError`` instead, which is not retried by itself."""


class RPCTimeoutError(RPCError, TimeoutError):
    """No answer arrived within the call's timeout. The remote handler is asked to cancel."""


class ProtocolError(RPCError):
    """A message could not be parsed, or came from a peer speaking another protocol version."""


class SerializationError(RPCError, TypeError):
    """A value could not be serialized or deserialized by the configured serializer."""


class SerializerMismatchError(SerializationError):
    """The client and the service are configured with different serializers."""


class EncodingError(RPCError, UnicodeEncodeError):
    """A name (method, metadata) cannot be encoded as UTF-8; also a ``UnicodeEncodeError``
    with the same arguments."""

    def __str__(self) -> str:
        return UnicodeEncodeError.__str__(self)


class StreamBusyError(RPCError, RuntimeError):
    """A remote generator is already being stepped (one step at a time), or ``asend``/``athrow``
    was used on a stream iterated with ``async for`` (prefetching). Also a RuntimeError."""


class ConnectionLostError(RPCError):
    """The connection to the service carrying the call or stream broke (the service died, or
    was disconnected). The call may or may not have run."""


class AuthenticationError(RPCError):
    """The handshake with the service failed for security reasons: the service refused this
    client's key, the client has the wrong service key, or only one side uses CURVE. Nothing
    was delivered to the service."""


class ClientClosedError(RPCError):
    """The client was closed before or while the call was made."""


#: Builtin exception types that a remote error may be raised as, by name. Only these names are
#: turned into local types; every other name stays a plain :class:`RemoteRPCError`.
BUILTIN_ERRORS: frozenset[str] = frozenset(
    {
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "BufferError",
        "EOFError",
        "FileExistsError",
        "FileNotFoundError",
        "FloatingPointError",
        "ImportError",
        "IndexError",
        "IsADirectoryError",
        "KeyError",
        "LookupError",
        "MemoryError",
        "ModuleNotFoundError",
        "NameError",
        "NotADirectoryError",
        "NotImplementedError",
        "OSError",
        "OverflowError",
        "PermissionError",
        "RecursionError",
        "ReferenceError",
        "RuntimeError",
        "StopIteration",
        "StopAsyncIteration",
        "TimeoutError",
        "TypeError",
        "UnicodeDecodeError",
        "UnicodeEncodeError",
        "UnicodeError",
        "ValueError",
        "ZeroDivisionError",
        "ConnectionError",
        "ConnectionRefusedError",
        "ConnectionResetError",
        "BrokenPipeError",
        "ProcessLookupError",
        "Exception",
        "GeneratorExit",
        "KeyboardInterrupt",
        "SystemExit",
    }
)


class RemoteSerializationError(RemoteRPCError, SerializationError):
    """The service could not decode the arguments or encode the result."""


class RemoteProtocolError(RemoteRPCError, ProtocolError):
    """The service rejected a message as malformed."""


class StreamClosedError(RemoteRPCError):
    """The service has no open stream of that id (it ended, or its lease expired)."""


# Names netcall itself sends for its own refusals.
_NETCALL_ERRORS: dict[str, type[RPCError]] = {
    names.METHOD_NOT_FOUND: MethodNotFoundError,
    names.SERVICE_STOPPING: ServiceStoppingError,
    names.BUSY: ServiceBusyError,
    names.SERIALIZATION_ERROR: RemoteSerializationError,
    names.PROTOCOL_ERROR: RemoteProtocolError,
    names.STREAM_CLOSED: StreamClosedError,
    names.SERIALIZER_MISMATCH: SerializerMismatchError,
    names.TIMEOUT: RPCTimeoutError,
    # A broker tells its clients that the service running their call went away.
    names.CONNECTION_LOST: ConnectionLostError,
}

_remote_classes: dict[str, type[RemoteRPCError]] = {}


def _remote_class(name: str) -> type[RemoteRPCError]:
    cls = _remote_classes.get(name)
    if cls is None:
        base = getattr(builtins, name)
        if base in (GeneratorExit, KeyboardInterrupt, SystemExit):
            # Never let a remote peer raise these control-flow exceptions locally.
            cls = RemoteRPCError
        else:
            cls = type(f"Remote{name}", (RemoteRPCError, base), {"__module__": __name__})
        _remote_classes[name] = cls
    return cls


def exception_from_remote(
    type_name: str, message: str, traceback: str = "", *, method: str = ""
) -> RPCError:
    """Build the local exception for an error that crossed the wire.

    Builtin names in :data:`BUILTIN_ERRORS` give an instance of both :class:`RemoteRPCError` and
    the builtin type; netcall's own names give their classes; anything else a plain
    :class:`RemoteRPCError`. ``method``, the method called, is kept by a
    :class:`MethodNotFoundError`.
    """
    cls: type[RemoteRPCError]
    local = _NETCALL_ERRORS.get(type_name)
    if local is not None and not issubclass(local, RemoteRPCError):
        return local(message)
    if local is not None:
        cls = local
    elif type_name in BUILTIN_ERRORS:
        cls = _remote_class(type_name)
    else:
        cls = RemoteRPCError
    exc = cls.__new__(cls)
    RemoteRPCError.__init__(exc, type_name, message, traceback)
    if method and isinstance(exc, MethodNotFoundError):
        exc.method = method
    return exc


def remote_type_name(exc: BaseException) -> str:
    """The name an exception travels under: bare for builtins, ``module.Qualname`` otherwise."""
    if isinstance(exc, RemoteRPCError):
        return exc.type_name
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def exception_message(exc: BaseException) -> str:
    """An exception's message: its lone string argument as is (``KeyError('k')`` gives
    ``k``, not ``'k'``), else ``str(exc)``."""
    args = exc.args
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return str(exc)


def exception_to_remote(exc: BaseException) -> tuple[str, str]:
    """The (type name, message) pair of a local exception, as it is sent."""
    if isinstance(exc, RemoteRPCError):
        return exc.type_name, exc.message
    return remote_type_name(exc), exception_message(exc)


#: The name a :class:`ServiceBusyError` a handler let through (a call it made was refused)
#: travels under: not ``netcall.Busy``, which says that the call it answers never ran.
HANDLER_BUSY = "netcall.errors.ServiceBusyError"


def handler_exception_to_remote(exc: BaseException) -> tuple[str, str]:
    """:func:`exception_to_remote` for what a handler or a generator raised. A
    :class:`ServiceBusyError` from a call the handler made is not this service's refusal: it
    travels as ``HANDLER_BUSY``, so that the caller gets a :class:`RemoteRPCError` of that
    name, and a broker, or a client that binds, does not run the call again elsewhere (they do
    for ``netcall.Busy``, which only a call refused unstarted gets)."""
    type_name, message = exception_to_remote(exc)
    if type_name == names.BUSY:
        return HANDLER_BUSY, message
    return type_name, message


_NEVER_REBUILT = frozenset({"GeneratorExit", "KeyboardInterrupt", "SystemExit"})


def rebuild_exception(type_name: str, args: tuple[Any, ...] | list[Any]) -> BaseException:
    """Rebuild an exception that travelled by name and arguments, by allowlist.

    A name in :data:`BUILTIN_ERRORS` (except the control-flow ones) gives that builtin type
    with ``args``; anything else a :class:`RemoteRPCError` carrying the name and message.
    Nothing is imported or unpickled.
    """
    if type_name in BUILTIN_ERRORS and type_name not in _NEVER_REBUILT:
        cls = getattr(builtins, type_name)
        try:
            return cls(*args)  # type: ignore[no-any-return]
        except Exception:  # builtins with stricter constructors (UnicodeDecodeError...)
            pass
    message = args[0] if len(args) == 1 and isinstance(args[0], str) else ", ".join(map(str, args))
    return RemoteRPCError(type_name, message)


def exception_for_throw(type_name: str, message: str) -> BaseException:
    """Rebuild an exception thrown into a remote generator (``athrow``), by allowlist."""
    return rebuild_exception(type_name, (message,) if message else ())
