"""netcall's wire protocol, sans-IO: frames in, messages out. No zmq, no asyncio here.

Rules of this package: nothing here does I/O or keeps time; every message is encoded by its
class's ``to_frames()`` (or the two hot-path helpers beside them) and decoded by
:func:`decode`; the session rules (stream states, credit) are tables and pure functions in
:mod:`netcall.protocol.session`; the error names netcall sends are the constants ``ERR_*``.

Theory of operation
-------------------
A client talks to services over ZeroMQ; the socket's routing envelope (which service, which
client) is the transport's business and is stripped before frames reach this module. What is
left is one message: a list of frames whose first frame, the *head*, starts with a fixed
12-byte header::

    header  = b"NC" | version (u8) | kind (u8) | request id (u64, big-endian)

The request id is chosen by the client (a counter per client, 64 bits, never reused while the
client lives); a service keys its state by (peer, request id). Every message carries the version
byte: a peer speaking another version gets a :class:`ProtocolError`, never a misread.

What follows the header, by kind (``payload`` is the serializer's bytes, text is UTF-8;
``head+`` means "in the head frame, after the header")::

    client -> service
      CALL    head+ timeout f64, flags u8, window u32, len u8, serializer name, method name
              then frames: args[, kwargs][, metadata]; with FLAG_BUFFERS:
              args, kwargs (empty: none), buffers...[, metadata]
      CANCEL  -                          cancel a call, or close a stream
      NEXT    payload                    stream: send a value (lock-step asend / __anext__)
      THROW   frames: type name, message stream: throw an exception into the generator
      CREDIT  head+ count u32            stream: allow this many more items (prefetch)
      PING    -                          keepalive (request id 0); the service answers PONG
    service -> client
      RESULT  payload                    the call's return value
      ERROR   frames: type name, message, traceback
      ACK     -                          a one-way call was accepted
      STREAM  head+ lease f64            the call returned a generator: a stream is open
      ITEM    payload                    stream: one yielded value
      END     -                          stream: the generator is exhausted
      PONG    -                          answer to PING
    service -> a peer it connected to (a broker's backend, a client that binds)
      HELLO   head+ max_concurrent u32, flags u8; then frames: methods (JSON)
      BYE     -                          the service stops: send it no new calls
      PING    -                          after HELLO and after BYE (a random id): a broker,
                                         or a client that binds, answers PONG with that id
                                         (a service that connected to it then knows it read
                                         what came before, and that it sends a call refused
                                         as busy to another service)

A ``payload`` rides in the head after the header (small values: one frame, no extra copy on
the ZeroMQ side), or, when the head is exactly the header, in a second frame (large values;
those of 2 MiB or more are sent without copying). Decoders accept both. Out-of-band
buffers (large ``bytes``, arrays...: see :mod:`netcall.serializers`) travel as frames of
their own, which the payload refers to by index:
``header | payload | count u16 | buffer 0 | buffer 1 ...``. A CALL with buffers sets
``FLAG_BUFFERS``: its args and kwargs share one list of buffers. At most
``MAX_BUFFERS`` (64) buffers travel with a message; a message with more is refused.

``timeout`` is the time the call had left when it was sent, in seconds (0 for none); the
service turns it into a deadline on its own monotonic clock when the message arrives (so the
two hosts' clocks need not agree; time spent in transit and in the service's queue is not
counted). The service refuses a call whose deadline passed, and cancels a handler still
running at its deadline. ``flags``: ``FLAG_ONEWAY`` (no result wanted), ``FLAG_METADATA``
(the last frame is the call's metadata: string pairs, each string UTF-8 after its u16
length; absent when there is none), ``FLAG_BUNDLES`` (the caller reads bundles, below).
``window`` in a CALL is the number of items a stream may produce before the client asks (0:
strict lock-step). ``lease`` is how long a service keeps a
stream whose client has gone silent; a client holding streams pings more often than that.

HELLO and BYE (request id 0) are sent by a service on every connection it makes, as soon as
the handshake succeeds, and HELLO again when its methods change: the peer cannot otherwise
see a service that connected to it. See :mod:`netcall.protocol._announce`.

Several small messages to one peer may travel as one BUNDLE, a single frame that starts with
``b"NB"`` instead of the header and holds whole messages (at most 64, 64 KiB in all): under
load, what a message costs is mostly the message itself, on both ends and in libzmq. A peer
sends bundles only to a peer known to read them: a service to a client whose CALLs carry
``FLAG_BUNDLES``, a client to a service that sent it a bundle. See
:mod:`netcall.protocol._bundle`.

Stream states on both ends are the tables in :mod:`netcall.protocol.session`.

Adding a message kind: a member of :class:`Kind`, a dataclass with ``to_frames()`` in
``_messages.py``, its decoder in ``_decode.py``'s ``_DECODERS``, its transitions in
``session.py`` if it belongs to a stream, and a round-trip case in ``tests/test_protocol.py``.
"""

