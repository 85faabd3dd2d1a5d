"""The two raw pyzmq baselines, written here and nowhere else.

Protocol (both baselines, identical on the wire):

* request, DEALER -> ROUTER, one frame: msgpack ``[id, method, args]``
* reply, ROUTER -> DEALER, one frame: msgpack ``[id, kind, value]`` with kind
  ``REPLY`` (a call's result), ``ITEM`` (one stream item) or ``END`` (stream exhausted).
* ``method == "echo"``: reply ``args[0]``.
* ``method == "count"``, ``args == [n, window]``: a stream of ``0..n-1``.  Flow control
  is a simple credit window: the service sends at most ``window`` items ahead; the
  client grants ``window // 2`` more (``[id, "__credit__", k]``) each time it has
  consumed ``window // 2``.  ``[id, "__cancel__", None]`` drops a stream.  The
  benchmark uses window = 64, netcall's default prefetch window, so the two are
  comparable.  ``window == 0`` is a plain push with no flow control (reported
  separately as ``stream_push``); since a ROUTER silently drops at the high-water
  mark, the service's SNDHWM and the client's RCVHWM are 0 (unbounded) for it.
* ``method == "count_big"``, ``args == [n, window, size]``: the same stream, but every
  item is one ``size``-byte ``bytes`` object (made once per size in the service and sent
  ``n`` times).  The benchmark uses window = 8 (8 MiB of 1 MiB items in flight at most;
  netcall's stream credit is bounded by a 4 MiB byte budget).
* A numpy array is echoed the way a user of plain pyzmq would: ``arr.tobytes()`` sent,
  ``np.frombuffer`` of the reply (``echo_array``).

``raw-zmq-asyncio``: ``zmq.asyncio`` sockets; the service awaits ``recv_multipart`` /
``send_multipart`` in one loop; the client has one reader task and a Future per call.

``raw-zmq-fd``: plain pyzmq sockets, ``loop.add_reader(sock.FD)``; each wake-up drains
every ready message with non-blocking ``recv``; ``sock.EVENTS`` is checked after sends
because the ZeroMQ FD is edge-triggered.  The client's ``call`` is a plain function
that sends without blocking and returns the Future.

``raw-zmq-floor``: the fd loop, except that a ``bytes`` argument, result or stream item of
:data:`FRAME_MIN` bytes or more travels as a ZeroMQ frame of its own after the msgpack
header (``[id, method, None]`` / ``[id, kind, None]``), sent with ``copy=True`` and received
as ``bytes``, and that both processes raise glibc's mmap and trim thresholds at start
(:func:`tune_malloc`, the values netcall uses).  That is the fewest copies with which code
above pyzmq can hand a received payload to user code as ``bytes``: one into the ZeroMQ
message at the send, one out of it at the receipt, per end.  It is the floor under the
payload figures (issue 14's "1 MiB echo >= 1.5x zmq.asyncio"), not an RPC system: the
small-message figures are the fd loop's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any

import msgpack
import zmq
import zmq.asyncio

REPLY, ITEM, END = 0, 1, 2
WINDOW = 64
BIG_WINDOW = 8

packb = msgpack.packb


def unpackb(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False)


class _StreamState:
    __slots__ = ("credit", "it")

    def __init__(self, n: int, window: int, item: bytes | None = None) -> None:
        self.it: Iterator[Any] = iter(range(n)) if item is None else repeat(item, n)
        self.credit = window if window > 0 else float("inf")


_BIG: dict[int, bytes] = {}


def _big_stream(args: list[Any]) -> _StreamState:
    """The state of a ``count_big`` stream: the same ``size``-byte object ``n`` times."""
    n, window, size = args
    item = _BIG.get(size)
    if item is None:
        item = _BIG[size] = b"s" * size
    return _StreamState(n, window, item)


# =========================================================================== services


async def serve_asyncio(endpoint_cb: Callable[[str], None], host: str = "127.0.0.1") -> None:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # the push-mode stream must not hit the ROUTER's silent drop
    port = sock.bind_to_random_port(f"tcp://{host}")
    endpoint_cb(f"tcp://{host}:{port}")
    streams: dict[tuple[bytes, int], _StreamState] = {}

    async def pump(ident: bytes, cid: int, st: _StreamState) -> None:
        while st.credit > 0:
            try:
                v = next(st.it)
            except StopIteration:
                streams.pop((ident, cid), None)
                await sock.send_multipart([ident, packb([cid, END, None])])
                return
            st.credit -= 1
            await sock.send_multipart([ident, packb([cid, ITEM, v])])

    try:
        while True:
            ident, payload = await sock.recv_multipart()
            cid, method, args = unpackb(payload)
            if method == "echo":
                await sock.send_multipart([ident, packb([cid, REPLY, args[0]])])
            elif method == "count" or method == "count_big":
                st = _StreamState(args[0], args[1]) if method == "count" else _big_stream(args)
                streams[(ident, cid)] = st
                await pump(ident, cid, st)
            elif method == "__credit__":
                st2 = streams.get((ident, cid))
                if st2 is not None:
                    st2.credit += args
                    await pump(ident, cid, st2)
            elif method == "__cancel__":
                streams.pop((ident, cid), None)
    finally:
        sock.close(0)
        ctx.term()


async def serve_fd(endpoint_cb: Callable[[str], None], host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)  # the push-mode stream must not hit the ROUTER's silent drop
    port = sock.bind_to_random_port(f"tcp://{host}")
    streams: dict[tuple[bytes, int], _StreamState] = {}
    out: deque[list[bytes]] = deque()
    POLLIN, POLLOUT, NOBLOCK, Again = zmq.POLLIN, zmq.POLLOUT, zmq.NOBLOCK, zmq.Again
    send_multipart = sock.send_multipart
    recv_multipart = sock.recv_multipart

    def send(frames: list[bytes]) -> None:
        if out:
            out.append(frames)
            return
        try:
            send_multipart(frames, NOBLOCK)
        except Again:
            out.append(frames)

    def pump(ident: bytes, cid: int, st: _StreamState) -> None:
        while st.credit > 0:
            try:
                v = next(st.it)
            except StopIteration:
                streams.pop((ident, cid), None)
                send([ident, packb([cid, END, None])])
                return
            st.credit -= 1
            send([ident, packb([cid, ITEM, v])])

    def drain() -> None:
        while out:
            try:
                send_multipart(out[0], NOBLOCK)
            except Again:
                break
            out.popleft()
        while True:
            try:
                ident, payload = recv_multipart(NOBLOCK)
            except Again:
                break
            cid, method, args = unpackb(payload)
            if method == "echo":
                send([ident, packb([cid, REPLY, args[0]])])
            elif method == "count" or method == "count_big":
                st = _StreamState(args[0], args[1]) if method == "count" else _big_stream(args)
                streams[(ident, cid)] = st
                pump(ident, cid, st)
            elif method == "__credit__":
                st2 = streams.get((ident, cid))
                if st2 is not None:
                    st2.credit += args
                    pump(ident, cid, st2)
            elif method == "__cancel__":
                streams.pop((ident, cid), None)
        # edge-triggered FD: re-check before going back to sleep
        ev = sock.EVENTS
        if ev & POLLIN or (out and ev & POLLOUT):
            loop.call_soon(drain)

    loop.add_reader(sock.FD, drain)
    endpoint_cb(f"tcp://{host}:{port}")
    loop.call_soon(drain)
    try:
        await asyncio.Event().wait()
    finally:
        loop.remove_reader(sock.FD)
        sock.close(0)
        ctx.term()


# ---------------------------------------------------------------- the copy floor

#: ``bytes`` this large travel as a frame of their own in ``raw-zmq-floor`` (netcall's
#: ``MsgpackSerializer(buffer_min=...)`` default).
FRAME_MIN = 16384


def tune_malloc() -> None:
    """glibc's mmap threshold to 32 MiB and trim threshold to 128 MiB (``mallopt``), the
    values ``netcall._malloc`` sets: freed large blocks are reused instead of being mapped,
    faulted in and unmapped per message. Nothing on another C library."""
    import ctypes

    libc = ctypes.CDLL(None)
    if hasattr(libc, "gnu_get_libc_version"):
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD


def _floor_message(ident: bytes, cid: int, kind: int, value: Any) -> list[Any]:
    # [ident, msgpack [id, kind, value]], or the value as a frame of its own after the header
    if type(value) is bytes and len(value) >= FRAME_MIN:
        return [ident, packb([cid, kind, None]), value]
    return [ident, packb([cid, kind, value])]


async def serve_floor(endpoint_cb: Callable[[str], None], host: str = "127.0.0.1") -> None:
    """``raw-zmq-floor``'s service: :func:`serve_fd` with payloads in frames of their own.

    It repeats the fd loop's lines rather than sharing them: a hook in :func:`serve_fd` for
    the floor's framing would cost the fd loop a call per message, and the fd loop stays as
    every earlier run measured it."""
    tune_malloc()
    loop = asyncio.get_running_loop()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    port = sock.bind_to_random_port(f"tcp://{host}")
    streams: dict[tuple[bytes, int], _StreamState] = {}
    out: deque[list[Any]] = deque()
    POLLIN, POLLOUT, NOBLOCK, Again = zmq.POLLIN, zmq.POLLOUT, zmq.NOBLOCK, zmq.Again

    def send(frames: list[Any]) -> None:
        if out:
            out.append(frames)
            return
        try:
            sock.send_multipart(frames, NOBLOCK)
        except Again:
            out.append(frames)

    def pump(ident: bytes, cid: int, st: _StreamState) -> None:
        while st.credit > 0:
            try:
                v = next(st.it)
            except StopIteration:
                streams.pop((ident, cid), None)
                send([ident, packb([cid, END, None])])
                return
            st.credit -= 1
            send(_floor_message(ident, cid, ITEM, v))

    def drain() -> None:
        while out:
            try:
                sock.send_multipart(out[0], NOBLOCK)
            except Again:
                break
            out.popleft()
        while True:
            try:
                frames = sock.recv_multipart(NOBLOCK)
            except Again:
                break
            ident = frames[0]
            cid, method, args = unpackb(frames[1])
            if len(frames) > 2:
                args = [frames[2]]
            if method == "echo":
                send(_floor_message(ident, cid, REPLY, args[0]))
            elif method == "count" or method == "count_big":
                st = _StreamState(args[0], args[1]) if method == "count" else _big_stream(args)
                streams[(ident, cid)] = st
                pump(ident, cid, st)
            elif method == "__credit__":
                st2 = streams.get((ident, cid))
                if st2 is not None:
                    st2.credit += args
                    pump(ident, cid, st2)
            elif method == "__cancel__":
                streams.pop((ident, cid), None)
        ev = sock.EVENTS
        if ev & POLLIN or (out and ev & POLLOUT):
            loop.call_soon(drain)

    loop.add_reader(sock.FD, drain)
    endpoint_cb(f"tcp://{host}:{port}")
    loop.call_soon(drain)
    try:
        await asyncio.Event().wait()
    finally:
        loop.remove_reader(sock.FD)
        sock.close(0)
        ctx.term()


# =========================================================================== clients


def _from_bytes(data: bytes, like: Any) -> Any:
    """The array ``like`` was, rebuilt over ``data`` (no copy): what a pyzmq user writes."""
    import numpy as np

    return np.frombuffer(data, dtype=like.dtype).reshape(like.shape)


class RawStream:
    """Consumer side of one credit-window stream (shared by both raw clients)."""

    __slots__ = ("buf", "cid", "client", "consumed", "finished", "grant", "loop", "waiter")

    def __init__(self, client: Any, cid: int, window: int) -> None:
        self.client = client
        self.cid = cid
        self.grant = window // 2 if window > 0 else 1 << 62
        self.buf: deque[tuple[int, Any]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.consumed = 0
        self.finished = False
        self.loop = asyncio.get_running_loop()

    def feed(self, kind: int, value: Any) -> None:
        self.buf.append((kind, value))
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> RawStream:
        return self

    async def __anext__(self) -> Any:
        while not self.buf:
            self.waiter = self.loop.create_future()
            await self.waiter
            self.waiter = None
        kind, value = self.buf.popleft()
        if kind == END:
            self.finished = True
            self.client.streams.pop(self.cid, None)
            raise StopAsyncIteration
        self.consumed += 1
        if self.consumed >= self.grant:
            await self.client.send_raw(packb([self.cid, "__credit__", self.consumed]))
            self.consumed = 0
        return value

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            self.client.streams.pop(self.cid, None)
            await self.client.send_raw(packb([self.cid, "__cancel__", None]))


class AsyncioClient:
    """zmq.asyncio DEALER, a reader task, a Future per call."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # see the service's SNDHWM
        self.sock.connect(endpoint)
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, RawStream] = {}
        self.next_id = 0
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        recv = self.sock.recv
        pending = self.pending
        streams = self.streams
        while True:
            cid, kind, value = unpackb(await recv())
            if kind == REPLY:
                fut = pending.pop(cid, None)
                if fut is not None and not fut.done():
                    fut.set_result(value)
            else:
                st = streams.get(cid)
                if st is not None:
                    st.feed(kind, value)

    async def send_raw(self, data: bytes) -> None:
        await self.sock.send(data)

    async def call(self, method: str, arg: Any) -> Any:
        self.next_id += 1
        cid = self.next_id
        fut = self.loop.create_future()
        self.pending[cid] = fut
        await self.sock.send(packb([cid, method, [arg]]))
        return await fut

    def echo(self, arg: Any) -> Any:
        return self.call("echo", arg)

    def _open(self, method: str, args: list[Any], window: int) -> RawStream:
        self.next_id += 1
        cid = self.next_id
        st = RawStream(self, cid, window)
        self.streams[cid] = st
        # the request is sent without awaiting: zmq.asyncio queues it if needed
        self.sock.send(packb([cid, method, args]))
        return st

    def stream(self, n: int, window: int = WINDOW) -> RawStream:
        return self._open("count", [n, window], window)

    def stream_push(self, n: int) -> RawStream:
        return self.stream(n, 0)

    def stream_big(self, n: int, size: int) -> RawStream:
        return self._open("count_big", [n, BIG_WINDOW, size], BIG_WINDOW)

    async def echo_array(self, arr: Any) -> Any:
        return _from_bytes(await self.call("echo", arr.tobytes()), arr)

    async def close(self) -> None:
        self.reader.cancel()
        try:
            await self.reader
        except asyncio.CancelledError:
            pass
        self.sock.close(0)
        self.ctx.term()


