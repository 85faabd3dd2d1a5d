"""The handler registry: registration rules, reserved names, introspection."""

from __future__ import annotations

import dis
import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from ..security import public_keys

__all__ = ["Handler", "HandlerRegistry", "Procedures", "public_names"]

log = logging.getLogger("netcall")

#: The built-in introspection method, under a name no user handler can take.
METHODS_NAME = "_netcall.methods"


def public_names(*classes: type) -> frozenset[str]:
    """The public attribute names of ``classes``: methods, properties, and the instance
    attributes each class declares with a class-level annotation."""
    names: set[str] = set()
    for cls in classes:
        names.update(dir(cls))
        for klass in cls.__mro__:
            names.update(getattr(klass, "__annotations__", {}))
    return frozenset(n for n in names if not n.startswith("_"))


class Handler:
    """One registered handler. ``allow``: the CURVE keys (Z85 text) that may call it, or
    ``None`` for every caller the service lets in."""

    __slots__ = ("allow", "code", "doc", "fn", "func", "is_async", "name")

    def __init__(
        self, name: str, fn: Callable[..., Any], allow: frozenset[str] | None = None
    ) -> None:
        self.name = name
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)
        # An ``async def`` with no ``await`` (nor ``async for``/``async with``) in its own
        # body: its coroutine ends in its first step, so the service runs it there and then,
        # as a ``def`` handler, with no task (see never_suspends).
        self.func = getattr(fn, "__func__", fn)
        self.code = self.func.__code__ if self.is_async and never_suspends(fn) else None
        self.doc = inspect.getdoc(fn) or ""
        self.allow = allow

    @property
    def never_suspends(self) -> bool:
        """Whether the handler's coroutine cannot suspend: an ``async def`` with no await,
        whose code is still what it was when it was registered (a reload that swaps
        ``__code__``, IPython's autoreload say, may have added one)."""
        code = self.code
        return code is not None and self.func.__code__ is code

    def permits(self, peer_key: str | None) -> bool:
        """Whether a caller with this key (``None``: no CURVE) may call the handler."""
        return self.allow is None or peer_key in self.allow


# The opcodes a coroutine suspends at: every await (and async for/with) compiles to one of them.
_SUSPENDS = frozenset(
    dis.opmap[name] for name in ("YIELD_VALUE", "YIELD_FROM", "SEND") if name in dis.opmap
)


def never_suspends(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is an ``async def`` function (or a method of one) whose own code has no
    point where its coroutine could suspend: it returns or raises in its first step."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if not inspect.isfunction(fn) or code is None or not code.co_flags & inspect.CO_COROUTINE:
        return False
    return not any(ins.opcode in _SUSPENDS for ins in dis.get_instructions(code))


class HandlerRegistry:
    """Handlers by name. Names are dotted, each part non-empty and not private; the first
    part may not be one of ``reserved`` (the public classes' own attribute names)."""

    __slots__ = ("by_name", "reserved")

    def __init__(self, reserved: frozenset[str]) -> None:
        self.reserved = reserved
        #: The handlers by name (read it; change it through the methods).
        self.by_name: dict[str, Handler] = {}

    def get(self, name: str) -> Handler | None:
        return self.by_name.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def add(self, name: str, fn: Callable[..., Any], allow: Iterable[Any] | None = None) -> None:
        """Register ``fn`` as ``name``; only the keys in ``allow`` may call it, if given.

        Raises:
            ValueError: the name is reserved, empty, or private; an ``allow`` entry is no key.
            TypeError: ``fn`` is not callable; ``allow`` is a single key, not a list.
        """
        if not isinstance(name, str) or not name:
            raise ValueError("a handler needs a non-empty name")
        parts = name.split(".")
        # "X is a reserved function name" is netcall 0.4.2's wording, kept for code matching it.
        if parts[0].startswith("_"):
            raise ValueError(
                f"{name} is a reserved function name: names starting with '_' are netcall's"
            )
        if any(not part or part.startswith("_") for part in parts):
            raise ValueError(f"invalid handler name {name!r}")
        if parts[0] in self.reserved:
            raise ValueError(
                f"{parts[0]} is a reserved function name (an attribute of netcall's service"
                " or client), and cannot be registered"
            )
        if not callable(fn):
            raise TypeError(f"handler {name!r} is not callable")
        keys = None if allow is None else public_keys(allow)
        self.by_name[name] = Handler(name, fn, keys)

    def add_builtin(self, name: str, fn: Callable[..., Any]) -> None:
        """Register netcall's own method (a private name, which :meth:`add` refuses)."""
        self.by_name[name] = Handler(name, fn)

    def add_subclass_methods(self, obj: Any, base: type) -> None:
        """The public methods a subclass of ``base`` defines are handlers."""
        cls = type(obj)
        if cls is base:
            return
        base_names = set(dir(base))
        for klass in cls.__mro__:
            if klass is base or not issubclass(klass, base):
                continue
            for attr, value in vars(klass).items():
                if attr.startswith("_") or attr in base_names or attr in self.by_name:
                    continue
                if callable(value) or isinstance(value, staticmethod | classmethod):
                    self.add(attr, getattr(obj, attr))

    def add_object(self, obj: Any, namespace: str | None, restricted: Iterable[str]) -> list[str]:
        """Register ``obj``'s public callables as ``namespace.name``; returns the names.

        Private names, names in ``restricted`` and, without a namespace, reserved names are
        skipped (as netcall 0.4.2 did: a module with a ``start`` function can be registered
        whole); the skipped private and reserved names are logged at DEBUG.

        Raises:
            ValueError: ``namespace`` is invalid or reserved.
        """
        deny = set(restricted)
        prefix = f"{namespace}." if namespace else ""
        added = []
        skipped = []
        for attr in dir(obj):
            if attr in deny:
                continue
            if attr.startswith("_") or (not prefix and attr in self.reserved):
                if not attr.startswith("__"):
                    skipped.append(attr)
                continue
            try:
                value = getattr(obj, attr)
            except Exception:
                continue
            if callable(value) and not isinstance(value, type):
                self.add(prefix + attr, value)
                added.append(prefix + attr)
        if skipped:
            log.debug("register_object(%r): skipped private and reserved names %s", obj, skipped)
        return added

    def procedures(self) -> Procedures:
        """The registered handlers' functions by name (a read-only snapshot)."""
        return Procedures(
            (name, h.fn) for name, h in self.by_name.items() if not name.startswith("_")
        )

    def describe(self) -> dict[str, dict[str, str]]:
        """The public handlers: ``{name: {"signature": ..., "doc": ...}}``."""
        out = {}
        for name, h in sorted(self.by_name.items()):
            if name.startswith("_"):
                continue
            try:
                sig = str(inspect.signature(h.fn))
            except (TypeError, ValueError):
                sig = "(...)"
            out[name] = {"signature": sig, "doc": h.doc}
        return out


class Procedures(dict[str, Callable[..., Any]]):
    """``service.procedures``: the registered functions by name, read-only (a snapshot; register
    through the service). A ``dict``, as netcall 0.4.2's was."""

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("service.procedures is read-only: use service.register()")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only
