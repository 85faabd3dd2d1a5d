"""Real processes for the broker tests: start, wait for a ready line, SIGKILL, always reap."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from _helpers import wait_until
from conftest import TESTS_DIR, netcall_env

HELPER = str(TESTS_DIR / "_broker_helper.py")


class Procs:
    """Children started by one test; :meth:`cleanup` kills and reaps every one."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(
        self, *args: str, ready: str = "READY", prefix: Sequence[str] = (), script: str = HELPER
    ) -> asyncio.subprocess.Process:
        """Run ``_broker_helper.py args`` (or another ``script``) under ``prefix`` (e.g.
        ``ip netns exec ns``) and wait for a line starting with ``ready``.

        Raises:
            AssertionError: the child did not get ready within 15 s (its stderr is shown).
        """
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            sys.executable,
            script,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=netcall_env(),
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
        except asyncio.TimeoutError:
            line = b""
        if not line.strip().startswith(ready.encode()):
            proc.kill()
            _, err = await proc.communicate()
            raise AssertionError(
                f"child {args} did not print {ready}: {line!r}\n{err.decode()[-3000:]}"
            )
        return proc

    async def broker(
        self, front: str, back: str, prefix: Sequence[str] = ()
    ) -> asyncio.subprocess.Process:
        return await self.start("broker", front, back, prefix=prefix)

    async def service(
        self,
        name: str,
        kind: str,
        backends: str | Sequence[str],
        max_concurrent: int | None = None,
        prefix: Sequence[str] = (),
    ) -> asyncio.subprocess.Process:
        urls = backends if isinstance(backends, str) else ",".join(backends)
        extra = [str(max_concurrent)] if max_concurrent is not None else []
        return await self.start("service", name, kind, urls, *extra, prefix=prefix)

    async def cleanup(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:  # pragma: no cover
                    pass
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:  # pragma: no cover
                pass


async def kill9(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` and wait until it is dead."""
    proc.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(proc.wait(), 5) == -signal.SIGKILL


async def rolling_restart(
    procs: Procs, backends: str, call: Callable[[int], Awaitable[str]], rounds: int
) -> None:
    """A rolling restart: two ``math`` services (real processes, connected out to
    ``backends``: a broker's backend, or a client that binds) stopped gracefully (SIGTERM) one
    at a time, ``rounds`` times, each replaced, while 16 callers make ``call(i)`` (a call that
    answers the service's name) in a loop. None of them may see an error.

    Raises:
        AssertionError: a caller got an error, a service got no calls, or did not exit cleanly.
    """
    services = {name: await procs.service(name, "math", backends) for name in ("math-0", "math-1")}
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while seen != set(services):  # both joined
        assert time.monotonic() < deadline, f"only {seen} answered"
        try:
            seen.add(await call(1))
        except Exception:
            await asyncio.sleep(0.05)
    answered: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    running = True

    async def caller(i: int) -> None:
        while running:
            try:
                answered[await call(i)] += 1
            except Exception as exc:
                errors[f"{type(exc).__name__}: {exc}"] += 1

    async def until_answered(name: str) -> None:
        start = answered[name]
        assert await wait_until(lambda: answered[name] >= start + 50, 10), f"{name} got no calls"

    callers = [asyncio.ensure_future(caller(i)) for i in range(16)]
    try:
        live = ["math-0", "math-1"]
        for round_ in range(rounds):
            for name in live:
                await until_answered(name)
            proc = services[live[round_ % 2]]
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0  # a clean exit
            fresh = f"math-{round_ + 2}"
            services[fresh] = await procs.service(fresh, "math", backends)
            live[round_ % 2] = fresh
        for name in live:
            await until_answered(name)
    finally:
        running = False
        await asyncio.gather(*callers)
    assert not errors, dict(errors)
