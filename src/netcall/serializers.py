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

Out-of-band buffers: a serializer may also have ``dumps_buffers(obj, buffers) -> bytes`` (append
large buffers to the list ``buffers``, refer to them by index in the payload) and
``loads_buffers(data, buffers) -> obj``. netcall then sends each buffer as a ZeroMQ frame of its
own (like pickle protocol 5's out-of-band buffers): it is never copied into the payload, and a
``bytes`` buffer of at least 2 MiB is sent without any copy at all (``copy=False``; copied
under gevent's ``monkey.patch_all()``, where pyzmq's thread for it would be a greenlet). msgpack
and pickle have them; at most :data:`MAX_BUFFERS` buffers travel with one message (the rest
stay inline), and a message arriving with more is refused.

msgpack and JSON bound how deeply values nest (``max_depth``, default :data:`DEFAULT_MAX_DEPTH`)
on both ends: a value beyond it raises :class:`~netcall.errors.SerializationError` where it is
encoded, and a hostile message beyond it is refused where it is decoded, never a crash.
"""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from msgpack import ExtraData

from . import _buffers
from ._buffers import BUFFER_MIN, MAX_BUFFERS
from ._msgpack import Codec, reason
from .errors import SerializationError

__all__ = [
    "BUFFER_MIN",
    "DEFAULT_MAX_DEPTH",
    "MAX_BUFFERS",
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
        buffer_min: ``bytes``, ``bytearray``, ``memoryview``, numpy arrays and other
            buffer-protocol objects at least this large (default :data:`BUFFER_MIN`, 16 KiB)
            travel out of band, as ZeroMQ frames of their own, when netcall sends them
            (``dumps`` alone keeps everything inline). They arrive as ``bytes``, made by the one
            copy out of the ZeroMQ message; numpy arrays arrive over the received ZeroMQ
            message itself, without any copy. Lists, tuples and dict values are searched for them; a
            buffer used as a dict key or in a set stays inline.
        memoryviews: hand out-of-band buffers on as read-only ``memoryview`` objects over the
            received ZeroMQ frame (no copy at all) instead of ``bytes``.

    Buffers other than ``bytes`` (a ``bytearray``, an array...) are copied once into the
    ZeroMQ message when sent (below 2 MiB, ``bytes`` too: cheaper than ZeroMQ's zero-copy
    bookkeeping, as measured); ``bytes`` of 2 MiB or more are not copied at all.
    """

    name = "msgpack"

    def __init__(
        self,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        buffer_min: int = BUFFER_MIN,
        memoryviews: bool = False,
    ) -> None:
        self.max_depth = _valid_depth(max_depth)
        if isinstance(buffer_min, bool) or not isinstance(buffer_min, int) or buffer_min < 1:
            raise ValueError("buffer_min must be a positive integer")
        self.buffer_min = buffer_min
        self.memoryviews = bool(memoryviews)
        # One codec per thread (see netcall._msgpack.Codec).
        self._local = threading.local()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.max_depth, self.buffer_min, self.memoryviews))

    def _codec(self) -> Codec:
        """A fresh codec for this thread. The old one is unhooked first: an interruption
        (Ctrl-C) anywhere in here leaves this thread no codec, never a half-discarded one."""
        old = getattr(self._local, "codec", None)
        self._local.codec = None
        if old is not None:
            old.discard()
        codec = self._local.codec = Codec(self.max_depth, self.buffer_min, self.memoryviews)
        return codec

    def _decoder(self) -> Codec:
        """This thread's codec, afresh if a decode on it was interrupted (its unpacker may
        still hold that message)."""
        codec: Codec | None = getattr(self._local, "codec", None)
        if codec is None or codec.busy:
            return self._codec()
        return codec

    def dumps_buffers(self, obj: Any, buffers: list[Any]) -> bytes:
        """Encode ``obj``, appending its large buffers to ``buffers`` (see ``buffer_min``);
        the payload refers to them by their index in that list.

        Raises:
            SerializationError: as :meth:`dumps`.
        """
        codec = getattr(self._local, "codec", None) or self._codec()
        # A guess, cheap enough for every message: is this a buffer, a call's arguments
        # starting or ending with one, or a small dict holding one? Then search it first;
        # otherwise a payload is searched only when it packed large (a buffer packed inline
        # first is a copy thrown away: 3.2 ms for a dict holding 16 MiB).
        t = type(obj)
        if t is list or t is tuple:
            if obj and (type(obj[0]) in _NATIVE or type(obj[-1]) in _NATIVE) and len(obj) <= 4:
                return self._dumps_large(codec, obj, buffers, None, len(buffers))
        elif t is dict and len(obj) <= 8:
            for v in obj.values():
                if type(v) in _NATIVE and len(v) >= self.buffer_min:
                    return self._dumps_large(codec, obj, buffers, None, len(buffers))
        elif t in _NATIVE:
            return self._dumps_large(codec, obj, buffers, None, len(buffers))
        codec.out = buffers  # the packer's default() sends numpy arrays and the like out of band
        start = len(buffers)
        try:
            data: bytes = codec.packer.pack(obj)
        except Exception as exc:
            del buffers[start:]
            raise self._failed(exc) from exc
        except BaseException:
            self._codec()
            raise
        codec.out = None
        if len(data) < self.buffer_min:
            return data
        return self._dumps_large(codec, obj, buffers, data, start)

    def _dumps_large(
        self, codec: Codec, obj: Any, buffers: list[Any], data: bytes | None, start: int
    ) -> bytes:
        """Pack ``obj`` with its buffers out of band; ``data``: how it packed with msgpack's
        own buffers inline (kept if it has none), whose own buffers (numpy arrays and the
        like) were appended to ``buffers`` from ``start`` on."""
        minimum = self.buffer_min
        codec.out = buffers
        try:
            if data is not None:
                # Search it for buffers msgpack packed inline, and pack again without them.
                packed = len(buffers)  # numpy arrays and the like, found by the packer itself
                _buffers.extract(obj, buffers, minimum)
                if len(buffers) == packed:
                    return data
                del buffers[start:]
            return codec.packer.pack(_buffers.extract(obj, buffers, minimum))  # type: ignore[no-any-return]
        except Exception as exc:
            del buffers[start:]
            raise self._failed(exc) from exc
        finally:
            codec.out = None

    def _failed(self, exc: Exception) -> SerializationError:
        self._codec()  # start afresh: no state of a failed pack is kept
        if isinstance(exc, SerializationError):
            return exc
        return SerializationError(f"msgpack cannot serialize: {reason(exc)}")

    def loads_buffers(self, data: bytes, buffers: Sequence[Any]) -> Any:
        """Decode ``data``, whose out-of-band buffers arrived as ``buffers``.

        Raises:
            SerializationError: as :meth:`loads`, or a reference to a buffer that did not come.
        """
        codec = self._decoder()
        codec.inb = buffers
        try:
            return self.loads(data)
        finally:
            codec.inb = None

    def dumps(self, obj: Any) -> bytes:
        codec = getattr(self._local, "codec", None) or self._codec()
        try:
            return codec.packer.pack(obj)  # type: ignore[no-any-return]
        except Exception as exc:
            self._codec()  # start afresh: no state of a failed pack is kept
            if isinstance(exc, SerializationError):
                raise
            raise SerializationError(f"msgpack cannot serialize: {reason(exc)}") from exc
        except BaseException:
            self._codec()
            raise

    def loads(self, data: bytes) -> Any:
        codec = getattr(self._local, "codec", None)  # self._decoder(), inline: the hot path
        if codec is None or codec.busy:
            codec = self._codec()
        try:
            codec.busy = True
            obj = codec.loads_message(data)
            codec.busy = False
            return obj
        except Exception as exc:
            self._codec()  # drop whatever is left in the buffers
            why = "extra data after the value" if type(exc) is ExtraData else reason(exc)
            raise SerializationError(f"msgpack cannot deserialize: {why}") from exc
        except BaseException:  # (Ctrl-C inside an extension value: its Unpacker may still
            self._codec()  # hold part of this payload, which no later loads may return)
            raise


