"""The machinery shared by the blocking and gevent adapters: one asyncio loop, run by the
thread waiting on it or by a real thread of its own.

Rules of this file:

- One owned asyncio loop per process, with the real epoll selector and a default executor of
  real threads. Every socket a bridged client or service owns lives on that loop; only the
  thread running the loop touches it.
- Who runs the loop: whichever thread holds ``Bridge._lead``. While one thread calls at a
  time, it runs the loop itself for the length of each call (``Bridge._drive``): no hand-off
  to another thread and back, which costs more than the rest of a call on a small machine.
- A lone greenlet runs the loop too, but a turn at a time (``Bridge._wait_green``), waiting
  between turns on its hub for the loop's selector or next timer, with ``_lead`` let go: a
  greenlet holding the loop while its hub ran other greenlets would stall every other
  thread's calls whenever the hub blocked (CPU work, a plain lock).
- A lone caller that gives up on its call (Ctrl-C, ``gevent.kill``, a ``gevent.Timeout``)
  cancels it before it lets go of the loop and runs the few turns that send the CANCEL (no
  later call may come to run them); work still left after them goes to the bridge's own
  thread (``LoopLead._abandon``). What it was raised with goes on up at once.
- When a second caller calls while one runs the loop, a real OS thread of the bridge's own
  (never a greenlet, even under ``gevent.monkey.patch_all()``) takes it over, and hands it back
  after a calm spell: :data:`CALM_AFTER` seconds with at most one caller at a time. For a
  service, a stream (its lease pings) or a caller running an asyncio loop, the thread runs it
  for good (:meth:`Bridge.run_in_background`).
- The main thread running the loop runs the Python handlers of :data:`DEFERRED_SIGNALS`
  (Ctrl-C's ``KeyboardInterrupt``, a ``SIGALRM`` timeout) between callbacks: raised inside a
  callback, an exception could lose messages already read, and raised while ``_lead`` is
  held, it could keep it for good. A greenlet of the main thread defers them for its whole
  call, and runs them between its steps.
- The loop is reference counted: each bridged client or service :func:`acquire`\\ s it and
  :func:`release`\\ s it on close; the last release closes it (and joins its thread).
  ``atexit`` closes whatever is left; after ``fork()`` the child starts from nothing (the
  thread does not exist there).
- A lone caller running the loop itself starts its call in the loop's first turn, after the
  callbacks of what that turn's select found (an already-due timer: what came while nobody
  ran the loop, a broken connection or a service's HELLO, is read first), and its message
  goes out at once (``_reactor.LONE_STARTS``): 3 turns per sequential call.
- Work crosses to the loop through an inbox, woken once per batch. A plain call is not a
  task: the core starts it at once (:meth:`Bridge.run_started` with
  ``RPCClient._start_call``) and hands back its pending future, whose raw reply the waiting
  side decodes; anything else (middleware, streams, closing) runs as a task.
- A thread waits on a bare lock released by the future's done callback. A greenlet
  never blocks its hub: it waits on a :class:`HubPort` (one ``loop.async_()`` watcher per hub
  and a deque of callbacks to run there, the watcher referenced only while someone waits),
  and on the selector's file while it runs the loop.
- Waiting from the loop's own thread would deadlock: it raises ``RuntimeError`` instead.
- ``CancelledError`` never leaks to the blocking side: a call cancelled because the loop shut
  down raises :class:`~netcall.errors.ClientClosedError`.
- Finalizers never block or switch: they schedule with ``call_soon_threadsafe`` (and may
  start the bridge's thread to close the loop). While a lone caller runs the loop, what they
  schedule runs at the next call (a dropped client's socket is closed then, or at exit).
- No call, stream, timeout or serialization logic here: that is the asyncio core's job.
"""

from __future__ import annotations

import asyncio
import atexit
import collections.abc
import logging
import os
import weakref
from asyncio.events import _get_running_loop
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from ._bridge_green import GreenletCalls
from ._bridge_lead import CALM_AFTER, HAND_BACK_WAIT, LoopLead, cancel_all, run_all, safely
from ._hub import HubPort, current_port, port_for
from ._reactor import LONE_STARTS
from ._real import RealThreadExecutor, main_thread_ident, new_selector
from ._real import original as _original
from ._real import real_lock as _real_lock
from ._real import start_real_thread as _start_real_thread  # noqa: F401  # (for the tests)
from ._signals import DEFERRED_SIGNALS
from .errors import ClientClosedError, RPCTimeoutError

