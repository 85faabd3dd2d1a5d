"""Small helpers shared by the test modules (not fixtures)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import zmq


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 5.0,
    interval: float = 0.01,
    gc_collect: bool = False,
) -> bool:
    """Poll ``predicate`` on the loop until it is true or ``timeout`` passes; return its value."""
    end = time.monotonic() + timeout
    while True:
        if gc_collect:
            gc.collect()
        if predicate():
            return True
        if time.monotonic() >= end:
            return bool(predicate())
        await asyncio.sleep(interval)


async def recv_within(sock: Any, timeout: float = 2.0) -> list[bytes]:
    """The next multipart message on a plain zmq socket, polled from the loop; fails the test
    when none arrives within ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)  # type: ignore[no-any-return]
        except zmq.Again:
            await asyncio.sleep(0.005)
    raise AssertionError(f"no message within {timeout} s")


def register_work(svc: Any, name: str, ran: list[str], started: asyncio.Event) -> None:
    """Register ``work(seconds)`` on ``svc``: it appends ``name`` to ``ran``, sets
    ``started``, sleeps ``seconds`` and returns ``name``."""

    @svc.register
    async def work(seconds: float) -> str:
        ran.append(name)
        started.set()
        await asyncio.sleep(seconds)
        return name


async def offered(cli: Any, method: str, timeout: float = 10.0) -> None:
    """Wait until a service the client can reach (behind a broker, or connected to a client
    that binds) offers ``method``."""
    from netcall import RPCError

    end = time.monotonic() + timeout
    while True:
        try:
            if method in await cli.methods():
                return
        except RPCError:  # a client that binds: no service has connected yet
            pass
        assert time.monotonic() < end, f"no service offers {method}"
        await asyncio.sleep(0.01)


def bind_again(sock: zmq.Socket[Any], url: str, timeout: float = 5.0) -> None:
    """Bind ``url``, which a socket closed just now may still hold (its tcp port is let go by
    that context's I/O thread, a moment after the close)."""
    end = time.monotonic() + timeout
    while True:
        try:
            sock.bind(url)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > end:
                raise
            time.sleep(0.01)
