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

import _signal  # type: ignore[import-not-found]  # (no enum conversions: 10x faster)
import asyncio
import atexit
import collections.abc
import concurrent.futures
import functools
import importlib
import logging
import os
import sys
import weakref
from asyncio.events import _get_running_loop, _set_running_loop
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import nullcontext
from typing import Any, TypeVar

from ._hub import HubPort, current_port, port_for
from .errors import ClientClosedError, RPCTimeoutError

__all__ = ["Bridge", "HubPort", "acquire", "current_port", "port_for", "release"]

log = logging.getLogger("netcall")

T = TypeVar("T")
C = TypeVar("C", bound=Coroutine[Any, Any, Any])

#: Signals whose Python handlers run between the loop's callbacks while a caller in the main
#: thread runs the loop (see ``Bridge._drive``).
DEFERRED_SIGNALS = tuple(
    getattr(_signal, name)
    for name in ("SIGINT", "SIGTERM", "SIGALRM", "SIGHUP", "SIGUSR1", "SIGUSR2")
    if hasattr(_signal, name)
)
STOP_TIMEOUT = 5.0  # seconds the loop thread gets to finish when the bridge stops
#: Seconds between looks at how many callers wait on the bridge's thread at once; after one
#: with at most one at a time, the thread hands the loop back to the callers.
CALM_AFTER = 0.2
HAND_BACK_WAIT = 0.05  # seconds a caller waits for the hand-back before it waits as before


