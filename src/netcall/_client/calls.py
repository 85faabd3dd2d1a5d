"""Calls: how one is encoded, and the calls waiting for an answer (by request id, with their
timeouts)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from .. import protocol as p
from .._deadline import MIN_REMAINING, SPENT
from ..errors import ConnectionLostError, EncodingError, RPCError, RPCTimeoutError
from .peers import Peer

__all__ = [
    "MAX_RESENDS",
    "Arguments",
    "CallRegistry",
    "PendingCall",
    "ResendableCall",
    "call_frames",
]

#: How many times a call refused unstarted by stopping services is sent to another one (each
#: goes to a service that had not said BYE when it was picked: in a rolling restart of several
#: services at once a call may meet more than one).
MAX_RESENDS = 3


class PendingCall:
    __slots__ = ("connection", "future", "peer", "timeout", "window")

    def __init__(
        self, future: asyncio.Future[Any], peer: Peer, timeout: float | None, window: int
    ) -> None:
        self.future = future
        self.peer = peer
        self.timeout = timeout
        self.window = window
        # The connection it travels on: the live one, or (sent while the service is down, or
        # right after connect()) the next one, which ZeroMQ's queue hands it to. It is lost
        # when that connection breaks. (What travels_to does, inline here: once per call.)
        self.connection = peer.connection if peer.up else peer.connection + 1

    def travels_to(self, peer: Peer) -> None:
        """The call is sent again, to ``peer``: on its connection, as when it was made."""
        self.peer = peer
        self.connection = peer.connection if peer.up else peer.connection + 1


class ResendableCall(PendingCall):
    """A call to a service that connected to this client, which may say BYE and refuse it
    unstarted: what it takes to send it to another service then (see
    :meth:`netcall._client.sending.Sending._refused`). Calls to services the client connected
    to are plain :class:`PendingCall`\\ s and keep nothing of this."""

    __slots__ = ("frames", "method", "resends", "sent_at")

    def __init__(
        self,
        future: asyncio.Future[Any],
        peer: Peer,
        timeout: float | None,
        window: int,
        method: str,
        frames: list[Any],
        sent_at: float,
    ) -> None:
        super().__init__(future, peer, timeout, window)
        self.method = method
        self.frames = frames  # as sent (routing id first); frames that could change are copies
        self.sent_at = sent_at  # the loop's time, for the time a call sent again has left
        self.resends = 0


class CallRegistry:
    """``by_id`` maps request ids to calls in flight. ``send_cancel(peer, rid)`` tells a
    service to drop a call nobody waits for any more."""

    __slots__ = ("_send_cancel", "by_id")

    def __init__(self, send_cancel: Callable[[Peer, int], None]) -> None:
        self.by_id: dict[int, PendingCall] = {}
        self._send_cancel = send_cancel

    def __len__(self) -> int:
        return len(self.by_id)

    def expire(self, rid: int) -> None:
        """The call's timeout passed: fail it and cancel it on the service."""
        pend = self.by_id.pop(rid, None)
        if pend is None or pend.future.done():
            return
        pend.future.set_exception(RPCTimeoutError(f"no answer within {pend.timeout} s"))
        self._send_cancel(pend.peer, rid)

    def fail_peer(
        self,
        peer: Peer,
        why: str,
        every_call: bool,
        error: type[RPCError] = ConnectionLostError,
    ) -> None:
        """The connection to ``peer`` broke (or was refused): its calls' answers cannot arrive
        (a new connection gives this client a new identity on the service). Calls queued for a
        later connection wait for it, unless ``every_call``."""
        broken = peer.connection
        for rid, pend in list(self.by_id.items()):
            if (
                pend.peer is peer
                and (pend.connection <= broken or every_call)
                and not pend.future.done()
            ):
                del self.by_id[rid]
                pend.future.set_exception(error(why))

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        for pend in list(self.by_id.values()):
            if not pend.future.done():
                pend.future.set_exception(error())
        self.by_id.clear()


Arguments = tuple[bytes, bytes | None, list[Any]]


def call_frames(
    peer: Peer,
    rid: int,
    method: str,
    serializer: str,
    timeout: float | None,
    oneway: bool,
    window: int,
    arguments: Arguments,
    metadata: Mapping[str, str] | None = None,
    flags: int = 0,
) -> list[Any]:
    """The frames of a CALL to ``peer``, routing id first (metadata, checked, last).
    ``flags``: the client's own (``FLAG_BUNDLES``).

    Raises:
        EncodingError: the method name cannot be encoded.
    """
    if oneway:
        flags |= p.FLAG_ONEWAY
    if metadata:
        flags |= p.FLAG_METADATA
    try:
        head = p.call_head(
            rid,
            method,
            serializer,
            # The time remaining: 0 for none; a spent one (0 s or less) as SPENT.
            0.0 if timeout is None else (timeout if timeout >= MIN_REMAINING else SPENT),
            flags | (p.FLAG_BUFFERS if arguments[2] else 0),
            window,
        )
    except UnicodeEncodeError as exc:
        raise EncodingError(*exc.args) from exc
    payload, kw_payload, buffers = arguments
    frames = [peer.rid, head, payload]
    if buffers:
        frames.append(b"" if kw_payload is None else kw_payload)
        frames.extend(buffers)
    elif kw_payload is not None:
        frames.append(kw_payload)
    if metadata:
        frames.append(p.encode_metadata(metadata))
    return frames
