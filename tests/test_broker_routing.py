"""The broker's routing table on its own (sans-IO): frames in, frames out, no sockets."""

from __future__ import annotations

import logging
import time

import pytest

from netcall import protocol as p
from netcall._broker import table
from netcall._broker.routing import Router


class Wire:
    """Collects what the router sends, per side."""

    def __init__(self) -> None:
        self.clients: list[list[bytes]] = []
        self.services: list[list[bytes]] = []

    def take(self, side: str) -> list[list[bytes]]:
        sent: list[list[bytes]] = getattr(self, side)
        out = list(sent)
        sent.clear()  # in place: the router holds this list's append
        return out


def hello(router: Router, peer: bytes, methods: list[str], limit: int | None = None) -> None:
    router.on_backend([peer, *p.Hello({m: {} for m in methods}, limit).to_frames()])


def call(
    router: Router, client: bytes, rid: int, method: str, timeout: float = 0.0, window: int = 0
) -> None:
    msg = p.Call(rid, method, "msgpack", b"\x90", None, timeout, 0, window)
    router.on_frontend([client, *msg.to_frames()])


def head(frames: list[bytes]) -> tuple[int, int]:
    return p.decode_header(frames[1])


def reply(router: Router, peer: bytes, kind: int, brid: int, payload: bytes = b"") -> None:
    router.on_backend([peer, p.header(kind, brid) + payload])


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.fixture
def router(wire: Wire) -> Router:
    return Router(wire.clients.append, wire.services.append, max_queue=3, startup_grace=0)


def test_routes_by_method_and_rewrites_ids(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["math.add"])
    hello(router, b"S2", ["users.get"])
    call(router, b"C1", 7, "users.get")
    [sent] = wire.take("services")
    assert sent[0] == b"S2"
    kind, brid = head(sent)
    assert kind == p.Kind.CALL and brid != 7
    reply(router, b"S2", p.Kind.RESULT, brid, b"\xc0")
    [back] = wire.take("clients")
    assert back[0] == b"C1" and head(back) == (p.Kind.RESULT, 7)
    assert router.stats()["in_flight"] == 0


def test_unknown_method_fails_at_once(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["math.add"])
    call(router, b"C1", 1, "nope")
    [err] = wire.take("clients")
    assert head(err) == (p.Kind.ERROR, 1) and err[2] == b"netcall.MethodNotFound"


