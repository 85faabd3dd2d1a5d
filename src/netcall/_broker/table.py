"""The broker's tables, sans-IO: the services (from their HELLO), the routes (calls forwarded),
and the calls waiting for a service."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from .. import protocol as p

__all__ = [
    "MAX_CREDIT",
    "MAX_SERVICES",
    "UNRESPONSIVE_PINGS",
    "Route",
    "ServiceEntry",
    "Services",
    "WaitQueue",
    "Waiting",
]


#: Services one broker tracks at most; announcements from more are ignored (the router counts
#: and logs them, at a bounded rate).
MAX_SERVICES = 10000
#: Stream items a client may have allowed ahead (its window plus credit) through a broker; a
#: client asking for more gets this many (netcall's clients ask for at most their ``window``,
#: 1024 by default): what waits at the broker for a slow reader stays bounded.
MAX_CREDIT = 8192
#: A service that answers none of this many of the broker's pings in a row (one every
#: ``heartbeat`` seconds), and sends nothing else meanwhile, gets no new calls until it sends
#: something: its loop is stuck (a handler that blocks it), and calls sent to it would only
#: wait behind it (or time out) while other services are free.
UNRESPONSIVE_PINGS = 2


class ServiceEntry:
    """One service connected to the backend, known from its HELLO."""

    __slots__ = (
        "cooldown",
        "draining",
        "inflight",
        "info",
        "limit",
        "methods",
        "missed",
        "peer",
        "routes",
        "served",
        "stalled",
    )

    def __init__(self, peer: bytes) -> None:
        self.peer = peer
        self.methods: frozenset[str] = frozenset()
        self.info: dict[str, dict[str, str]] = {}
        self.limit: int | None = None
        self.inflight = 0
        self.draining = False
        self.routes: set[int] = set()
        self.cooldown = 0.0
        self.served = 0
        #: Cut off for not reading its calls: it gets none until it sends something again.
        self.stalled = False
        #: The broker's pings in a row it did not answer (nor send anything else): its loop is
        #: stuck (a handler that blocks it). From UNRESPONSIVE_PINGS on it is unresponsive,
        #: and gets no new calls until it sends something again.
        self.missed = 0

    @property
    def unresponsive(self) -> bool:
        """Whether it missed :data:`UNRESPONSIVE_PINGS` pings in a row (no new calls)."""
        return self.missed >= UNRESPONSIVE_PINGS

    def has_room(self, now: float) -> bool:
        if (
            self.draining
            or self.stalled
            or self.missed >= UNRESPONSIVE_PINGS
            or self.cooldown > now
        ):
            return False
        return self.limit is None or self.inflight < self.limit


class Route:
    """One call or stream forwarded to a service."""

    __slots__ = (
        "brid",
        "call",
        "client",
        "credit",
        "crid",
        "method",
        "retries",
        "service",
        "stream",
    )

    def __init__(self, brid: int, client: bytes, call: p.Call, service: ServiceEntry) -> None:
        self.brid = brid
        self.credit = call.window  # stream items the client allowed and has not yet received
        self.client = client
        self.crid = call.id
        self.method = call.method
        self.service = service
        self.stream = False
        # Kept until the first answer, so a call a service refused as busy can go elsewhere.
        self.call: p.Call | None = call
        self.retries = 0


class Waiting:
    """A call queued at the broker. Its deadline is on this host's monotonic clock: the call
    carries the time it had left when it arrived, and leaves with what is left of that."""

    __slots__ = ("call", "client", "deadline", "retries")

    def __init__(self, client: bytes, call: p.Call, since: float, retries: int = 0) -> None:
        self.client = client
        self.call = call
        self.deadline = since + call.timeout if call.timeout else None
        self.retries = retries

    def remaining(self, now: float) -> None:
        """Set the call's timeout to the time it has left (called as it leaves the queue)."""
        if self.deadline is not None:
            self.call.timeout = max(self.deadline - now, 0.001)