class FdClient:
    """Plain pyzmq DEALER driven by loop.add_reader(sock.FD), draining every ready message."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # see the service's SNDHWM
        self.sock.connect(endpoint)
        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.streams: dict[int, RawStream] = {}
        self.out: deque[bytes] = deque()
        self.next_id = 0
        self.drain_scheduled = False
        self.fd = self.sock.FD
        self.loop.add_reader(self.fd, self._drain)

    def _drain(self) -> None:
        self.drain_scheduled = False
        sock = self.sock
        out = self.out
        while out:
            try:
                sock.send(out[0], zmq.NOBLOCK)
            except zmq.Again:
                break
            out.popleft()
        recv = sock.recv
        pending = self.pending
        streams = self.streams
        NOBLOCK, Again = zmq.NOBLOCK, zmq.Again
        while True:
            try:
                data = recv(NOBLOCK)
            except Again:
                break
            cid, kind, value = unpackb(data)
            if kind == REPLY:
                fut = pending.pop(cid, None)
                if fut is not None and not fut.done():
                    fut.set_result(value)
            else:
                st = streams.get(cid)
                if st is not None:
                    st.feed(kind, value)
        ev = sock.EVENTS
        if ev & zmq.POLLIN or (out and ev & zmq.POLLOUT):
            self._schedule()

    def _schedule(self) -> None:
        if not self.drain_scheduled:
            self.drain_scheduled = True
            self.loop.call_soon(self._drain)

    def _send(self, data: bytes) -> None:
        if self.out:
            self.out.append(data)
        else:
            try:
                self.sock.send(data, zmq.NOBLOCK)
            except zmq.Again:
                self.out.append(data)
        # a send may have consumed the FD's edge: look before sleeping
        if not self.drain_scheduled and self.sock.EVENTS & zmq.POLLIN:
            self._schedule()

    async def send_raw(self, data: bytes) -> None:
        self._send(data)

    def call(self, method: str, arg: Any) -> asyncio.Future[Any]:
        self.next_id += 1
        cid = self.next_id
        fut = self.loop.create_future()
        self.pending[cid] = fut
        self._send(packb([cid, method, [arg]]))
        return fut

    def echo(self, arg: Any) -> asyncio.Future[Any]:
        return self.call("echo", arg)

    def _open(self, method: str, args: list[Any], window: int) -> RawStream:
        self.next_id += 1
        cid = self.next_id
        st = RawStream(self, cid, window)
        self.streams[cid] = st
        self._send(packb([cid, method, args]))
        return st

    def stream(self, n: int, window: int = WINDOW) -> RawStream:
        return self._open("count", [n, window], window)

    def stream_push(self, n: int) -> RawStream:
        return self.stream(n, 0)

    def stream_big(self, n: int, size: int) -> RawStream:
        return self._open("count_big", [n, BIG_WINDOW, size], BIG_WINDOW)

    async def echo_array(self, arr: Any) -> Any:
        return _from_bytes(await self.call("echo", arr.tobytes()), arr)

    async def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.sock.close(0)
        self.ctx.term()


class FloorClient(FdClient):
    """``raw-zmq-floor``'s client: :class:`FdClient` with payloads in frames of their own."""

    def __init__(self, endpoint: str) -> None:
        tune_malloc()
        super().__init__(endpoint)

    def _drain(self) -> None:
        self.drain_scheduled = False
        sock = self.sock
        out = self.out
        while out:
            try:
                sock.send_multipart(out[0], zmq.NOBLOCK)
            except zmq.Again:
                break
            out.popleft()
        pending = self.pending
        streams = self.streams
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            cid, kind, value = unpackb(frames[0])
            if len(frames) > 1:
                value = frames[1]
            if kind == REPLY:
                fut = pending.pop(cid, None)
                if fut is not None and not fut.done():
                    fut.set_result(value)
            else:
                st = streams.get(cid)
                if st is not None:
                    st.feed(kind, value)
        ev = sock.EVENTS
        if ev & zmq.POLLIN or (out and ev & zmq.POLLOUT):
            self._schedule()

    def _send(self, data: Any) -> None:
        frames = data if type(data) is list else [data]
        if self.out:
            self.out.append(frames)
        else:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                self.out.append(frames)
        if not self.drain_scheduled and self.sock.EVENTS & zmq.POLLIN:
            self._schedule()

    def call(self, method: str, arg: Any) -> asyncio.Future[Any]:
        self.next_id += 1
        cid = self.next_id
        fut = self.loop.create_future()
        self.pending[cid] = fut
        if type(arg) is bytes and len(arg) >= FRAME_MIN:
            self._send([packb([cid, method, None]), arg])
        else:
            self._send(packb([cid, method, [arg]]))
        return fut
