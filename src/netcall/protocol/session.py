"""Session rules, as data: the stream state machines of both ends, and credit accounting as
pure functions. No I/O here; the cores look their next state up and do the I/O.

Service side (one :class:`StreamState` per open stream)::

    IDLE      suspended at a yield   NEXT/THROW -> STEPPING, CREDIT -> FLOWING
    STEPPING  one lock-step step     (it yields an ITEM) -> IDLE
    FLOWING   producing on credit    CREDIT -> FLOWING, (ITEM) -> FLOWING
    any       CANCEL, END, ERROR     -> CLOSED

Client side (one :class:`ClientStreamState` per open stream)::

    LOCKSTEP  asend/athrow/anext, one round trip each   (CREDIT sent) -> PREFETCH
    PREFETCH  ``async for``: the service runs ahead on credit
    CLOSING   CANCEL sent, waiting for the service's END
    DONE      END or ERROR arrived (or the stream failed locally); later messages are dropped

A client message not allowed in a state is a protocol error: the service answers ERROR
(``netcall.ProtocolError``) and closes the stream, never crashes.
"""

from __future__ import annotations

import enum
import math

from ..errors import ProtocolError
from ._messages import MAX_COUNT, Kind

__all__ = [
    "CLIENT_STREAM",
    "FIRST_CREDIT",
    "SERVICE_STREAM",
    "STREAM_ACCEPTS",
    "ClientStreamState",
    "StreamState",
    "add_credit",
    "byte_allowance",
    "client_stream_next",
    "credit_limit",
    "credit_to_grant",
    "credit_when_starved",
    "first_credit",
    "may_send",
    "service_stream_next",
    "update_item_size",
]


class StreamState(enum.Enum):
    """A service-side stream's state."""

    IDLE = "idle"  # suspended at a yield, waiting for the client
    STEPPING = "stepping"  # one lock-step NEXT/THROW in progress
    FLOWING = "flowing"  # prefetch mode: producing while credit lasts
    CLOSED = "closed"


_S = StreamState

#: (state, message kind) -> next state, for the service's side of a stream. CANCEL, NEXT, THROW
#: and CREDIT come from the client; ITEM, END and ERROR are what the service sends.
SERVICE_STREAM: dict[tuple[StreamState, Kind], StreamState] = {
    (_S.IDLE, Kind.NEXT): _S.STEPPING,
    (_S.IDLE, Kind.THROW): _S.STEPPING,
    (_S.IDLE, Kind.CREDIT): _S.FLOWING,
    (_S.STEPPING, Kind.ITEM): _S.IDLE,
    (_S.FLOWING, Kind.CREDIT): _S.FLOWING,
    (_S.FLOWING, Kind.ITEM): _S.FLOWING,
    **{(state, kind): _S.CLOSED for state in _S for kind in (Kind.CANCEL, Kind.END, Kind.ERROR)},
}

_CLIENT_KINDS = frozenset({Kind.NEXT, Kind.THROW, Kind.CREDIT, Kind.CANCEL})

#: Which client messages a service-side stream accepts in each state (derived from the table).
STREAM_ACCEPTS: dict[StreamState, frozenset[Kind]] = {
    state: frozenset(k for (s, k) in SERVICE_STREAM if s is state and k in _CLIENT_KINDS)
    for state in StreamState
}


def service_stream_next(state: StreamState, kind: Kind) -> StreamState:
    """The service-side stream's state after ``kind`` was received (or sent).

    Raises:
        ProtocolError: ``kind`` is not allowed in ``state``.
    """
    nxt = SERVICE_STREAM.get((state, kind))
    if nxt is None:
        raise ProtocolError(f"{kind.name} not allowed while the stream is {state.value}")
    return nxt


class ClientStreamState(enum.Enum):
    """A client-side stream's state."""

    LOCKSTEP = "lock-step"
    PREFETCH = "prefetching"
    CLOSING = "closing"
    DONE = "done"


_C = ClientStreamState

#: (state, message kind) -> next state, for the client's side of a stream. ITEM, END and ERROR
#: come from the service; CREDIT and CANCEL are what the client sends.
CLIENT_STREAM: dict[tuple[ClientStreamState, Kind], ClientStreamState] = {
    (_C.LOCKSTEP, Kind.ITEM): _C.LOCKSTEP,
    (_C.LOCKSTEP, Kind.CREDIT): _C.PREFETCH,
    (_C.PREFETCH, Kind.ITEM): _C.PREFETCH,
    (_C.PREFETCH, Kind.CREDIT): _C.PREFETCH,
    (_C.CLOSING, Kind.ITEM): _C.CLOSING,
    **{(state, Kind.CANCEL): _C.CLOSING for state in (_C.LOCKSTEP, _C.PREFETCH, _C.CLOSING)},
    **{(state, kind): _C.DONE for state in _C for kind in (Kind.END, Kind.ERROR)},
    (_C.DONE, Kind.ITEM): _C.DONE,
    (_C.DONE, Kind.CANCEL): _C.DONE,
}


