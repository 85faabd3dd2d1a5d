"""Every core: N service processes behind one endpoint.

::

    from netcall.workers import WorkerPool, serve_workers

    serve_workers("myapp.rpc:service", 4, bind="tcp://0.0.0.0:5555")   # blocks; Ctrl-C stops

    async with WorkerPool("myapp.rpc:make_service", 4, bind="tcp://0.0.0.0:5555") as pool:
        await pool.wait_ready()
        ...

    # command line:  netcall serve myapp.rpc:service --bind tcp://0.0.0.0:5555 --workers 4

The parent process runs a :class:`~netcall.Broker` on its event loop, bound on the public
endpoint(s); each worker is a fresh Python process (``python -m netcall._worker``) that loads
the service, ``connect()``\\ s it out over ipc to the broker's backend (a socket file in a
private ``0700`` temporary directory) and announces its methods. Clients see one service; the
broker sends each call to the worker with the fewest calls in flight, and a stream stays on the
worker that opened it.

Lifetimes:

- **The parent stops** (:meth:`WorkerPool.stop`, Ctrl-C or SIGTERM under
  :func:`serve_workers`): the broker drains (new calls fail with
  :class:`~netcall.errors.ServiceStoppingError`, calls in flight get ``grace`` seconds and
  their answers still go out), then each worker is told (over its pipe) to stop with what is
  left of the grace: calls still running then are cancelled, and their callers get
  ServiceStoppingError. A worker still running 2 s after the grace is killed (its calls fail
  with :class:`~netcall.errors.ConnectionLostError`), then the broker closes, taking at most
  0.5 s more for its last answers: the whole stop takes at most ``grace + 2.5`` seconds.
  Workers ignore SIGINT and SIGTERM, so a Ctrl-C in a terminal, systemd's stop and ``kill
  -TERM -<pgid>`` (which reach the whole process group) are handled once, by the parent: the
  same stop as a SIGTERM to the parent alone. (A SIGTERM to one worker alone does nothing;
  SIGKILL it to have it replaced.)
- **The parent dies** (even by SIGKILL): each worker holds the read end of a pipe only the
  parent writes to; it sees end-of-file at once and stops with ``grace`` (exiting after
  ``grace + 2`` seconds at most). No orphans.
- **A worker dies** (a crash, SIGKILL, an exit): its calls in flight fail with
  :class:`~netcall.errors.ConnectionLostError` (the broker notices within milliseconds), the
  others take new calls, and the pool logs a warning and **restarts it** after a backoff (0.1 s,
  doubling to 5 s for a worker that keeps dying within 10 s of its start). A worker whose
  service cannot be loaded (exit code 3: bad import path, not an RPCService) is not restarted:
  the error is logged and :meth:`WorkerPool.wait_ready` raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ._worker import BAD_TARGET
from .broker import Broker
from .security import CurveServer

__all__ = ["WorkerPool", "serve_workers"]

log = logging.getLogger("netcall.workers")

_POLL = 0.1  # seconds between checks of the workers' processes
_BACKOFF_MIN, _BACKOFF_MAX, _STABLE = 0.1, 5.0, 10.0
_LAST = 0.3  # seconds a stopping broker waits to fail killed workers' calls (+0.2 s to send)

Target = str | Callable[[], Any]


def _spec(target: Target) -> str:
    if isinstance(target, str):
        if not target or target.startswith(":"):
            raise ValueError(f"{target!r} is not a 'module:attribute' path")
        return target
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise ValueError(
            "a worker factory must be importable by name (a module-level function or class, "
            "not one defined in __main__ or a lambda): pass 'module:attribute' instead"
        )
    return f"{module}:{qualname}"


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    pipe: int | None = None  # the write end of the parent-death pipe
    started: float = 0.0
    backoff: float = _BACKOFF_MIN
    restart_at: float | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)


class WorkerPool:
    """Runs ``workers`` processes of one service behind a broker bound on ``bind``.

    Args:
        target: ``"module:attribute"`` naming an :class:`~netcall.RPCService`, a subclass, or
            a function of no arguments returning one; or that class or function itself (it
            must be importable by name). Each worker imports it afresh.
        workers: how many processes (default: ``os.cpu_count()``).
        bind: the public endpoint(s) clients connect to.
        grace: seconds a stopping worker gives its calls in flight (default 5).
        restart: restart workers that die (default True; False: log it and carry on with
            fewer).
        security: ``Curve.server(...)`` for the public endpoint (the broker's frontend); the
            workers' ipc link stays in a private directory.
        broker_options: more :class:`~netcall.Broker` arguments (``max_queue``,
            ``heartbeat``, ...).

    Raises:
        ValueError: ``workers`` is below 1, or ``target`` cannot be named for import.
    """

    def __init__(
        self,
        target: Target,
        workers: int | None = None,
        *,
        bind: str | Iterable[str],
        grace: float = 5.0,
        restart: bool = True,
        security: CurveServer | None = None,
        **broker_options: Any,
    ) -> None:
        self.spec = _spec(target)
        self.size = int(workers if workers is not None else os.cpu_count() or 1)
        if self.size < 1:
            raise ValueError("workers must be at least 1")
        self.grace = float(grace)
        self.restart = restart
        self._bind = bind
        self._security = security
        self._broker_options = broker_options
        self._workers = [_Worker(i) for i in range(self.size)]
        self.broker: Broker | None = None
        self._dir: str | None = None
        self._poll: asyncio.TimerHandle | None = None
        self._stopping = False
        self._stopped: asyncio.Future[None] | None = None
        self.failure: str | None = None
        # netcall serve's options (a JSON object): the workers build the service as it does
        # (any SPEC it takes, with --serializer, --executor, --max-concurrent); None: the
        # target names an RPCService, a subclass or a factory (netcall._worker).
        self._serve_options: dict[str, Any] | None = None

    @property
    def backend(self) -> str:
        """The ipc endpoint the workers connect to."""
        if self._dir is None:
            raise RuntimeError("the pool is not started")
        return f"ipc://{self._dir}/backend"

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.poll() is None]

    def stats(self) -> dict[str, Any]:
        """``workers`` (index, pid, restarts, exit codes so far) and the broker's stats."""
        return {
            "workers": [
                {
                    "index": w.index,
                    "pid": w.proc.pid if w.proc is not None and w.proc.poll() is None else None,
                    "restarts": w.restarts,
                    "exits": list(w.exits),
                }
                for w in self._workers
            ],
            "broker": self.broker.stats() if self.broker is not None else {},
        }

    # -- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the broker and start the workers (on the running loop). Returns at once.

        Raises:
            TransportError: the public endpoint cannot be bound.
            RuntimeError: no loop is running, or the pool was stopped.
        """
        if self._stopping:
            raise RuntimeError("the pool is stopped")
        if self.broker is not None:
            return
        loop = asyncio.get_running_loop()
        self._dir = tempfile.mkdtemp(prefix="netcall-workers-")  # mode 0700
        try:
            self.broker = Broker(
                self._bind, self.backend, security=self._security, **self._broker_options
            )
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.broker.start(loop)
        for worker in self._workers:
            self._spawn(worker)
        self._poll = loop.call_later(_POLL, self._check)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every worker has announced itself to the broker.

        Raises:
            RuntimeError: a worker's service cannot be loaded (the message says why), or the
                pool is stopped.
            TimeoutError: not all workers were ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.failure is not None:
                raise RuntimeError(self.failure)
            if self.broker is None or self._stopping:
                raise RuntimeError("the pool is not running")
            if len(self.broker.stats()["services"]) >= self.size:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.size} workers were not ready within {timeout} s")
            await asyncio.sleep(0.02)

    async def serve(self) -> None:
        """Start, and run until :meth:`stop` is called (or the task is cancelled, which stops
        the pool gracefully).

        Raises:
            TransportError: the public endpoint cannot be bound.
            RuntimeError: the workers cannot load the service (after stopping the others).
        """
        self.start()
        assert self.broker is not None
        try:
            await self.broker.serve()
        finally:
            await asyncio.shield(self.stop())
        if self.failure is not None:
            raise RuntimeError(self.failure)

    async def __aenter__(self) -> WorkerPool:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop gracefully: the broker refuses new calls and lets those in flight finish
        (``grace`` seconds), every worker stops with what is left of the grace (calls still
        running are cancelled; a worker still running 2 s after the grace is killed), then the
        broker closes (taking at most 0.5 s for its last answers) and the ipc directory is
        removed. The whole stop takes at most ``grace + 2.5`` seconds. Raises nothing."""
        await asyncio.shield(self._begin_stop())  # a second caller waits for the first's stop

    def _begin_stop(self) -> asyncio.Future[None]:
        """Start :meth:`stop` now (on the pool's loop) and return the future of its end. New
        calls are refused from this moment, not a loop turn later when the stop's task first
        runs: a signal handler calls this, and a call read meanwhile would reach a worker."""
        if self._stopped is None:
            self._stopping = True
            if self.broker is not None:
                self.broker.refuse_calls()
            self._stopped = asyncio.ensure_future(self._stop())
        return self._stopped

    async def _stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        deadline = time.monotonic() + self.grace
        if self.broker is not None:  # no new calls; those in flight finish through it
            await self.broker.drain(self.grace)
        left = f"{max(0.0, deadline - time.monotonic()):.3f}".encode()
        for worker in self._workers:  # stop, with what is left of the grace (netcall._worker)
            if worker.pipe is not None:
                try:
                    os.write(worker.pipe, left)
                except OSError:  # it has exited
                    pass
        procs = [w.proc for w in self._workers if w.proc is not None]
        deadline += 2.0
        while any(proc.poll() is None for proc in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for proc in procs:
            if proc.poll() is None:
                log.warning("worker pid %d overran its grace: killed", proc.pid)
                proc.kill()
            proc.wait()
        for worker in self._workers:
            self._close_pipe(worker)
        if self.broker is not None:  # the calls of killed workers fail as it sees them go
            await self.broker.stop(_LAST)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # -- the processes --------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        read, write = os.pipe()
        env = dict(os.environ)
        # The child imports what this process can import (netcall itself, the target's module).
        path = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(path)
        args = [sys.executable, "-m", "netcall._worker", self.spec, self.backend]
        args += [str(read), str(self.grace)]
        if self._serve_options is not None:
            args.append(json.dumps(self._serve_options))
        try:
            worker.proc = subprocess.Popen(args, pass_fds=(read,), env=env)
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        worker.pipe = write
        worker.started = time.monotonic()
        worker.restart_at = None
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    @staticmethod
    def _close_pipe(worker: _Worker) -> None:
        if worker.pipe is not None:
            os.close(worker.pipe)
            worker.pipe = None

    def _check(self) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        for worker in self._workers:
            if worker.proc is not None:
                code = worker.proc.poll()
                if code is not None:
                    self._exited(worker, code, now)
            elif worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker)
        self._poll = asyncio.get_running_loop().call_later(_POLL, self._check)

    def _exited(self, worker: _Worker, code: int, now: float) -> None:
        assert worker.proc is not None
        pid, worker.proc = worker.proc.pid, None
        worker.exits.append(code)
        self._close_pipe(worker)
        if code == BAD_TARGET:
            self.failure = f"the workers cannot load {self.spec!r} (see the worker's stderr)"
            log.error("worker %d (pid %d): %s; not restarted", worker.index, pid, self.failure)
            if self.broker is not None:
                self.broker.close()  # serve() returns, and raises the failure
            return
        if not self.restart:
            log.warning("worker %d (pid %d) exited with code %d", worker.index, pid, code)
            return
        if now - worker.started >= _STABLE:
            worker.backoff = _BACKOFF_MIN
        delay, worker.backoff = worker.backoff, min(worker.backoff * 2, _BACKOFF_MAX)
        worker.restart_at = now + delay
        worker.restarts += 1
        log.warning(
            "worker %d (pid %d) exited with code %d; restarting in %.1f s",
            worker.index,
            pid,
            code,
            delay,
        )


def serve_workers(
    target: Target, workers: int | None = None, *, bind: str | Iterable[str], **options: Any
) -> None:
    """Run a :class:`WorkerPool` until Ctrl-C or SIGTERM, then stop it gracefully. Blocks.
    ``options`` are :class:`WorkerPool`'s.

    Raises:
        TransportError: the public endpoint cannot be bound.
        RuntimeError: the workers cannot load the service.
        ValueError: see :class:`WorkerPool`.
    """

    async def run() -> None:
        pool = WorkerPool(target, workers, bind=bind, **options)
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop() -> None:  # new calls are refused from now on, not once serve() ends
            pool._begin_stop()
            task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            await pool.serve()
        except asyncio.CancelledError:
            pass

    asyncio.run(run())
