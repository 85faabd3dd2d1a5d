"""A chain of services in separate processes (A calls B calls C), for the tests of calls across
services. Not a fixture module: ``with Chain(tmp_path, "ABC") as chain: ...``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from conftest import TESTS_DIR, netcall_env

NODE = TESTS_DIR / "_chain_node.py"
START_TIMEOUT = 20.0


class Chain:
    """Start ``names[-1]`` first, each node calling the next; ``chain.url`` is the first's."""

    def __init__(self, tmp_path: Path, names: str = "ABC", otel: bool = False) -> None:
        self.dir = tmp_path
        self.names = list(names)
        self.otel = otel
        self.events_file = tmp_path / "events.jsonl"
        self.events_file.touch()
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.urls: dict[str, str] = {}

    def __enter__(self) -> Chain:
        try:
            next_url: str | None = None
            for name in reversed(self.names):
                cmd = [sys.executable, str(NODE), name, str(self.events_file)]
                if next_url is not None:
                    cmd += ["--next", next_url]
                if self.otel:
                    cmd += ["--otel", str(self.spans_file(name))]
                with open(self.stderr_file(name), "w") as err:
                    proc = subprocess.Popen(
                        cmd,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=netcall_env(),
                    )
                self.procs[name] = proc
                next_url = self.urls[name] = self._ready(name, proc)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self.urls[self.names[0]]

    def stderr_file(self, name: str) -> Path:
        return self.dir / f"stderr-{name}.txt"

    def stderr(self, name: str) -> str:
        path = self.stderr_file(name)
        return path.read_text() if path.exists() else ""

    def spans_file(self, name: str) -> Path:
        return self.dir / f"spans-{name}.json"

    def _ready(self, name: str, proc: subprocess.Popen[str]) -> str:
        """The node's url from its READY line (bounded wait, read in a thread)."""
        out: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            out.append(proc.stdout.readline())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        line = out[0] if out else ""
        if not line.startswith("READY "):
            proc.kill()
            proc.wait(10)
            raise RuntimeError(f"chain node {name} did not start: {line!r}\n{self.stderr(name)}")
        return line.split()[1]

    def stop(self) -> None:
        """Stop every node: closing its stdin asks it to stop; killed after 10 s."""
        for proc in self.procs.values():
            if proc.stdin is not None and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()

    # -- what the nodes recorded ------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        text = self.events_file.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_events(
        self, predicate: Any, timeout: float = 10.0, interval: float = 0.02
    ) -> list[dict[str, Any]]:
        """Poll the events until ``predicate(events)`` holds (bounded); return them."""
        end = time.monotonic() + timeout
        while True:
            events = self.events()
            if predicate(events) or time.monotonic() > end:
                return events
            time.sleep(interval)

    def spans(self) -> list[dict[str, Any]]:
        """Every node's finished spans (after :meth:`stop`)."""
        out: list[dict[str, Any]] = []
        for name in self.names:
            path = self.spans_file(name)
            if path.exists():
                out.extend(json.loads(path.read_text()))
        return out
