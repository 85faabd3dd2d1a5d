"""Out-of-band buffers for the msgpack serializer: large ``bytes``, ``bytearray``,
``memoryview``, numpy arrays and other buffer-protocol objects travel as ZeroMQ frames of their
own beside the msgpack payload, which refers to each by its index (extension type 12, or 13 for
a numpy array: dtype, shape and the index). The payload stays small; the buffers are never
copied into it, and on the receiving side are handed on without another copy.

No zmq here: the buffers are plain Python objects; the protocol carries them as frames.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import msgpack

from .protocol import MAX_BUFFERS

__all__ = [
    "BUFFER_MIN",
    "EXT_BUFFER",
    "EXT_NDARRAY",
    "MAX_BUFFERS",
    "buffer_ext",
    "extract",
    "ndarray_from",
    "ndarray_parts",
    "received",
]

EXT_BUFFER = 12
EXT_NDARRAY = 13

#: Buffers at least this large (in bytes) go out of band; smaller ones stay in the payload,
#: where one copy costs less than a frame of their own.
BUFFER_MIN = 16384

_BUFFER_TYPES = (bytes, bytearray, memoryview)
_BUFFER_SET = frozenset(_BUFFER_TYPES)
_SCALARS = frozenset({str, int, float, bool, type(None)})
_INDEX = 4  # bytes of the index in an EXT_BUFFER value (big-endian)
# numpy dtype kinds that are plain bytes: bool, ints, floats, complex, datetimes, strings.
_ARRAY_KINDS = frozenset("biufcmMSU")
_MAX_DIMS = 32


def nbytes(buf: Any) -> int:
    """Bytes in ``buf``: ``bytes``, a memoryview, a received frame or any buffer (an array
    handed over by a user's serializer, whose ``len`` counts elements)."""
    if type(buf) is bytes:
        return len(buf)
    if type(buf) is memoryview:
        return buf.nbytes
    return memoryview(buf).nbytes


def buffer_ext(buf: Any, out: list[Any], minimum: int) -> Any:
    """``buf`` itself, or (when large enough and the message has room) an extension value
    referring to it, appended to ``out``."""
    if type(buf) is memoryview:
        if not buf.contiguous or buf.nbytes < minimum or len(out) >= MAX_BUFFERS:
            return buf
        if buf.format != "B" or buf.ndim != 1:
            buf = buf.cast("B")
    elif len(buf) < minimum or len(out) >= MAX_BUFFERS:
        return buf
    out.append(buf)
    return msgpack.ExtType(EXT_BUFFER, (len(out) - 1).to_bytes(_INDEX, "big"))


def extract(obj: Any, out: list[Any], minimum: int) -> Any:
    """``obj`` with every large ``bytes``/``bytearray``/``memoryview`` in its lists, tuples and
    dict values replaced by a reference to ``out`` (msgpack packs those three types itself, so
    they never reach the packer's ``default``). Containers without buffers are returned as they
    are; lists of scalars cost one C-level pass."""
    t = type(obj)
    if t in _BUFFER_TYPES:
        return buffer_ext(obj, out, minimum)
    if t is list or t is tuple:
        if _SCALARS.issuperset(map(type, obj)):
            return obj
        new = [extract(x, out, minimum) for x in obj]
        return new if t is list else tuple(new)
    if t is dict:
        if _SCALARS.issuperset(map(type, obj.values())):
            return obj
        return {k: extract(v, out, minimum) for k, v in obj.items()}
    return obj


def received(buffers: Sequence[Any], index: bytes, memoryviews: bool) -> Any:
    """The out-of-band buffer an EXT_BUFFER value refers to, as ``bytes`` (or a read-only
    ``memoryview`` when ``memoryviews``)."""
    if len(index) != _INDEX:
        raise ValueError("bad out-of-band buffer reference")
    i = int.from_bytes(index, "big")
    if i >= len(buffers):
        raise ValueError(f"reference to out-of-band buffer {i}, but {len(buffers)} arrived")
    buf = buffers[i]
    if memoryviews:
        return buf.toreadonly() if type(buf) is memoryview else memoryview(buf)
    return buf if type(buf) is bytes else bytes(buf)


# -- numpy (optional: only touched when a numpy array is sent or received) ------------------


def is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.ndarray)


def is_numpy_scalar(obj: Any) -> bool:
    """Whether ``obj`` is a numpy scalar (``numpy.int64(5)``): sent as the Python number it
    holds (``.item()``), not as its bytes, though it has the buffer protocol."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, np.generic)


def numpy_scalar_value(obj: Any) -> Any:
    """The Python value a numpy scalar holds (``.item()``): datetime64 and timedelta64 finer
    than microseconds are taken to the microsecond first, so that they become ``datetime``
    and ``timedelta`` (their ``.item()`` is a bare int of nanoseconds)."""
    import numpy as np

    kind = obj.dtype.kind
    if kind in "mM" and np.datetime_data(obj.dtype)[0] in ("ns", "ps", "fs", "as"):
        obj = obj.astype("M8[us]" if kind == "M" else "m8[us]")
    return obj.item()


def ndarray_parts(arr: Any) -> tuple[str, list[int], Any]:
    """``(dtype, shape, data)`` of a numpy array; ``data`` is a flat uint8 view (a copy only
    when the array is not C-contiguous).

    Raises:
        TypeError: object arrays and structured dtypes (they are not plain bytes).
    """
    import numpy as np

    dtype = arr.dtype
    if dtype.kind not in _ARRAY_KINDS or dtype.hasobject or dtype.names is not None:
        raise TypeError(f"cannot serialize a numpy array of dtype {dtype}")
    flat = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    return dtype.str, list(arr.shape), flat


def ndarray_from(dtype: Any, shape: Any, data: Any) -> Any:
    """A numpy array over ``data`` (no copy; read-only when ``data`` is).

    Raises:
        ValueError: numpy is missing, or the dtype, shape or size is not acceptable.
    """
    try:
        import numpy as np
    except ImportError:
        raise ValueError("a numpy array arrived, but numpy is not installed") from None
    if not isinstance(dtype, str) or not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise ValueError("bad numpy array header")
    if not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError("bad numpy array shape")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"bad numpy dtype {dtype!r}") from None
    if dt.kind not in _ARRAY_KINDS or dt.hasobject or dt.names is not None:
        raise ValueError(f"refused numpy dtype {dtype!r}")
    count = 1
    for n in shape:
        count *= n
    if count * dt.itemsize != nbytes(data):
        raise ValueError("numpy array size does not match its data")
    if count == 0:
        return np.empty(shape, dtype=dt)
    return np.frombuffer(data, dtype=dt).reshape(shape)
