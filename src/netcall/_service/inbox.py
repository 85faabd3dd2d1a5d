"""A message arrives at the service: decode it and hand it to its room (a CALL to dispatch,
NEXT/THROW/CREDIT to the producer streams, CANCEL to whichever holds the request, PING
answered here (a broker's, to a service whose handlers run on one thread through a hook, once
that side has run a no-op: see :mod:`.pongs`), a PONG from a peer the service connected to, to its
upstreams). A malformed message is answered with an ERROR when its id can be read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import protocol as p
from .._reactor import SocketDriver
from .dispatch import Dispatcher
from .pongs import HookedPongs
from .replies import Replies
from .streams import STREAM_KINDS, Producers

__all__ = ["Inbox"]

_FLAG_BUNDLES = p.FLAG_BUNDLES


class Inbox:
    """Routes the service socket's incoming messages (``on_message`` gets the routing id of the
    peer, then the message's frames)."""

    __slots__ = (
        "_bundle_readers",
        "_dispatch",
        "_hooked_pongs",
        "_learn",
        "_max_size",
        "_on_pong",
        "_open_streams",
        "_producers",
        "_replies",
        "_trusted",
    )

    def __init__(
        self,
        dispatch: Dispatcher,
        producers: Producers,
        replies: Replies,
        trusted: Callable[[bytes], bool] = lambda peer: False,
        on_pong: Callable[[bytes, int], bool] = lambda peer, rid: False,
        hooked_pongs: HookedPongs | None = None,
        max_size: int | None = None,
    ) -> None:
        self._dispatch = dispatch
        self._producers = producers
        self._open_streams = producers.by_key
        self._replies = replies
        # Peers this service connected to itself (its brokers): only they may say, in a
        # call's metadata, who the caller is (p.META_PEER_KEY).
        self._trusted = trusted
        # A PONG from a peer this service connected to (True: taken; else it is malformed).
        self._on_pong = on_pong
        # Only where a hook runs user code on one thread (gevent, trio): PONGs sent later.
        self._hooked_pongs = hooked_pongs
        # max_message_size: ZeroMQ bounds each frame (ZMQ_MAXMSGSIZE); this, the whole message.
        self._max_size = max_size
        # The clients known to read bundles (the driver's set), and who learns of another.
        self._bundle_readers: set[bytes] | frozenset[bytes] = frozenset()
        self._learn: Callable[[bytes, bool], None] = lambda peer, reads: None

    def bundle_to(self, driver: SocketDriver, connected_to: Callable[[bytes], bool]) -> None:
        """Answers to a client whose calls say it reads bundles go in bundles (see
        :mod:`netcall.protocol._bundle`). Not to a peer this service connected to
        (``connected_to``: a broker, a client that binds), which forwards or accepts messages
        within limits of its own."""

        def learn(peer: bytes, reads: bool) -> None:
            # A peer this service connected to (a broker) is learned from its own bundles:
            # the flags of the calls it forwards are other clients'.
            if not connected_to(peer):
                driver.told(peer, reads)

        self._bundle_readers = driver.readers
        self._learn = learn

    def on_message(self, frames: list[Any]) -> None:
        peer = frames[0]
        body = frames[1:]
        producers = self._producers
        if self._open_streams:  # the lease clock of this peer's streams starts again
            producers.touch(peer)
        if self._max_size is not None:
            size = sum(map(len, body))
            if size > self._max_size:
                self._too_large(peer, body, size)
                return
        try:
            msg = p.decode(body)
        except Exception as exc:  # ProtocolError; anything else would be our bug
            rid = p.request_id_of(body)
            self._replies.guard.malformed(peer, exc)
            if rid is not None:
                self._replies.refuse(peer, rid, p.ERR_PROTOCOL, str(exc))
            return
        kind = type(msg)
        if kind is p.Call:
            call: p.Call = msg  # type: ignore[assignment]
            if call.flags & _FLAG_BUNDLES:
                if peer not in self._bundle_readers:
                    self._learn(peer, True)
            elif peer in self._bundle_readers:  # a peer under a reader's routing id that
                self._learn(peer, False)  # does not read them (a reused ROUTING_ID)
            if call.metadata and p.META_PEER_KEY in call.metadata and not self._trusted(peer):
                call.metadata = {k: v for k, v in call.metadata.items() if k != p.META_PEER_KEY}
            self._dispatch.on_call(peer, msg)  # type: ignore[arg-type]
        elif kind is p.Cancel:
            cancelled = self._dispatch.cancel(peer, msg.id)
            if not producers.cancel(peer, msg.id) and not cancelled:
                # Closing an unknown or finished stream: confirm, so aclose() never waits.
                self._replies.send(peer, p.End(msg.id).to_frames())
        elif kind is p.Ping:
            producers.touch(peer)
            later = self._hooked_pongs
            if later is None or not later.defer(peer, msg.id):
                self._replies.send(peer, p.Pong(msg.id).to_frames())
        elif kind in STREAM_KINDS:
            producers.on_message(peer, msg)  # type: ignore[arg-type]
        elif kind is p.Pong and self._on_pong(peer, msg.id):
            return
        else:
            self._replies.guard.malformed(peer, f"a client may not send {kind.__name__}")
            self._replies.refuse(
                peer, msg.id, p.ERR_PROTOCOL, f"a client may not send {kind.__name__}"
            )

    def _too_large(self, peer: bytes, body: list[Any], size: int) -> None:
        why = f"a message of {size} bytes, more than max_message_size={self._max_size}"
        self._replies.guard.malformed(peer, why)
        rid = p.request_id_of(body)
        if rid is not None:
            self._replies.refuse(peer, rid, p.ERR_PROTOCOL, f"refused {why}")
