"""Calls across services: a chain of three services, each in its own process (A → B → C)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from _chain import Chain
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