def _original(module: str, name: str) -> Any:
    """``module.name`` as it was before gevent's monkey-patching (if it happened at all)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original(module, name)
    return getattr(importlib.import_module(module), name)


def _real_lock() -> Any:
    return _original("_thread", "allocate_lock")()


def _start_real_thread(fn: Callable[..., None], *args: Any) -> None:
    _original("_thread", "start_new_thread")(fn, args)


def _real_ident() -> int:
    return int(_original("_thread", "get_ident")())


class _RealThreadExecutor(concurrent.futures.ThreadPoolExecutor):
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

        _start_real_thread(work)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        return None


def _main_thread_ident() -> Callable[[], int | None]:
    """The main thread's real ident, as a function (``None`` while not known yet).

    ``_thread._get_main_thread_ident`` (3.12+) holds under ``gevent.monkey.patch_all()``,
    where even the original ``threading.main_thread()`` gives a patched thread object's
    ident. Before 3.12 the main thread is found by asking the signal module, the one that
    matters here: ``signal.signal`` refuses any thread but the main one before it looks at
    its arguments, so a signal number of 0 is refused either way, with a message that tells
    which (nothing changes). Each thread asks once."""
    try:
        return _original("_thread", "_get_main_thread_ident")  # type: ignore[no-any-return]
    except AttributeError:
        pass
    get_ident = _original("_thread", "get_ident")
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


def _new_selector() -> Any:
    try:
        return _original("selectors", "EpollSelector")()
    except AttributeError:  # pragma: no cover - not Linux
        return _original("selectors", "DefaultSelector")()


# ----------------------------------------------------------------------------------- loop


class Bridge:
    """An asyncio loop, run by a real thread of its own or by the one thread calling through
    it (see the module docstring)."""

    def __init__(self, background: bool = True) -> None:
        self.pid = _pid
        self._get_ident: Callable[[], int] = _original("_thread", "get_ident")
        self._main_ident = _main_thread_ident()
        selector = _new_selector()
        self._selector_fd: int = selector.fileno()
        self.loop = asyncio.SelectorEventLoop(selector)
        self.loop.set_default_executor(_RealThreadExecutor())
        self.thread_id = 0  # the thread running the loop now (0: none)
        self.users = 0
        self.closers: dict[int, Callable[[], None]] = {}
        self._allocate_lock = _original("_thread", "allocate_lock")
        self._scheduling = _real_lock()  # guards _closing against late _start()s
        self._closing = False
        self._inbox: deque[tuple[Callable[[Any], Any], Any, list[Any], Callable[..., None]]]
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

    def _start_thread(self) -> None:
        """Have a thread of the bridge's own run the loop (while several threads call at once:
        it hands the loop back once they have been calling one at a time for a while)."""
        with self._scheduling:
            if self._threaded or self._closing:
                return
            self._threaded = True
        try:
            _start_real_thread(self._main)
        except BaseException:  # (no new threads at interpreter shutdown)
            with self._scheduling:
                self._threaded = False
            raise

    def _main(self) -> None:
        loop = self.loop
        self._lead.acquire()  # (after the caller running the loop, if any, is done)
        shutdown = True
        notify: list[Callable[[], None]] = []
        try:
            if loop.is_closed():  # stopped by a caller meanwhile
                shutdown = False
                return
            self.thread_id = _real_ident()
            self._in_main = True
            if self._calm_timer is None and not self._pinned:
                self._calm_timer = loop.call_later(CALM_AFTER, self._look_calm)
            try:
                while not self._stop_pending:
                    loop.run_forever()
                    with self._scheduling:
                        hand_back, self._hand_back = self._hand_back, False
                        notify, self._hand_back_notify = self._hand_back_notify, []
                        if (
                            not hand_back
                            or self._pinned
                            or self._waiting
                            or self._inbox
                            or self._stop_pending
                            or self._closing
                        ):
                            _run_all(notify)  # (not handed back: the askers go on waiting)
                            continue
                        self._threaded = False  # calm: callers run the loop themselves again
                        shutdown = False
                        break
            finally:
                self._in_main = False
                if shutdown:
                    self._shutdown()
        finally:
            self.thread_id = 0
            self._lead.release()
            if shutdown:
                self._done.release()
            _run_all(notify)

    def _look_calm(self) -> None:
        """Every CALM_AFTER seconds while the bridge's thread runs the loop: calm when at most
        one caller waited at a time since the last look."""
        with self._scheduling:
            self._calm = self._peak <= 1 and not self._pinned
            self._peak = self._waiting
        if self._in_main and not self._pinned:
            self._calm_timer = self.loop.call_later(CALM_AFTER, self._look_calm)
        else:
            self._calm_timer = None

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

    def _nudge_main(self) -> None:
        """Have the bridge's thread look at its state again (to stop, or to hand the loop
        back); a caller running the loop for its call goes on."""
        if self._in_main:
            self.loop.stop()

    # -- state ----------------------------------------------------------------------------

    def in_loop_thread(self) -> bool:
        return self.thread_id == self._get_ident()

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
        fut: asyncio.Future[T] = self._wait(self.loop.create_task, coro, timeout)
        return _task_result(fut)

    def run_started(
        self,
        start: Callable[[C], asyncio.Future[Any] | None],
        coro: C,
        finish: Callable[[C, Any], T],
    ) -> T:
        """:meth:`run` for the coroutine ``coro``, without a task when the core can help: on
        the loop, ``start(coro)`` may start the work at once and return a future (``None``:
        ``coro`` runs as a task after all), and this returns ``finish(coro, its result)``,
        called in the waiting thread or greenlet.

        Raises: what :meth:`run` raises, and what ``start`` or ``finish`` raise.
        """
        fut = self._wait(start, coro, None)
        if isinstance(fut, asyncio.Task):
            return _task_result(fut)  # type: ignore[no-any-return]
        return finish(coro, _task_result(fut))

    def _wait(
        self, start: Callable[[C], asyncio.Future[Any] | None], coro: C, timeout: float | None
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

    def _take_back(self, notify: Callable[[], None] | None = None) -> bool:
        """After a calm spell (one caller at a time), ask the bridge's thread to hand the
        loop back (to the caller that takes ``_lead`` next): whether it was asked.
        ``notify()`` is called once the thread has let go of the loop, or decided not to."""
        with self._scheduling:
            if not self._calm or self._waiting or self._pinned:
                return False
            self._calm = False
            self._hand_back = True
            if notify is not None:
                self._hand_back_notify.append(notify)
        self.call_soon(self._nudge_main)
        return True

    def _drive(
        self,
        start: Callable[[C], asyncio.Future[Any] | None],
        coro: C,
        timeout: float | None,
        lead_wait: float = 0.0,
    ) -> asyncio.Future[Any] | None:
        """Run the loop in this thread until ``coro``'s future is done, then let go of it:
        one thread wake-up fewer each way than waiting for the bridge's own thread. ``None``
        (``coro`` untouched) when another thread runs the loop (``_lead`` is not free within
        ``lead_wait`` seconds).

        In the main thread, the Python handlers of :data:`DEFERRED_SIGNALS` (Ctrl-C's
        ``KeyboardInterrupt`` among them) run between callbacks, not inside one: an exception
        raised inside a callback could lose messages already read, or leave a ZeroMQ socket's
        wake-up spent with a message unread. The loop stops, the handler runs here, and what
        it raises is raised from the call (which is cancelled). The handlers are swapped in
        before ``_lead`` is taken and back out after it is let go, so nothing raised can keep
        ``_lead`` for good."""
        loop = self.loop
        futures: list[asyncio.Future[Any]] = []
        pending: list[tuple[int, Any]] = []  # signals that came while the loop ran
        handlers: dict[int, Any] = {}
        timer = None
        timed_out = False
        try:
            self._defer_signals(handlers, pending)
            if not (
                self._lead.acquire(True, lead_wait) if lead_wait else self._lead.acquire(False)
            ):
                return None
            try:
                if self._green_driver:  # a greenlet is amid its call, between two turns
                    return None
                self._enqueue(start, coro, futures, self._stop_loop, wake=False)
                self.thread_id = self._get_ident()
                if timeout is not None:
                    timer = loop.call_later(timeout, loop.stop)
                    deadline = timer.when()
                while True:
                    loop.run_forever()
                    while pending:  # (a handler that raises ends the call here)
                        signum, frame = pending.pop(0)
                        handlers[signum](signum, frame)
                    if futures and futures[0].done():
                        break
                    if timer is not None and loop.time() >= deadline:
                        timed_out = True
                        if not futures:  # (not started yet: start it, to cancel it now)
                            self._drain_inbox()
                        _cancel_all(futures)
                        break
                self._settle()
            except BaseException:
                _cancel_all(futures)  # (takes effect when the loop runs next)
                raise
            finally:
                self.thread_id = 0
                if timer is not None:
                    timer.cancel()
                self._lead.release()
        finally:
            _restore_signals(handlers, pending)
        if timed_out:
            raise RPCTimeoutError(f"no answer within {timeout} s")
        return futures[0]

    def _defer_signals(
        self,
        handlers: dict[int, Any],
        pending: list[tuple[int, Any]],
        wake: Callable[[], Any] | None = None,
    ) -> None:
        """In the main thread, swap the Python handlers of :data:`DEFERRED_SIGNALS` for one
        that appends to ``pending`` and calls ``wake()`` (by default: stops the loop) (the
        swapped-out ones go into ``handlers``; :func:`_restore_signals` puts them back)."""
        if not self._in_main_thread():
            return
        if wake is None:
            wake = functools.partial(self.call_soon, self.loop.stop)  # (wakes a select too)

        def later(signum: int, frame: Any) -> None:
            pending.append((signum, frame))
            wake()

        for signum in DEFERRED_SIGNALS:
            handler = _signal.getsignal(signum)
            if callable(handler):
                handlers[signum] = handler
                _signal.signal(signum, later)

    def _settle(self) -> None:
        """Run what the last turn left ready (a corked send's flush, a done callback), a few
        turns at most: the loop may not run again until the next call."""
        loop = self.loop
        ready = getattr(loop, "_ready", None)
        for _ in range(4):
            if not ready:
                return
            loop.call_soon(loop.stop)
            loop.run_forever()

    def _in_main_thread(self) -> bool:
        """Whether the caller is the main thread (where Python runs signal handlers)."""
        return self._get_ident() == self._main_ident()

    def _stop_loop(self, _fut: object = None) -> None:
        self.loop.stop()

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
        self._enqueue(self.loop.create_task, coro, tasks, done)  # type: ignore[arg-type]

    def _enqueue(
        self,
        start: Callable[[C], asyncio.Future[Any] | None],
        coro: C,
        futures: list[asyncio.Future[Any]],
        done: Callable[..., None],
        wake: bool = True,
        follow: bool = False,
    ) -> bool:
        """Have the loop call ``start(coro)`` for a future (``None``: ``coro`` runs as a task),
        append it to ``futures`` and call ``done(future)`` when it is done. Work queues in an
        inbox; the loop is woken once per batch, not once per call. ``wake=False``: the
        caller is about to run the loop itself. ``follow``: only if the bridge's thread runs
        the loop, counting the caller as waiting on it (else False, and nothing is queued)."""
        with self._scheduling:
            if self._closing:
                coro.close()
                raise ClientClosedError("the netcall loop thread has stopped")
            if follow:
                if not self._threaded:
                    return False
                self._waiting = waiting = self._waiting + 1
                if waiting > self._peak:
                    self._peak = waiting
            self._inbox.append((start, coro, futures, done))
            if self._wake_pending:
                return True
            if not wake:
                # One turn later: what came while nobody ran the loop (a broken connection,
                # a service that announced itself) is read before this call goes out.
                self.loop.call_soon(self.loop.call_soon, self._drain_inbox)
                self._wake_pending = True
                return True
            if self._in_main_thread():
                # Ctrl-C lands in the main thread: there the wake-up is written before the
                # flag is raised, under the lock, so a KeyboardInterrupt between any two of
                # these lines leaves at worst an extra drain, never a queue nobody drains.
                try:
                    self.loop.call_soon_threadsafe(self._drain_inbox)
                except RuntimeError:  # closed meanwhile: the loop's last drain took it
                    return True
                except BaseException:  # (Ctrl-C: the caller will not wait after all)
                    if follow:
                        self._waiting -= 1
                    raise
                self._wake_pending = True
                return True
            self._wake_pending = True
        # Elsewhere outside the lock: the write releases the GIL, and other callers would
        # queue behind it (64 threads: 15k -> 9k calls/s with the write under the lock).
        try:
            self.loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:  # closed meanwhile: the loop's last drain took it
            pass
        return True

    def _drain_inbox(self) -> None:
        with self._scheduling:
            inbox, self._inbox = self._inbox, deque()
            self._wake_pending = False
            closing = self._closing
        create_task = self.loop.create_task
        for start, coro, futures, done in inbox:
            fut = None
            if not closing:  # at shutdown everything is a task, cancelled with the rest
                try:
                    fut = start(coro)
                except BaseException as exc:  # failed before it started: the waiter hears
                    coro.close()
                    fut = self.loop.create_future()
                    fut.set_exception(exc)
            if fut is None:
                fut = create_task(coro)
            futures.append(fut)
            fut.add_done_callback(done)

    def _stop_when_idle(self) -> None:
        """The last callback of each of :meth:`_turns`' turns: stop the loop once a turn left
        nothing ready (after 8 turns at most)."""
        loop = self.loop
        self._turns_left -= 1
        if loop._ready and self._turns_left > 0:  # type: ignore[attr-defined]
            loop.call_soon(self._stop_when_idle)
        else:
            loop.stop()

    def _wait_in_thread(
        self, start: Callable[[C], asyncio.Future[Any] | None], coro: C, timeout: float | None
    ) -> asyncio.Future[Any] | None:
        """Wait for the bridge's thread to run ``coro``; ``None`` (nothing done) when no
        thread of the bridge's own runs the loop any more."""
        # A bare lock, released by the future's done callback: lighter than a
        # concurrent.futures.Future (no Condition, no state machine) on the hot path.
        lock = self._allocate_lock()
        lock.acquire()
        futures: list[asyncio.Future[Any]] = []
        if not self._enqueue(start, coro, futures, lambda _fut: lock.release(), follow=True):
            return None
        finished = False
        try:
            finished = lock.acquire(True, -1 if timeout is None else timeout)
            if not finished:
                raise RPCTimeoutError(f"no answer within {timeout} s")
            return futures[0]
        finally:
            if not finished:  # timed out or interrupted: do not leave the call running
                self.call_soon(_cancel_all, futures)
            with self._scheduling:
                self._waiting -= 1

    # -- greenlets -----------------------------------------------------------------------

    def _wait_green(
        self,
        start: Callable[[C], asyncio.Future[Any] | None],
        coro: C,
        port: HubPort,
        timeout: float | None,
    ) -> asyncio.Future[Any]:
        """:meth:`_wait` for a greenlet of the hub behind ``port``, which never blocks.

        While it is the only caller, the greenlet runs the loop itself, a turn at a time
        (:meth:`_turns`), and between turns waits on its hub for the loop's selector to be
        readable or for the loop's next timer. ``_lead`` is never held across a hub switch,
        so a hub that blocks (CPU work, a plain lock) stalls no other thread's calls: should
        a thread take ``_lead`` meanwhile, the bridge's own thread takes over, and the
        greenlet waits for it as it does while other callers call (counted in ``_waiting``).

        In the main thread, the handlers of :data:`DEFERRED_SIGNALS` are deferred while this
        greenlet runs, and run here between steps (what they raise ends the call), as in
        :meth:`_drive`: no bookkeeping below is ever cut in two. While it waits on the hub,
        they are the program's own again."""
        loop = self.loop
        futures: list[asyncio.Future[Any]] = []
        pending: list[tuple[int, Any]] = []
        handlers: dict[int, Any] = {}
        waiter = port.new_waiter()
        wake = functools.partial(port.submit, functools.partial(waiter.switch, None))
        mine = port.current_greenlet()

        def done(_fut: object) -> None:
            if port.current_greenlet() is not mine:  # (this greenlet looks after each turn)
                wake()

        deadline = None if timeout is None else loop.time() + timeout
        queued = driving = counted = asked = finished = False
        try:
            self._defer_signals(handlers, pending, wake)
            while True:
                while pending:  # (a handler that raises ends the call here)
                    signum, frame = pending.pop(0)
                    handlers[signum](signum, frame)
                if futures and futures[0].done():
                    finished = True
                    return futures[0]
                if not self.alive:
                    raise ClientClosedError("the netcall loop has stopped")
                wait = None if deadline is None else deadline - loop.time()
                if wait is not None and wait <= 0:
                    raise RPCTimeoutError(f"no answer within {timeout} s")
                if not (driving or counted):
                    with self._scheduling:
                        if not (self._threaded or self._green_driver or self._closing):
                            self._green_driver = driving = True
                reader = None
                if driving:
                    if not self._turns(None if queued else start, coro, futures, done):
                        # Another thread holds _lead: the bridge's thread takes over.
                        with self._scheduling:
                            self._green_driver = driving = False
                            if queued:
                                self._waiting += 1
                                counted = True
                        self._start_thread()
                        continue
                    queued = True
                    scheduled = loop._scheduled  # type: ignore[attr-defined]
                    if loop._ready:  # type: ignore[attr-defined]
                        wait = 0.0
                    elif scheduled:
                        until = scheduled[0].when() - loop.time()
                        wait = until if wait is None or until < wait else wait
                    reader = self._readers.get(port)
                    if reader is None:
                        reader = self._readers[port] = port.reader(self._selector_fd)
                elif not counted:  # not queued yet: wait for the bridge's thread
                    if not asked and self._threaded and self._take_back(wake):
                        asked = True  # wait (briefly, once) for the thread to let go
                        wait = HAND_BACK_WAIT if wait is None else min(wait, HAND_BACK_WAIT)
                    else:
                        if not self._threaded:  # another greenlet runs it: take turns no more
                            self._start_thread()
                        counted = queued = self._enqueue(start, coro, futures, done, follow=True)
                        continue
                waiter.clear()
                if pending or (futures and futures[0].done()):
                    continue
                # The hub runs other greenlets meanwhile: the signals' own handlers are back
                # in place for that time (Ctrl-C must still stop a program whose main
                # greenlet sleeps, or interrupt a greenlet's long computation).
                _put_back_signals(handlers)
                try:
                    port.wait_readable(waiter, reader, wait)
                finally:
                    self._defer_signals(handlers, pending, wake)
        finally:
            if not finished and queued:  # timed out, killed or interrupted: cancel the call
                self.call_soon(_cancel_all, futures)
            if driving or counted:
                with self._scheduling:
                    if driving:
                        self._green_driver = False
                    if counted:
                        self._waiting -= 1
            _restore_signals(handlers, pending)

    def _follow_green(
        self,
        start: Callable[[C], asyncio.Future[Any] | None],
        coro: C,
        port: HubPort,
        timeout: float | None,
    ) -> asyncio.Future[Any] | None:
        """:meth:`_wait_in_thread` for a greenlet: it waits on its hub's ``port`` for the
        bridge's thread; ``None`` (nothing done) when that thread no longer runs the loop."""
        futures: list[asyncio.Future[Any]] = []
        queued: list[bool] = []

        def queue(done: Callable[[Any], None]) -> None:
            if self._enqueue(start, coro, futures, done, follow=True):
                queued.append(True)
            else:
                done(None)  # (not queued: back to _wait_green at once)

        finished = False
        try:
            with nullcontext() if timeout is None else _gevent_timeout(timeout):
                port.wait(queue)
                finished = True
                return futures[0] if queued else None
            raise RPCTimeoutError(f"no answer within {timeout} s")
        finally:
            if not finished:  # killed, timed out or interrupted: do not leave the call running
                self.call_soon(_cancel_all, futures)
            if queued:
                with self._scheduling:
                    self._waiting -= 1

    def _turns(
        self,
        start: Callable[[C], asyncio.Future[Any] | None] | None,
        coro: C,
        futures: list[asyncio.Future[Any]],
        done: Callable[..., None],
    ) -> bool:
        """Run the loop in this thread for what is ready now, without waiting (queueing
        ``start(coro)`` first, unless ``start`` is None): False when another thread holds
        ``_lead``."""
        if not self._lead.acquire(False):
            return False
        try:
            if start is not None:
                self._enqueue(start, coro, futures, done, wake=False)
            self.thread_id = self._get_ident()
            self._turns_left = 8
            self.loop.call_soon(self._stop_when_idle)
            # Another greenlet of this thread may be amid an asyncio loop of its own,
            # switched out: its running loop is put back after these turns (asyncio puts
            # back the thread's async generator hooks itself).
            other = _get_running_loop()
            if other is not None:
                _set_running_loop(None)
            try:
                self.loop.run_forever()
            finally:
                if other is not None:
                    _set_running_loop(other)
        finally:
            self.thread_id = 0
            self._lead.release()
        return True

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
                _safely(fn)
            self._stop_soon()
            return
        if closers:
            try:
                self.run(_call_async(_run_all, (closers,), {}), timeout=STOP_TIMEOUT)
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


def _put_back_signals(handlers: dict[int, Any]) -> None:
    """Put back the handlers :meth:`Bridge._defer_signals` swapped out (and forget them)."""
    while handlers:
        signum, handler = handlers.popitem()
        _signal.signal(signum, handler)


def _restore_signals(handlers: dict[int, Any], pending: list[tuple[int, Any]]) -> None:
    """Put back the handlers :meth:`Bridge._defer_signals` swapped out, then run them for the
    signals that came meanwhile (what they raise goes on up)."""
    for signum, handler in handlers.items():
        _signal.signal(signum, handler)
    while pending:
        signum, frame = pending.pop(0)
        handlers[signum](signum, frame)


def _gevent_timeout(seconds: float) -> Any:
    import gevent  # (only for a wait with a timeout: gevent is in use by then)

    return gevent.Timeout(seconds, False)


def _safely(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("error while closing")


def _run_all(fns: list[Callable[[], None]]) -> None:
    for fn in fns:
        _safely(fn)


def _cancel_all(futures: list[asyncio.Future[Any]]) -> None:
    for fut in futures:
        fut.cancel()


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
