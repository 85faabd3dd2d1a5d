"""Values to payloads and back, with out-of-band buffers when the serializer has them (see
:mod:`netcall.serializers`). The one place the cores call a serializer for a value."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import SerializationError
from .serializers import MsgpackSerializer, PickleSerializer, Serializer

__all__ = ["Dump", "Load", "buffers_loader", "dumper", "loader"]

#: ``dump(value, buffers) -> payload``: appends the value's out-of-band buffers to ``buffers``.
Dump = Callable[[Any, list[Any]], bytes]
#: ``load(payload)``: ``payload`` is ``bytes`` or a message with ``payload`` and ``buffers``.
Load = Callable[[Any], Any]


def dumper(serializer: Serializer) -> Dump:
    """How values are encoded with ``serializer``.

    The returned callable raises what the serializer raises.
    """
    dumps_buffers = getattr(serializer, "dumps_buffers", None)
    if callable(dumps_buffers):
        if type(serializer) in (MsgpackSerializer, PickleSerializer):
            return dumps_buffers  # type: ignore[no-any-return]
        return _checked(serializer.name, dumps_buffers)
    dumps = serializer.dumps

    def dump(value: Any, buffers: list[Any]) -> bytes:
        return dumps(value)

    return dump


def _checked(name: str, dumps_buffers: Dump) -> Dump:
    """``dumps_buffers`` of a serializer of the user's, with the buffers it hands over
    checked: each must be ``bytes`` or a C-contiguous buffer (what ZeroMQ can send as a
    frame); else the value fails with :class:`SerializationError`. netcall's own serializers
    make only such buffers."""

    def dump(value: Any, buffers: list[Any]) -> bytes:
        start = len(buffers)
        data = dumps_buffers(value, buffers)
        for buf in buffers[start:]:
            if type(buf) is bytes:
                continue
            try:
                contiguous = memoryview(buf).c_contiguous
            except TypeError:
                contiguous = False
            if not contiguous:
                del buffers[start:]
                raise SerializationError(
                    f"{name!r} serializer: an out-of-band buffer must be bytes or a C-contiguous "
                    f"buffer, not {type(buf).__qualname__}"
                )
        return data

    return dump


def loader(serializer: Serializer) -> Load:
    """How payloads are decoded with ``serializer``: from ``bytes``, or from a message
    (RESULT, ITEM, NEXT) carrying a payload and its buffers.

    The returned callable raises :class:`~netcall.errors.SerializationError` (or what the
    serializer raises) for a payload it cannot decode, and for buffers a serializer without
    ``loads_buffers`` received.
    """
    loads = serializer.loads
    with_buffers = buffers_loader(serializer)

    def load(payload: Any) -> Any:
        if type(payload) is bytes:
            return loads(payload)
        return with_buffers(payload.payload, payload.buffers)

    return load


def buffers_loader(serializer: Serializer) -> Callable[[bytes, Sequence[Any]], Any]:
    """``load(data, buffers)``: decodes a payload and its out-of-band buffers (a CALL's args
    and kwargs share one list). Raises as :func:`loader`'s callable."""
    name = serializer.name
    loads = serializer.loads
    loads_buffers = getattr(serializer, "loads_buffers", None)

    def load(data: bytes, buffers: Sequence[Any]) -> Any:
        if not buffers:
            return loads(data)
        if loads_buffers is None:
            raise SerializationError(f"out-of-band buffers arrived, but {name!r} takes none")
        return loads_buffers(data, buffers)

    return load
