"""The broker's routing table, sans-IO: frames in, frames out through two callbacks.

Rules of this file:

- Clients see the broker as one service; services see it as one client. Request ids are
  rewritten: the broker picks a fresh id (a *route*) for every call it forwards, mapped to the
  client's (routing id, request id). Ids start at a random point, so a restarted broker does not
  reuse ids a service may still be answering for its previous incarnation.
- A call goes to a live service that announced the method (HELLO), not draining (BYE), below its
  ``max_concurrent``, with the fewest calls in flight (round robin among equals). An open
  stream counts as a call in flight until its END or ERROR.
- Calls that cannot go anywhere yet wait in a bounded FIFO per method, within their deadline.
- Every message of a stream follows its route: streams stick to their service.
- A service that goes away fails its routes with ``netcall.ConnectionLost``; a client that goes
  away has its routes cancelled on the services.
- A peer that does not read what the broker sends it is *cut off* (its queue at the broker is
  bounded, then dropped): a client as if it had gone; a service has its routes failed with
  ``netcall.ConnectionLost`` and gets no calls until it sends something again, when its
  streams failed so are cancelled on it.
- Nothing here raises on bad input: malformed frames are counted, answered when they carry a
  request id, and dropped; they are logged at a bounded rate (``RouterCore.log``), never one
  line per message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import protocol as p
from ..errors import ProtocolError
from ..serializers import get_serializer
from .core import RouterCore, Send
from .table import MAX_CREDIT, Route, Waiting

__all__ = ["Router", "Send"]


_STREAM_FOLLOWUPS = frozenset({p.Kind.NEXT, p.Kind.THROW, p.Kind.CREDIT})
_REPLY_KINDS = frozenset({p.Kind.RESULT, p.Kind.ERROR, p.Kind.ACK})
_BUSY = p.ERR_BUSY
_BUSY_RETRIES = 3
_COOLDOWN = 0.05  # a service that answered Busy gets no new call for this long
_METHODS = "_netcall.methods"
_JOIN_WINDOW = 0.3


class FromClients(RouterCore):
    """What the broker does with each message from a client (the frontend)."""

    def on_frontend(self, frames: list[Any]) -> None:
        """One message from a client (its routing id first)."""
        client = frames[0]
        head = frames[1] if len(frames) > 1 else b""
        if len(head) > p.HEADER_SIZE and head[3] == p.Kind.CALL:  # the commonest: a call
            try:
                msg = p.decode(frames[1:])
            except ProtocolError as exc:
                self._malformed_from_client(client, frames, exc)
                return
            self._on_call(client, msg, frames)  # type: ignore[arg-type]
            return
        try:
            kind, rid = p.decode_header(head)
        except ProtocolError as exc:
            self._malformed_from_client(client, frames, exc)
            return
        if kind in _STREAM_FOLLOWUPS or kind == p.Kind.CANCEL:
            route = self._by_client.get((client, rid))
            if route is None:
                self._unrouted(client, kind, rid)
                return
            if kind == p.Kind.CANCEL and not route.stream:
                # The service cancels the handler and sends nothing back: the route ends now.
                self._free(route)
            elif kind == p.Kind.CREDIT:
                self._credit(route, frames)
                return
            frames[0] = route.service.peer
            frames[1] = p.retag(head, route.brid)
            self._to_service(frames)
        elif kind == p.Kind.CALL:
            try:
                msg = p.decode(frames[1:])
            except ProtocolError as exc:
                self._malformed_from_client(client, frames, exc)
                return
            self._on_call(client, msg, frames)  # type: ignore[arg-type]
        elif kind == p.Kind.PING:
            self._to_client([client, *p.Pong(rid).to_frames()])
        elif kind == p.Kind.PONG:
            pass
        else:
            self.errors["malformed"] += 1
            self._error(client, rid, p.ERR_PROTOCOL, f"a client may not send kind {kind}")

    def _credit(self, route: Route, frames: list[Any]) -> None:
        """Forward a CREDIT, capped so the stream's items allowed ahead stay within
        :data:`MAX_CREDIT`."""
        try:
            msg = p.decode(frames[1:])
        except ProtocolError as exc:
            self._malformed_from_client(route.client, frames, exc)
            return
        count = min(msg.count, MAX_CREDIT - route.credit)  # type: ignore[union-attr]
        if count > 0:
            route.credit += count
            self._to_service([route.service.peer, *p.Credit(route.brid, count).to_frames()])

    def _malformed_from_client(self, client: bytes, frames: list[Any], exc: Exception) -> None:
        self.errors["malformed"] += 1
        self.log(
            "malformed",
            logging.WARNING,
            "netcall broker: dropped a malformed message from a client: %s",
            exc,
        )
        rid = p.request_id_of(frames[1:])
        if rid is not None:
            self._error(client, rid, p.ERR_PROTOCOL, str(exc))

    def _unrouted(self, client: bytes, kind: int, rid: int) -> None:
        if kind == p.Kind.CANCEL:
            if self._waiting.remove(client, rid):
                self._count(client, -1)
            else:
                # Closing an unknown or finished stream: confirm, so aclose() never waits.
                self._to_client([client, *p.End(rid).to_frames()])
        elif kind != p.Kind.CREDIT:
            self._error(client, rid, p.ERR_STREAM_CLOSED, "no such open stream")

    def _on_call(self, client: bytes, msg: p.Call, frames: list[Any] | None) -> None:
        rid = msg.id
        self._client_bundles(client, bool(msg.flags & p.FLAG_BUNDLES))
        key = self._caller_key() if self._caller_key is not None else None
        if key is not None or p.META_PEER_KEY in msg.metadata:
            # Only the broker may say who the caller is (its frontend's authentication): a key
            # a client wrote itself is removed.
            metadata = {k: v for k, v in msg.metadata.items() if k != p.META_PEER_KEY}
            if key is not None:
                metadata[p.META_PEER_KEY] = key
            msg.metadata = metadata
            frames = None  # re-encoded
        if msg.method == _METHODS:
            self._answer_methods(client, msg)
            return
        if self.refusing is not None:
            self._error(client, rid, p.ERR_SERVICE_STOPPING, self.refusing)
            return
        if msg.window > MAX_CREDIT:
            msg.window = MAX_CREDIT
            frames = None  # re-encoded
        if (client, rid) in self._by_client:
            self._error(client, rid, p.ERR_PROTOCOL, f"request id {rid} is in use")
            return
        if self._per_client.get(client, 0) >= self.max_per_client:
            self.errors["busy"] += 1
            self._error(client, rid, _BUSY, "too many calls from this client at the broker")
            return
        now = time.monotonic()
        svc = self.services.pick(msg.method, now)
        if svc is not None:
            self._count(client, 1)
            self._forward(client, msg, svc, frames)
            return
        if (
            msg.method not in self.services.by_method
            and now >= self._grace_until
            and not self.coming_back(msg.method, now)
        ):
            self.errors["not_found"] += 1
            self._error(
                client, rid, p.ERR_METHOD_NOT_FOUND, f"no service has a method {msg.method!r}"
            )
            return
        if self.queued >= self.max_queue:
            self.errors["busy"] += 1
            self._error(client, rid, _BUSY, f"the broker's queue is full ({self.max_queue} calls)")
            return
        self._count(client, 1)
        self._waiting.push(Waiting(client, msg, now))

    def _answer_methods(self, client: bytes, msg: p.Call) -> None:
        try:
            payload = get_serializer(msg.serializer).dumps(self.services.methods())
        except Exception as exc:  # an unknown serializer name
            self._error(client, msg.id, p.ERR_SERIALIZER_MISMATCH, str(exc))
            return
        frames: list[Any] = p.payload_frames(p.Kind.RESULT, msg.id, payload)
        frames.insert(0, client)
        self._to_client(frames)


class FromServices(RouterCore):
    """What the broker does with each message from a service (the backend)."""

    def on_backend(self, frames: list[Any]) -> None:
        """One message from a service (its routing id first)."""
        peer = frames[0]
        if self._stalled and peer in self._stalled:
            self._unstall(peer)
        if self._quiet and peer in self._quiet:
            self.heard(peer)
        head = frames[1] if len(frames) > 1 else b""
        fast = p.split_inline(head) if len(frames) == 2 else None
        if fast is not None:  # an inline RESULT or ITEM: the commonest messages
            kind, brid, _ = fast
        else:
            try:
                kind, brid = p.decode_header(head)
            except ProtocolError as exc:
                self.errors["malformed"] += 1
                self.log(
                    "malformed",
                    logging.WARNING,
                    "netcall broker: dropped a malformed message from a service: %s",
                    exc,
                )
                return
            if kind in (p.Kind.HELLO, p.Kind.BYE):
                self._on_announce(peer, frames[1:])
                return
            if kind == p.Kind.PING:
                # A stopping service asks whether its BYE was read: it was, and every call
                # sent to it before then is ahead of this PONG on the connection.
                self._to_service([peer, *p.Pong(brid).to_frames()])
                return
        route = self.routes.get(brid)
        if route is None or route.service.peer != peer:
            if kind == p.Kind.STREAM and peer in self.services:
                # A stream opened for a call whose client gave up: close it.
                self._to_service([peer, *p.Cancel(brid).to_frames()])
            return
        if kind == p.Kind.ITEM:
            if route.credit:
                route.credit -= 1
        elif kind in _REPLY_KINDS:
            if kind == p.Kind.ERROR and route.call is not None and self._busy(route, frames):
                return
            self._free(route)
            route.service.served += 1
            if self._waiting:
                self.dispatch()
        elif kind == p.Kind.STREAM:
            route.stream = True
            route.call = None
        elif kind == p.Kind.END:
            self._free(route)
            route.service.served += 1
            if self._waiting:
                self.dispatch()
        elif kind == p.Kind.PONG:
            return
        else:
            self.errors["malformed"] += 1
            return
        frames[0] = route.client
        frames[1] = p.retag(head, route.crid)
        self._to_client(frames)

    def _busy(self, route: Route, frames: list[Any]) -> bool:
        """A service refused a call as busy: queue it again (a few times), True if so. A
        refusal by a service that said BYE does not count: the call never started, and the
        broker sends no more calls to it (in a rolling restart of several services at once,
        a call could meet several of them)."""
        if len(frames) < 3 or bytes(frames[2]) != _BUSY.encode():
            return False
        stopping = route.service.draining
        if route.retries >= _BUSY_RETRIES and not stopping:
            return False
        call = route.call
        assert call is not None
        self._free(route)
        route.service.cooldown = time.monotonic() + _COOLDOWN
        self._count(route.client, 1)
        retries = route.retries if stopping else route.retries + 1
        self._waiting.push(Waiting(route.client, call, time.monotonic(), retries), True)
        self.dispatch()
        return True

    def _on_announce(self, peer: bytes, body: list[Any]) -> None:
        try:
            msg = p.decode(body)
        except ProtocolError as exc:
            self.errors["malformed"] += 1
            self.log(
                "malformed",
                logging.WARNING,
                "netcall broker: a service sent a bad announcement: %s",
                exc,
            )
            return
        if isinstance(msg, p.Bye):
            svc = self.services.get(peer)
            if svc is not None:
                self.membership(
                    "stopping", logging.INFO, "netcall broker: service %s is stopping", peer.hex()
                )
                svc.draining = True
                if not svc.routes:
                    self.service_gone(peer, "the service stopped")
            return
        if not isinstance(msg, p.Hello):
            return
        joined = peer not in self.services
        if msg.flags & p.HELLO_BUNDLES:
            self._service_bundles(peer)
        if self.services.hello(peer, msg) is None:  # one service too many: a peer can repeat it
            self.errors["malformed"] += 1
            self.log(
                "ignored service",
                logging.WARNING,
                "netcall broker: ignored a service beyond %d",
                len(self.services),
            )
            return
        if joined:
            self.membership(
                "joined",
                logging.INFO,
                "netcall broker: service %s joined (%d methods)",
                peer.hex(),
                len(msg.methods),
            )
            self._grace_until = min(self._grace_until, time.monotonic() + _JOIN_WINDOW)
        self.dispatch()

    def service_gone(self, peer: bytes, why: str = "the service went away") -> None:
        """The service's connection broke: fail its calls and streams, route around it."""
        svc = self.services.remove(peer)
        if svc is None:
            return
        self._stalled.pop(peer, None)
        self._quiet.discard(peer)
        self._left(svc)
        self.membership(
            "left", logging.INFO, "netcall broker: service %s left (%s)", peer.hex(), why
        )
        self._fail_routes(svc, why)
        self.tick()


class Router(FromClients, FromServices):
    """Routes calls between clients (frontend) and services (backend); see the module
    docstring for the rules, and :class:`~netcall._broker.core.RouterCore` for its arguments."""
