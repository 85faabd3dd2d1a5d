"""Bundles: several small netcall messages to one peer travel as one ZeroMQ message.

The sans-IO format (``netcall.protocol._bundle``): round trips and refusals, only ever a
ProtocolError. Then on real sockets (tcp, ipc, inproc where it matters): the socket driver's
coalescing; a netcall client and service that learn each other and bundle both ways; raw
peers that know nothing of bundles (they are never sent one, in either direction); a raw
service that shows it reads them (the client bundles to it after, and not before); hostile
bundles; peers with a small ``max_message_size`` (no bundles at all); a service restarted at
the same endpoint as an older netcall (the client must learn again); slow handlers inside a
bundle (answers are not held behind each other); CURVE (each call's key is its sender's).
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq

from _adapter_helpers import ServiceThread
from _helpers import bind_again, recv_within, wait_until
from conftest import inproc_url, register_basics, tcp_url
from netcall import RemoteRPCError, RPCService, _reactor, current_call
from netcall import protocol as p
from netcall._ratelog import RateLimitedLog
from netcall._reactor import SocketDriver
from netcall.errors import ProtocolError
from netcall.security import Curve, Keypair

pytestmark = pytest.mark.timeout(30)

NB = p.BUNDLE_MAGIC
FLAGS_OFFSET = p.HEADER_SIZE + 8  # the CALL's flags byte: after the header and the timeout


# ---------------------------------------------------------------- helpers


def raw_call(rid: int, method: str, *args: Any, flags: int = 0) -> list[bytes]:
    """A CALL's frames as a peer that knows nothing of netcall's code would build them."""
    return [p.call_head(rid, method, "msgpack", 0.0, flags, 0), msgpack.packb(list(args))]


def result_of(frames: list[Any]) -> Any:
    """The value of a RESULT (msgpack), or the ERROR itself."""
    msg = p.decode(frames)
    if isinstance(msg, p.Error):
        return msg
    assert isinstance(msg, p.Result), msg
    return msgpack.unpackb(msg.payload)


def split(body: list[bytes]) -> list[list[bytes]]:
    """The messages in ``body`` (what a socket received, after any routing id): the inner
    messages of a bundle, else ``body`` itself."""
    if len(body) == 1 and body[0][:2] == NB:
        return [m[1:] for m in p.unbundle(body[0], None)]
    return [body]


class Received:
    """What a raw peer received: every message as it arrived, and the netcall messages in
    them, in order."""

    def __init__(self) -> None:
        self.arrived: list[list[bytes]] = []
        self.messages: list[list[bytes]] = []
        self.bundles: list[int] = []  # each bundle's message count

    def add(self, body: list[bytes]) -> list[list[bytes]]:
        self.arrived.append(body)
        inner = split(body)
        if len(body) == 1 and body[0][:2] == NB:
            self.bundles.append(len(inner))
        self.messages.extend(inner)
        return inner


async def take(sock: zmq.Socket[Any], received: Received, n: int, timeout: float = 5.0) -> None:
    """Receive on a raw DEALER until ``received`` holds ``n`` netcall messages."""
    end = time.monotonic() + timeout
    while len(received.messages) < n:
        received.add(await recv_within(sock, max(0.05, end - time.monotonic())))


async def connected(cli: Any, url: str) -> None:
    """Wait until the client's monitor has said its connection to ``url`` is up: what the
    client learns before (that the service reads bundles) it forgets at that event. (The
    client starts, and its monitor with it, at its first call.)"""
    assert await cli.echo("connected") == "connected"
    assert await wait_until(lambda: cli._peers.by_url[url].up)


class RawService:
    """A ROUTER standing in for a service that knows nothing of bundles unless told: it
    records what arrives, and answers every CALL with a RESULT echoing its first argument,
    each alone; with ``hold(n)``, the next ``n`` answers go together in one bundle. A bundle
    it is sent is recorded, and its calls answered all the same (an older netcall would drop
    it): a test then fails on what arrived, not on a timeout."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self.received = Received()
        self.calls: list[p.Call] = []
        self._held: list[list[bytes]] = []
        self._hold = 0
        self.last_client = b""
        self._task = asyncio.ensure_future(self._serve())

    def hold(self, n: int) -> None:
        self._hold = n

    async def _serve(self) -> None:
        while True:
            try:
                client, *body = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(0.002)  # (a raw socket: polled, as recv_within does)
                continue
            self.last_client = client
            for frames in self.received.add(body):
                msg = p.decode(frames)
                if not isinstance(msg, p.Call):
                    continue
                self.calls.append(msg)
                value = msgpack.unpackb(msg.args)[0]
                answer = p.payload_frames(p.Kind.RESULT, msg.id, msgpack.packb(value))
                if self._hold:
                    self._held.append(answer)
                    if len(self._held) == self._hold:
                        self.sock.send_multipart([client, p.bundle(self._held)])
                        self._held, self._hold = [], 0
                else:
                    self.sock.send_multipart([client, *answer])

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


