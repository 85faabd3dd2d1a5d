"""Serializers: how call arguments, results and stream items become bytes.

A serializer is anything with a ``name`` (sent on the wire with every call, so a client and a
service that disagree get :class:`~netcall.errors.SerializerMismatchError` instead of garbage),
``dumps(obj) -> bytes`` and ``loads(data) -> obj``.

- :class:`MsgpackSerializer` (the default, name ``"msgpack"``) round-trips ``None``, ``bool``,
  ``int`` (64-bit), ``float``, ``str``, ``bytes``, ``list``, ``dict``, ``tuple`` (stays a tuple),
  ``set``/``frozenset``, ``datetime`` (naive or aware, offset kept), ``date``, ``time``,
  ``timedelta``, ``Decimal`` and ``UUID`` exactly, and exceptions by name and arguments:
  builtin types (by allowlist) come back as themselves, others as
  :class:`~netcall.errors.RemoteRPCError`. Nothing it decodes imports or runs code.
- :class:`JSONSerializer` (``"json"``): plain JSON types only; tuples arrive as lists.
- :class:`PickleSerializer` (``"pickle"``): any picklable value. Unpickling runs code chosen by the
  peer: use it only between trusted processes, and only by passing it explicitly.

msgpack and JSON bound how deeply values nest (``max_depth``, default :data:`DEFAULT_MAX_DEPTH`)
on both ends: a value beyond it raises :class:`~netcall.errors.SerializationError` where it is
encoded, and a hostile message beyond it is refused where it is decoded, never a crash.
"""

from __future__ import annotations

import json
import pickle
import threading
from typing import Any, Protocol, runtime_checkable

from ._msgpack import REUSE_MAX, Codec, reason
from .errors import SerializationError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "JSONSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
    "get_serializer",
]


@runtime_checkable
class Serializer(Protocol):
    """The serializer interface."""

    name: str

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``. Raises :class:`SerializationError` for values it cannot encode."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode ``data``. Raises :class:`SerializationError` for bytes it cannot decode."""
        ...


#: How deeply values may nest, by default (``max_depth`` of each serializer).
DEFAULT_MAX_DEPTH = 100


def _valid_depth(max_depth: int) -> int:
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 1:
        raise ValueError("max_depth must be a positive integer")
    return max_depth


class MsgpackSerializer:
    """msgpack with exact round-trips of common Python types (the default).

    Args:
        max_depth: how deeply extension values (tuples, sets, frozensets, datetimes,
            timedeltas, exceptions) may nest inside each other, encoding or decoding
            (default :data:`DEFAULT_MAX_DEPTH`, 100). Each of them is a msgpack value of its
            own: decoding re-enters the decoder, so this bound keeps any input far from the C
            stack. Lists and maps are bounded by msgpack itself (1024 levels decoding, 511
            encoding). Beyond a limit, ``dumps``/``loads`` raise
            :class:`~netcall.errors.SerializationError`.
    """

    name = "msgpack"

    def __init__(self, *, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.max_depth = _valid_depth(max_depth)
        # One codec per thread (see netcall._msgpack.Codec).
        self._local = threading.local()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.max_depth))

    def _codec(self) -> Codec:
        old = getattr(self._local, "codec", None)
        if old is not None:
            old.discard()
        codec = self._local.codec = Codec(self.max_depth)
        return codec

    def dumps(self, obj: Any) -> bytes:
        codec = getattr(self._local, "codec", None) or self._codec()
        try:
            return codec.packer.pack(obj)  # type: ignore[no-any-return]
        except Exception as exc:
            self._codec()  # start afresh: no state of a failed pack is kept
            if isinstance(exc, SerializationError):
                raise
            raise SerializationError(f"msgpack cannot serialize: {reason(exc)}") from exc

    def loads(self, data: bytes) -> Any:
        codec = getattr(self._local, "codec", None) or self._codec()
        try:
            if len(data) > REUSE_MAX:
                return codec.loads_large(data)
            unpacker = codec.unpacker  # inline: the commonest case, small payloads
            start = unpacker.tell()
            unpacker.feed(data)
            obj = unpacker.unpack()
            if unpacker.tell() - start != len(data):
                raise ValueError("extra data after the value")
            return obj
        except Exception as exc:
            self._codec()  # drop whatever is left in the buffers
            raise SerializationError(f"msgpack cannot deserialize: {reason(exc)}") from exc


