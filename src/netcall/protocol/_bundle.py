"""BUNDLE: several small messages to one peer in one ZeroMQ message. No I/O here.

Under load most of what a message costs is the message itself (a ZeroMQ send and receive on
each end, and libzmq's I/O threads handling it), not its few bytes: a burst of 32 answers to
one client costs 32 of each. A bundle carries them as one frame::

    BUNDLE  b"NB" | version (u8) | messages n (u16)
            then n bytes: each message's frame count (1 to BUNDLE_MAX_FRAMES)
            then one u32 per frame, in order: its length
            then every frame's bytes, in order

The messages inside are whole netcall messages (the routing envelope is the transport's, one
for the whole bundle); the receiver handles each as if it had come alone, in order.

Who may send one (the session rule): a peer sends bundles only to a peer known to read them,
since a netcall older than bundles drops one as malformed. A client says it reads them with
``FLAG_BUNDLES`` on its CALLs, a service that connects out with ``HELLO_BUNDLES`` in its HELLO,
and a peer that sends a bundle reads them too. So a service or a broker bundles its answers
to a client whose calls carried the flag; a broker, or a client that binds, bundles calls to
a service whose HELLO carried its flag; and a client bundles its calls to a service (a
service its answers to a broker) that sent it a bundle. A service never takes the flag on a
call from a peer it connected to for its own: a broker forwards its clients' flags. Each call
is its sender's latest word: one without the flag, under the routing id of a peer that had
set it (a ``ROUTING_ID`` reused by an older peer), stops the bundles to that id.

A bundle is one ZeroMQ message: a receiver that takes its peers' messages in turn (ZeroMQ's
fair queueing) takes all of a bundle's in one turn, so under load a peer that bundles is
served up to :data:`BUNDLE_MAX_MESSAGES` calls per turn where one that does not is served one.

A bundle is at most :data:`BUNDLE_MAX_BYTES` (a peer that limits its messages below that never
sends one, and sets neither flag) and holds at most :data:`BUNDLE_MAX_MESSAGES`; a receiver
drops a larger or malformed one, whole.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from ..errors import ProtocolError

__all__ = [
    "BUNDLE_HEAD_SIZE",
    "BUNDLE_MAGIC",
    "BUNDLE_MAX_BYTES",
    "BUNDLE_MAX_FRAMES",
    "BUNDLE_MAX_MESSAGES",
    "bundle",
    "bundles_allowed",
    "unbundle",
]

BUNDLE_MAGIC = b"NB"
_VERSION = 1
_HEAD = struct.Struct("!2sBH")
_HEAD_SIZE = BUNDLE_HEAD_SIZE = _HEAD.size  # magic, version, message count
#: The largest bundle (bytes, the whole frame) a peer sends or accepts.
BUNDLE_MAX_BYTES = 65536
#: The most messages in one bundle.
BUNDLE_MAX_MESSAGES = 64
#: The most frames of one message in a bundle.
BUNDLE_MAX_FRAMES = 4

_pack_head = _HEAD.pack
_unpack_head = _HEAD.unpack_from
_unpack_from = struct.unpack_from
_pack = struct.pack


def bundles_allowed(max_message_size: int | None) -> bool:
    """Whether a peer that limits its messages to ``max_message_size`` bytes (``None``: no
    limit) may send bundles, and say it reads them: only with room for the largest."""
    return max_message_size is None or max_message_size >= BUNDLE_MAX_BYTES


def bundle(messages: Sequence[Sequence[Any]], start: int = 0) -> bytes:
    """One bundle of ``messages`` (each a list of ``bytes`` frames; ``start``: how many
    leading items of each to leave out, such as a routing id). The caller keeps to the
    bounds (:data:`BUNDLE_MAX_MESSAGES`, :data:`BUNDLE_MAX_FRAMES`,
    :data:`BUNDLE_MAX_BYTES`)."""
    frames = [frame for message in messages for frame in message[start:]]
    return b"".join(
        [
            _pack_head(BUNDLE_MAGIC, _VERSION, len(messages)),
            bytes([len(message) - start for message in messages]),
            _pack(f"!{len(frames)}I", *map(len, frames)),
            *frames,
        ]
    )


def unbundle(data: bytes, lead: Any) -> list[list[Any]]:
    """The messages in the bundle ``data``, each a list of ``bytes`` frames after ``lead``
    (the routing id the bundle came with), in order.

    Raises:
        ProtocolError: ``data`` is not a well-formed bundle within the bounds.
    """
    size = len(data)
    if size < _HEAD_SIZE:
        raise ProtocolError("bundle too short")
    if size > BUNDLE_MAX_BYTES:
        raise ProtocolError(f"bundle of {size} bytes (at most {BUNDLE_MAX_BYTES})")
    magic, version, n = _unpack_head(data)
    if magic != BUNDLE_MAGIC or version != _VERSION:
        raise ProtocolError("not a bundle of a known version")
    if not 0 < n <= BUNDLE_MAX_MESSAGES:
        raise ProtocolError(f"bundle of {n} messages (1 to {BUNDLE_MAX_MESSAGES})")
    counts = data[_HEAD_SIZE : _HEAD_SIZE + n]
    if len(counts) != n:
        raise ProtocolError("bundle too short for its messages")
    total = 0
    for count in counts:
        if not 0 < count <= BUNDLE_MAX_FRAMES:
            raise ProtocolError(f"bundled message of {count} frames (1 to {BUNDLE_MAX_FRAMES})")
        total += count
    pos = _HEAD_SIZE + n
    end = pos + 4 * total
    if end > size:
        raise ProtocolError("bundle too short for its frame lengths")
    lengths = _unpack_from(f"!{total}I", data, pos)
    if end + sum(lengths) != size:
        raise ProtocolError("bundle lengths do not add up to its size")
    out = []
    pos = end
    i = 0
    for count in counts:
        message = [lead]
        for _ in range(count):
            stop = pos + lengths[i]
            message.append(data[pos:stop])
            pos = stop
            i += 1
        out.append(message)
    return out