def test_least_loaded_and_max_concurrent(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"], limit=1)
    hello(router, b"S2", ["f"], limit=2)
    for rid in range(1, 5):
        call(router, b"C1", rid, "f")
    sent = wire.take("services")
    assert sorted(s[0] for s in sent) == [b"S1", b"S2", b"S2"]  # the fourth waits
    assert router.stats()["queued"] == 1
    s1 = next(s for s in sent if s[0] == b"S1")
    reply(router, b"S1", p.Kind.RESULT, head(s1)[1])
    [moved] = wire.take("services")
    assert moved[0] == b"S1" and router.stats()["queued"] == 0


def test_queue_is_bounded(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"], limit=1)
    for rid in range(1, 6):
        call(router, b"C1", rid, "f")
    errors = wire.take("clients")
    assert [(head(e)[1], e[2]) for e in errors] == [(5, b"netcall.Busy")]
    assert router.stats()["queued"] == 3


def test_queued_call_expires_at_its_deadline(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"], limit=1)
    call(router, b"C1", 1, "f")
    call(router, b"C1", 2, "f", timeout=0.01)
    time.sleep(0.02)
    router.tick()
    [err] = wire.take("clients")
    assert head(err) == (p.Kind.ERROR, 2) and err[2] == b"netcall.Timeout"
    assert router.stats()["queued"] == 0


def test_cancel_of_a_queued_call_removes_it(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"], limit=1)
    call(router, b"C1", 1, "f")
    call(router, b"C1", 2, "f")
    router.on_frontend([b"C1", p.header(p.Kind.CANCEL, 2)])
    assert router.stats()["queued"] == 0
    assert wire.take("clients") == []


def test_streams_stick_and_end(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["gen"])
    hello(router, b"S2", ["gen"])
    call(router, b"C1", 1, "gen")
    [sent] = wire.take("services")
    owner, brid = sent[0], head(sent)[1]
    router.on_backend([owner, *p.StreamOpen(brid, 30.0).to_frames()])
    for _ in range(5):
        router.on_frontend([b"C1", *p.Credit(1, 10).to_frames()])
        router.on_frontend([b"C1", *p.Next(1, b"\xc0").to_frames()])
    assert {s[0] for s in wire.take("services")} == {owner}
    reply(router, owner, p.Kind.ITEM, brid, b"\x01")
    reply(router, owner, p.Kind.END, brid)
    assert [head(m) for m in wire.take("clients")] == [
        (p.Kind.STREAM, 1),
        (p.Kind.ITEM, 1),
        (p.Kind.END, 1),
    ]
    assert router.stats()["in_flight"] == 0
    # After the end, the client's messages for that stream are answered by the broker.
    router.on_frontend([b"C1", *p.Next(1, b"\xc0").to_frames()])
    router.on_frontend([b"C1", p.header(p.Kind.CANCEL, 1)])
    assert [m[2] if len(m) > 2 else head(m) for m in wire.take("clients")] == [
        b"netcall.StreamClosed",
        (p.Kind.END, 1),
    ]


def test_service_gone_fails_its_calls_with_connection_lost(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"])
    call(router, b"C1", 1, "f")
    call(router, b"C2", 1, "f")
    wire.take("services")
    router.service_gone(b"S1")
    errors = wire.take("clients")
    assert sorted(e[0] for e in errors) == [b"C1", b"C2"]
    assert {e[2] for e in errors} == {b"netcall.ConnectionLost"}
    call(router, b"C1", 2, "f")
    [err] = wire.take("clients")
    assert err[2] == b"netcall.MethodNotFound"


def test_client_gone_cancels_its_routes(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"])
    call(router, b"C1", 1, "f")
    call(router, b"C2", 1, "f")
    sent = wire.take("services")
    router.client_gone(b"C1")
    [cancel] = wire.take("services")
    assert head(cancel) == (p.Kind.CANCEL, head(sent[0])[1])
    assert router.stats()["in_flight"] == 1


def test_busy_service_gets_the_call_again_elsewhere(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"])
    hello(router, b"S2", ["f"])
    call(router, b"C1", 1, "f")
    [first] = wire.take("services")
    refusal = p.Error(head(first)[1], "netcall.Busy", "full").to_frames()
    router.on_backend([first[0], *refusal])
    [again] = wire.take("services")
    assert again[0] != first[0]
    assert wire.take("clients") == []


def test_bye_drains_the_service(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"])
    hello(router, b"S2", ["f"])
    router.on_backend([b"S1", *p.Bye().to_frames()])
    for rid in range(1, 5):
        call(router, b"C1", rid, "f")
    assert {s[0] for s in wire.take("services")} == {b"S2"}


def test_a_stopping_service_learns_its_bye_was_read(router: Router, wire: Wire) -> None:
    # After its BYE a service PINGs the broker; the PONG (same id) follows every call the
    # broker sent it before it read the BYE, on the same connection.
    hello(router, b"S1", ["f"])
    call(router, b"C1", 1, "f")
    [sent] = wire.take("services")
    router.on_backend([b"S1", *p.Bye().to_frames()])
    router.on_backend([b"S1", *p.Ping(2**62 + 5).to_frames()])
    [pong] = wire.take("services")
    assert pong[0] == b"S1" and head(pong) == (p.Kind.PONG, 2**62 + 5)
    # the call it refuses as busy waits for another service
    router.on_backend([b"S1", *p.Error(head(sent)[1], "netcall.Busy", "stopping").to_frames()])
    assert wire.take("services") == [] and wire.take("clients") == []
    hello(router, b"S2", ["f"])
    [again] = wire.take("services")
    assert again[0] == b"S2"


def test_methods_are_answered_by_the_broker(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["math.add"])
    hello(router, b"S2", ["users.get", "math.add"])
    call(router, b"C1", 1, "_netcall.methods")
    [res] = wire.take("clients")
    import msgpack

    assert sorted(msgpack.unpackb(p.payload_of(res[1:]))) == ["math.add", "users.get"]


def test_garbage_is_counted_and_never_raises(router: Router, wire: Wire) -> None:
    hello(router, b"S1", ["f"])
    for frames in ([b"C1"], [b"C1", b"xx"], [b"C1", p.header(p.Kind.RESULT, 3)]):
        router.on_frontend(frames)
    for frames in ([b"S1"], [b"S1", b"junk"], [b"S1", p.header(p.Kind.HELLO, 0), b"[1,2]"]):
        router.on_backend(frames)
    assert router.stats()["errors"]["malformed"] >= 4


def test_credit_through_the_broker_is_capped(router: Router, wire: Wire) -> None:
    from netcall._broker.table import MAX_CREDIT

    hello(router, b"S1", ["gen"])
    call(router, b"C1", 1, "gen", window=10**6)
    [sent] = wire.take("services")
    assert p.decode(sent[1:]).window == MAX_CREDIT  # type: ignore[union-attr]
    brid = head(sent)[1]
    router.on_backend([b"S1", *p.StreamOpen(brid, 30.0).to_frames()])
    router.on_frontend([b"C1", *p.Credit(1, 5).to_frames()])
    assert wire.take("services") == []  # nothing more may be asked for yet
    for _ in range(3):
        reply(router, b"S1", p.Kind.ITEM, brid, b"\x01")
    router.on_frontend([b"C1", *p.Credit(1, 5).to_frames()])
    [credit] = wire.take("services")
    assert p.decode(credit[1:]) == p.Credit(brid, 3)


def test_the_callers_key_is_the_brokers_word(wire: Wire) -> None:
    key: list[str | None] = ["client-key"]
    router = Router(wire.clients.append, wire.services.append, caller_key=lambda: key[0])
    hello(router, b"S1", ["f"])
    spoofed = p.Call(1, "f", "msgpack", b"\x90", metadata={p.META_PEER_KEY: "spoof", "a": "b"})
    router.on_frontend([b"C1", *spoofed.to_frames()])
    [sent] = wire.take("services")
    assert p.decode(sent[1:]).metadata == {"a": "b", p.META_PEER_KEY: "client-key"}  # type: ignore[union-attr]
    key[0] = None  # a frontend without authentication: a claimed key is removed, none added
    spoofed.id = 2
    router.on_frontend([b"C1", *spoofed.to_frames()])
    [sent] = wire.take("services")
    assert p.decode(sent[1:]).metadata == {"a": "b"}  # type: ignore[union-attr]


@pytest.mark.timeout(30)
def test_services_beyond_the_limit_are_logged_at_a_bounded_rate(
    router: Router, wire: Wire, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: one WARNING per announcement beyond MAX_SERVICES, which a peer can repeat at will.
    caplog.set_level(logging.WARNING, logger="netcall.broker")
    monkeypatch.setattr(table, "MAX_SERVICES", 3)
    for i in range(3):
        hello(router, b"S%d" % i, ["f"])
    for i in range(1000):
        hello(router, b"X%d" % i, ["f"])
    lines = [r.getMessage() for r in caplog.records if r.name == "netcall.broker"]
    assert len(lines) == 5, len(lines)  # a burst per window
    assert lines == ["netcall broker: ignored a service beyond 3"] * 5
    assert len(router.services) == 3
    assert router.errors["malformed"] == 1000 and router.log.count("ignored service") == 1000


def test_calls_wait_for_a_method_whose_last_service_left(wire: Wire) -> None:
    """A worker restarting (or a stuck one killed, or the only service's rolling restart): the
    calls queued for its methods, and new ones, wait for a service to come back, as at startup,
    instead of failing at once with MethodNotFound ('no service has a method')."""
    router = Router(wire.clients.append, wire.services.append, startup_grace=0, rejoin_grace=30)
    hello(router, b"S1", ["m"], limit=1)
    call(router, b"C", 1, "m")
    call(router, b"C", 2, "m")  # no room on S1: queued
    assert [head(f)[0] for f in wire.take("services")] == [p.Kind.CALL]
    router.service_gone(b"S1")
    call(router, b"C", 3, "m")
    router.tick()
    # Call 1 was on S1: lost with it. Calls 2 and 3 wait.
    assert [(f[0], head(f)) for f in wire.take("clients")] == [(b"C", (p.Kind.ERROR, 1))]
    assert router.queued == 2
    hello(router, b"S2", ["m"])
    assert [(f[0], head(f)[0]) for f in wire.take("services")] == [(b"S2", p.Kind.CALL)] * 2
    assert router.queued == 0


def test_a_method_gone_for_longer_than_the_grace_is_not_found(wire: Wire) -> None:
    router = Router(wire.clients.append, wire.services.append, startup_grace=0, rejoin_grace=0.05)
    hello(router, b"S1", ["m"], limit=1)
    hello(router, b"S2", ["other"])
    router.service_gone(b"S2")  # (another method's service: no bearing on "m")
    call(router, b"C", 1, "m")
    call(router, b"C", 2, "m")  # queued
    router.service_gone(b"S1")
    wire.take("clients")
    time.sleep(0.06)  # the grace itself running out
    router.tick()
    call(router, b"C", 3, "m")
    sent = wire.take("clients")
    assert [head(f) for f in sent] == [(p.Kind.ERROR, 2), (p.Kind.ERROR, 3)]
    assert all(f[2] == p.ERR_METHOD_NOT_FOUND.encode() for f in sent)
    assert router.errors["not_found"] == 2


def test_a_service_announcing_new_methods_is_routed_by_them(router: Router, wire: Wire) -> None:
    """A repeated HELLO moves the service in the method index by what it changes: methods it
    no longer has are not routed to it (nor kept once no service has them), new ones are."""
    hello(router, b"S1", ["a", "b"])
    hello(router, b"S2", ["b"])
    hello(router, b"S1", ["b", "c"])  # drops "a", adds "c"
    assert sorted(router.services.by_method) == ["b", "c"]
    call(router, b"C", 1, "a")
    [err] = wire.take("clients")
    assert head(err) == (p.Kind.ERROR, 1) and err[2] == p.ERR_METHOD_NOT_FOUND.encode()
    call(router, b"C", 2, "c")
    assert [f[0] for f in wire.take("services")] == [b"S1"]
    for _ in range(3):  # the same HELLO again: nothing moves, nothing is listed twice
        hello(router, b"S1", ["b", "c"])
    assert {m: [s.peer for s in ss] for m, ss in router.services.by_method.items()} == {
        "b": [b"S1", b"S2"],
        "c": [b"S1"],
    }
    router.service_gone(b"S1")
    assert {m: [s.peer for s in ss] for m, ss in router.services.by_method.items()} == {
        "b": [b"S2"]
    }
    assert router.stats()["methods"] == ["b"]


@pytest.mark.timeout(30)
def test_services_joining_and_leaving_are_logged_at_a_bounded_rate(
    router: Router, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer on the backend can join and leave (and say BYE) at will: before, each wrote an
    INFO line. Now each kind is logged in full up to MEMBERSHIP_BURST per window, then
    summarized, at INFO."""
    from netcall._broker.core import MEMBERSHIP_BURST

    caplog.set_level(logging.INFO, logger="netcall.broker")
    for i in range(1000):
        peer = b"S%d" % i
        hello(router, peer, ["f"])
        router.on_backend([peer, *p.Bye().to_frames()])  # (no calls: it leaves at once)
    assert len(router.services) == 0 and router.services.by_method == {}
    lines = [r.getMessage() for r in caplog.records if r.name == "netcall.broker"]
    for kind in ("joined", "is stopping", "left"):
        assert sum(kind in line for line in lines) == MEMBERSHIP_BURST, kind
    assert router.membership.count("joined") == 1000
    assert router.membership.count("left") == 1000
    assert all(r.levelno == logging.INFO for r in caplog.records)
    router.membership._clock = lambda: time.monotonic() + 60  # the window is over
    router.flush_logs()
    summaries = [r for r in caplog.records if "were not logged" in r.getMessage()]
    assert len(summaries) == 3 and all(r.levelno == logging.INFO for r in summaries)
    assert "968 more joined event(s)" in summaries[0].getMessage()


def test_refusals_by_stopping_services_do_not_use_up_the_retries(wire: Wire) -> None:
    """A rolling restart of several services at once: a call the broker sent before it read
    each one's BYE may be refused as busy by more of them than the retry limit allows; those
    refusals do not count (the call never started, and no more calls go to them). A busy
    service that is not stopping still counts, and past the limit the caller hears."""
    router = Router(wire.clients.append, wire.services.append, startup_grace=0)
    peers = [b"S%d" % i for i in range(6)]
    for peer in peers:
        hello(router, peer, ["f"])
    call(router, b"C", 1, "f")
    for _ in range(5):  # five services, one after the other, stop with the call on them
        [sent] = wire.take("services")
        router.on_backend([sent[0], *p.Bye().to_frames()])
        router.on_backend(
            [sent[0], *p.Error(head(sent)[1], "netcall.Busy", "stopping").to_frames()]
        )
        router.services.get(sent[0]).cooldown = 0.0  # type: ignore[union-attr]
    [sent] = wire.take("services")
    assert wire.take("clients") == []
    reply(router, sent[0], p.Kind.RESULT, head(sent)[1], b"\xc0")
    [back] = wire.take("clients")
    assert head(back) == (p.Kind.RESULT, 1)
    # A service that is busy and not stopping: 3 more tries, then the caller hears.
    call(router, b"C", 2, "f")
    for _ in range(4):
        [sent] = wire.take("services")
        router.on_backend([sent[0], *p.Error(head(sent)[1], "netcall.Busy", "full").to_frames()])
        router.services.get(sent[0]).cooldown = 0.0  # type: ignore[union-attr]
        router.dispatch()  # (the cooldown over)
    assert wire.take("services") == []
    [err] = wire.take("clients")
    assert head(err) == (p.Kind.ERROR, 2) and err[2] == b"netcall.Busy"


def test_a_stopping_service_that_goes_quiet_is_not_counted_unresponsive(
    router: Router, wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    """A service that said BYE gets no new calls anyway: a handler blocking it while it
    finishes its calls was counted in errors["services_unresponsive"] and logged as "no new
    calls until it does", which read as a fault."""
    caplog.set_level(logging.WARNING, logger="netcall.broker")
    hello(router, b"S1", ["f"])
    hello(router, b"S2", ["f"])
    call(router, b"C", 1, "f")
    [sent] = wire.take("services")
    router.on_backend([sent[0], *p.Bye().to_frames()])  # stopping, with the call in flight
    other = b"S2" if sent[0] == b"S1" else b"S1"
    for _ in range(4):
        router.ping_round()
        router.on_backend([other, *p.Pong(0).to_frames()])
    assert router.errors["services_unresponsive"] == 0
    assert not [r for r in caplog.records if "answered none" in r.getMessage()]
    for _ in range(3):  # the one still serving goes quiet: counted
        router.ping_round()
    assert router.errors["services_unresponsive"] == 1