_NATIVE = frozenset({bytes, bytearray, memoryview})  # buffers msgpack packs itself


def _rebuild(
    cls: type[Any], max_depth: int, buffer_min: int = BUFFER_MIN, memoryviews: bool = False
) -> Any:
    return cls(max_depth=max_depth, buffer_min=buffer_min, memoryviews=memoryviews)


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

    def dumps_buffers(self, obj: Any, buffers: list[Any]) -> bytes:
        """Encode ``obj`` with protocol 5 or later: what pickle sends out of band
        (``pickle.PickleBuffer`` objects, numpy arrays) of at least
        :data:`BUFFER_MIN` bytes is appended to ``buffers``. Raises as :meth:`dumps`."""
        start = len(buffers)

        def inline(buf: pickle.PickleBuffer) -> bool:
            view = buf.raw()
            if view.nbytes < BUFFER_MIN or len(buffers) >= MAX_BUFFERS:
                return True
            buffers.append(view)
            return False

        try:
            return pickle.dumps(obj, max(self.protocol, 5), buffer_callback=inline)
        except Exception as exc:
            del buffers[start:]
            raise SerializationError(f"pickle cannot serialize: {exc}") from exc

    def loads_buffers(self, data: bytes, buffers: Sequence[Any]) -> Any:
        """Decode ``data`` with its out-of-band ``buffers``. Raises as :meth:`loads`."""
        try:
            return pickle.loads(data, buffers=buffers)
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
