"""Real OS threads, locks and selectors, whether or not gevent's monkey-patching replaced
them, and which thread is the main one (where Python runs signal handlers): what
:mod:`netcall._bridge` runs netcall's loop with."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]
import concurrent.futures
import importlib
import sys
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "RealThreadExecutor",
    "main_thread_ident",
    "new_selector",
    "original",
    "real_ident",
    "real_lock",
    "start_real_thread",
]

T = TypeVar("T")


def original(module: str, name: str) -> Any:
    """``module.name`` as it was before gevent's monkey-patching (if it happened at all)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


def real_lock() -> Any:
    return original("_thread", "allocate_lock")()


def start_real_thread(fn: Callable[..., None], *args: Any) -> None:
    original("_thread", "start_new_thread")(fn, args)


def real_ident() -> int:
    return int(original("_thread", "get_ident")())


class RealThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: each job in a fresh real thread (patched threads would be
    greenlets of a hub that never runs in the loop thread). Only rare helpers use it
    (``getaddrinfo``); netcall's own calls never do. asyncio insists on a ThreadPoolExecutor
    subclass; none of the pool's own machinery is used."""

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def work() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        start_real_thread(work)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


def main_thread_ident() -> Callable[[], int | None]:
    """The main thread's real ident, as a function (``None`` while not known yet).

    ``_thread._get_main_thread_ident`` (3.12+) holds under ``gevent.monkey.patch_all()``,
    where even the original ``threading.main_thread()`` gives a patched thread object's
    ident. Before 3.12 the main thread is found by asking the signal module, the one that
    matters here: ``signal.signal`` refuses any thread but the main one before it looks at
    its arguments, so a signal number of 0 is refused either way, with a message that tells
    which (nothing changes). Each thread asks once."""
    try:
        return original("_thread", "_get_main_thread_ident")  # type: ignore[no-any-return]
    except AttributeError:
        pass
    get_ident = original("_thread", "get_ident")
    found: list[int] = []
    others: set[int] = set()  # (an ident reused by a later thread is not the main one either)

    def main_ident() -> int | None:
        if found:
            return found[0]
        ident: int = get_ident()
        if ident in others:
            return None
        try:
            _signal.signal(0, _signal.SIG_DFL)
        except ValueError as exc:
            if "main thread" in str(exc):
                if len(others) >= 1024:
                    others.clear()
                others.add(ident)
                return None
        found.append(ident)  # refused for its number only: this is the main thread
        return ident

    return main_ident


def new_selector() -> Any:
    """The real epoll selector (gevent's monkey-patching takes it away)."""
    try:
        return original("selectors", "EpollSelector")()
    except AttributeError:  # pragma: no cover - not Linux
        return original("selectors", "DefaultSelector")()
