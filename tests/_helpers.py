"""Small helpers shared by the test modules (not fixtures)."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 5.0,
    interval: float = 0.01,
    gc_collect: bool = False,
) -> bool:
    """Poll ``predicate`` on the loop until it is true or ``timeout`` passes; return its value."""
    end = time.monotonic() + timeout
    while True:
        if gc_collect:
            gc.collect()
        if predicate():
            return True
        if time.monotonic() >= end:
            return bool(predicate())
        await asyncio.sleep(interval)
