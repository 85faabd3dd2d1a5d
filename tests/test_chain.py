"""Calls across services: a chain of three services, each in its own process (A → B → C)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from _chain import Chain
from netcall import RPCTimeoutError
from netcall.sync import SyncRPCClient

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def chain(tmp_path: Path) -> Any:
    with Chain(tmp_path, "ABC") as c:
        yield c


def test_chain_of_three_processes_answers(chain: Chain) -> None:
    with SyncRPCClient(timeout=10) as client:
        client.connect(chain.url)
        assert client.chain_sleep(0.01) == "A>B>C>slept"
    events = chain.events()
    assert [e["node"] for e in events if e["event"] == "start"] == ["A", "B", "C"]
    assert [e["node"] for e in events if e["event"] == "done"] == ["C", "B", "A"]


def test_a_timeout_cancels_every_handler_down_the_chain(chain: Chain) -> None:
    """Client timeout 0.3 s on A → B → C → sleep(10): each handler sees its cancellation
    within 0.1 s of 0.3 s."""
    with SyncRPCClient(timeout=10) as client:
        client.connect(chain.url)
        assert client.chain_sleep(0.01) == "A>B>C>slept"  # connections up
        start = len(chain.events())
        t0 = time.monotonic()
        with pytest.raises(RPCTimeoutError):
            client.call("chain_sleep", 10, timeout=0.3)
    events = chain.wait_events(
        lambda ev: sum(e["event"] == "cancelled" for e in ev[start:]) >= 3, timeout=5
    )[start:]
    cancelled = {e["node"]: e["t"] - t0 for e in events if e["event"] == "cancelled"}
    assert set(cancelled) == {"A", "B", "C"}, events
    for node, at in cancelled.items():
        assert 0.25 <= at <= 0.4, (node, at, cancelled)
    assert not [e for e in events if e["event"] in ("done", "error")], events


def test_deadlines_shrink_down_the_chain(chain: Chain) -> None:
    with SyncRPCClient(timeout=10) as client:
        client.connect(chain.url)
        hops = client.call("remaining_chain", timeout=2.0)
    assert [name for name, _ in hops] == ["A", "B", "C"]
    left = [remaining for _, remaining in hops]
    assert 1.5 < left[0] <= 2.0
    assert left[0] >= left[1] >= left[2] > 1.4, left


@pytest.mark.parametrize("method", ["shielded_nested", "threaded_nested"])
def test_a_nested_call_with_02s_left_fails_by_02s(chain: Chain, method: str) -> None:
    """A's handler waits until 0.2 s are left, then calls B with a client whose timeout is
    30 s (from a shielded task, or a blocking client in a worker thread): RPCTimeoutError by
    0.2 s."""
    with SyncRPCClient(timeout=10) as client:
        client.connect(chain.url)
        client.remaining_chain()  # connections up
        start = len(chain.events())
        with pytest.raises(RPCTimeoutError):
            client.call(method, 0.2, timeout=0.8)
    events = chain.wait_events(
        lambda ev: any(
            e["event"].startswith("nested-") and e["event"] != "nested-start" for e in ev[start:]
        ),
        timeout=5,
    )[start:]
    ends = [
        e
        for e in events
        if e["node"] == "A" and e["event"] != "nested-start" and e["event"].startswith("nested-")
    ]
    assert ends and ends[0]["event"] == "nested-timeout", events
    assert 0.1 <= ends[0]["elapsed"] <= 0.3, ends[0]
    # B (and C) were told: their handlers were cancelled too.
    events = chain.wait_events(
        lambda ev: {"B", "C"} <= {e["node"] for e in ev[start:] if e["event"] == "cancelled"},
        timeout=5,
    )[start:]
    assert {"B", "C"} <= {e["node"] for e in events if e["event"] == "cancelled"}, events


def test_metadata_is_per_hop(chain: Chain) -> None:
    with SyncRPCClient(timeout=10) as client:
        client.connect(chain.url)
        hops = client.call("metadata_chain", metadata={"request-id": "42"})
    assert hops == [["A", {"request-id": "42"}], ["B", {}], ["C", {}]]