from __future__ import annotations

from .._wire_names import BUSY as ERR_BUSY
from .._wire_names import CONNECTION_LOST as ERR_CONNECTION_LOST
from .._wire_names import METHOD_NOT_FOUND as ERR_METHOD_NOT_FOUND
from .._wire_names import PEER_KEY as META_PEER_KEY
from .._wire_names import PROTOCOL_ERROR as ERR_PROTOCOL
from .._wire_names import SERIALIZATION_ERROR as ERR_SERIALIZATION
from .._wire_names import SERIALIZER_MISMATCH as ERR_SERIALIZER_MISMATCH
from .._wire_names import SERVICE_STOPPING as ERR_SERVICE_STOPPING
from .._wire_names import STREAM_CLOSED as ERR_STREAM_CLOSED
from .._wire_names import TIMEOUT as ERR_TIMEOUT
from ..errors import ProtocolError
from ._announce import HELLO_BUNDLES, MAX_HELLO_BYTES, MAX_METHODS, Bye, Hello
from ._bundle import (
    BUNDLE_MAGIC,
    BUNDLE_MAX_BYTES,
    BUNDLE_MAX_FRAMES,
    BUNDLE_MAX_MESSAGES,
    bundle,
    bundles_allowed,
    unbundle,
)
from ._decode import (
    decode,
    decode_header,
    decode_metadata,
    payload_and_buffers,
    payload_of,
    request_id_of,
    split_inline,
)
from ._messages import (
    BUFFER_COUNT,
    CALL_OPTIONS,
    COUNT,
    FLAG_BUFFERS,
    FLAG_BUNDLES,
    FLAG_METADATA,
    FLAG_ONEWAY,
    HEADER,
    HEADER_SIZE,
    INLINE_MAX,
    LEASE,
    MAGIC,
    MAX_BUFFERS,
    MAX_COUNT,
    MAX_FRAMES,
    MAX_ID,
    NO_METADATA,
    VERSION,
    Ack,
    Call,
    Cancel,
    Credit,
    End,
    Error,
    Item,
    Kind,
    Message,
    Next,
    Ping,
    Pong,
    Result,
    StreamOpen,
    Throw,
    call_head,
    encode_metadata,
    header,
    payload_frames,
    retag,
    retime,
)
from .session import STREAM_ACCEPTS, ClientStreamState, StreamState

__all__ = [
    "BUFFER_COUNT",
    "BUNDLE_MAGIC",
    "BUNDLE_MAX_BYTES",
    "BUNDLE_MAX_FRAMES",
    "BUNDLE_MAX_MESSAGES",
    "CALL_OPTIONS",
    "COUNT",
    "ERR_BUSY",
    "ERR_CONNECTION_LOST",
    "ERR_METHOD_NOT_FOUND",
    "ERR_PROTOCOL",
    "ERR_SERIALIZATION",
    "ERR_SERIALIZER_MISMATCH",
    "ERR_SERVICE_STOPPING",
    "ERR_STREAM_CLOSED",
    "ERR_TIMEOUT",
    "FLAG_BUFFERS",
    "FLAG_BUNDLES",
    "FLAG_METADATA",
    "FLAG_ONEWAY",
    "HEADER",
    "HEADER_SIZE",
    "HELLO_BUNDLES",
    "INLINE_MAX",
    "LEASE",
    "MAGIC",
    "MAX_BUFFERS",
    "MAX_COUNT",
    "MAX_FRAMES",
    "MAX_HELLO_BYTES",
    "MAX_ID",
    "MAX_METHODS",
    "META_PEER_KEY",
    "NO_METADATA",
    "STREAM_ACCEPTS",
    "VERSION",
    "Ack",
    "Bye",
    "Call",
    "Cancel",
    "ClientStreamState",
    "Credit",
    "End",
    "Error",
    "Hello",
    "Item",
    "Kind",
    "Message",
    "Next",
    "Ping",
    "Pong",
    "ProtocolError",
    "Result",
    "StreamOpen",
    "StreamState",
    "Throw",
    "bundle",
    "bundles_allowed",
    "call_head",
    "decode",
    "decode_header",
    "decode_metadata",
    "encode_metadata",
    "header",
    "payload_and_buffers",
    "payload_frames",
    "payload_of",
    "request_id_of",
    "retag",
    "retime",
    "split_inline",
    "unbundle",
]