@pytest.fixture
async def raw_service(zsockets: Callable[[int], zmq.Socket[Any]]) -> Any:
    """``raw_service(url)`` -> a :class:`RawService` bound to ``url``; stopped at teardown."""
    made: list[RawService] = []

    def make(url: str) -> RawService:
        sock = zsockets(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        bind_again(sock, url)
        made.append(RawService(sock))
        return made[-1]

    yield make
    for svc in made:
        await svc.close()


class BundlesSeen:
    """The bundles each :class:`SocketDriver` took in (their message counts; 0: malformed)."""

    def __init__(self) -> None:
        self.counts: dict[int, list[int]] = {}

    def of(self, driver: Any) -> list[int]:
        return self.counts.get(id(driver), [])


@pytest.fixture
def bundles_seen(monkeypatch: pytest.MonkeyPatch) -> BundlesSeen:
    seen = BundlesSeen()
    take_bundle = SocketDriver._take_bundle

    def counting(self: SocketDriver, frames: list[Any]) -> int:
        try:
            n = len(p.unbundle(frames[1], frames[0]))
        except ProtocolError:
            n = 0
        seen.counts.setdefault(id(self), []).append(n)
        return take_bundle(self, frames)

    monkeypatch.setattr(SocketDriver, "_take_bundle", counting)
    return seen


@pytest.fixture
def served(make_service: Callable[..., RPCService], make_url: Callable[[str], str]) -> Any:
    """``served(transport, **options)`` -> (url, service): a started service with the basics,
    ``peer()`` (the caller's routing id) and ``mark(x)`` (records ``x`` in ``service.marks``)."""

    def make(transport: str = "tcp", **options: Any) -> tuple[str, RPCService]:
        svc = make_service(**options)
        register_basics(svc)
        marks: list[Any] = []
        svc.marks = marks  # type: ignore[attr-defined]

        @svc.register
        def peer() -> bytes:
            return current_call().peer

        @svc.register
        def mark(x: Any) -> Any:
            marks.append(x)
            return x

        url = make_url(transport)
        svc.bind(url)
        svc.start()
        return url, svc

    return make


# ---------------------------------------------------------------- 1: the format, sans-IO


def _messages(rng: random.Random, n: int) -> list[list[bytes]]:
    sizes = [0, 1, 2, 12, 100, 200]  # 64 x 4 of the largest fit in one bundle
    return [
        [rng.randbytes(rng.choice(sizes)) for _ in range(rng.randint(1, p.BUNDLE_MAX_FRAMES))]
        for _ in range(n)
    ]


@pytest.mark.parametrize("n", [1, 2, 64])
def test_round_trip(n: int) -> None:
    rng = random.Random(n)
    for _ in range(20):
        messages = _messages(rng, n)
        data = p.bundle(messages)
        assert data[:2] == NB
        assert p.unbundle(data, b"lead") == [[b"lead", *m] for m in messages]


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_round_trip_of_empty_frames(frames: int) -> None:
    messages = [[b""] * frames, [b"x"] + [b""] * (frames - 1), [b""] * frames]
    assert p.unbundle(p.bundle(messages), 7) == [[7, *m] for m in messages]


def test_start_leaves_the_routing_id_out() -> None:
    data = p.bundle([[b"rid", b"a"], [b"rid", b"b", b"", b"c"]], start=1)
    assert b"rid" not in data
    assert p.unbundle(data, b"other") == [[b"other", b"a"], [b"other", b"b", b"", b"c"]]
    assert data == p.bundle([[b"a"], [b"b", b"", b"c"]])


def test_the_layout_is_the_documented_one() -> None:
    data = p.bundle([[b"ab"], [b"", b"cde"]])
    assert data == (
        b"NB\x01\x00\x02"  # magic, version, 2 messages
        + b"\x01\x02"  # their frame counts
        + struct.pack("!3I", 2, 0, 3)  # the frames' lengths
        + b"abcde"
    )


def test_bundles_allowed_only_with_room_for_the_largest() -> None:
    assert p.bundles_allowed(None)
    assert p.bundles_allowed(p.BUNDLE_MAX_BYTES)
    assert p.bundles_allowed(10 * p.BUNDLE_MAX_BYTES)
    assert not p.bundles_allowed(p.BUNDLE_MAX_BYTES - 1)
    assert not p.bundles_allowed(1000)
    assert (p.BUNDLE_MAX_BYTES, p.BUNDLE_MAX_MESSAGES, p.BUNDLE_MAX_FRAMES) == (65536, 64, 4)


def _raw_bundle(counts: bytes, lengths: list[int], data: bytes, n: int | None = None) -> bytes:
    n = len(counts) if n is None else n
    return (
        struct.pack("!2sBH", NB, 1, n) + counts + struct.pack(f"!{len(lengths)}I", *lengths) + data
    )


VALID = p.bundle([[b"head", b"args"], [b"x"]])

BAD = {
    "empty": b"",
    "too short": b"NB\x01",
    "head only": b"NB\x01\x00",
    "wrong magic": b"NC" + VALID[2:],
    "wrong version 0": VALID[:2] + b"\x00" + VALID[3:],
    "wrong version 2": VALID[:2] + b"\x02" + VALID[3:],
    "no messages": struct.pack("!2sBH", NB, 1, 0),
    "65 messages": p.bundle([[b"m"]] * 65),
    "n=65535": struct.pack("!2sBH", NB, 1, 65535) + b"\x01" * 100,
    "counts cut short": _raw_bundle(b"\x01\x01", [], b"", n=3),
    "a message of 0 frames": _raw_bundle(b"\x01\x00", [1], b"a"),
    "a message of 5 frames": p.bundle([[b"a"], [b"b"] * 5]),
    "a message of 255 frames": _raw_bundle(b"\xff", [0] * 255, b""),
    "lengths cut short": _raw_bundle(b"\x02", [1], b""),
    "data too long": VALID + b"!",
    "data too short": VALID[:-1],
    "a length too long": _raw_bundle(b"\x01", [5], b"abcd"),
    "a length too short": _raw_bundle(b"\x01", [3], b"abcd"),
    "a length of 2**32-1": _raw_bundle(b"\x01", [2**32 - 1], b"abcd"),
    "over BUNDLE_MAX_BYTES": p.bundle([[b"x" * (p.BUNDLE_MAX_BYTES - 9)]]),
    "over BUNDLE_MAX_BYTES in many frames": p.bundle([[b"x" * 2000] * 4] * 9),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_bundles_are_refused(name: str) -> None:
    with pytest.raises(ProtocolError):
        p.unbundle(BAD[name], b"lead")


def test_the_largest_bundle_is_accepted() -> None:
    data = p.bundle([[b"x" * (p.BUNDLE_MAX_BYTES - 10)]])  # head 5, count 1, length 4
    assert len(data) == p.BUNDLE_MAX_BYTES
    assert p.unbundle(data, 0) == [[0, b"x" * (p.BUNDLE_MAX_BYTES - 10)]]
    with pytest.raises(ProtocolError):
        p.unbundle(data + b"x", 0)


def test_fuzzed_bundles_give_protocol_error_only() -> None:
    rng = random.Random(20261202)
    valid = [p.bundle(_messages(rng, rng.randint(1, 64))) for _ in range(20)]
    valid = [v for v in valid if len(v) <= p.BUNDLE_MAX_BYTES]
    ok = refused = 0
    for i in range(20_000):
        base = rng.choice(valid)
        how = i % 5
        if how == 0:  # noise, sometimes behind a good head
            data = rng.choice([b"", b"NB\x01", base[:5]]) + rng.randbytes(rng.randint(0, 300))
        elif how == 1:  # truncated
            data = base[: rng.randint(0, len(base) - 1)]
        elif how == 2:  # bytes changed in the head, counts and lengths
            buf = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randint(0, min(len(buf) - 1, 5 + 64 + 4 * 256))
                buf[pos] = rng.randint(0, 255)
            data = bytes(buf)
        elif how == 3:  # extended
            data = base + rng.randbytes(rng.randint(1, 10))
        else:  # a piece of it
            start = rng.randint(0, len(base) - 1)
            data = base[start : start + rng.randint(0, 200)]
        try:
            out = p.unbundle(data, b"r")
        except ProtocolError:
            refused += 1
            continue
        # Accepted: consistent with the bounds and with the bytes given.
        ok += 1
        assert 1 <= len(out) <= p.BUNDLE_MAX_MESSAGES
        assert all(m[0] == b"r" and 1 <= len(m) - 1 <= p.BUNDLE_MAX_FRAMES for m in out)
        assert p.bundle(out, 1) == data
    assert refused > 10_000 and ok > 0


# ---------------------------------------------------------------- the socket driver


async def test_the_driver_bundles_small_messages_to_readers_only_in_order(zsockets):
    url = tcp_url()
    router = zsockets(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.bind(url)
    peers = {}
    for name in (b"a", b"b"):
        peers[name] = zsockets(zmq.DEALER)
        peers[name].setsockopt(zmq.ROUTING_ID, name)
        peers[name].connect(url)
        peers[name].send(b"hello")
    seen: list[list[Any]] = []
    loop = asyncio.get_running_loop()
    driver = SocketDriver(router, loop, seen.append, bundles=True)
    try:
        assert await wait_until(lambda: len(seen) == 2)
        driver.learn(b"a")
        assert driver.readers == {b"a"}
        rng = random.Random(5)
        sent: dict[bytes, list[list[bytes]]] = {b"a": [], b"b": []}
        for i in range(300):
            size = rng.choice([0, 10, 100, 1000, 8000, 8200, 20_000])
            frames = [b"%d" % i, bytes([i % 256]) * size][: rng.randint(1, 2)]
            if i % 37 == 0:
                frames = [b"%d" % i] + [b"f"] * 4  # 5 frames: goes alone
            elif i % 11 == 0:
                frames = [b"%d" % i, b"", bytes(size // 2)]  # 3 frames
            elif i % 13 == 0:
                frames = [b"%d" % i, b"a", b"", bytes(size // 3)]  # 4 frames
            for name in (b"a", b"b"):
                driver.send([name, *frames])
                sent[name].append(frames)
            if i % 50 == 0:
                await asyncio.sleep(0)
        driver.send([b"a", bytearray(b"a buffer")])  # not bytes: goes alone
        driver.send([b"a", b"head", bytearray(b"args")])
        driver.send([b"a", b"end"])
        sent[b"a"] += [[b"a buffer"], [b"head", b"args"], [b"end"]]
        got = {b"a": Received(), b"b": Received()}
        await take(peers[b"a"], got[b"a"], len(sent[b"a"]))
        await take(peers[b"b"], got[b"b"], len(sent[b"b"]))
        for name in (b"a", b"b"):
            assert got[name].messages == sent[name]  # each peer's messages, in order
        assert not got[b"b"].bundles  # b never said it reads them
        assert got[b"a"].bundles and max(got[b"a"].bundles) <= p.BUNDLE_MAX_MESSAGES
        for body in got[b"a"].arrived:
            if body[0][:2] == NB and len(body) == 1:
                assert len(body[0]) <= p.BUNDLE_MAX_BYTES
                for inner in split(body):  # only small ones, of at most 4 frames, inside
                    assert len(inner) <= p.BUNDLE_MAX_FRAMES
                    assert sum(4 + len(f) for f in inner) + 1 <= 8192
        driver.forget(b"a")
        for i in range(20):
            driver.send([b"a", b"again %d" % i])
        again = Received()
        await take(peers[b"a"], again, 20)
        assert not again.bundles and len(again.arrived) == 20
    finally:
        driver.close()


async def test_a_peer_that_sends_a_bundle_is_learned_and_its_messages_come_in_order(zsockets):
    url = tcp_url()
    routers = []
    for _ in range(2):
        router = zsockets(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        routers.append(router)
    routers[0].bind(url)
    url2 = tcp_url()
    routers[1].bind(url2)
    dealer = zsockets(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"d")
    dealer.connect(url)
    dealer.connect(url2)
    seen: list[list[list[Any]]] = [[], []]
    loop = asyncio.get_running_loop()
    sending = SocketDriver(routers[0], loop, seen[0].append, bundles=True)
    # A driver that does not send bundles still reads them, and learns nobody.
    reading = SocketDriver(routers[1], loop, seen[1].append)
    try:
        messages = [[b"one"], [b"two", b""], [b"three", b"x", b"y", b"z"]]
        for _ in range(2):  # (a DEALER sends to its two peers in turn)
            dealer.send(p.bundle(messages))
        for i in range(2):
            assert await wait_until(lambda i=i: len(seen[i]) == 3)
            assert seen[i] == [[b"d", *m] for m in messages]
        assert sending.readers == {b"d"} and not reading.readers
        reading.learn(b"d")
        assert not reading.readers
    finally:
        sending.close()
        reading.close()


async def test_a_ctrl_c_in_a_handler_leaves_the_rest_of_its_bundle_for_later(zsockets):
    # A KeyboardInterrupt raised by a handler (a blocking client running the loop in the
    # caller's thread, a loop that catches it) ends the wake-up; the bundle's later messages,
    # already read from the socket, are handed on at the next one, not lost.
    url = inproc_url()
    router = zsockets(zmq.ROUTER)
    router.bind(url)
    dealer = zsockets(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"d")
    dealer.connect(url)
    messages = [[b"m%d" % i] for i in range(5)]
    dealer.send(p.bundle(messages))
    assert await wait_until(lambda: router.poll(0) != 0)
    seen: list[list[Any]] = []
    interrupted = False

    def on_message(frames: list[Any]) -> None:
        nonlocal interrupted
        seen.append(frames)
        if frames[1] == b"m2" and not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    driver = SocketDriver(router, asyncio.get_running_loop(), on_message)
    try:
        with pytest.raises(KeyboardInterrupt):
            driver._on_ready()  # (as the loop would: the Ctrl-C then leaves the loop)
        assert [m[1] for m in seen] == [b"m0", b"m1", b"m2"]
        assert await wait_until(lambda: len(seen) == 5)  # the next wake-up
        assert seen == [[b"d", *m] for m in messages]
    finally:
        driver.close()


# ---------------------------------------------------------------- 2: netcall to netcall


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_many_calls_and_a_long_stream_travel_in_bundles(
    served, make_client, transport, bundles_seen
):
    url, svc = served(transport)
    cli = make_client()
    cli.connect(url)
    await connected(cli, url)
    me = await cli.peer()
    for round in range(2):  # the first: both ends learn; the second: bundles both ways
        results = await asyncio.gather(*[cli.echo([round, i]) for i in range(500)])
        assert results == [[round, i] for i in range(500)]
    assert [x async for x in cli.count(5000)] == list(range(5000))
    assert me in svc._driver.readers  # the client's calls said it reads bundles
    assert cli._driver.readers == {cli._peers.by_url[url].rid}  # the service sent some
    to_client, to_service = bundles_seen.of(cli._driver), bundles_seen.of(svc._driver)
    assert to_client and min(to_client) >= 2 and sum(to_client) > 500
    assert to_service and sum(to_service) > 100
    assert await cli.echo("after") == "after"


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
async def test_small_and_large_payloads_interleaved(served, make_client, transport, bundles_seen):
    url, svc = served(transport)
    cli = make_client()
    cli.connect(url)
    await connected(cli, url)
    rng = random.Random(transport)
    sizes = [0, 1, 10, 500, 4000, 8000, 8100, 8300, 12_000, 16_383, 16_384, 20_000, 20_480]
    for round in range(3):
        payloads = [rng.randbytes(rng.choice(sizes)) for _ in range(300)]
        payloads += [
            [rng.randbytes(17_000), b"small", rng.randbytes(20_000)],  # out of band, two
            {"text": "t" * 20_000, "blob": rng.randbytes(16_500)},
        ]
        rng.shuffle(payloads)
        calls = [cli.echo(x) for x in payloads]
        calls += [cli.add(i, round) for i in range(50)]
        results = await asyncio.gather(*calls)
        assert results[: len(payloads)] == payloads
        assert results[len(payloads) :] == [i + round for i in range(50)]
    assert bundles_seen.of(cli._driver) and bundles_seen.of(svc._driver)


# ---------------------------------------------------------------- 3: peers that do not know


async def test_a_raw_caller_without_the_flag_is_never_sent_a_bundle(
    served, zsockets, transport, bundles_seen
):
    url, svc = served(transport)
    dealer = zsockets(zmq.DEALER)
    dealer.connect(url)
    n = 300
    for i in range(n):
        dealer.send_multipart(raw_call(i + 1, "echo", i))
    got = Received()
    await take(dealer, got, n)
    assert not got.bundles
    assert len(got.arrived) == n
    assert all(body[0][:2] == b"NC" for body in got.arrived)
    answers = {p.decode(body).id: result_of(body) for body in got.arrived}
    assert answers == {i + 1: i for i in range(n)}
    assert not svc._driver.readers
    assert not bundles_seen.of(svc._driver)


async def test_a_raw_service_that_sends_no_bundle_is_sent_none(make_client, raw_service, endpoint):
    raw = raw_service(endpoint)
    cli = make_client()
    cli.connect(endpoint)
    for round in range(3):
        results = await asyncio.gather(*[cli.echo([round, i]) for i in range(100)])
        assert results == [[round, i] for i in range(100)]
    assert not raw.received.bundles
    assert len(raw.received.arrived) == len(raw.calls) == 300
    for body in raw.received.arrived:
        assert len(body) == 2 and body[0][:2] == b"NC"
        assert body[0][FLAGS_OFFSET] & p.FLAG_BUNDLES  # "I read them": the service may
    assert all(call.flags & p.FLAG_BUNDLES for call in raw.calls)
    assert not cli._driver.readers


# ---------------------------------------------------------------- 4: the client learns


async def test_the_client_bundles_once_the_service_sent_it_a_bundle(
    make_client, raw_service, endpoint
):
    raw = raw_service(endpoint)
    cli = make_client()
    cli.connect(endpoint)
    await connected(cli, endpoint)
    raw.hold(20)  # the next 20 answers go in one bundle
    assert await asyncio.gather(*[cli.echo(i) for i in range(20)]) == list(range(20))
    assert raw.received.bundles == []  # until then, single CALLs only
    assert len(raw.received.arrived) == 21  # ("connected", then the burst)
    assert cli._driver.readers == {cli._peers.by_url[endpoint].rid}
    before = len(raw.received.arrived)
    assert await asyncio.gather(*[cli.echo(-i) for i in range(20)]) == [-i for i in range(20)]
    later = raw.received.arrived[before:]
    bundles = [body for body in later if len(body) == 1 and body[0][:2] == NB]
    assert bundles, later
    inside = [m for body in bundles for m in split(body)]
    assert len(inside) >= 10  # a burst of 20 calls: (nearly) all of it in bundles
    for frames in inside:
        call = p.decode(frames)
        assert isinstance(call, p.Call) and call.method == "echo"
        assert call.flags & p.FLAG_BUNDLES
    assert sorted(msgpack.unpackb(c.args)[0] for c in raw.calls[-20:]) == sorted(
        -i for i in range(20)
    )


# ---------------------------------------------------------------- 5: hostile bundles


@pytest.fixture
def fresh_drop_log(monkeypatch: pytest.MonkeyPatch) -> RateLimitedLog:
    """The driver's rate-limited log of dropped bundles, with its budget unspent (it is the
    module's: other tests in this process may have spent it)."""
    fresh = RateLimitedLog(_reactor.log)
    monkeypatch.setattr(_reactor, "_dropped", fresh)
    return fresh


async def test_hostile_bundles_are_dropped_and_the_service_keeps_serving(
    served, make_client, zsockets, caplog, fresh_drop_log
):
    caplog.set_level(logging.WARNING, logger="netcall")
    url, svc = served("tcp")
    dealer = zsockets(zmq.DEALER)
    dealer.connect(url)
    got = Received()
    rid = iter(range(1000, 100_000))

    async def normal_call(value: Any) -> None:  # answered: what came before was read
        dealer.send_multipart(raw_call(next(rid), "echo", value))
        await take(dealer, got, len(got.messages) + 1)
        assert result_of(got.messages[-1]) == value

    await normal_call("start")
    dropped = [
        b"NB\x01\x00",  # too short
        b"NB\x02" + BAD["data too long"][3:],  # unknown version
        BAD["data too long"],
        BAD["a message of 5 frames"],
        p.bundle([raw_call(next(rid), "mark", "too large", "x" * 70_000)]),  # > 64 KiB
        p.bundle([raw_call(next(rid), "mark", i) for i in range(65)]),  # 65 messages
    ]
    assert len(dropped[4]) > p.BUNDLE_MAX_BYTES
    for data in dropped:
        dealer.send(data)
    await normal_call("after the malformed ones")
    assert svc.marks == []  # dropped whole: nothing in them ran
    assert fresh_drop_log.count("bundle") == len(dropped)
    warnings = [r for r in caplog.records if "dropped a malformed bundle" in r.getMessage()]
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert len(warnings) == min(len(dropped), fresh_drop_log.burst)
    # Rate-limited: a flood adds no lines within the window, only counts.
    for _ in range(50):
        dealer.send(b"NB\x01\xff\xff")
    await normal_call("after the flood")
    assert fresh_drop_log.count("bundle") == len(dropped) + 50
    warnings = [r for r in caplog.records if "dropped a malformed bundle" in r.getMessage()]
    assert len(warnings) == fresh_drop_log.burst
    assert svc._driver.readers == set()  # a malformed bundle teaches nothing
    honest = make_client()
    honest.connect(url)
    assert await honest.echo("honest") == "honest"


async def test_the_inner_messages_of_a_bundle_are_handled_as_if_alone(
    served, zsockets, caplog, fresh_drop_log
):
    caplog.set_level(logging.WARNING, logger="netcall")
    url, svc = served("tcp")
    dealer = zsockets(zmq.DEALER)
    dealer.connect(url)
    got = Received()
    # A lone malformed message with a readable request id: an ERROR for that id.
    dealer.send_multipart([p.header(p.Kind.CALL, 77)])
    await take(dealer, got, 1)
    lone = p.decode(got.messages[0])
    assert isinstance(lone, p.Error) and lone.id == 77
    # The same inside a bundle, between good calls; a bundle in the bundle; a CANCEL.
    inner = p.bundle([raw_call(5, "mark", "inside the inner bundle")])
    dealer.send(
        p.bundle(
            [
                raw_call(1, "mark", "first"),
                [p.header(p.Kind.CALL, 78)],  # malformed, readable id
                [inner],  # not a netcall message
                [b"garbage"],  # not one either, and no id
                raw_call(2, "mark", "second", flags=p.FLAG_BUNDLES),
                raw_call(3, "sleep", 30.0),
                p.Cancel(3).to_frames(),
                raw_call(4, "mark", "last"),
            ]
        )
    )
    await take(dealer, got, 5)  # 1, 78, 2, 4 (3 was cancelled: no answer)
    answers = {p.decode(m).id: p.decode(m) for m in got.messages[1:]}
    assert sorted(answers) == [1, 2, 4, 78]
    assert [result_of(answers[i].to_frames()) for i in (1, 2, 4)] == ["first", "second", "last"]
    error = answers[78]
    assert isinstance(error, p.Error)
    assert (error.type_name, error.message) == (lone.type_name, lone.message)
    assert svc.marks == ["first", "second", "last"]  # in order; the inner bundle never ran
    assert await wait_until(lambda: svc.active_calls == 0)  # the CANCEL reached the sleep
    # Each call is the peer's latest word: the bundle's last one did not say it reads them.
    assert not svc._driver.readers
    before = len(got.messages)
    for i in range(40):  # these say so: what the peer is sent next may be bundled
        dealer.send_multipart(raw_call(100 + i, "echo", i, flags=p.FLAG_BUNDLES))
    await take(dealer, got, before + 40)
    assert [result_of(m) for m in got.messages[before:]] == list(range(40))
    assert got.bundles  # answers came bundled
    assert not any("dropped a malformed bundle" in r.getMessage() for r in caplog.records)
    assert fresh_drop_log.count("bundle") == 0


async def test_a_service_with_a_small_max_message_size_never_bundles(
    served, make_client, bundles_seen
):
    url, svc = served("tcp", max_message_size=1000)  # tcp: ZeroMQ's per-frame limit too
    cli = make_client()
    cli.connect(url)
    for round in range(3):
        results = await asyncio.gather(*[cli.echo([round, i]) for i in range(300)])
        assert results == [[round, i] for i in range(300)]
    assert [x async for x in cli.count(500)] == list(range(500))
    assert not svc._driver.readers and not cli._driver.readers
    assert not bundles_seen.of(cli._driver) and not bundles_seen.of(svc._driver)


@pytest.mark.parametrize(
    ("max_message_size", "flagged"),
    [(1000, False), (p.BUNDLE_MAX_BYTES - 1, False), (p.BUNDLE_MAX_BYTES, True), (None, True)],
)
async def test_a_client_with_a_small_max_message_size_does_not_say_it_reads_bundles(
    make_client, raw_service, max_message_size, flagged
):
    url = tcp_url()
    raw = raw_service(url)
    cli = make_client(max_message_size=max_message_size)
    cli.connect(url)
    assert await asyncio.gather(*[cli.echo(i) for i in range(20)]) == list(range(20))
    assert len(raw.received.arrived) == 20
    for body in raw.received.arrived:
        assert body[0][:2] == b"NC"
        assert bool(body[0][FLAGS_OFFSET] & p.FLAG_BUNDLES) is flagged


async def test_a_client_with_a_small_max_message_size_still_reads_bundles(make_client, raw_service):
    url = tcp_url()
    raw = raw_service(url)
    cli = make_client(max_message_size=1000)
    cli.connect(url)
    await connected(cli, url)
    raw.hold(10)
    assert await asyncio.gather(*[cli.echo(i) for i in range(10)]) == list(range(10))
    assert not cli._driver.readers  # it reads them, but sends none
    assert await asyncio.gather(*[cli.echo(i) for i in range(10)]) == list(range(10))
    assert not raw.received.bundles


# ---------------------------------------------------------------- 6: reconnect


async def test_a_service_replaced_by_an_older_one_at_the_same_endpoint(
    served, make_client, raw_service, bundles_seen
):
    url, svc = served("tcp")
    cli = make_client()
    cli.connect(url)
    await connected(cli, url)
    for _ in range(2):
        assert await asyncio.gather(*[cli.echo(i) for i in range(50)]) == list(range(50))
    peer = cli._peers.by_url[url]
    assert cli._driver.readers == {peer.rid} and bundles_seen.of(svc._driver)
    connection = peer.connection
    await svc.stop(grace=0)
    assert await wait_until(lambda: not peer.up)
    raw = raw_service(url)  # a netcall from before bundles, at the same endpoint
    assert await wait_until(lambda: peer.up and peer.connection > connection, 10)
    for round in range(3):
        results = await asyncio.gather(*[cli.echo([round, i]) for i in range(40)])
        assert results == [[round, i] for i in range(40)]
    assert not raw.received.bundles
    assert len(raw.received.arrived) == 120
    assert all(len(body) == 2 and body[0][:2] == b"NC" for body in raw.received.arrived)
    assert not cli._driver.readers


# ---------------------------------------------------------------- 7: slow handlers


async def test_slow_sync_handlers_in_a_bundle_answer_as_they_finish(ctx, make_client, bundles_seen):
    # The service in a thread of its own: its sync handlers block its loop, not the client's.
    def setup(svc: RPCService) -> None:
        @svc.register
        def slow(i: int) -> int:
            time.sleep(0.05)  # a sync handler: runs inline, on the service's loop
            return i

    url = tcp_url()
    service = ServiceThread("asyncio", ctx, url, setup=setup).start()
    try:
        cli = make_client()
        cli.connect(url)
        await connected(cli, url)
        for _ in range(2):  # warm-up: both ends learn
            assert await asyncio.gather(*[cli.echo(i) for i in range(20)]) == list(range(20))
        driver = service.svc._driver
        assert cli._driver.readers and driver.readers
        seen_before = len(bundles_seen.of(driver))
        loop = asyncio.get_running_loop()
        done: list[float] = []
        start = loop.time()
        calls = [asyncio.ensure_future(cli.slow(i)) for i in range(20)]
        for call in calls:
            call.add_done_callback(lambda _: done.append(loop.time() - start))
        assert await asyncio.gather(*calls) == list(range(20))
        total = loop.time() - start
        assert max(bundles_seen.of(driver)[seen_before:]) >= 10  # they came in bundles
        assert total >= 0.9  # 20 x 0.05 s, one after the other
        assert done[0] < 0.5 and done[0] < total / 2, (done[0], total)
    finally:
        await asyncio.to_thread(service.stop)


# ---------------------------------------------------------------- 8: CURVE


async def test_curve_calls_in_bundles_carry_their_senders_key(
    make_service, make_client, bundles_seen
):
    server, alice, bob = (Keypair.generate() for _ in range(3))
    svc = make_service(security=Curve.server(server, allow=[alice.public, bob.public]))

    register_basics(svc)

    @svc.register
    async def whoami(i: int) -> Any:
        return [i, current_call().peer_key]

    @svc.register(allow=[alice.public])
    def alice_only(i: int) -> int:
        return i

    url = f"tcp://127.0.0.1:{svc.bind_ports('127.0.0.1')}"
    svc.start()
    clients = {}
    for name, keys in (("alice", alice), ("bob", bob)):
        clients[name] = make_client(security=Curve.client(server.public, keypair=keys))
        clients[name].connect(url)
        await connected(clients[name], url)
    expected = {"alice": alice.public.decode(), "bob": bob.public.decode()}

    async def burst(name: str) -> None:
        cli = clients[name]
        results = await asyncio.gather(*[cli.whoami(i) for i in range(100)])
        assert results == [[i, expected[name]] for i in range(100)]

    for _ in range(3):  # both clients at once, their bundles interleaved
        await asyncio.gather(burst("alice"), burst("bob"))
    assert all(cli._driver.readers for cli in clients.values())
    assert len(svc._driver.readers) == 2
    assert sum(bundles_seen.of(svc._driver)) > 100  # calls that arrived in bundles
    allowed = await asyncio.gather(*[clients["alice"].alice_only(i) for i in range(30)])
    assert allowed == list(range(30))
    refused = await asyncio.gather(
        *[clients["bob"].alice_only(i) for i in range(30)], return_exceptions=True
    )
    assert all(isinstance(r, PermissionError) and isinstance(r, RemoteRPCError) for r in refused)
    await burst("bob")  # and bob is still served


async def test_a_bundle_read_after_the_break_does_not_outlive_the_connection(
    make_client, raw_service
):
    url = tcp_url()
    old = raw_service(url)
    cli = make_client()
    cli.connect(url)
    await connected(cli, url)
    old.hold(10)
    assert await asyncio.gather(*[cli.echo(i) for i in range(10)]) == list(range(10))
    peer = cli._peers.by_url[url]
    assert cli._driver.readers == {peer.rid}
    # The service's last words, then it goes; the client's loop is busy meanwhile (blocked
    # here), so it finds both the break and more than one read batch (512) waiting.
    await old.close()
    client_id = old.last_client
    for _ in range(600):
        old.sock.send_multipart([client_id, *p.Pong(0).to_frames()])
    old.sock.send_multipart([client_id, p.bundle([p.Pong(0).to_frames()] * 2)])
    old.sock.close(linger=1000)
    time.sleep(0.8)  # the busy loop (the I/O threads deliver the messages and the break)
    assert await wait_until(lambda: not peer.up)  # the client saw the break
    assert not cli._driver.readers  # FAILS: learned again from the bundle read after it
    new = raw_service(url)  # a netcall from before bundles, at the same endpoint
    results = await asyncio.gather(*[cli.echo(i) for i in range(20)])
    assert results == list(range(20))
    assert not new.received.bundles
