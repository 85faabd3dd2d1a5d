"""The rate-limited log: a flood of events writes a bounded number of lines, all counted."""

from __future__ import annotations

import logging

import pytest

from netcall._ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(caplog):
    caplog.set_level(logging.DEBUG, logger="netcall.test")
    clock = Clock()
    rlog = RateLimitedLog(logging.getLogger("netcall.test"), burst=3, interval=10.0, clock=clock)
    return rlog, clock, caplog


def lines(caplog):
    return [r.getMessage() for r in caplog.records]


def test_a_flood_writes_burst_then_one_summary_per_window(setup):
    rlog, clock, caplog = setup
    logged = [rlog("malformed", logging.WARNING, "bad message %d", i) for i in range(100_000)]
    assert logged[:3] == [True, True, True] and not any(logged[3:])
    assert lines(caplog) == ["bad message 0", "bad message 1", "bad message 2"]
    assert rlog.count("malformed") == 100_000
    clock.now += 10.0
    rlog("malformed", logging.WARNING, "bad message %d", 100_000)
    out = lines(caplog)
    assert len(out) == 5
    assert "99997 more malformed event(s)" in out[3] and "100001 in all" in out[3]
    assert out[4] == "bad message 100000"  # a new window, a new burst


def test_kinds_have_their_own_budget(setup):
    rlog, _clock, caplog = setup
    for _ in range(10):
        rlog("malformed", logging.WARNING, "m")
        rlog("refused", logging.INFO, "r")
    assert lines(caplog).count("m") == 3 and lines(caplog).count("r") == 3
    assert rlog.counts == {"malformed": 10, "refused": 10}


def test_flush_reports_what_a_finished_flood_left(setup):
    rlog, clock, caplog = setup
    for _ in range(7):
        rlog("malformed", logging.WARNING, "m")
    rlog.flush()
    assert len(caplog.records) == 3  # the window is not over yet
    clock.now += 11
    rlog.flush()
    assert "4 more malformed" in lines(caplog)[-1]
    rlog.flush()
    assert len(caplog.records) == 4  # nothing more to say


def test_quiet_kinds_write_nothing_extra(setup):
    rlog, clock, caplog = setup
    rlog("error", logging.ERROR, "boom", exc_info=ValueError("x"))
    clock.now += 100
    rlog.flush()
    rlog("error", logging.ERROR, "boom again")
    assert lines(caplog) == ["boom", "boom again"]
    assert caplog.records[0].exc_info is not None


def test_bad_arguments():
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("x"), interval=0)
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("x"), burst=-1)