__all__ = [
    "CALM_AFTER",
    "DEFERRED_SIGNALS",
    "HAND_BACK_WAIT",
    "Bridge",
    "HubPort",
    "acquire",
    "cancel_all",
    "current_port",
    "port_for",
    "release",
]

log = logging.getLogger("netcall")

T = TypeVar("T")
C = TypeVar("C", bound=Coroutine[Any, Any, Any])

STOP_TIMEOUT = 5.0  # seconds the loop thread gets to finish when the bridge stops


# ----------------------------------------------------------------------------------- loop


class Bridge(LoopLead, GreenletCalls):
    """An asyncio loop, run by a real thread of its own or by the one thread calling through
    it (see the module docstring)."""

    def __init__(self, background: bool = True) -> None:
        self.pid = _pid
        self._get_ident: Callable[[], int] = _original("_thread", "get_ident")
        self._main_ident = main_thread_ident()
        selector = new_selector()
        self._selector_fd: int = selector.fileno()
        self.loop = asyncio.SelectorEventLoop(selector)
        self.loop.set_default_executor(RealThreadExecutor())
        self.thread_id = 0  # the thread running the loop now (0: none)
        self.users = 0
        self.closers: dict[int, Callable[[], None]] = {}
        self._allocate_lock = _original("_thread", "allocate_lock")
        self._scheduling = _real_lock()  # guards _closing against late _start()s
        self._closing = False
        self._inbox: deque[tuple[Callable[[Any, Any], Any], Any, list[Any], Callable[..., None]]]
        self._inbox = deque()
        self._wake_pending = False
        self._lead = _real_lock()  # held by whichever thread runs the loop
        # Under _scheduling: a thread of the bridge's own runs the loop (_threaded); it must
        # go on running it (_pinned: a service, a greenlet, a stream); callers waiting on it
        # (_waiting), at most _peak of them at once since the last look (_calm: at most one).
        self._threaded = False
        self._pinned = False
        self._waiting = 0
        self._peak = 0
        self._calm = False
        self._hand_back = False
        self._hand_back_notify: list[Callable[[], None]] = []  # greenlets asking for it
        self._green_driver = False  # a greenlet runs the loop, turn by turn, for its call
        self._turns_left = 0
        self._turn_check: asyncio.TimerHandle | None = None  # a greenlet's turns' (_turns)
        self._turn_greenlet: Any = None
        # A watcher of the selector per gevent hub (HubPort), for greenlets running the loop.
        self._readers: weakref.WeakKeyDictionary[HubPort, Any] = weakref.WeakKeyDictionary()
        self._calm_timer: asyncio.TimerHandle | None = None
        self._in_main = False
        self._stop_pending = False
        self._done = _real_lock()
        self._done.acquire()
        if background:
            self.run_in_background()

    def run_in_background(self) -> None:
        """From now on, a real thread of the bridge's own runs the loop, for good: for
        services, greenlets, open streams (their leases). Until then, a caller alone runs the
        loop itself while it waits (no hand-off)."""
        with self._scheduling:
            self._pinned = True
        self._start_thread()

    def _shutdown(self) -> None:
        """Cancel everything and close the loop (by the thread holding ``_lead``)."""
        loop = self.loop
        try:
            with self._scheduling:
                self._closing = True  # from here no call is scheduled any more
            # Calls scheduled before that start now, and are cancelled with the rest:
            # every waiter hears back (ClientClosedError).
            self._drain_inbox()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=STOP_TIMEOUT))
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:  # pragma: no cover - best effort at shutdown
            log.exception("error while stopping the bridge loop")
        finally:  # (a Ctrl-C meanwhile goes on up, once the loop is closed)
            loop.close()
            # (each watcher holds its hub's loop, which holds the hub's port, the key: the
            # entries would never go, nor what they hold)
            self._readers.clear()

    def _stop_soon(self) -> None:
        """Have the loop's own thread stop and close the loop (never blocks; starts that
        thread if need be)."""
        if not self.alive:  # (after fork(), the loop is the parent's: leave it alone)
            return
        with self._scheduling:
            self._stop_pending = True
        try:
            self.run_in_background()
        except RuntimeError:  # pragma: no cover - no new threads at interpreter shutdown
            return
        self.call_soon(self._nudge_main)

    # -- state ----------------------------------------------------------------------------

    def in_loop_thread(self) -> bool:
        if self.thread_id != self._get_ident():
            return False
        # Code on the loop may switch greenlets amid a greenlet's turn (it sleeps, under
        # monkey-patching): only that greenlet runs the loop then, not its hub's others.
        turn = self._turn_greenlet
        return turn is None or turn is HubPort.current_greenlet()

    @property
    def alive(self) -> bool:
        return not self.loop.is_closed() and self.pid == _pid

    def _check(self) -> None:
        if self.pid != _pid:  # (no getpid() per call: the fork hook updates _pid)
            raise RuntimeError(
                "this netcall client or service was created before fork(); "
                "create a new one in the child process"
            )
        if self.in_loop_thread():
            raise RuntimeError(
                "a blocking netcall call was made from the netcall loop thread (deadlock)"
            )

    # -- running --------------------------------------------------------------------------

    def run(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        """Run ``aw`` on the loop and return its result, blocking only the calling thread (or
        greenlet). The awaitable is cancelled if the waiting side is interrupted.

        Raises:
            whatever ``aw`` raises; RPCTimeoutError after ``timeout`` seconds (``aw`` is
            cancelled); ClientClosedError when the loop stopped or stops meanwhile;
            RuntimeError from the loop's own thread, or after ``fork()``.
        """
        coro = _as_coroutine(aw)
        fut: asyncio.Future[T] = self._wait(self._task, coro, timeout)
        return _task_result(fut)

    def run_started(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None],
        coro: C,
        finish: Callable[[C, Any], T],
    ) -> T:
        """:meth:`run` for the coroutine ``coro``, without a task when the core can help: on
        the loop, ``start(coro, done)`` may start the work at once and return a future,
        calling ``done(future)`` once it is done (``None``: ``coro`` runs as a task after
        all), and this returns ``finish(coro, its result)``, called in the waiting thread or
        greenlet.

        Raises: what :meth:`run` raises, and what ``start`` or ``finish`` raise.
        """
        fut = self._wait(start, coro, None)
        if isinstance(fut, asyncio.Task):
            return _task_result(fut)  # type: ignore[no-any-return]
        return finish(coro, _task_result(fut))

    def _wait(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None],
        coro: C,
        timeout: float | None,
    ) -> asyncio.Future[Any]:
        """Have the loop start ``coro`` (see :meth:`_enqueue`); block until its future is done
        and return it."""
        try:
            self._check()
            port = current_port()
        except BaseException:
            coro.close()
            raise
        if _get_running_loop() is not None and not self._pinned:
            self.run_in_background()  # a caller inside an asyncio loop never runs this one
        if port is not None:
            if self._threaded and not self._calm:  # (the usual case while many call at once)
                fut = self._follow_green(start, coro, port, timeout)
                if fut is not None:
                    return fut
            return self._wait_green(start, coro, port, timeout)
        while True:
            if not self._threaded:
                fut = self._drive(start, coro, timeout)
                if fut is not None:
                    return fut
                self._start_thread()  # another thread runs the loop: take turns no more
            elif self._take_back():
                fut = self._drive(start, coro, timeout, HAND_BACK_WAIT)
                if fut is not None:
                    return fut
            fut = self._wait_in_thread(start, coro, timeout)
            if fut is not None:
                return fut
            # (the bridge's thread handed the loop back meanwhile: run it here)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run the plain function ``fn(*args, **kwargs)`` on the loop's thread and return its
        result (raises like :meth:`run`)."""
        return self.run(_call_async(fn, args, kwargs))

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Schedule ``fn(*args)`` on the loop without waiting (safe in finalizers); False
        when the loop is gone."""
        if not self.alive:
            return False
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            return False
        return True

    def _start(
        self, coro: Coroutine[Any, Any, T], tasks: list[asyncio.Task[T]], done: Callable[..., None]
    ) -> None:
        """Have the loop run ``coro`` as a task (appended to ``tasks``), calling ``done(task)``
        when it finishes."""
        self._enqueue(self._task, coro, tasks, done)  # type: ignore[arg-type]

    def _task(self, coro: Coroutine[Any, Any, T], done: Callable[..., None]) -> asyncio.Task[T]:
        """A start (see :meth:`_enqueue`): run ``coro`` as a task."""
        task = self.loop.create_task(coro)
        task.add_done_callback(done)
        return task

    def _enqueue(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None],
        coro: C,
        futures: list[asyncio.Future[Any]],
        done: Callable[..., None],
        wake: bool = True,
        follow: bool = False,
    ) -> bool:
        """Have the loop call ``start(coro, done)`` for a future, which calls ``done(future)``
        when it is done (``None``: ``coro`` runs as a task after all, done then too), and
        append that future to ``futures``. Work queues in an
        inbox; the loop is woken once per batch, not once per call. ``wake=False``: the
        caller is about to run the loop itself. ``follow``: only if the bridge's thread runs
        the loop, counting the caller as waiting on it (else False, and nothing is queued)."""
        counted = False
        try:
            with self._scheduling:
                if self._closing:
                    coro.close()
                    raise ClientClosedError("the netcall loop thread has stopped")
                if follow:
                    if not self._threaded:
                        return False
                    waiting = self._waiting + 1
                    # (one statement: nothing can be raised between the count and its note)
                    self._waiting, counted = waiting, True
                    if waiting > self._peak:
                        self._peak = waiting
                self._inbox.append((start, coro, futures, done))
                if self._wake_pending:
                    return True
                if not wake:
                    # A timer already due: asyncio runs it after the callbacks of what the
                    # turn's select found, in the same turn. So what came while nobody ran
                    # the loop (a broken connection, a service that announced itself) is
                    # read before this call goes out, and the call goes out in that first
                    # turn (it is alone: see _drain_inbox).
                    self.loop.call_at(self.loop.time(), self._drain_inbox)
                    self._wake_pending = True
                    return True
                if self._in_main_thread():
                    # Ctrl-C lands in the main thread: there the wake-up is written before
                    # the flag is raised, under the lock, so a KeyboardInterrupt between any
                    # two of these lines leaves at worst an extra drain, never a queue nobody
                    # drains.
                    try:
                        self.loop.call_soon_threadsafe(self._drain_inbox)
                    except RuntimeError:  # closed meanwhile: the loop's last drain took it
                        return True
                    self._wake_pending = True
                    return True
                self._wake_pending = True
        except BaseException:
            if counted:  # (Ctrl-C after the count: the caller will not wait after all)
                self._unfollow(futures)
            raise
        # Elsewhere outside the lock: the write releases the GIL, and other callers would
        # queue behind it (64 threads: 15k -> 9k calls/s with the write under the lock).
        try:
            self.loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:  # closed meanwhile: the loop's last drain took it
            pass
        return True

    def _unfollow(self, futures: list[asyncio.Future[Any]]) -> None:
        """Undo what :meth:`_enqueue` did for a following caller it had counted, when
        something (Ctrl-C) is raised before it returned: the count, and the call (drained,
        then cancelled, by the bridge's thread)."""
        with self._scheduling:
            self._waiting -= 1
        self.call_soon(self._drain_inbox)  # (an extra drain is harmless)
        self.call_soon(cancel_all, futures)

    def _drain_inbox(self) -> None:
        with self._scheduling:
            inbox, self._inbox = self._inbox, deque()
            self._wake_pending = False
            closing = self._closing
        loop = self.loop
        # One caller's call: its message goes out at once, not at the end of the turn (as a
        # lone task's does; see SocketDriver.send).
        lone = len(inbox) == 1 and not closing
        if lone:
            LONE_STARTS.add(loop)
        try:
            for start, coro, futures, done in inbox:
                fut = None
                if not closing:  # at shutdown everything is a task, cancelled with the rest
                    try:
                        fut = start(coro, done)
                    except BaseException as exc:  # failed before it started: the waiter hears
                        coro.close()
                        fut = loop.create_future()
                        fut.set_exception(exc)
                        fut.add_done_callback(done)
                if fut is None:
                    fut = loop.create_task(coro)
                    fut.add_done_callback(done)
                futures.append(fut)
        finally:
            if lone:
                LONE_STARTS.discard(loop)

    def _wait_in_thread(
        self,
        start: Callable[[C, Callable[..., None]], asyncio.Future[Any] | None],
        coro: C,
        timeout: float | None,
    ) -> asyncio.Future[Any] | None:
        """Wait for the bridge's thread to run ``coro``; ``None`` (nothing done) when no
        thread of the bridge's own runs the loop any more."""
        # A bare lock, released by the future's done callback: lighter than a
        # concurrent.futures.Future (no Condition, no state machine) on the hot path.
        lock = self._allocate_lock()
        lock.acquire()
        futures: list[asyncio.Future[Any]] = []
        done = lambda _fut: lock.release()  # noqa: E731
        counted = finished = False
        try:
            # (the count and its note are one step: _enqueue undoes the count itself if
            # something is raised inside it afterwards, and nothing can be raised between)
            counted = self._enqueue(start, coro, futures, done, follow=True)
            if not counted:
                return None
            finished = lock.acquire(True, -1 if timeout is None else timeout)
            if not finished:
                raise RPCTimeoutError(f"no answer within {timeout} s")
            return futures[0]
        finally:
            if counted:
                try:
                    if not finished:  # timed out or interrupted: do not leave it running
                        self.call_soon(cancel_all, futures)
                finally:
                    with self._scheduling:
                        self._waiting -= 1

    # -- lifetime -------------------------------------------------------------------------

    def stop(self) -> None:
        """Run the closers, stop the loop and join its thread (from a callback on the loop,
        only ask for that)."""
        if not self.alive:
            return
        closers = list(self.closers.values())
        self.closers.clear()
        if self.in_loop_thread():
            for fn in closers:
                safely(fn)
            self._stop_soon()
            return
        if closers:
            try:
                self.run(_call_async(run_all, (closers,), {}), timeout=STOP_TIMEOUT)
            except Exception:
                log.exception("error while closing bridged sockets")
        if self._green_driver:  # (amid its call, between turns: the thread takes over)
            self._start_thread()
        with self._scheduling:
            self._stop_pending = True  # (the bridge's thread no longer hands the loop back)
            threaded = self._threaded
            self._closing = self._closing or not threaded  # (no thread starts from here on)
        if threaded:
            self.call_soon(self._nudge_main)
            if not self._done.acquire(True, STOP_TIMEOUT):
                log.warning("the bridge loop thread did not stop in time")
            return
        if not self._lead.acquire(True, STOP_TIMEOUT):  # pragma: no cover - a call hangs
            log.warning("the bridge loop is still running a call: not closed")
            return
        try:
            if not self.loop.is_closed():
                self.thread_id = self._get_ident()
                self._shutdown()
        finally:
            self.thread_id = 0
            self._lead.release()


