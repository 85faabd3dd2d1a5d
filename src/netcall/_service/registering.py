"""The registration surface of :class:`~netcall.RPCService` (mixed into it): ``register``,
``register_object``, ``add_middleware``, ``methods`` and ``procedures``. The registry itself
is :mod:`netcall._service.registry`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from .._middleware import ServiceMiddleware, check_middleware
from .dispatch import Dispatcher
from .registry import HandlerRegistry
from .upstream import Upstreams

__all__ = ["Keys", "ServiceRegistering"]

F = TypeVar("F", bound=Callable[..., Any])
Keys = Iterable[Any] | None  # CURVE public keys (Z85 bytes or text, or Keypairs)


class ServiceRegistering:
    """Handlers in, descriptions out."""

    _registry: HandlerRegistry
    _upstreams: Upstreams
    _dispatch: Dispatcher

    @overload
    def register(self, fn: F, *, name: str | None = None, allow: Keys = None) -> F: ...

    @overload
    def register(
        self, fn: None = None, *, name: str | None = None, allow: Keys = None
    ) -> Callable[[F], F]: ...

    def register(
        self, fn: F | None = None, *, name: str | None = None, allow: Keys = None
    ) -> F | Callable[[F], F]:
        """Register a handler: ``@service.register``, ``@service.register(name="x")`` or
        ``service.register(fn, name="x")``. Returns the function unchanged. With ``allow``
        (CURVE public keys), any other caller gets ``PermissionError`` (a RemoteRPCError).

        Raises:
            ValueError: the name is reserved (see :data:`RESERVED_NAMES`), empty, or private;
                an ``allow`` entry is not a key.
            TypeError: ``fn`` is not callable.
        """
        if fn is None:

            def decorator(f: F) -> F:
                self._registry.add(name or f.__name__, f, allow)
                self._upstreams.announce()
                return f

            return decorator
        if isinstance(fn, str):
            raise TypeError("use register(name=...) to give a name")
        self._registry.add(name or str(getattr(fn, "__name__", "")), fn, allow)
        self._upstreams.announce()
        return fn

    task = register  # the 2014 spelling

    def register_object(
        self, obj: Any, namespace: str | None = None, restricted: Iterable[str] = ()
    ) -> list[str]:
        """Expose ``obj``'s public callables as ``namespace.name`` (or ``name``).

        Names starting with ``_``, names in ``restricted`` and, without a namespace, reserved
        names (:data:`RESERVED_NAMES`; logged at DEBUG) are not exposed. Returns the
        registered names.

        Raises:
            ValueError: ``namespace`` is reserved or invalid.
        """
        added = self._registry.add_object(obj, namespace, restricted)
        self._upstreams.announce()
        return added

    def add_middleware(self, middleware: ServiceMiddleware, *, outermost: bool = False) -> None:
        """Run ``async def middleware(ctx, call_next)`` around every call and stream opening
        from now on, innermost (or ``outermost``); see :mod:`netcall._service.chain`. Raises
        ``TypeError`` if it is not callable."""
        self._dispatch.chain.add(check_middleware([middleware])[0], outermost)

    def methods(self) -> dict[str, dict[str, str]]:
        """The registered handlers: ``{name: {"signature": ..., "doc": ...}}``."""
        return self._registry.describe()

    @property
    def procedures(self) -> dict[str, Callable[..., Any]]:
        """The registered functions by name: a read-only dict (the 2014 ``procedures``)."""
        return self._registry.procedures()
