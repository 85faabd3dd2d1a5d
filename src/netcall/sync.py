"""A blocking netcall client for plain threads (and greenlets), over the asyncio core.

::

    from netcall.sync import SyncRPCClient

    client = SyncRPCClient(timeout=5.0)
    client.connect("tcp://127.0.0.1:5555")
    client.echo("hi")                      # -> "hi"
    client.call("echo", "hi", timeout=0.5)
    for x in client.count(10): ...         # a remote generator is a plain generator
    client.close()

One client may be shared by many threads: each call blocks only its caller. The client lives
on netcall's own asyncio loop (see :mod:`netcall._bridge`), run by a lone calling thread itself
or by a thread of netcall's own; closing the last client or service using it closes it, and it
is closed at interpreter exit. A client cannot be
used in a child process after ``fork()``: create a new one there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _bridge
from ._blocking import BlockingGenerator, as_generator
from ._middleware import ClientMiddleware
from .client import ClientOptions, RPCClient
from .errors import ClientClosedError
from .serializers import Serializer

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SyncRPCClient"]

T = TypeVar("T")


class SyncRPCClient:
    """A thread-safe blocking RPC client; the same surface as :class:`~netcall.RPCClient`,
    without ``await``.

    ``client.name(*args, **kwargs)`` returns the result (dotted names work); a method that
    returns a generator gives a real generator (``types.GeneratorType``) with ``next``,
    ``send``, ``throw`` and ``close`` (closed on garbage collection too; see
    :func:`~netcall._blocking.as_generator` for when it prefetches).

    Args: exactly :class:`~netcall.RPCClient`'s (passed through, see
    :class:`~netcall.client.ClientOptions`).

    Calls raise what the core raises: RemoteRPCError (a builtin type arrives as that type
    too), RPCTimeoutError, SerializationError, ClientClosedError; and RuntimeError when used
    after ``fork()`` or from netcall's loop thread.

    While one thread (or greenlet) calls through netcall's loop at a time, it runs the loop
    itself for the length of each call. While several call at once, a thread of netcall's own
    runs it, until they have called one at a time for a while again; and for good once a
    stream is open, or a service or a caller inside an asyncio loop uses it.
    """

    _background = False  # see netcall._bridge.acquire

    def __init__(
        self, serializer: str | Serializer | None = None, **options: Unpack[ClientOptions]
    ) -> None:
        bridge = _bridge.acquire(self._background)
        try:
            client = bridge.call(RPCClient, serializer, **options)
        except BaseException:
            _bridge.release(bridge)
            raise
        self._bridge = bridge
        self._client = client
        self._released = False
        bridge.closers[id(self)] = client.close

    # -- endpoints ------------------------------------------------------------------------

    def connect(self, urls: str | Iterable[str], only: bool = False) -> None:
        """Connect to one or several service endpoints (see :meth:`RPCClient.connect`)."""
        self._bridge.call(self._client.connect, urls, only)

    def disconnect(self, url: str) -> None:
        """Disconnect from ``url``."""
        self._bridge.call(self._client.disconnect, url)

    @property
    def connected(self) -> set[str]:
        """The endpoints this client is connected to."""
        return self._bridge.call(lambda: self._client.connected)

    def bind(self, urls: str | Iterable[str], only: bool = False) -> None:
        """Bind: services connect to this client (see :meth:`RPCClient.bind`)."""
        self._bridge.call(self._client.bind, urls, only)

    def unbind(self, url: str) -> None:
        """Stop listening on ``url``."""
        self._bridge.call(self._client.unbind, url)

    def bind_ports(
        self, ip: str = "127.0.0.1", port: int = 0, *, min_port: int = 49152, max_port: int = 65535
    ) -> int:
        """Bind ``tcp://ip:port`` (a free port with ``port=0``); returns the port."""
        return int(
            self._bridge.call(
                lambda: self._client.bind_ports(ip, port, min_port=min_port, max_port=max_port)
            )
        )

    @property
    def bound(self) -> set[str]:
        """The endpoints this client is bound to."""
        return self._bridge.call(lambda: self._client.bound)

    @property
    def timeout(self) -> float | None:
        """The default timeout of calls."""
        return self._client.timeout

    @property
    def pending(self) -> int:
        """Calls waiting for an answer."""
        return self._client.pending

    @property
    def open_streams(self) -> int:
        """Streams not yet finished or closed."""
        return self._client.open_streams

    @property
    def closed(self) -> bool:
        return self._client.closed

    # -- calls ----------------------------------------------------------------------------

    def __getattr__(self, name: str) -> _Blocking:
        if name.startswith("_"):
            raise AttributeError(name)
        method = _Blocking(self, getattr(self._client, name))
        self.__dict__[name] = method  # made once per name, as the core client's methods
        return method

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``name``: ``client.call("echo", "hi", timeout=1)``; ``timeout`` and ``oneway``
        are options, as in :meth:`RPCClient.call`."""
        return self._result(self._client.call(name, *args, **kwargs))

    def with_options(self, **options: Any) -> _BlockingOptions:
        """A view whose calls use these options: ``client.with_options(timeout=2).slow(x)``
        (``timeout``, ``oneway``, ``metadata``, as in :meth:`RPCClient.with_options`)."""
        return _BlockingOptions(self, self._client.with_options(**options))

    def typed(self, protocol: Callable[..., T]) -> T:
        """This client, typed as ``protocol`` (a ``typing.Protocol`` of plain methods) for the
        type checker: ``math = client.typed(Math)``."""
        return self  # type: ignore[return-value]

    def add_middleware(self, middleware: ClientMiddleware, *, outermost: bool = False) -> None:
        """Add a client middleware (an ``async def``, run on netcall's loop thread); see
        :meth:`RPCClient.add_middleware`."""
        self._bridge.call(self._client.add_middleware, middleware, outermost=outermost)

    def _result(self, call: Awaitable[Any]) -> Any:
        if self._released:
            _close_awaitable(call)
            raise ClientClosedError("the client is closed")
        result = self._client._run_bridged(self._bridge, call)
        if hasattr(result, "__anext__"):
            # A stream (a RemoteGenerator, or a middleware's wrapper of one): never a decoded
            # value. (No isinstance() first: RemoteGenerator is an ABC, and its check costs
            # more per call than this look.)
            return as_generator(BlockingGenerator(result, self._bridge, self))
        return result

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket, fail the calls in flight with ClientClosedError, and stop the
        loop thread if nothing else uses it."""
        if self._released:
            return
        self._released = True
        bridge = self._bridge
        bridge.closers.pop(id(self), None)
        try:
            if bridge.alive:
                bridge.call(self._client.close)
        finally:
            _bridge.release(bridge)

    def shutdown(self) -> None:
        """:meth:`close` (the 2014 spelling)."""
        self.close()

    def __enter__(self) -> SyncRPCClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_released", True):
            return
        self._released = True
        bridge = self._bridge
        bridge.closers.pop(id(self), None)
        bridge.call_soon(self._client.close)
        _bridge.release(bridge, wait=False)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} over {self._client!r}>"


def _close_awaitable(aw: Awaitable[Any]) -> None:
    close = getattr(aw, "close", None)
    if close is not None:  # a coroutine never awaited
        close()


class _Blocking:
    """A core method (or options view) whose calls block: ``client.math.add(1, 2)``."""

    __slots__ = ("_owner", "_target")

    def __init__(self, owner: SyncRPCClient, target: Any) -> None:
        self._owner = owner
        self._target = target

    def __getattr__(self, name: str) -> _Blocking:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Blocking(self._owner, getattr(self._target, name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner._result(self._target(*args, **kwargs))

    def __repr__(self) -> str:
        return repr(self._target)


class _BlockingOptions(_Blocking):
    """``client.with_options(...)``: its calls carry these options."""

    __slots__ = ()

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._owner._result(self._target.call(name, *args, **kwargs))

    def typed(self, protocol: Callable[..., T]) -> T:
        """This view, typed as ``protocol`` (see :meth:`SyncRPCClient.typed`)."""
        return self  # type: ignore[return-value]
