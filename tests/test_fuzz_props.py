"""Property-based fuzzing of the sans-IO layers (issue 9): whatever bytes arrive, decoding
raises only the documented error, and values round-trip or are refused cleanly.

``nox -s fuzz`` runs these with many more examples (``HYPOTHESIS_PROFILE=fuzz``).
"""

from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from netcall import protocol as p  # noqa: E402
from netcall.errors import ProtocolError, SerializationError  # noqa: E402
from netcall.serializers import JSONSerializer, MsgpackSerializer  # noqa: E402

settings.register_profile("default", max_examples=200, deadline=None)
settings.register_profile(
    "fuzz", max_examples=5_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

MSGPACK = MsgpackSerializer(max_depth=8)
JSON = JSONSerializer(max_depth=8)

headers = st.builds(
    lambda kind, rid, version, tail: p.HEADER.pack(p.MAGIC, version, kind, rid) + tail,
    st.integers(0, 20),
    st.integers(0, 2**64 - 1),
    st.sampled_from([p.VERSION, p.VERSION, 0, 1, 255]),
    st.binary(max_size=40),
)
frames = st.lists(st.one_of(headers, st.binary(max_size=60)), min_size=0, max_size=5)


@given(frames)
def test_protocol_decode_raises_only_protocol_error(msg):
    try:
        p.decode(msg)
    except ProtocolError:
        pass


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=60,
)


def depth(value):
    if isinstance(value, list | tuple):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def ext_depth(value):
    """Tuples nested in tuples: what msgpack's max_depth counts."""
    if isinstance(value, tuple):
        return 1 + max((ext_depth(v) for v in value), default=0)
    if isinstance(value, list):
        return max((ext_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return max((ext_depth(v) for v in value.values()), default=0)
    return 0


@given(values)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_msgpack_round_trips_or_refuses(value):
    try:
        data = MSGPACK.dumps(value)
    except SerializationError:
        assert ext_depth(value) > 8
        return
    assert ext_depth(value) <= 8
    assert MSGPACK.loads(data) == value


@given(values)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_json_round_trips_or_refuses(value):
    try:
        data = JSON.dumps(value)
    except SerializationError:
        assert depth(value) > 8 or _has_bytes(value)
        return
    assert depth(value) <= 8
    JSON.loads(data)


def _has_bytes(value):
    if isinstance(value, bytes):
        return True
    if isinstance(value, list | tuple):
        return any(_has_bytes(v) for v in value)
    if isinstance(value, dict):
        return any(_has_bytes(v) for v in value.values())
    return False


@given(st.binary(max_size=300))
def test_garbage_decodes_to_a_value_or_a_serialization_error(data):
    for ser in (MSGPACK, JSON):
        try:
            ser.loads(data)
        except SerializationError:
            pass


@given(values, st.integers(0, 400), st.binary(max_size=8))
def test_truncated_or_corrupted_msgpack(value, cut, noise):
    try:
        data = MSGPACK.dumps(value)
    except SerializationError:
        return
    for bad in (data[:cut], data[:cut] + noise + data[cut:]):
        try:
            MSGPACK.loads(bad)
        except SerializationError:
            pass
    assert MSGPACK.loads(data) == value  # nothing of a failed decode is left behind
