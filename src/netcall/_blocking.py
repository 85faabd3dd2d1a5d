"""A remote generator as a plain generator, for the blocking and gevent clients: each step is
one trip to netcall's loop thread (:mod:`netcall._bridge`); a prefetching stream takes its items
over in batches (:class:`~netcall._client.generator.ItemBatches`)."""

from __future__ import annotations

import collections.abc
from types import TracebackType
from typing import Any

from ._bridge import Bridge
from ._client.generator import ItemBatches, RemoteGenerator

__all__ = ["BlockingGenerator"]

_BATCH = 256  # stream items a blocking generator takes over from the loop at once


class BlockingGenerator(collections.abc.Generator[Any, Any, None]):
    """A remote generator as a plain Python generator (``next``, ``send``, ``throw``,
    ``close``), for threads and greenlets; it drives a core
    :class:`~netcall.client.RemoteGenerator` in lock-step. A ``for`` loop switches the stream
    to prefetching (``send``/``throw`` are then unavailable, as with ``async for``).

    Dropping the last reference closes the generator on the service (without waiting).
    """

    __slots__ = ("_batch", "_bridge", "_gen", "_owner")

    def __init__(self, gen: RemoteGenerator, bridge: Bridge, owner: object = None) -> None:
        self._gen = gen
        self._bridge = bridge
        self._owner = owner  # keeps the client (and its bridge) alive while the stream is
        self._batch = ItemBatches(gen)  # one hop to the loop per batch of items

    def __iter__(self) -> BlockingGenerator:
        self._bridge.call(self._gen.__aiter__)
        return self

    def __next__(self) -> Any:
        batch = self._batch
        if batch:
            return batch.pop()
        try:
            fetch = batch.fetch(_BATCH)
            if fetch is not None:
                batch.fill(self._bridge.run(fetch))
                return batch.pop()
            return self._bridge.run(self._gen.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def send(self, value: Any) -> Any:
        """Send ``value`` in; return the next yielded value.

        Raises:
            StopIteration: the generator is exhausted or closed.
            RemoteRPCError: the generator raised. RPCTimeoutError: the step timed out.
        """
        try:
            return self._bridge.run(self._gen.asend(value))
        except StopAsyncIteration:
            raise StopIteration from None

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: Any = None,
        tb: TracebackType | None = None,
    ) -> Any:
        """Raise an exception in the generator at its ``yield``; return the next value.

        Raises: the generator's exception (as a RemoteRPCError), or what :meth:`send` raises.
        """
        try:
            return self._bridge.run(self._gen.athrow(typ, val, tb))
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Close the generator on the service and wait until its ``finally`` blocks ran."""
        self._batch.clear()
        self._bridge.run(self._gen.aclose())

    def __enter__(self) -> BlockingGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Dropping the proxy drops the core RemoteGenerator, whose finalizer schedules the close
    # on the loop with call_soon_threadsafe: nothing here may block.