def _task_result(fut: asyncio.Future[T]) -> T:
    if fut.cancelled():
        raise ClientClosedError("the call was cancelled: the netcall loop stopped")
    return fut.result()


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


def _as_coroutine(aw: Awaitable[T]) -> Coroutine[Any, Any, T]:
    if isinstance(aw, collections.abc.Coroutine):
        return aw
    return _awaited(aw)


async def _call_async(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    return fn(*args, **kwargs)


# ----------------------------------------------------------------------------------- singleton

_lock = _real_lock()
_bridge: Bridge | None = None
_pid = os.getpid()  # this process's, kept by the fork hook


def acquire(background: bool = True) -> Bridge:
    """The process's bridge, started if needed; pair with :func:`release`. ``background``:
    its loop must run even while nobody waits on it (a service); a blocking client passes
    False, and its callers run the loop themselves while only one thread calls at a time."""
    global _bridge
    with _lock:
        bridge = _bridge
        if bridge is None or not bridge.alive:
            bridge = _bridge = Bridge(background)
        elif background:
            bridge.run_in_background()
        bridge.users += 1
        return bridge


def release(bridge: Bridge, wait: bool = True) -> None:
    """Drop one user of ``bridge``; the last one stops it (joining the thread when ``wait``:
    finalizers pass False and never block)."""
    global _bridge
    with _lock:
        bridge.users -= 1
        if bridge.users > 0:
            return
        if _bridge is bridge:
            _bridge = None
    if wait:
        bridge.stop()
    else:
        bridge._stop_soon()


def _at_exit() -> None:
    global _bridge
    with _lock:
        bridge, _bridge = _bridge, None
    if bridge is not None:
        bridge.stop()


def _after_fork_in_child() -> None:
    global _bridge, _lock, _pid
    _pid = os.getpid()
    # The loop thread does not exist here; its objects belong to the parent. Start afresh.
    _lock = _real_lock()
    _bridge = None


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