def client_stream_next(state: ClientStreamState, kind: Kind) -> ClientStreamState:
    """The client-side stream's state after ``kind`` was received (or sent).

    Raises:
        ProtocolError: ``kind`` is not allowed in ``state``.
    """
    nxt = CLIENT_STREAM.get((state, kind))
    if nxt is None:
        raise ProtocolError(f"{kind.name} not allowed while the stream is {state.value}")
    return nxt


# -- credit ----------------------------------------------------------------------------------

#: Credit a prefetching stream starts with, before its item size is known (slow start).
FIRST_CREDIT = 16


def first_credit(window: int) -> int:
    """The credit a stream starts prefetching with."""
    return min(window, FIRST_CREDIT)


def add_credit(credit: int, count: int) -> int:
    """The service's credit after a CREDIT of ``count`` (saturating at the wire's maximum).

    The service keeps the whole credit it was given, and sends while it has some, but at most
    ``max_stream_window`` items (:class:`~netcall.Limits`) after the CALL and after each CREDIT
    (see :func:`may_send`): however much credit a client grants, each of its messages makes
    the service send at most that many items. A client whose window is larger than the
    service's limit is held to it by the CREDIT it sends when it runs dry
    (:func:`credit_when_starved`). The same goes for the bytes a service sends per message
    (``max_stream_window_bytes``)."""
    return min(credit + count, MAX_COUNT)


def may_send(
    credit: int, sent: int, max_window: int, sent_bytes: int = 0, max_bytes: float = math.inf
) -> bool:
    """Whether a flowing stream may send one more item: it has ``credit``, and sent ``sent``
    items since the CALL or the last CREDIT, fewer than the service's ``max_window``, and
    ``sent_bytes`` bytes of them, fewer than its ``max_bytes``.

    The byte bound is what keeps the first credit safe: a client grants :data:`FIRST_CREDIT`
    items before it has seen any (16 items of 16 MiB would be 256 MiB buffered on both ends),
    so a service sends items of any size while less than ``max_bytes`` (see
    :func:`byte_allowance`) went since the client's last message, and then waits for the
    next one. At least one item goes per message, so a stream never stalls (see
    :func:`credit_when_starved`)."""
    return credit > 0 and sent < max_window and sent_bytes < max_bytes


def byte_allowance(max_bytes: float, count: int, bytes_out: int, items_out: int) -> float:
    """The bytes of items a service may send after a CREDIT of ``count`` items, having sent
    ``items_out`` items of ``bytes_out`` bytes on credit so far: its ``max_bytes``
    (``Limits.max_stream_window_bytes``), or ``count`` items of the average size so far when
    that is more. A client sizes its CREDITs from the items it has seen and its own byte
    budget (:func:`credit_limit`), so a budget larger than the service's is honoured; the
    credit granted blind, with the CALL, is held to ``max_bytes``."""
    if not items_out:
        return max_bytes
    return max(max_bytes, count * (bytes_out / items_out))


def update_item_size(average: float, size: int) -> float:
    """The running average of item sizes after one more item (weight 1/8)."""
    return average + (size - average) * 0.125


def credit_limit(
    window: int, stream_buffer: int, item_size: float, consumed: int | None = None
) -> int:
    """At most this many items in flight or buffered: the window, or fewer when the items are
    large enough that ``stream_buffer`` bytes would be exceeded (never below 1). Given the
    number of items ``consumed`` so far, also at most ``FIRST_CREDIT + consumed``: the credit
    grows with consumption (by one item per item read, so it doubles each round trip while
    the reader keeps up), and a stream left idle after its first items holds few of them."""
    limit = min(window, max(1, int(stream_buffer / item_size)))
    if consumed is not None and consumed + FIRST_CREDIT < limit:
        return consumed + FIRST_CREDIT
    return limit


def credit_to_grant(granted: int, consumed: int, limit: int) -> int:
    """How much credit to send after consuming an item: top up to ``limit`` once at most half
    of it is still ahead (in flight or buffered), else 0 (not worth a message yet)."""
    ahead = granted - consumed
    if ahead * 2 <= limit:
        return limit - ahead
    return 0


def credit_when_starved(granted: int, consumed: int, limit: int) -> int:
    """The credit a prefetching consumer sends when it finds nothing to read and consumed
    items since its last CREDIT: the top-up to ``limit``, and at least 1.

    A service sends at most its ``max_stream_window`` items per CALL or CREDIT, and no more
    once ``max_stream_window_bytes`` bytes went (but always one) (see
    :func:`add_credit`), which may be less than half the client's window: the rest of a grant
    then waits for the client's next message, which :func:`credit_to_grant` alone would not
    send. With this rule the stream cannot stall: a consumer that waits has sent a CREDIT
    since it last consumed, so the service either has items in flight to it, or has credit
    (the client's window is at least 1 ahead of what it read) and a fresh allowance."""
    return max(1, limit - (granted - consumed))
