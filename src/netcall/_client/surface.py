"""The calling surface of :class:`netcall.RPCClient`: ``client.name(...)``, ``call``,
``with_options``, ``typed``, ``methods`` and the client's middleware. Every call ends in the
client's ``_invoke`` (through the middleware chain when there is one)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .._middleware import ClientMiddleware, OutgoingCall, check_middleware
from .outgoing import ClientChain
from .proxy import UNSET, Call, Method, Options, checked_name, checked_timeout

__all__ = ["CallSurface"]

T = TypeVar("T")


class CallSurface:
    """What :class:`~netcall.RPCClient` offers for making calls (a base class: the client
    provides ``_invoke``, and sets ``_chain`` up with :meth:`_init_chain`)."""

    _chain: ClientChain
    _invoke: Callable[..., Awaitable[Any]]

    def _init_chain(self, middleware: Any) -> None:
        self._chain = ClientChain(self._send_outgoing, check_middleware(middleware))

    def __getattr__(self, name: str) -> Method:
        if name.startswith("_"):
            raise AttributeError(name)
        method = Method(self._invoke, name, UNSET, False)
        self.__dict__[name] = method
        return method

    def call(
        self,
        name: str,
        *args: Any,
        timeout: float | None = UNSET,
        oneway: bool = False,
        metadata: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Call:
        """Call ``name`` with these arguments: ``await client.call("echo", "hi", timeout=1)``.

        ``timeout``, ``oneway`` and ``metadata`` (string pairs the service reads in
        ``current_call().metadata``; see :mod:`netcall._metadata` for the rules and limits)
        are options, not arguments for the method; use :meth:`with_options` for methods
        taking keyword arguments of those names. Awaiting
        the call gives the result (a :class:`RemoteGenerator` for a stream; ``None`` for a
        one-way call, once the service accepted it); ``async for`` over it iterates a stream.

        Raises (when awaited):
            RemoteRPCError: the handler raised (a builtin type arrives as that type too).
            MethodNotFoundError: no such method on the service.
            RPCTimeoutError: no answer within ``timeout``; the handler is cancelled.
            SerializationError: an argument or the result cannot be serialized.
            SerializerMismatchError: the service uses another serializer.
            EncodingError: the method name is not encodable (also a UnicodeEncodeError).
            ServiceBusyError, ServiceStoppingError: the service refused the call (a client
                that binds first sends a call that a stopping service refused to another
                service, see :meth:`bind`), or ServiceStoppingError: it stopped before the
                call finished.
            ConnectionLostError: the connection broke with the call in flight.
            ClientClosedError: the client was closed.
            RPCError: not connected to any service.
            ValueError: the metadata breaks the rules or limits (nothing is sent).

        Raises (at once):
            TypeError: ``name`` is not a ``str``, or ``timeout`` not a number or ``None``.
            ValueError: ``timeout`` is NaN.
        """
        timeout = checked_timeout(timeout)
        return Call(self._invoke, checked_name(name), args, kwargs, timeout, oneway, metadata)

    async def methods(self, timeout: float | None = UNSET) -> dict[str, dict[str, str]]:
        """The service's methods: ``{name: {"signature": ..., "doc": ...}}``.

        Raises:
            RPCTimeoutError: no answer within the timeout; or what :meth:`call` raises.
        """
        result: dict[str, dict[str, str]] = await self.call("_netcall.methods", timeout=timeout)
        return result

    def with_options(
        self,
        *,
        timeout: float | None = UNSET,
        oneway: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> Options:
        """A view of this client whose calls use these options: ``client.with_options(
        timeout=2, metadata={"request-id": "7"}).slow(x)``.

        Raises:
            TypeError: ``timeout`` is not a number or ``None``.
            ValueError: ``timeout`` is NaN.
        """
        return Options(self._invoke, timeout, oneway, metadata)

    def typed(self, protocol: Callable[..., T]) -> T:
        """This client, typed as ``protocol`` (a ``typing.Protocol`` of ``async def``
        methods) for the type checker: ``math = client.typed(Math)``. Nothing is generated or
        checked at run time."""
        return self  # type: ignore[return-value]

    def add_middleware(self, middleware: ClientMiddleware, *, outermost: bool = False) -> None:
        """Run ``middleware`` around every call and stream opening from now on: innermost
        (after the others), or ``outermost``.

        ``async def mw(call, call_next)``: ``call`` is an :class:`~netcall.OutgoingCall`
        (method, args, kwargs, metadata, timeout; change them freely); ``await
        call_next(call)`` makes the call and returns its result (its stream, for a
        generator). Calling ``call_next`` again makes the call again (retries).

        Raises:
            TypeError: ``middleware`` is not callable.
        """
        self._chain.add(check_middleware([middleware])[0], outermost)

    def _send_outgoing(self, call: OutgoingCall) -> Any:
        """The innermost link of the middleware chain: the call as the middleware left it."""
        return self._invoke(
            call.method,
            call.args,
            call.kwargs,
            call.timeout,
            call.oneway,
            call._prefetch,
            call.metadata,
            call._parent,
            True,
        )
