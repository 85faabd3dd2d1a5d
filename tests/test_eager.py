"""Handler tasks start at once (netcall._eager): the first step runs inside the task, on every
Python, with the task current, its own context, and nothing left behind on the loop."""

from __future__ import annotations

import asyncio
import contextvars
import sys
from typing import Any

import pytest

from netcall import _eager
from netcall._eager import start_task


@pytest.fixture(autouse=True)
def eager_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The 3.10/3.11 path is on for 3.11 only (see _eager.EAGER_BEFORE_312); test it on."""
    monkeypatch.setattr(_eager, "EAGER_BEFORE_312", True)


pytestmark = pytest.mark.timeout(20)

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")


async def from_callback(coro: Any) -> Any:
    """``start_task(loop, coro)`` called from a loop callback, as the service calls it (the
    socket's reader), not from a task; returns the task."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[Any] = loop.create_future()
    loop.call_soon(lambda: made.set_result(start_task(loop, coro)))
    return await made


async def test_the_first_step_runs_now_inside_the_task() -> None:
    loop = asyncio.get_running_loop()
    seen: list[Any] = []

    async def handler() -> str:
        seen.append(asyncio.current_task())
        var.set("inner")
        return "done"

    task = await from_callback(handler())
    assert task.done() and task.result() == "done"  # no trip through the loop
    assert seen == [task]
    assert var.get() == "outer"  # the step ran in the task's own context
    assert "call_soon" not in vars(loop)  # the loop is left as it was


async def test_a_handler_that_suspends_goes_on_as_a_task() -> None:
    event = asyncio.Event()

    async def handler() -> str:
        async with asyncio.timeout(5) if sys.version_info >= (3, 11) else _null():
            await event.wait()  # needs a current task (asyncio.timeout, cancel scopes)
        return "woke"

    task = await from_callback(handler())
    assert not task.done()
    event.set()
    assert await asyncio.wait_for(task, 2) == "woke"


async def test_a_task_cancelled_after_its_first_step() -> None:
    cancelled = []

    async def handler() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    task = await from_callback(handler())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == [True]


async def test_a_loop_task_factory_is_respected() -> None:
    loop = asyncio.get_running_loop()
    made: list[Any] = []

    def factory(loop: Any, coro: Any, **kwargs: Any) -> Any:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    async def handler() -> int:
        return 1

    loop.set_task_factory(factory)
    try:
        task = await from_callback(handler())
        assert await task == 1
    finally:
        loop.set_task_factory(None)
    if sys.version_info < (3, 12):
        assert made == [task]


async def test_inside_another_task_it_is_a_plain_task() -> None:
    loop = asyncio.get_running_loop()

    async def handler() -> int:
        return 2

    task = start_task(loop, handler())  # this test is a task: no eager step on 3.10/3.11
    assert await task == 2


class _null:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> None:
        return None


async def test_someone_elses_call_soon_during_the_start_is_not_run_at_once() -> None:
    """Before 3.12 the start catches the loop's call_soon while the Task is built: only the
    task's own first step runs at once; any other callback scheduled meanwhile (a finalizer, a
    signal handler) keeps its turn. Here a profiler hook schedules one from inside the Task's
    construction (its registration in asyncio's task set)."""
    if sys.version_info >= (3, 12):
        pytest.skip("3.12+ starts tasks eagerly itself (no call_soon is caught)")
    loop = asyncio.get_running_loop()
    ran: list[str] = []
    fired: list[bool] = []
    handles: list[Any] = []

    def someone_else() -> None:
        ran.append("someone else")

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name == "add" and not fired:
            fired.append(True)
            handles.append(loop.call_soon(someone_else))

    async def handler() -> None:
        ran.append("first step")

    def start() -> asyncio.Task[Any]:
        sys.setprofile(hook)
        try:
            task = start_task(loop, handler())
        finally:
            sys.setprofile(None)
        assert ran == ["first step"]  # the step ran; the other callback waits its turn
        return task

    made: asyncio.Future[asyncio.Task[Any]] = loop.create_future()

    def from_a_callback() -> None:  # as the service starts handlers
        try:
            made.set_result(start())
        except AssertionError as exc:
            made.set_exception(exc)

    loop.call_soon(from_a_callback)
    task = await made
    assert fired, "the hook did not run inside the Task's construction"
    assert isinstance(handles[0], asyncio.Handle)  # its caller got a handle it can cancel
    assert task.done()
    await asyncio.sleep(0)
    assert ran == ["first step", "someone else"]
