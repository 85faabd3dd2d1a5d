"""A remote generator as a real generator, for the blocking and gevent clients: each step is
one trip to netcall's loop thread (:mod:`netcall._bridge`); a prefetching stream takes its items
over in batches (:class:`~netcall._client.generator.ItemBatches`).

:func:`as_generator` is what the clients return: a ``types.GeneratorType`` driving a
:class:`BlockingGenerator`, which does the work.
"""

from __future__ import annotations

import collections.abc
import weakref
from collections.abc import Generator
from types import TracebackType
from typing import Any

from ._bridge import Bridge
from ._client.generator import ItemBatches, RemoteGenerator

__all__ = ["PREFETCH_AFTER", "BlockingGenerator", "as_generator"]

_BATCH = 256  # stream items a blocking generator takes over from the loop at once

#: A remote generator advanced only with ``next()`` this many times in a row (a ``for`` loop,
#: ``list()``) switches to prefetching: the service then runs up to the client's ``window``
#: items ahead, and the items cross from the loop thread in batches.
PREFETCH_AFTER = 16


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
        bridge.run_in_background()  # the stream's lease pings go on while nobody steps it

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


def as_generator(proxy: BlockingGenerator) -> Generator[Any, Any, None]:
    """A real generator (``types.GeneratorType``) whose ``next``, ``send``, ``throw`` and
    ``close`` drive the remote generator behind ``proxy``.

    It steps in lock-step, one round trip per step: a local generator's exact semantics.
    Advanced only with ``next()``, :data:`PREFETCH_AFTER` times in a row from the start, it
    switches to prefetching; a ``send(value)`` or ``throw()`` after that raises
    ``RuntimeError`` (the service has already run ahead).

    ``close()`` waits until the remote ``finally`` blocks ran; garbage collection closes the
    remote side without waiting (finalizers never block). A generator closed before its first
    step leaves the remote one to be closed when it is dropped.
    """
    me: list[weakref.ref[Generator[Any, Any, None]]] = []
    gen = _drive(proxy, me)
    me.append(weakref.ref(gen))
    return gen


def _drive(
    proxy: BlockingGenerator, me: list[weakref.ref[Generator[Any, Any, None]]]
) -> Generator[Any, Any, None]:
    steps = 0  # next() calls in a row from the start; -1 once send() or throw() was used
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                if error is not None:
                    thrown, error = error, None
                    item = proxy.throw(thrown)
                elif value is not None:
                    item = proxy.send(value)
                else:
                    if 0 <= steps <= PREFETCH_AFTER:
                        steps += 1
                        if steps > PREFETCH_AFTER:
                            iter(proxy)  # switches the stream to prefetching
                    item = next(proxy)
            except StopIteration:
                return
            try:
                value = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:  # gen.throw(...): goes to the remote generator
                tb = exc.__traceback__
                if tb is not None and tb.tb_frame.f_code is _DRIVE:
                    # The entry for this frame, added as it arrived here: held by the caller
                    # (who may keep the exception) or by this frame's own locals (a cycle),
                    # it would keep a dropped generator, and its stream, alive.
                    exc.__traceback__ = tb.tb_next
                error, value = exc, None
            if value is not None or error is not None:
                if steps > PREFETCH_AFTER:
                    raise RuntimeError(
                        "send() or throw() on a remote generator that is prefetching (it was "
                        f"advanced with next() {PREFETCH_AFTER} times in a row first)"
                    )
                steps = -1
    except GeneratorExit:
        # An explicit close() waits for the remote finally blocks. A generator being
        # collected has lost its weak reference already: the proxy's finalizer then closes
        # the remote side without blocking.
        if me[0]() is not None:
            proxy.close()
        raise
    finally:
        # An exception that left through here (and that its caller keeps) holds this frame:
        # it must not hold the proxy, whose finalizer closes the remote generator.
        del proxy


_DRIVE = _drive.__code__
