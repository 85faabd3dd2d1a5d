"""A service process for test_broker_stuck.py whose handlers run off netcall's loop thread,
connected out to a broker's backend:

    python _stuck_service.py gevent <backend>          # GeventRPCService
    python _stuck_service.py gevent-patched <backend>  # the same after gevent.monkey.patch_all()
    python _stuck_service.py trio <backend>            # RPCService under trio.run

Two methods: ``pid()``, and ``block(seconds)``, which holds the thread its handlers run on (the
gevent hub, the trio run) for ``seconds`` without yielding, then returns the pid. Prints
``READY`` once it serves, then runs until killed.
"""

from __future__ import annotations

import sys


def run_gevent(url: str, patch: bool) -> None:
    import gevent.monkey

    if patch:
        gevent.monkey.patch_all()
    import os

    from netcall.green import GeventRPCService

    sleep = gevent.monkey.get_original("time", "sleep")  # blocks the hub, patched or not
    service = GeventRPCService(name="stuck-gevent")

    @service.register
    def block(seconds: float) -> int:
        sleep(seconds)
        return os.getpid()

    @service.register
    def pid() -> int:
        return os.getpid()

    service.start()
    service.connect(url)
    print("READY", flush=True)
    service.serve()


def run_trio(url: str) -> None:
    import os
    import time

    import trio

    from netcall import RPCService

    service = RPCService(name="stuck-trio")

    @service.register
    async def block(seconds: float) -> int:
        time.sleep(seconds)  # blocks the trio run
        return os.getpid()

    @service.register
    async def pid() -> int:
        return os.getpid()

    async def main() -> None:
        service.start()
        service.connect(url)
        print("READY", flush=True)
        await service.serve()

    trio.run(main)


def main() -> None:
    kind, url = sys.argv[1], sys.argv[2]
    if kind == "trio":
        run_trio(url)
    else:
        run_gevent(url, patch=kind == "gevent-patched")


if __name__ == "__main__":
    main()
