"""A reply arrives at the client: RESULT/ERROR/ACK settle a pending call, STREAM opens a stream,
ITEM/END/ERROR of a stream go to its consumer state. Inline RESULT and ITEM take a fast path
that decodes nothing but the header. HELLO, BYE and PING come from services that connected to
the client (the peer table answers the PING); an ERROR for a call to such a service may send
the call to another (:meth:`~netcall._client.sending.Sending._refused`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .. import protocol as p
from .._ratelog import RateLimitedLog
from ..errors import ProtocolError
from .calls import CallRegistry, ResendableCall
from .generator import RemoteGenerator
from .peers import Peer
from .streams import ConsumerStreams

__all__ = ["Inbox"]

log = logging.getLogger("netcall")

_RESULT = p.Kind.RESULT
_HELLO = bytes([p.Kind.HELLO])
_split_inline = p.split_inline
# What only a service that connected to this client says (to the peer table).
_FROM_SERVICES = frozenset({p.Hello, p.Bye, p.Ping})


class Inbox:
    """Routes the client socket's incoming messages. ``send_cancel(peer, rid)`` closes a stream
    that opened after its caller gave up; ``opened(lease)`` is told of every new stream (for
    the keepalive); ``announced(rid, msg)`` of a HELLO, BYE or PING; ``refused(rid, pend,
    error)`` of an ERROR for a call to a service that connected to the client (it returns
    the error for the caller, or None when the call went to another service).
    ``max_size``: the client's ``max_message_size``, checked here on every message but a
    HELLO (ZeroMQ's per-frame limit holds on the endpoints the client binds only)."""

    __slots__ = (
        "_announced",
        "_calls",
        "_log",
        "_max_size",
        "_opened",
        "_refused",
        "_send_cancel",
        "_streams",
        "_streams_by_id",
    )

    def __init__(
        self,
        calls: CallRegistry,
        streams: ConsumerStreams,
        send_cancel: Callable[[Peer, int], None],
        opened: Callable[[float], None],
        announced: Callable[[bytes, p.Hello | p.Bye | p.Ping], None],
        refused: Callable[[int, ResendableCall, p.Error], p.Error | None],
        max_size: int | None = None,
    ) -> None:
        self._calls = calls.by_id
        self._streams = streams
        self._streams_by_id = streams.by_id
        self._send_cancel = send_cancel
        self._opened = opened
        self._announced = announced  # a service that connected to us said HELLO, BYE or PING
        self._refused = refused
        self._log = RateLimitedLog(log)  # a service sending garbage must not flood the log
        self._max_size = max_size

    def _from(self, peer: Peer, frames: list[Any]) -> bool:
        """Whether ``frames`` came from ``peer`` (where a call or a stream went); else they
        are dropped, and logged (at a bounded rate)."""
        if peer.rid == frames[0]:
            return True
        self._log(
            "elsewhere",
            logging.WARNING,
            "dropped an answer to a call or a stream from a service it was not sent to",
        )
        return False

    @property
    def handler(self) -> Callable[[list[Any]], None]:
        """What the socket's reader calls with each message: :meth:`on_message`, behind the
        size check when the client has a ``max_message_size``."""
        return self.on_message if self._max_size is None else self._on_message_checked

    def _on_message_checked(self, frames: list[Any]) -> None:
        size = sum(map(len, frames[1:]))
        if size > self._max_size and frames[1][3:4] != _HELLO:  # type: ignore[operator]
            # (A HELLO, from a service that connected to a client that binds, is bounded by
            # the protocol's MAX_HELLO_BYTES instead.)
            self._too_large(frames, size)
            return
        self.on_message(frames)

    def _too_large(self, frames: list[Any], size: int) -> None:
        """Drop an answer or a stream item over ``max_size``; fail its call, or close its
        stream, with ProtocolError."""
        why = f"an answer of {size} bytes, more than max_message_size={self._max_size}"
        self._log("too large", logging.WARNING, "dropped %s", why)
        rid = p.request_id_of(frames[1:])
        if rid is None:
            return
        error = ProtocolError(f"the service sent {why}")
        pend = self._calls.get(rid)
        if pend is not None:
            if self._from(pend.peer, frames):
                del self._calls[rid]
                if not pend.future.done():
                    pend.future.set_exception(error)
            return
        stream = self._streams_by_id.get(rid)
        if stream is not None and self._from(stream.peer, frames):
            stream.close_remote(error)

    def on_message(self, frames: list[Any]) -> None:
        if len(frames) == 2:
            fast = _split_inline(frames[1])
            if fast is not None:
                kind, rid, payload = fast
                # (The sender is checked inline here, the common case: a method call less.)
                if kind == _RESULT:
                    pend = self._calls.get(rid)
                    if pend is not None and (
                        pend.peer.rid == frames[0] or self._from(pend.peer, frames)
                    ):
                        del self._calls[rid]
                        if not pend.future.done():
                            pend.future.set_result(payload)  # bytes: a result's payload
                    return
                stream = self._streams_by_id.get(rid)
                if stream is not None and (
                    stream.peer.rid == frames[0] or self._from(stream.peer, frames)
                ):
                    stream.feed_item(payload)
                return
        try:
            msg = p.decode(frames[1:])
        except Exception as exc:
            self._log(
                "malformed",
                logging.WARNING,
                "dropped a malformed message from a service: %s",
                exc,
            )
            return
        if type(msg) in _FROM_SERVICES:
            self._announced(frames[0], msg)  # type: ignore[arg-type]
            return
        rid = msg.id
        pend = self._calls.get(rid)
        if pend is None:
            stream = self._streams_by_id.get(rid)
            if stream is not None and self._from(stream.peer, frames):
                stream.feed(msg)
            return
        if not self._from(pend.peer, frames):
            return
        del self._calls[rid]
        fut = pend.future
        if type(msg) is p.StreamOpen:
            if fut.done():
                # The caller gave up (cancelled, timed out) as the stream opened: close it.
                self._send_cancel(pend.peer, rid)
                return
            state = self._streams.open(pend.peer, rid, pend.timeout, pend.window)
            self._opened(msg.lease)
            fut.set_result(RemoteGenerator(state))
        elif not fut.done():
            if type(pend) is ResendableCall and type(msg) is p.Error:
                error = self._refused(rid, pend, msg)
                if error is None:  # sent to another service: the caller waits on
                    return
                msg = error
            fut.set_result(msg)
