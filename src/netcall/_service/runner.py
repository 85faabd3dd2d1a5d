"""Where user code runs: sync handlers and sync generator steps inline, in an executor, or
through a :data:`HandlerRunner` hook (the gevent service runs them as greenlets); async handlers
and async generator steps as tasks on the loop, or through ``async_hook`` (under trio, in the
trio run: see :mod:`netcall._trio`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["HandlerRunner", "Runner"]

T = TypeVar("T")

#: Runs a zero-argument callable somewhere and returns its result; cancelling the awaitable
#: should stop the call if it can. It runs in the context of the call (``current_call()``).
#: One with a true ``one_thread`` attribute runs all user code on one thread (see
#: :attr:`Runner.one_thread`).
HandlerRunner = Callable[[Callable[[], Any]], Awaitable[Any]]


class Runner:
    """Runs sync callables for the service. ``inline`` when there is neither an executor nor
    a hook: then the caller runs them directly on the loop, without a task."""

    __slots__ = ("async_hook", "executor", "hook", "inline")

    def __init__(
        self, executor: concurrent.futures.Executor | None, hook: HandlerRunner | None
    ) -> None:
        self.executor = executor
        self.hook = hook
        self.inline = executor is None and hook is None
        self.async_hook: HandlerRunner | None = None

    def plug(self, hook: HandlerRunner | None, async_hook: HandlerRunner | None) -> None:
        """Send sync code (unless there is an executor) to ``hook``, async code to
        ``async_hook`` (before the service starts)."""
        if self.executor is None:
            self.hook = hook
            self.inline = hook is None
        self.async_hook = async_hook

    @property
    def one_thread(self) -> bool:
        """Whether a hook runs user code all on one thread (a gevent hub, a trio run): one
        stuck handler stops that whole side while the loop reading the socket runs on, so a
        broker's PING waits for a no-op run through it (:meth:`no_op`). A hook says so with a
        true ``one_thread`` attribute. Not a pool's hook (``ThreadingRPCService``), an
        executor, or a hook that says nothing: one stuck thread does not stop the others."""
        return _one_thread(self.async_hook) or _one_thread(self.hook)

    async def no_op(self) -> None:
        """Run nothing where user code runs on one thread: an async no-op through
        ``async_hook`` (the trio run), else a sync no-op through ``hook`` (the gevent hub), if
        that hook is :attr:`one_thread`; returns once it has run (at once without such a
        hook). Cancelling it cancels the job as a call's.

        Raises:
            whatever the hook raises (ClientClosedError: the trio run has ended).
        """
        async_hook, hook = self.async_hook, self.hook
        if async_hook is not None and _one_thread(async_hook):
            await async_hook(_async_no_op)
        elif hook is not None and _one_thread(hook):
            await hook(_no_op)

    async def run(self, fn: Callable[[], T]) -> T:
        if self.hook is not None:
            return await self.hook(fn)  # type: ignore[no-any-return]
        if self.executor is not None:
            ctx = contextvars.copy_context()
            return await asyncio.get_running_loop().run_in_executor(self.executor, ctx.run, fn)
        return fn()


def _no_op() -> None:
    pass


async def _async_no_op() -> None:
    pass


def _one_thread(hook: HandlerRunner | None) -> bool:
    return getattr(hook, "one_thread", False) is True
