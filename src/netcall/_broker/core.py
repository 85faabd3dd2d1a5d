"""The broker's state and the moves every message makes: routes (a call forwarded under the
broker's own request id), per-client counts, the wait queue's dispatch and upkeep, and what
happens when a client goes away. Sans-IO; see :mod:`netcall._broker.routing` for the rules."""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from .. import protocol as p
from .._ratelog import RateLimitedLog
from .table import UNRESPONSIVE_PINGS, Route, ServiceEntry, Services, Waiting, WaitQueue

__all__ = ["MEMBERSHIP_BURST", "RouterCore", "Send"]

log = logging.getLogger("netcall.broker")

#: Lines logged per 10 s for each of a service joining, stopping and leaving (a worker pool of
#: that many restarting at once is logged in full); beyond it, a summary.
MEMBERSHIP_BURST = 32


Send = Callable[[list[Any]], None]


class RouterCore:
    """The state of a :class:`~netcall._broker.routing.Router`, and its common moves.

    Args:
        to_client: sends one message, routing id first, on the frontend.
        to_service: sends one message, routing id first, on the backend.
        max_queue: calls that may wait for a service at once; more are refused with
            ``netcall.Busy``.
        max_per_client: calls and streams one client may have open or queued at once.
        startup_grace: seconds after start during which a call for a method no service has
            announced waits (services reconnecting to a restarted broker announce themselves
            within about a second) instead of failing at once with ``netcall.MethodNotFound``.
            The grace ends sooner, ``_JOIN_WINDOW`` seconds after the first service joins:
            the others reconnect at about the same time. The same grace applies to a method
            whose last service left (a worker restarting, a rolling restart of the only
            service): its calls wait that long for one to come back (``rejoin_grace``, if
            given, instead).
        caller_key: the authenticated key of the client whose message is being handled
            (read during :meth:`on_frontend`; the hook for a CURVE frontend), forwarded to the
            service in the call's metadata under ``p.META_PEER_KEY``. ``None``: no key.
        client_bundles: called with each client that sends a call, and whether the call
            carries ``FLAG_BUNDLES`` (the client reads bundles: the frontend may send it some).
        service_bundles: called with a service whose HELLO carries ``HELLO_BUNDLES``.
    """

    def __init__(
        self,
        to_client: Send,
        to_service: Send,
        *,
        max_queue: int = 1000,
        max_per_client: int = 10000,
        startup_grace: float = 1.5,
        caller_key: Callable[[], str | None] | None = None,
        rejoin_grace: float | None = None,
        client_bundles: Callable[[bytes, bool], None] = lambda peer, reads: None,
        service_bundles: Callable[[bytes], None] = lambda peer: None,
    ) -> None:
        self._to_client = to_client
        self._to_service = to_service
        self._client_bundles = client_bundles
        self._service_bundles = service_bundles
        self._caller_key = caller_key
        self.max_queue = max_queue
        self.max_per_client = max_per_client
        self._grace_until = time.monotonic() + startup_grace
        self._rejoin_grace = startup_grace if rejoin_grace is None else rejoin_grace
        #: Methods whose last service left, and until when their calls wait for another.
        self._gone: dict[str, float] = {}
        self.services = Services()
        self.routes: dict[int, Route] = {}
        self._by_client: dict[tuple[bytes, int], Route] = {}
        self._per_client: dict[bytes, int] = {}  # open routes and queued calls per client
        self._waiting = WaitQueue()
        self._ids = itertools.count(random.getrandbits(48) + 1)
        self.refusing: str | None = None  # why new calls are refused (the broker drains)
        #: What a peer can trigger at will (malformed messages) is logged through this, at a
        #: bounded rate (5 lines per kind per 10 s, then a summary); call ``log.flush()`` now
        #: and then.
        self.log = RateLimitedLog(log)
        #: Services joining, stopping and leaving, logged at INFO: at most
        #: :data:`MEMBERSHIP_BURST` lines of each per 10 s (a peer can join and leave at will),
        #: then an INFO summary.
        self.membership = RateLimitedLog(log, burst=MEMBERSHIP_BURST)
        self.errors: dict[str, int] = {
            "malformed": 0,
            "not_found": 0,
            "busy": 0,
            "timeouts": 0,
            "connection_lost": 0,
            "clients_cut_off": 0,
            "services_cut_off": 0,
            "services_unresponsive": 0,
        }
        # Services cut off, until they send again: each with its streams failed then, still
        # open on it (the broker's pings keep their leases) until it reads their CANCEL.
        self._stalled: dict[bytes, list[int]] = {}
        self._quiet: set[bytes] = set()  # services pinged, not heard from since

    # -- helpers --------------------------------------------------------------------------

    def _error(self, client: bytes, rid: int, type_name: str, message: str) -> None:
        frames: list[Any] = p.Error(rid, type_name, message, "").to_frames()
        frames.insert(0, client)
        self._to_client(frames)

    def _count(self, client: bytes, delta: int) -> None:
        n = self._per_client.get(client, 0) + delta
        if n > 0:
            self._per_client[client] = n
        else:
            self._per_client.pop(client, None)

    @property
    def clients(self) -> list[bytes]:
        """Clients with calls open or queued."""
        return list(self._per_client)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def _forward(
        self,
        client: bytes,
        msg: p.Call,
        svc: ServiceEntry,
        frames: list[Any] | None = None,
        retries: int = 0,
    ) -> None:
        """Send a call to ``svc`` under a fresh request id. ``frames``: the call as it arrived
        (routing id first), forwarded with only its request id changed; else it is encoded."""
        brid = next(self._ids)
        route = Route(brid, client, msg, svc)
        route.retries = retries
        self.routes[brid] = route
        self._by_client[(client, msg.id)] = route
        svc.inflight += 1
        svc.routes.add(brid)
        if frames is not None:
            frames[0] = svc.peer
            frames[1] = p.retag(frames[1], brid)
        else:
            crid = msg.id
            msg.id = brid
            frames = msg.to_frames()
            msg.id = crid
            frames.insert(0, svc.peer)
        self._to_service(frames)

    def _free(self, route: Route) -> None:
        if self.routes.pop(route.brid, None) is None:
            return
        key = (route.client, route.crid)
        if self._by_client.get(key) is route:
            del self._by_client[key]
        svc = route.service
        svc.inflight -= 1
        svc.routes.discard(route.brid)
        self._count(route.client, -1)

    # -- the queue ------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Send queued calls to services with room, oldest first."""
        if not self._waiting:
            return
        now = time.monotonic()
        pick = self.services.pick
        for w, svc in self._waiting.pop_ready(lambda method: pick(method, now)):
            w.remaining(now)
            self._forward(w.client, w.call, svc, retries=w.retries)

    def tick(self) -> None:
        """Periodic upkeep: expire queued calls past their deadline, fail those no service can
        take any more, and dispatch what became possible."""
        if not self._waiting:
            return
        now = time.monotonic()
        grace = now < self._grace_until
        known = self.services.by_method

        def drop(method: str, w: Waiting) -> bool:
            if not grace and method not in known and not self.coming_back(method, now):
                self.errors["not_found"] += 1
                msg = f"no service has a method {method!r}"
                self._error(w.client, w.call.id, p.ERR_METHOD_NOT_FOUND, msg)
                return True
            if w.deadline is not None and w.deadline <= now:
                self.errors["timeouts"] += 1
                msg = "the call's deadline passed while it waited at the broker"
                self._error(w.client, w.call.id, p.ERR_TIMEOUT, msg)
                return True
            return False

        for w in self._waiting.take_if(drop):
            self._count(w.client, -1)
        self.dispatch()

    def coming_back(self, method: str, now: float) -> bool:
        """Whether ``method``'s last service left less than the rejoin grace ago (its calls
        wait for another, as at startup)."""
        return self._gone.get(method, 0.0) > now  # (expired entries go in _left)

    def _left(self, svc: ServiceEntry) -> None:
        """``svc`` left (it is off the tables): its methods no other service has wait for one
        to come back, for the rejoin grace."""
        now = time.monotonic()
        self._gone = {m: t for m, t in self._gone.items() if t > now}  # (bounded: the grace)
        if self._rejoin_grace > 0:
            until = now + self._rejoin_grace
            for method in svc.methods:
                if method not in self.services.by_method:
                    self._gone[method] = until

    def client_gone(self, client: bytes) -> None:
        """The client's connection broke: cancel its calls and streams on the services."""
        if client not in self._per_client:
            return
        for route in [r for r in self.routes.values() if r.client == client]:
            self._free(route)
            self._to_service([route.service.peer, *p.Cancel(route.brid).to_frames()])
        self._waiting.take_if(lambda method, w: w.client == client)
        self._per_client.pop(client, None)
        self.dispatch()

    def client_cut_off(self, client: bytes) -> None:
        """The client does not read its replies (the frontend's queue for it overflowed, and
        was dropped): forget it as if it had gone, so its calls and streams are cancelled on
        the services."""
        self.errors["clients_cut_off"] += 1
        self.log(
            "cut off",
            logging.WARNING,
            "netcall broker: cut off client %s: it does not read its replies",
            client.hex(),
        )
        self.client_gone(client)

    def service_cut_off(self, peer: bytes) -> None:
        """The service does not read its calls (the backend's queue for it overflowed, and was
        dropped): its calls and streams fail with ``netcall.ConnectionLost``, and it gets no
        new ones until it sends something again (it answers the broker's pings once it reads:
        within a heartbeat); then its streams are cancelled on it."""
        svc = self.services.get(peer)
        if svc is None:
            return
        self.errors["services_cut_off"] += 1
        self.log(
            "cut off",
            logging.WARNING,
            "netcall broker: cut off service %s: it does not read its calls",
            peer.hex(),
        )
        svc.stalled = True
        streams = [b for b in svc.routes if (r := self.routes.get(b)) is not None and r.stream]
        self._stalled.setdefault(peer, []).extend(streams)
        self._fail_routes(svc, "the service does not read its calls: the broker cut it off")
        self.tick()

    def _unstall(self, peer: bytes) -> None:
        """A service cut off sent something: it reads again, and may get calls; the streams
        failed when it was cut off are cancelled on it (nothing else would close them)."""
        streams = self._stalled.pop(peer, ())
        svc = self.services.get(peer)
        if svc is not None and svc.stalled:
            svc.stalled = False
            for brid in streams:
                self._to_service([peer, *p.Cancel(brid).to_frames()])
            self.dispatch()

    def flush_logs(self) -> None:
        """Log the summaries of suppressed lines whose window is over (call it now and then,
        and at the end)."""
        self.log.flush()
        self.membership.flush(logging.INFO)

    def ping_round(self) -> list[bytes]:
        """A heartbeat: the services to ping now. A service that sent nothing since the last
        round missed a ping; at :data:`~netcall._broker.table.UNRESPONSIVE_PINGS` in a row it
        is *unresponsive* and gets no new calls (its calls in flight stay with it) until it
        sends something again (see :meth:`heard`)."""
        for peer in self._quiet:
            svc = self.services.get(peer)
            if svc is None or svc.draining:
                # (one that said BYE gets no new calls anyway: its silence, a handler blocking
                # it as it finishes its calls, is no fault)
                continue
            svc.missed += 1
            if svc.missed == UNRESPONSIVE_PINGS:  # (from here on, svc.unresponsive)
                self.errors["services_unresponsive"] += 1
                self.log(
                    "unresponsive",
                    logging.WARNING,
                    "netcall broker: service %s answered none of %d pings: no new calls "
                    "until it does (a handler blocking its loop?); %d calls in flight on it",
                    peer.hex(),
                    svc.missed,
                    svc.inflight,
                )
        peers = [svc.peer for svc in self.services]
        self._quiet = set(peers)
        return peers

    def heard(self, peer: bytes) -> None:
        """``peer`` (a service pinged since it last spoke) sent something: it is responsive."""
        self._quiet.discard(peer)
        svc = self.services.get(peer)
        if svc is None:
            return
        was_unresponsive = svc.unresponsive
        svc.missed = 0
        if was_unresponsive:
            self.log(
                "responsive", logging.INFO, "netcall broker: service %s responds again", peer.hex()
            )
            self.dispatch()

    def _fail_routes(self, svc: ServiceEntry, why: str) -> None:
        for brid in list(svc.routes):
            route = self.routes.get(brid)
            if route is None:
                continue
            self._free(route)
            self.errors["connection_lost"] += 1
            self._error(route.client, route.crid, p.ERR_CONNECTION_LOST, why)

    def stats(self) -> dict[str, Any]:
        """Services, methods, calls in flight and queued, errors (a snapshot)."""
        return {
            "services": [
                {
                    "id": svc.peer.hex(),
                    "methods": sorted(svc.methods),
                    "in_flight": svc.inflight,
                    "max_concurrent": svc.limit,
                    "served": svc.served,
                    "draining": svc.draining,
                    "responsive": not svc.unresponsive,
                }
                for svc in self.services
            ],
            "methods": sorted(self.services.by_method),
            "in_flight": len(self.routes),
            "streams": sum(1 for r in self.routes.values() if r.stream),
            "queued": self.queued,
            "clients": len(self._per_client),
            "errors": dict(self.errors),
        }
