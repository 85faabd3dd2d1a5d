"""The error names netcall sends for its own refusals: part of the wire protocol.

A leaf module (it imports nothing) so that both :mod:`netcall.errors`, which maps each name to
an exception class, and the protocol layer, which re-exports them, can use it without an import
cycle. Handler exceptions travel under their own names (``ValueError``, ``app.Missing``); these
are the names of conditions netcall itself detects.
"""

from __future__ import annotations

__all__ = [
    "BUSY",
    "CONNECTION_LOST",
    "METHOD_NOT_FOUND",
    "PEER_KEY",
    "PROTOCOL_ERROR",
    "SERIALIZATION_ERROR",
    "SERIALIZER_MISMATCH",
    "SERVICE_STOPPING",
    "STREAM_CLOSED",
    "TIMEOUT",
]

METHOD_NOT_FOUND = "netcall.MethodNotFound"
SERVICE_STOPPING = "netcall.ServiceStopping"
BUSY = "netcall.Busy"
SERIALIZATION_ERROR = "netcall.SerializationError"
PROTOCOL_ERROR = "netcall.ProtocolError"
STREAM_CLOSED = "netcall.StreamClosed"
SERIALIZER_MISMATCH = "netcall.SerializerMismatch"
TIMEOUT = "netcall.Timeout"
CONNECTION_LOST = "netcall.ConnectionLost"  # from a broker: the service went away

#: The metadata key under which a broker tells a service the caller's authenticated key. A
#: service honours it only on calls from a peer it connected to itself (its broker); from
#: anyone else it is removed, and a broker removes any a client sent.
PEER_KEY = "netcall.peer_key"
