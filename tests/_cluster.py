"""Real processes for the broker tests: start, wait for a ready line, SIGKILL, always reap."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Sequence

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
