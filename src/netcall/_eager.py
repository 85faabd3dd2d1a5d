"""Handler tasks that start at once, on every Python: ``start_task(loop, coroutine)``.

A Task per async handler is kept (a handler may use ``asyncio.current_task()``: through
``asyncio.timeout()``, anyio's cancel scopes, task groups); what costs is that a Task's first
step waits for the loop's next turn, and its answer for the turn after. Python 3.12's
``Task(eager_start=True)`` runs the first step at once, so a handler that never suspends
answers without a trip through the loop.

Before 3.12 (only when :data:`EAGER_BEFORE_312` is set: on 3.11, see there) a Task always
schedules its first step with ``loop.call_soon``. Here that one
scheduling is caught while the Task is made (an instance attribute shadows the loop's
``call_soon``) and the step is run at once, in the task's own context; the step itself makes
the task the current one, exactly as an eager start does. Measured (tests' echo, both ends in
one process over TCP, 64 in flight, CPU per call on Python 3.11): an ``async def`` handler cost
about 49 µs against 32 µs for a plain ``def`` one; see benchmarks/README.md for the figures with
this module. A loop whose ``call_soon`` cannot be shadowed (uvloop's), or one with a task
factory of its own, gets a plain task.

An ``async def`` handler with no ``await`` at all cannot suspend: ``run_to_end(loop, coro)``
runs it with no task of its own, under the loop's host task (see there). On 3.11 that took
the service's CPU per call from 25.5 to 21.2 µs (``benchmarks/ab.py``, 64 in flight: see
benchmarks/README.md, session 16); a Task made and stepped by :func:`start_task` costs about
3.5 µs there, against 0.6 µs for the step in a copy of the context.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading

# asyncio's own bookkeeping of the current task (C functions since 3.7; 3.12's eager tasks and
# every task step use them).
from asyncio.tasks import _enter_task, _leave_task
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["EAGER_BEFORE_312", "eager", "reraise", "run_to_end", "start_task"]

_T = TypeVar("_T", bound=asyncio.Task[Any])

#: On for 3.11, off for 3.10. On 3.10 a Ctrl-C is a KeyboardInterrupt raised wherever the
#: main thread is, and with the first step run inside ``Dispatcher.on_call`` it lands there
#: more often, before the call is answered or recorded: the call is then never answered (CI
#: saw it once on 3.10 in tests/test_lifecycle.py, the Ctrl-C of serve() with a call in
#: flight).
#: From 3.11, ``asyncio.run`` turns the first Ctrl-C into a cancellation of the main task,
#: which lands at an ``await``, never inside a callback. A thread started by the first step is
#: handled by ``CallContext._task`` being a ``TaskStarting``. A handler that finishes in its
#: first step is answered at once by the service (no done-callback, no turn of the loop).
EAGER_BEFORE_312 = sys.version_info >= (3, 11)

if sys.version_info >= (3, 12):

    def eager(loop: asyncio.AbstractEventLoop) -> bool:
        """Whether :func:`start_task` may run a first step at once on ``loop``."""
        return True

    def start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]
    ) -> asyncio.Task[Any]:
        """A task for ``coro`` whose first step has run (see the module docstring); the
        loop's task factory's, if it has one (whose first step waits its turn unless the
        factory starts it eagerly: ``asyncio.eager_task_factory``)."""
        if loop.get_task_factory() is not None:
            return _from_factory(loop, coro)
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:

    def eager(loop: asyncio.AbstractEventLoop) -> bool:
        """Whether :func:`start_task` may run a first step at once on ``loop``."""
        return EAGER_BEFORE_312

    def start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]
    ) -> asyncio.Task[Any]:
        """A task for ``coro`` whose first step has run (see the module docstring)."""
        if (
            not EAGER_BEFORE_312
            or asyncio._get_running_loop() is not loop
            or loop.get_task_factory() is not None
            or asyncio.current_task(loop) is not None
        ):
            # Not in a callback of this loop, in its thread; a factory of the loop's own; or
            # inside another task, which the step could not replace as the current one (3.12
            # swaps them): a plain task, whose first step waits its turn.
            return _from_factory(loop, coro)
        return _stepped(loop, coro, asyncio.Task)

    def _stepped(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], task_type: type[_T]
    ) -> _T:
        """``task_type(coro, loop=loop)`` (a Task), its first step run now (called from a
        callback of ``loop``, in its thread, with no task current)."""
        caught: list[tuple[Any, tuple[Any, ...], Any]] = []
        call_soon = loop.call_soon

        def catch(callback: Any, *args: Any, context: Any = None) -> Any:
            if isinstance(getattr(callback, "__self__", None), asyncio.Task):
                caught.append((callback, args, context))  # a task's step: the new one's?
                return None
            # Someone else's call_soon made meanwhile (a finalizer run by the garbage
            # collector, a signal handler): scheduled as it asked, with its handle.
            return call_soon(callback, *args, context=context)

        try:
            loop.call_soon = catch  # type: ignore[method-assign,assignment]
        except AttributeError:  # a loop without an instance dictionary (uvloop)
            return task_type(coro, loop=loop)
        try:
            task = task_type(coro, loop=loop)
        finally:
            vars(loop).pop("call_soon", None)  # (a nested start may have removed it)
        for callback, args, context in caught:
            if callback.__self__ is not task:  # another task's step: it waits its turn
                call_soon(callback, *args, context=context)
                continue
            try:  # the task's first step, now
                if context is None:
                    callback(*args)
                else:
                    context.run(callback, *args)
            except BaseException as exc:
                # KeyboardInterrupt or SystemExit in the step (the task holds it too): it
                # leaves the loop on its next turn, as from a step the loop ran, and the
                # caller still gets its task (a service records and answers the call).
                loop.call_soon(reraise, exc)
        return task


def reraise(exc: BaseException) -> None:
    """Raise ``exc``: a loop callback that lets KeyboardInterrupt or SystemExit, caught where a
    handler ran, leave the loop on its next turn, as from a task's step."""
    raise exc