class Services:
    """The services connected to the backend, indexed by method name."""

    def __init__(self) -> None:
        self.by_peer: dict[bytes, ServiceEntry] = {}
        self.by_method: dict[str, list[ServiceEntry]] = {}
        self._rr = 0

    def __len__(self) -> int:
        return len(self.by_peer)

    def __contains__(self, peer: bytes) -> bool:
        return peer in self.by_peer

    def __iter__(self) -> Iterator[ServiceEntry]:
        return iter(list(self.by_peer.values()))

    def get(self, peer: bytes) -> ServiceEntry | None:
        return self.by_peer.get(peer)

    def hello(self, peer: bytes, msg: p.Hello) -> ServiceEntry | None:
        """Add or update the service; ``None`` when there are already :data:`MAX_SERVICES`.
        The method index changes only by what this HELLO changes (a peer may repeat its
        HELLO at will: that must not cost a pass over every service)."""
        svc = self.by_peer.get(peer)
        if svc is None:
            if len(self.by_peer) >= MAX_SERVICES:
                return None
            svc = self.by_peer[peer] = ServiceEntry(peer)
        methods = frozenset(msg.methods)
        self._index(svc, svc.methods, methods)
        svc.info = msg.methods
        svc.methods = methods
        svc.limit = msg.max_concurrent
        svc.draining = False
        return svc

    def remove(self, peer: bytes) -> ServiceEntry | None:
        svc = self.by_peer.pop(peer, None)
        if svc is not None:
            self._index(svc, svc.methods, frozenset())
        return svc

    def _index(self, svc: ServiceEntry, old: frozenset[str], new: frozenset[str]) -> None:
        """Move ``svc`` in the method index from the methods ``old`` to ``new`` (a method no
        service has any more leaves the index)."""
        by_method = self.by_method
        for name in old - new:
            services = by_method[name]
            services.remove(svc)
            if not services:
                del by_method[name]
        for name in new - old:
            by_method.setdefault(name, []).append(svc)

    def pick(self, method: str, now: float) -> ServiceEntry | None:
        """A service with ``method`` and room: the fewest calls in flight, round robin among
        equals; ``None`` when none has room (or none has the method)."""
        services = self.by_method.get(method)
        if not services:
            return None
        n = len(services)
        if n == 1:
            svc = services[0]
            return svc if svc.has_room(now) else None
        self._rr += 1
        start = self._rr % n
        best = None
        for i in range(n):
            svc = services[(start + i) % n]
            if svc.has_room(now) and (best is None or svc.inflight < best.inflight):
                best = svc
        return best

    def methods(self) -> dict[str, dict[str, str]]:
        """The union of every live service's methods."""
        out: dict[str, dict[str, str]] = {}
        for svc in self.by_peer.values():
            if not svc.draining:
                for name, info in svc.info.items():
                    out.setdefault(name, info)
        return dict(sorted(out.items()))


class WaitQueue:
    """Calls waiting for a service with room: a FIFO per method, ``len()`` of them in all."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Waiting]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def push(self, waiting: Waiting, front: bool = False) -> None:
        queue = self._queues.get(waiting.call.method)
        if queue is None:
            queue = self._queues[waiting.call.method] = deque()
        if front:
            queue.appendleft(waiting)
        else:
            queue.append(waiting)
        self._count += 1

    def remove(self, client: bytes, rid: int) -> bool:
        """Take out the call ``rid`` of ``client``; False when it is not waiting."""
        for method, queue in self._queues.items():
            for w in queue:
                if w.client == client and w.call.id == rid:
                    queue.remove(w)
                    self._count -= 1
                    if not queue:
                        del self._queues[method]
                    return True
        return False

    def pop_ready(
        self, pick: Callable[[str], ServiceEntry | None]
    ) -> Iterator[tuple[Waiting, ServiceEntry]]:
        """Yield waiting calls with the service ``pick`` chose for each, while any has one."""
        progress = True
        while progress and self._count:
            progress = False
            for method in list(self._queues):
                svc = pick(method)
                if svc is None:
                    continue
                queue = self._queues[method]
                w = queue.popleft()
                self._count -= 1
                if not queue:
                    del self._queues[method]
                progress = True
                yield w, svc

    def take_if(self, drop: Callable[[str, Waiting], bool]) -> list[Waiting]:
        """Take out (and return) every waiting call for which ``drop(method, w)`` is true."""
        taken: list[Waiting] = []
        for method in list(self._queues):
            queue = self._queues[method]
            kept: deque[Waiting] = deque()
            for w in queue:
                (taken if drop(method, w) else kept).append(w)
            if kept:
                self._queues[method] = kept
            else:
                del self._queues[method]
        self._count -= len(taken)
        return taken
