"""netcall.security on raw pyzmq sockets: keys on disk, the ZAP handler, allowlists, the wire.

Real keys in tmp_path, real tcp on 127.0.0.1, real handshakes watched through socket monitors.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import parse_monitor_message

from _relay import Relay
from netcall import AuthenticationError, RPCError, _zap
from netcall.security import (
    Curve,
    CurveClient,
    CurveServer,
    Keypair,
    from_options,
    handshake_error,
    public_keys,
)

HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Keypair]:
    return {name: Keypair.generate() for name in ("server", "other", "alice", "bob")}


class Server:
    """A ROUTER made secure by ``security`` (or plain), bound on tcp, that echoes."""

    def __init__(self, ctx: zmq.Context[Any], security: CurveServer | None) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        try:
            self.registration = security.apply(self.sock) if security else None
        except BaseException:
            self.sock.close(linger=0)
            raise
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{self.port}"

    def recv(self, timeout: float = 5.0) -> tuple[list[bytes], str | None]:
        """One message (without the routing id) and its User-Id property."""
        assert self.sock.poll(int(timeout * 1000)), "nothing arrived"
        first = self.sock.recv(copy=False)
        try:
            user = first.get("User-Id")
        except zmq.ZMQError:
            user = None
        rest = self.sock.recv_multipart()
        self.sock.send_multipart([first.bytes, *rest])  # echo
        return rest, user

    def close(self) -> None:
        self.sock.close(linger=0)
        if self.registration is not None:
            self.registration.close()  # after the socket, as apply() asks


class Client:
    """A DEALER made secure by ``security`` (or plain), with a handshake monitor."""

    def __init__(self, ctx: zmq.Context[Any], security: CurveClient | None, url: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        if security is not None:
            security.apply(self.sock)
        self.monitor = self.sock.get_monitor_socket(HANDSHAKE_EVENTS)
        self.sock.connect(url)

    def handshake(self, timeout: float = 5.0) -> tuple[int, int]:
        """The first handshake event: (event, value)."""
        assert self.monitor.poll(int(timeout * 1000)), "no handshake event"
        event = parse_monitor_message(self.monitor.recv_multipart())
        return int(event["event"]), int(event["value"])

    def try_send(self, data: bytes) -> None:
        """Send if ZeroMQ will queue it (a DEALER whose only peer was refused has none)."""
        try:
            self.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


@pytest.fixture
def net(ctx: zmq.Context[Any]) -> Iterator[Any]:
    """Factory of servers and clients on ``ctx``, all closed at teardown."""
    made: list[Any] = []

    class Net:
        def server(self, security: CurveServer | None) -> Server:
            made.append(Server(ctx, security))
            return made[-1]  # type: ignore[no-any-return]

        def client(self, security: CurveClient | None, url: str) -> Client:
            made.append(Client(ctx, security, url))
            return made[-1]  # type: ignore[no-any-return]

    yield Net()
    for thing in reversed(made):
        thing.close()


# ------------------------------------------------------------------------- keys


def test_generate_gives_z85_keys_that_belong_together() -> None:
    kp = Keypair.generate()
    assert len(kp.public) == 40 and len(kp.secret or b"") == 40
    assert zmq.curve_public(kp.secret) == kp.public
    assert kp.secret.decode() not in repr(kp)  # type: ignore[union-attr]


def test_save_writes_zeromq_certificates_with_a_private_secret(tmp_path: Path) -> None:
    kp = Keypair.generate()
    public_path, secret_path = kp.save(tmp_path / "keys", "server")
    assert public_path == tmp_path / "keys" / "server.key"
    assert secret_path == tmp_path / "keys" / "server.key_secret"
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert not stat.S_IMODE(public_path.stat().st_mode) & 0o022
    # ZeroMQ's own reader understands both files.
    assert zmq.auth.load_certificate(secret_path) == (kp.public, kp.secret)
    assert zmq.auth.load_certificate(public_path) == (kp.public, None)
    assert Keypair.load(secret_path) == kp
    public_only = Keypair.load(public_path)
    assert public_only.public == kp.public and public_only.secret is None
    assert not [p for p in (tmp_path / "keys").iterdir() if p.name.startswith(".")]


def test_secret_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _, secret_path = Keypair.generate().save(tmp_path, "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600


def test_save_refuses_to_overwrite_a_key(tmp_path: Path) -> None:
    first = Keypair.generate()
    first.save(tmp_path, "server")
    with pytest.raises(FileExistsError, match=r"server\.key"):
        Keypair.generate().save(tmp_path, "server")
    assert Keypair.load(tmp_path / "server.key_secret") == first
    second = Keypair.generate()
    second.save(tmp_path, "server", overwrite=True)
    assert Keypair.load(tmp_path / "server.key_secret") == second


def test_save_rejects_a_public_key_alone_and_bad_names(tmp_path: Path) -> None:
    kp = Keypair.generate()
    with pytest.raises(ValueError, match="public key alone"):
        Keypair(kp.public).save(tmp_path, "x")
    with pytest.raises(ValueError, match="invalid key name"):
        kp.save(tmp_path, "../x")


def test_files_made_by_zmq_auth_load(tmp_path: Path) -> None:
    public_path, secret_path = zmq.auth.create_certificates(tmp_path, "made_by_pyzmq")
    kp = Keypair.load(secret_path)
    assert kp.secret is not None and Keypair.load(public_path).public == kp.public


def test_missing_key_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(FileNotFoundError, match=r"nope\.key_secret"):
        Keypair.load(missing)
    with pytest.raises(FileNotFoundError, match=r"nope\.key_secret"):
        Curve.server(missing)
    with pytest.raises(FileNotFoundError, match=r"nope\.key_secret"):
        Curve.client(Keypair.generate().public, keypair=missing)
    with pytest.raises(FileNotFoundError, match=r"nope\.key"):
        Curve.client(tmp_path / "nope.key")


@pytest.mark.parametrize(
    "content, why",
    [
        (b"", "not a ZeroMQ CURVE certificate"),
        (b"\x00\xff garbage \x89PNG", "not a ZeroMQ CURVE certificate"),
        (b'curve\n    public-key = "short"\n', "not a CURVE key"),
        (b'curve\n    public-key = "%s"\n    secret-key = "%s"\n', "does not belong"),
    ],
)
def test_malformed_key_file_names_the_file(tmp_path: Path, content: bytes, why: str) -> None:
    if b"%s" in content:
        a, b = Keypair.generate(), Keypair.generate()
        content = content % (a.public, b.secret)
    path = tmp_path / "bad.key_secret"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=why) as info:
        Keypair.load(path)
    assert "bad.key_secret" in str(info.value)
    with pytest.raises(ValueError, match=r"bad\.key_secret"):
        Curve.server(path)


def test_readable_secret_file_is_loaded_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, secret_path = Keypair.generate().save(tmp_path, "k")
    secret_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="netcall.security"):
        Keypair.load(secret_path)
    assert "readable by other users" in caplog.text


def test_server_needs_a_secret_and_a_real_folder(tmp_path: Path) -> None:
    kp = Keypair.generate()
    public_path, _ = kp.save(tmp_path, "server")
    with pytest.raises(ValueError, match="secret key"):
        Curve.server(public_path)
    with pytest.raises(ValueError, match="secret key"):
        Curve.server(Keypair(kp.public))
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        Curve.server(kp, allow=tmp_path / "no-such-folder")
    folder = tmp_path / "clients"
    folder.mkdir()
    (folder / "broken.key").write_text("nothing here\n")
    with pytest.raises(ValueError, match=r"broken\.key"):
        Curve.server(kp, allow=folder)


def test_keys_are_accepted_in_every_spelling(tmp_path: Path) -> None:
    kp = Keypair.generate()
    public_path, secret_path = kp.save(tmp_path, "s")
    for spelling in (kp.public, kp.public.decode(), kp, public_path, str(secret_path)):
        assert Curve.client(spelling).server_public == kp.public
    assert Curve.server(str(secret_path)).public == kp.public
    raw = zmq.utils.z85.decode(kp.public)
    assert public_keys([kp, raw, kp.public.decode()]) == {kp.public.decode()}
    with pytest.raises(TypeError, match="list of keys"):
        public_keys(kp.public.decode())
    with pytest.raises(ValueError, match="not a CURVE key"):
        public_keys([b"~" * 40])
    with pytest.raises(ValueError, match="not a CURVE key"):
        Curve.server(kp, allow=["not a key"])


# ------------------------------------------------------------------------- handshakes


def test_allowed_client_gets_through_and_is_identified(net: Any, keys: dict[str, Keypair]) -> None:
    server = net.server(Curve.server(keys["server"], allow=[keys["alice"].public]))
    client = net.client(Curve.client(keys["server"].public, keys["alice"]), server.url)
    assert client.handshake()[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    client.sock.send(b"hello")
    assert server.recv() == ([b"hello"], keys["alice"].public.decode())
    assert client.sock.poll(5000) and client.sock.recv() == b"hello"


def test_refused_client_is_told_and_never_delivers(
    net: Any, keys: dict[str, Keypair], caplog: pytest.LogCaptureFixture
) -> None:
    server = net.server(Curve.server(keys["server"], allow=[keys["alice"].public]))
    with caplog.at_level(logging.WARNING, logger="netcall.security"):
        client = net.client(Curve.client(keys["server"].public, keys["bob"]), server.url)
        event, value = client.handshake()
    assert (event, value) == (zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    client.try_send(b"hello")
    assert not server.sock.poll(300)
    assert keys["bob"].public.decode() in caplog.text and "refused" in caplog.text


def _logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> bool:
    """Whether ``text`` gets logged within ``timeout`` (the ZAP thread logs on its own time)."""
    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_wrong_server_key_fails_the_handshake(
    net: Any, keys: dict[str, Keypair], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="netcall.security")
    server = net.server(Curve.server(keys["server"]))
    client = net.client(Curve.client(keys["other"].public), server.url)
    event, value = client.handshake()
    assert _logged(caplog, "handshake could not be decrypted (it was given another service key)")
    assert event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    error = handshake_error(event, value, server.url, secure=True)
    assert isinstance(error, AuthenticationError) and "public key" in str(error)
    client.try_send(b"hello")
    assert not server.sock.poll(300)


def test_a_connection_that_ends_before_its_handshake_refused_nothing(
    net: Any, keys: dict[str, Keypair], caplog: pytest.LogCaptureFixture
) -> None:
    """A TCP connection that closes before it says anything (a health check, a port scan,
    ``netcall call`` looking whether anything listens) is no refusal: no warning, and the
    rate-limited warning is still there for the next real refusal."""
    caplog.set_level(logging.WARNING, logger="netcall.security")
    server = net.server(Curve.server(keys["server"]))
    host, port = server.url[len("tcp://") :].rsplit(":", 1)
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    client = net.client(Curve.client(keys["other"].public), server.url)
    client.handshake()
    assert _logged(caplog, "another service key")
    assert len(caplog.records) == 1, caplog.text


def test_plain_client_is_refused_by_a_curve_service(
    net: Any, keys: dict[str, Keypair], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="netcall.security")
    server = net.server(Curve.server(keys["server"]))
    client = net.client(None, server.url)
    event, value = client.handshake()
    assert _logged(caplog, "does not use CURVE")
    assert event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    error = handshake_error(event, value, server.url, secure=False)
    assert isinstance(error, AuthenticationError) and "requires CURVE" in str(error)
    client.try_send(b"hello")
    assert not server.sock.poll(300)


def test_curve_client_of_a_plain_service(net: Any, keys: dict[str, Keypair]) -> None:
    server = net.server(None)
    client = net.client(Curve.client(keys["server"].public), server.url)
    event, value = client.handshake()
    error = handshake_error(event, value, server.url, secure=True)
    assert isinstance(error, AuthenticationError) and "does not use CURVE" in str(error)


def test_without_allowlist_any_curve_client_is_identified(
    net: Any, keys: dict[str, Keypair]
) -> None:
    server = net.server(Curve.server(keys["server"]))
    ephemeral = Curve.client(keys["server"].public)
    client = net.client(ephemeral, server.url)
    assert client.handshake()[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    client.sock.send(b"hi")
    assert server.recv() == ([b"hi"], ephemeral.public.decode())


def test_two_allowlists_in_one_context(net: Any, keys: dict[str, Keypair]) -> None:
    server_a = net.server(Curve.server(keys["server"], allow=[keys["alice"]]))
    server_b = net.server(Curve.server(keys["other"], allow=[keys["bob"]]))
    cases = [
        (server_a, keys["server"], keys["alice"], zmq.EVENT_HANDSHAKE_SUCCEEDED),
        (server_a, keys["server"], keys["bob"], zmq.EVENT_HANDSHAKE_FAILED_AUTH),
        (server_b, keys["other"], keys["bob"], zmq.EVENT_HANDSHAKE_SUCCEEDED),
        (server_b, keys["other"], keys["alice"], zmq.EVENT_HANDSHAKE_FAILED_AUTH),
    ]
    for server, server_keys, client_keys, expected in cases:
        client = net.client(Curve.client(server_keys.public, client_keys), server.url)
        assert client.handshake()[0] == expected
    assert len(_zap._handlers) == 1  # one handler for the context, dispatching by domain


def test_folder_allowlist_follows_the_folder(
    net: Any, keys: dict[str, Keypair], tmp_path: Path
) -> None:
    folder = tmp_path / "clients"
    _save_public(keys["alice"], folder, "alice")  # the service holds public keys only
    server = net.server(Curve.server(keys["server"], allow=folder))

    def attempt(who: str) -> int:
        client = net.client(Curve.client(keys["server"].public, keys[who]), server.url)
        return client.handshake()[0]

    assert attempt("alice") == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert attempt("bob") == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    _save_public(keys["bob"], folder, "bob")
    assert attempt("bob") == zmq.EVENT_HANDSHAKE_SUCCEEDED
    (folder / "alice.key").unlink()
    assert attempt("alice") == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    # A malformed file dropped in while serving is skipped; the other keys still count.
    (folder / "junk.key").write_text("junk\n")
    assert attempt("bob") == zmq.EVENT_HANDSHAKE_SUCCEEDED


def test_folder_key_edited_in_place_counts_within_a_second(
    net: Any, keys: dict[str, Keypair], tmp_path: Path
) -> None:
    folder = tmp_path / "clients"
    _save_public(keys["alice"], folder, "alice")
    server = net.server(Curve.server(keys["server"], allow=folder))
    mtime = folder.stat().st_mtime_ns
    text = (folder / "alice.key").read_text()
    (folder / "alice.key").write_text(
        text.replace(keys["alice"].public.decode(), keys["bob"].public.decode())
    )
    os.utime(folder, ns=(mtime, mtime))  # the folder looks unchanged
    deadline = time.monotonic() + 3 * _zap.FOLDER_RECHECK
    while True:
        client = net.client(Curve.client(keys["server"].public, keys["bob"]), server.url)
        if client.handshake()[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            break
        assert time.monotonic() < deadline, "the edited key was never picked up"
        time.sleep(0.1)


def test_vanished_folder_refuses_everyone(
    net: Any, keys: dict[str, Keypair], tmp_path: Path
) -> None:
    folder = tmp_path / "clients"
    _save_public(keys["alice"], folder, "alice")
    server = net.server(Curve.server(keys["server"], allow=folder))
    (folder / "alice.key").unlink()
    folder.rmdir()
    client = net.client(Curve.client(keys["server"].public, keys["alice"]), server.url)
    assert client.handshake()[0] == zmq.EVENT_HANDSHAKE_FAILED_AUTH


def _save_public(kp: Keypair, folder: Path, name: str) -> None:
    kp.save(folder, name)
    (folder / f"{name}.key_secret").unlink()


def test_refusals_are_logged_at_a_bounded_rate(
    net: Any, keys: dict[str, Keypair], caplog: pytest.LogCaptureFixture
) -> None:
    server = net.server(Curve.server(keys["server"], allow=[keys["alice"]]))
    with caplog.at_level(logging.WARNING, logger="netcall.security"):
        for _ in range(20):
            client = net.client(Curve.client(keys["server"].public, keys["bob"]), server.url)
            assert client.handshake()[0] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1


# ------------------------------------------------------------------------- the ZAP handler


def test_handler_stops_with_its_last_user_and_restarts(
    ctx: zmq.Context[Any], keys: dict[str, Keypair]
) -> None:
    a = Server(ctx, Curve.server(keys["server"]))
    b = Server(ctx, Curve.server(keys["other"]))
    a.close()
    assert len(_zap._handlers) == 1
    b.close()
    assert not _zap._handlers
    # The ZAP endpoint is free again: anyone may bind it...
    other = ctx.socket(zmq.REP)
    other.bind(_zap.ZAP_ENDPOINT)
    # ...and while someone else holds it, netcall says so instead of sharing it.
    with pytest.raises(RuntimeError, match="another ZAP handler"):
        Server(ctx, Curve.server(keys["server"]))
    other.unbind(_zap.ZAP_ENDPOINT)  # close() alone frees the name later, in ZeroMQ's reaper
    other.close(linger=0)
    c = Server(ctx, Curve.server(keys["server"]))
    c.close()


def test_one_curve_server_for_two_sockets(ctx: zmq.Context[Any], keys: dict[str, Keypair]) -> None:
    shared = Curve.server(keys["server"], allow=[keys["alice"]])
    a, b = Server(ctx, shared), Server(ctx, shared)
    a.close()  # the other keeps its registration and its allowlist
    client = Client(ctx, Curve.client(keys["server"].public, keys["alice"]), b.url)
    try:
        assert client.handshake()[0] == zmq.EVENT_HANDSHAKE_SUCCEEDED
    finally:
        client.close()
        b.close()


def test_handler_per_context(keys: dict[str, Keypair]) -> None:
    ctx1, ctx2 = zmq.Context(), zmq.Context()
    try:
        a = Server(ctx1, Curve.server(keys["server"]))
        b = Server(ctx2, Curve.server(keys["server"]))
        assert len(_zap._handlers) == 2
        a.close()
        b.close()
    finally:
        ctx1.term()
        ctx2.term()


def test_handler_answers_malformed_and_foreign_requests() -> None:
    handler = _zap._Handler.__new__(_zap._Handler)
    handler.policies = {b"netcall-1": _zap.Allowlist()}
    assert handler.answer([b"x"])[2] == b"400"
    assert handler.answer([b"2.0", b"r", b"netcall-1", b"", b"", b"CURVE", b"k" * 32])[2] == b"400"
    assert handler.answer([b"1.0", b"r", b"netcall-9", b"", b"", b"CURVE", b"k" * 32])[2] == b"400"
    assert handler.answer([b"1.0", b"r", b"netcall-1", b"", b"", b"PLAIN", b"u", b"p"])[2] == b"400"
    assert handler.answer([b"1.0", b"r", b"netcall-1", b"", b"", b"CURVE", b"short"])[2] == b"400"
    ok = handler.answer([b"1.0", b"r", b"netcall-1", b"", b"", b"CURVE", b"k" * 32])
    assert ok[2] == b"200" and ok[4] == zmq.utils.z85.encode(b"k" * 32)
    # A domain netcall did not make is answered as ZeroMQ would without a handler.
    assert handler.answer([b"1.0", b"r", b"theirs", b"", b"", b"CURVE", b"k" * 32])[2] == b"200"


def test_handshake_error_ignores_what_is_not_security() -> None:
    url = "tcp://127.0.0.1:1"
    assert handshake_error(zmq.EVENT_HANDSHAKE_SUCCEEDED, 0, url, secure=True) is None
    assert handshake_error(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32, url, secure=False) is None
    other = zmq.PROTOCOL_ERROR_ZMTP_MALFORMED_COMMAND_HELLO
    assert handshake_error(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, other, url, secure=False) is None
    error = handshake_error(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, other, url, secure=True)
    assert isinstance(error, AuthenticationError) and "MALFORMED_COMMAND_HELLO" in str(error)
    assert issubclass(AuthenticationError, RPCError)


# ------------------------------------------------------------------------- the wire


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "curve"])
def test_relay_sees_the_marker_only_without_curve(
    net: Any, keys: dict[str, Keypair], secure: bool
) -> None:
    marker = b"MARKER-7f3a-this-must-not-leak"
    server = net.server(Curve.server(keys["server"]) if secure else None)
    with Relay(("127.0.0.1", server.port)) as relay:
        client = net.client(Curve.client(keys["server"].public) if secure else None, relay.url)
        client.sock.send(marker)
        assert server.recv()[0] == [marker]
        assert client.sock.poll(5000) and client.sock.recv() == marker
        seen = relay.seen()
    assert len(seen) > len(marker)
    assert (marker in seen) is not secure


def test_from_options_builds_what_the_cli_flags_ask(tmp_path: Path) -> None:
    server, alice = Keypair.generate(), Keypair.generate()
    public_path, secret_path = server.save(tmp_path, "server")
    alice_public, alice_secret = alice.save(tmp_path / "clients", "alice")
    assert from_options(server=True) is None and from_options(server=False) is None
    folder = from_options(server=True, keypair=str(secret_path), allow=[str(tmp_path / "clients")])
    assert isinstance(folder, CurveServer) and folder.allowlist.folder == tmp_path / "clients"
    listed = from_options(
        server=True, keypair=str(secret_path), allow=[str(alice_public), alice.public.decode()]
    )
    assert isinstance(listed, CurveServer) and listed.allowlist.keys() == {alice.public}
    anyone = from_options(server=True, keypair=str(secret_path))
    assert isinstance(anyone, CurveServer) and anyone.allowlist.allow_any
    client = from_options(server=False, server_key=str(public_path), keypair=str(alice_secret))
    assert isinstance(client, CurveClient) and client.public == alice.public
    assert client.server_public == server.public
    ephemeral = from_options(server=False, server_key=server.public.decode())
    assert isinstance(ephemeral, CurveClient) and ephemeral.public != alice.public
    with pytest.raises(ValueError, match="needs --curve-keypair"):
        from_options(server=True, allow=[str(alice_public)])
    checked = from_options(server=True, keypair=str(secret_path), server_key=str(public_path))
    assert isinstance(checked, CurveServer) and checked.public == server.public
    with pytest.raises(ValueError, match="not the public half"):
        from_options(server=True, keypair=str(secret_path), server_key=str(alice_public))
    with pytest.raises(ValueError, match="needs --curve-server-key"):
        from_options(server=False, keypair=str(alice_secret))
    with pytest.raises(ValueError, match="for services"):
        from_options(server=False, server_key=str(public_path), allow=["x"])
    with pytest.raises(FileNotFoundError):
        from_options(server=True, keypair=str(secret_path), allow=[str(tmp_path / "nope.key")])
