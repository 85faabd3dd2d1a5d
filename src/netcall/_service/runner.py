"""Where sync code runs: handlers and sync generator steps, inline, in an executor, or through
a :data:`HandlerRunner` hook (the gevent service runs them as greenlets)."""

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
HandlerRunner = Callable[[Callable[[], Any]], Awaitable[Any]]


class Runner:
    """Runs sync callables for the service. ``inline`` when there is neither an executor nor
    a hook: then the caller runs them directly on the loop, without a task."""

    __slots__ = ("executor", "hook", "inline")

    def __init__(
        self, executor: concurrent.futures.Executor | None, hook: HandlerRunner | None
    ) -> None:
        self.executor = executor
        self.hook = hook
        self.inline = executor is None and hook is None

    async def run(self, fn: Callable[[], T]) -> T:
        if self.hook is not None:
            return await self.hook(fn)  # type: ignore[no-any-return]
        if self.executor is not None:
            ctx = contextvars.copy_context()
            return await asyncio.get_running_loop().run_in_executor(self.executor, ctx.run, fn)
        return fn()
