"""Which event loop is running the caller, and moving core objects to trio when it is trio.

netcall's core is asyncio. Under trio (directly, or as anyio's trio backend), a client or a
service is adopted at its first use: it moves to netcall's own loop thread and the trio-side
shims of :mod:`netcall._trio` take over (see there for why, with figures). This module never
imports trio itself: ``import netcall`` works, and needs no event loop, in any program.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .client import RPCClient
    from .service import RPCService

__all__ = ["adopt_client", "adopt_service", "in_trio"]


def in_trio() -> bool:
    """True when the caller runs in a trio run and no asyncio loop runs in this thread."""
    if asyncio._get_running_loop() is not None:
        return False
    trio = sys.modules.get("trio")
    return trio is not None and bool(trio.lowlevel.in_trio_run())


def adopt_client(client: RPCClient) -> bool:
    """Under trio, move ``client`` (open, never used yet) to netcall's loop thread; False
    elsewhere."""
    if client.closed or not in_trio():
        return False
    from . import _trio

    _trio.adopt_client(client)
    return True


def adopt_service(service: RPCService) -> bool:
    """Under trio, start ``service`` (never started) on netcall's loop thread, its handlers in
    this trio run; False elsewhere."""
    if not in_trio():
        return False
    from . import _trio

    _trio.adopt_service(service)
    service.start()
    return True
