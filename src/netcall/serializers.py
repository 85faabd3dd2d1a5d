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
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import pickle
import threading
import uuid
from typing import Any, Protocol, runtime_checkable

import msgpack

from .errors import (
    SerializationError,
    exception_message,
    rebuild_exception,
    remote_type_name,
)

__all__ = [
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


# msgpack extension type codes used by MsgpackSerializer.
_EXT_TUPLE = 1
_EXT_DATETIME = 2
_EXT_DATE = 3
_EXT_TIME = 4
_EXT_TIMEDELTA = 5
_EXT_DECIMAL = 6
_EXT_UUID = 7
_EXT_SET = 8
_EXT_FROZENSET = 9
_EXT_BIGINT = 10
_EXT_EXCEPTION = 11

_REUSE_MAX = 65536  # larger payloads are decoded in one pass, not through the reused Unpacker


class MsgpackSerializer:
    """msgpack with exact round-trips of common Python types (the default)."""

    name = "msgpack"

    def __init__(self) -> None:
        # A Packer/Unpacker per thread, reused: building one per call (packb/unpackb with
        # options) costs more than the packing itself. Nested values inside extension types
        # use fresh ones (the reused ones are not re-entrant).
        self._local = threading.local()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), ())

    def _packer(self) -> msgpack.Packer:
        packer = msgpack.Packer(
            default=self._default, strict_types=True, use_bin_type=True, datetime=False
        )
        self._local.packer = packer
        return packer

    def _unpacker(self) -> msgpack.Unpacker:
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, ext_hook=self._ext_hook, timestamp=0
        )
        self._local.unpacker = unpacker
        return unpacker

    def _pack(self, obj: Any) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            obj, default=self._default, strict_types=True, use_bin_type=True, datetime=False
        )

    def _default(self, obj: Any) -> Any:
        pack = self._pack
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, pack(list(obj)))
        if isinstance(obj, _dt.datetime):
            off = obj.utcoffset()
            naive = obj.replace(tzinfo=None)
            return msgpack.ExtType(
                _EXT_DATETIME,
                pack(
                    [
                        naive.isoformat(),
                        None if off is None else off // _dt.timedelta(microseconds=1),
                    ]
                ),
            )
        if isinstance(obj, _dt.date):
            return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
        if isinstance(obj, _dt.time):
            if obj.tzinfo is not None:
                raise TypeError("timezone-aware time objects are not supported")
            return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode())
        if isinstance(obj, _dt.timedelta):
            return msgpack.ExtType(_EXT_TIMEDELTA, pack([obj.days, obj.seconds, obj.microseconds]))
        if isinstance(obj, decimal.Decimal):
            return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
        if isinstance(obj, uuid.UUID):
            return msgpack.ExtType(_EXT_UUID, obj.bytes)
        if isinstance(obj, BaseException):
            args = list(obj.args)
            try:
                packed_args = pack(args)
            except (TypeError, ValueError, OverflowError):
                packed_args = pack([exception_message(obj)])
            return msgpack.ExtType(_EXT_EXCEPTION, pack([remote_type_name(obj)]) + packed_args)
        if isinstance(obj, frozenset):
            return msgpack.ExtType(_EXT_FROZENSET, pack(list(obj)))
        if isinstance(obj, set):
            return msgpack.ExtType(_EXT_SET, pack(list(obj)))
        # strict_types sends subclasses here: bool/int/float/str/bytes/list/dict subclasses
        # (IntEnum, OrderedDict, ...) go as their base type.
        if isinstance(obj, bool):
            return bool(obj)
        if isinstance(obj, int):
            if -(2**63) <= obj < 2**64:
                return int(obj)
            return msgpack.ExtType(_EXT_BIGINT, str(int(obj)).encode())
        for base in (float, str, bytes, list, dict):
            if isinstance(obj, base):
                return base(obj)  # type: ignore[arg-type]
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        raise TypeError(f"cannot serialize {type(obj).__qualname__!r} object")

    @staticmethod
    def _ext_hook(code: int, data: bytes) -> Any:
        unpack = MsgpackSerializer._unpack
        if code == _EXT_TUPLE:
            return tuple(unpack(data))
        if code == _EXT_DATETIME:
            iso, off = unpack(data)
            value = _dt.datetime.fromisoformat(iso)
            if off is not None:
                value = value.replace(tzinfo=_dt.timezone(_dt.timedelta(microseconds=off)))
            return value
        if code == _EXT_DATE:
            return _dt.date.fromisoformat(data.decode())
        if code == _EXT_TIME:
            return _dt.time.fromisoformat(data.decode())
        if code == _EXT_TIMEDELTA:
            days, seconds, micros = unpack(data)
            return _dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == _EXT_DECIMAL:
            return decimal.Decimal(data.decode())
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_SET:
            return set(unpack(data))
        if code == _EXT_FROZENSET:
            return frozenset(unpack(data))
        if code == _EXT_BIGINT:
            return int(data.decode())
        if code == _EXT_EXCEPTION:
            unpacker = msgpack.Unpacker(
                raw=False, strict_map_key=False, ext_hook=MsgpackSerializer._ext_hook
            )
            unpacker.feed(data)
            (type_name,) = next(unpacker)
            args = next(unpacker)
            return rebuild_exception(str(type_name), list(args))
        return msgpack.ExtType(code, data)

    @staticmethod
    def _unpack(data: bytes) -> Any:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            ext_hook=MsgpackSerializer._ext_hook,
            timestamp=0,
            use_list=True,
        )

    def dumps(self, obj: Any) -> bytes:
        packer = getattr(self._local, "packer", None) or self._packer()
        try:
            return packer.pack(obj)  # type: ignore[no-any-return]
        except Exception as exc:
            self._packer()  # a failed pack may leave the buffer half-written
            if isinstance(exc, SerializationError):
                raise
            raise SerializationError(f"msgpack cannot serialize: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        if len(data) > _REUSE_MAX:
            # A large value: one pass, no copy into (and growth of) the reused buffer.
            try:
                return self._unpack(data)
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
                raise SerializationError(f"msgpack cannot deserialize: {reason}") from exc
        unpacker = getattr(self._local, "unpacker", None) or self._unpacker()
        try:
            start = unpacker.tell()
            unpacker.feed(data)
            obj = unpacker.unpack()
            if unpacker.tell() - start != len(data):
                raise ValueError("extra data after the value")
            return obj
        except Exception as exc:
            self._unpacker()  # drop whatever is left in the buffer
            reason = str(exc) or type(exc).__name__
            raise SerializationError(f"msgpack cannot deserialize: {reason}") from exc


class JSONSerializer:
    """JSON (UTF-8). Only JSON's own types survive; tuples arrive as lists."""

    name = "json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"json cannot serialize: {exc}") from exc

    def loads(self, data: bytes) -> Any:
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SerializationError(f"json cannot deserialize: {exc}") from exc


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
