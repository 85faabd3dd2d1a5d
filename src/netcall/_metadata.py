"""Call metadata: ``str`` keys and values that travel with a call or a stream opening.

Keys are lowercase ASCII tokens (the characters of an HTTP header name, lowercase):
``a-z 0-9 ! # $ % & ' * + - . ^ _ ` | ~``. Values are any ``str``. netcall never interprets
metadata, except the keys an integration documents (``traceparent``, ``tracestate`` and
``baggage`` for :mod:`netcall.otel`).

Limits (the defaults, like HTTP/2 header lists): at most :data:`MAX_METADATA_ITEMS` entries
and :data:`MAX_METADATA_BYTES` bytes of keys and values (UTF-8) in total. A client checks before
sending (``ValueError``, nothing sent); a service refuses a call over the limits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_METADATA_BYTES", "MAX_METADATA_ITEMS", "check_metadata"]

#: At most this many metadata entries on one call.
MAX_METADATA_ITEMS = 64
#: At most this many bytes of keys and values (UTF-8) on one call.
MAX_METADATA_BYTES = 32 * 1024
#: A key is at most this long.
MAX_KEY_LENGTH = 256

_KEY = re.compile(r"[a-z0-9!#$%&'*+\-.^_`|~]+\Z")


def check_metadata(metadata: Mapping[Any, Any] | None) -> dict[str, str]:
    """A validated copy of ``metadata`` (``{}`` for ``None``).

    Raises:
        ValueError: a key is not a lowercase ASCII token, a value is not a ``str`` (or not
            encodable as UTF-8), or the metadata is over :data:`MAX_METADATA_ITEMS` entries or
            :data:`MAX_METADATA_BYTES` bytes.
    """
    if not metadata:
        return {}
    if not isinstance(metadata, Mapping):
        raise ValueError(f"metadata must be a mapping of str to str, not {type(metadata).__name__}")
    if len(metadata) > MAX_METADATA_ITEMS:
        raise ValueError(f"metadata has {len(metadata)} entries; the limit is {MAX_METADATA_ITEMS}")
    size = 0
    out: dict[str, str] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
            raise ValueError(
                f"metadata key {key!r} is not a lowercase ASCII token "
                f"(a-z, 0-9 and !#$%&'*+-.^_`|~, at most {MAX_KEY_LENGTH} characters)"
            )
        if not isinstance(value, str):
            raise ValueError(
                f"metadata value for {key!r} must be a str, not {type(value).__name__}"
            )
        try:
            size += len(key) + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"metadata value for {key!r} is not valid text") from None
        out[key] = value
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes; the limit is {MAX_METADATA_BYTES} bytes")
    return out
