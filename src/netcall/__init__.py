"""netcall: RPC for Python on ZeroMQ, asyncio-native.

::

    from netcall import RPCService, RPCClient

    service = RPCService()

    @service.register
    async def echo(s):
        return s

A :class:`Broker` gives many services, which connect out to it, one address.

Legacy entry points over the same core: :mod:`netcall.tornado`, :mod:`netcall.green` (gevent)
and :mod:`netcall.sync` (a blocking client).
"""

import logging as _logging

from ._context import CallContext, current_call
from ._edge import TransportError
from ._metadata import MAX_METADATA_BYTES, MAX_METADATA_ITEMS
from ._middleware import ClientMiddleware, OutgoingCall, ServiceMiddleware, observe_stream
from .broker import Broker
from .client import DEFAULT_TIMEOUT, RemoteGenerator, RPCClient
from .errors import (
    AuthenticationError,
    ClientClosedError,
    ConnectionLostError,
    EncodingError,
    MethodNotFoundError,
    ProtocolError,
    RemoteProtocolError,
    RemoteRPCError,
    RemoteSerializationError,
    RPCError,
    RPCTimeoutError,
    SerializationError,
    SerializerMismatchError,
    ServiceBusyError,
    ServiceStoppingError,
    StreamBusyError,
    StreamClosedError,
)
from .serializers import JSONSerializer, MsgpackSerializer, PickleSerializer, Serializer
from .service import RESERVED_NAMES, Limits, RPCService

__version__ = "1.0.0.dev0"

# A library logs, the application decides where to: nothing is printed unless logging is
# configured (logging.basicConfig(), or the `netcall serve` command), not even warnings.
_logging.getLogger("netcall").addHandler(_logging.NullHandler())

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_ITEMS",
    "RESERVED_NAMES",
    "AuthenticationError",
    "Broker",
    "CallContext",
    "ClientClosedError",
    "ClientMiddleware",
    "ConnectionLostError",
    "EncodingError",
    "JSONSerializer",
    "Limits",
    "MethodNotFoundError",
    "MsgpackSerializer",
    "OutgoingCall",
    "PickleSerializer",
    "ProtocolError",
    "RPCClient",
    "RPCError",
    "RPCService",
    "RPCTimeoutError",
    "RemoteGenerator",
    "RemoteProtocolError",
    "RemoteRPCError",
    "RemoteSerializationError",
    "SerializationError",
    "Serializer",
    "SerializerMismatchError",
    "ServiceBusyError",
    "ServiceMiddleware",
    "ServiceStoppingError",
    "StreamBusyError",
    "StreamClosedError",
    "TransportError",
    "__version__",
    "current_call",
    "observe_stream",
]