def _from_factory(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]
) -> asyncio.Task[Any]:
    """``loop.create_task(coro)``; ``coro`` is closed if that raises (a task factory's error:
    the coroutine never ran, and must not be reported as never awaited)."""
    try:
        return loop.create_task(coro)
    except BaseException:
        coro.close()
        raise


def run_to_end(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro``, which cannot suspend (an ``async def`` with no ``await``: see
    ``netcall._service.registry.never_suspends``), to its end now: its result, or what it
    raised. Called from a callback of ``loop``, in its thread, with no task current.

    No task is made for it: that is what costs on 3.10/3.11 (a Task is made and registered,
    stepped, and its result read back; the handler itself is one step). It runs in the current
    context (the caller gives it a copy of its own, as a task would have), with a task
    current, so that ``asyncio.current_task()`` and what depends on it (sniffio, anyio)
    work. That task is the loop's *host*: one finished task per loop, named
    ``netcall: handler with no await``, shared by every such call (so what keys on the task,
    an anyio ``Lock`` held past the call, say, sees one owner for all of them). Cancelling it
    does nothing (it is done); a callback added to it runs on the loop's next turn.

    Raises:
        whatever the coroutine raised.
    """
    host = _host(loop)
    _enter_task(loop, host)
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    finally:
        _leave_task(loop, host)
    coro.close()  # it suspended after all (its caller checks the code was not swapped)
    raise RuntimeError("a handler with no await suspended")


_hosts = threading.local()  # .host: the host of the last loop this thread ran such a call on


def _host(loop: asyncio.AbstractEventLoop) -> _Host:
    host: _Host | None = getattr(_hosts, "host", None)
    if host is None or host.get_loop() is not loop:
        # Made in an empty context: a task keeps the context it was made in, and this one
        # lives as long as the loop is used (the call being served must not be kept with it).
        host = _hosts.host = contextvars.Context().run(_new_host, loop)
    return host


class _Host(asyncio.Task):  # type: ignore[type-arg]
    """A task whose coroutine stays readable once it is done: anyio's ``get_current_task()``
    reads it (3.12+ forgets it)."""

    def __init__(self, coro: Coroutine[Any, Any, None], **kwargs: Any) -> None:
        self._kept = coro
        super().__init__(coro, **kwargs)

    def get_coro(self) -> Any:
        return self._kept


def _new_host(loop: asyncio.AbstractEventLoop) -> _Host:
    """A finished host task for ``loop`` (before 3.12, on a loop whose ``call_soon`` cannot
    be shadowed: finished on its next turn)."""
    if sys.version_info >= (3, 12):
        host = _Host(_nothing(), loop=loop, eager_start=True)
    else:
        host = _stepped(loop, _nothing(), _Host)
    host.set_name("netcall: handler with no await")
    return host


async def _nothing() -> None:
    return None