def _rebuild(cls: type[Any], max_depth: int) -> Any:
    return cls(max_depth=max_depth)


_CONTAINERS = (list, tuple, dict, set, frozenset)
_LEAVES = frozenset({str, bytes, int, float, bool, type(None)})


def _deeper_than(obj: Any, limit: int) -> bool:
    """Whether ``obj`` nests lists, tuples and dicts more than ``limit`` deep. Iterative,
    level by level; a container holding only scalars costs one C-level pass."""
    level = [obj]
    for _ in range(limit + 1):
        deeper: list[Any] = []
        for value in level:
            if type(value) in _LEAVES:
                continue
            if isinstance(value, dict):
                if not _LEAVES.issuperset(map(type, value.values())):
                    deeper.extend(value.values())
                if not _LEAVES.issuperset(map(type, value)):
                    deeper.extend(value)
            elif isinstance(value, _CONTAINERS):
                if not _LEAVES.issuperset(map(type, value)):
                    deeper.extend(value)
            else:
                continue
            deeper.append(None)  # at least one container was at this level
        if not deeper:
            return False
        level = deeper
    return True


class JSONSerializer:
    """JSON (UTF-8). Only JSON's own types survive; tuples arrive as lists.

    Args:
        max_depth: how deeply lists and objects may nest, encoding or decoding (default
            :data:`DEFAULT_MAX_DEPTH`, 100); beyond it ``dumps``/``loads`` raise
            :class:`~netcall.errors.SerializationError`. Checked only when the text holds more
            brackets than that, so small messages cost nothing more.
    """

    name = "json"

    def __init__(self, *, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.max_depth = _valid_depth(max_depth)

    def dumps(self, obj: Any) -> bytes:
        try:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        except RecursionError as exc:
            raise SerializationError("json cannot serialize: the value nests too deeply") from exc
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"json cannot serialize: {exc}") from exc
        limit = self.max_depth
        if text.count("[") + text.count("{") > limit and _deeper_than(obj, limit):
            raise SerializationError(
                f"json cannot serialize: the value nests deeper than max_depth={limit}"
            )
        return text.encode()

    def loads(self, data: bytes) -> Any:
        try:
            obj = json.loads(data)
        except RecursionError as exc:
            raise SerializationError("json cannot deserialize: the value nests too deeply") from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise SerializationError(f"json cannot deserialize: {exc}") from exc
        limit = self.max_depth
        raw = data if isinstance(data, bytes) else bytes(data)
        if raw.count(b"[") + raw.count(b"{") > limit and _deeper_than(obj, limit):
            raise SerializationError(
                f"json cannot deserialize: the value nests deeper than max_depth={limit}"
            )
        return obj


class PickleSerializer:
    """pickle, for trusted networks only: loading a message runs code its sender chose."""

    name = "pickle"

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, self.protocol)
        except Exception as exc:
            raise SerializationError(f"pickle cannot serialize: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise SerializationError(f"pickle cannot deserialize: {exc}") from exc


_BY_NAME: dict[str, type[Serializer]] = {
    "msgpack": MsgpackSerializer,
    "json": JSONSerializer,
    "pickle": PickleSerializer,
}


def get_serializer(spec: str | Serializer | None) -> Serializer:
    """A serializer from ``None`` (msgpack), a name (``"msgpack"``, ``"json"``, ``"pickle"``) or
    an object with ``name``/``dumps``/``loads``.

    Raises:
        ValueError: an unknown name.
        TypeError: an object that is not a serializer.
    """
    if spec is None:
        return MsgpackSerializer()
    if isinstance(spec, str):
        try:
            return _BY_NAME[spec]()
        except KeyError:
            raise ValueError(
                f"unknown serializer {spec!r}; choose one of {sorted(_BY_NAME)}"
            ) from None
    if isinstance(spec, type):
        spec = spec()
    if not isinstance(spec, Serializer) or not isinstance(getattr(spec, "name", None), str):
        raise TypeError(f"{spec!r} is not a serializer (needs name, dumps, loads)")
    return spec
