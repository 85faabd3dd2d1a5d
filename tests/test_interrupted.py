"""A handler run inside the service's reader (a sync handler inline, or an ``async def`` one
whose first step runs at once) that raises SystemExit, KeyboardInterrupt or CancelledError:
the caller still gets an answer, the reader goes on with the messages it has, and SystemExit
/ KeyboardInterrupt then leave the loop as they would from a task (the service process
exits). Each service is a real process."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from conftest import netcall_env, tcp_url
from netcall import RPCClient
from netcall.errors import RemoteRPCError, RPCTimeoutError

pytestmark = pytest.mark.timeout(60)

SERVICE = """
import asyncio, sys
from netcall import RPCService

service = RPCService()

@service.register
def exit_now(code):
    raise SystemExit(code)

@service.register
async def exit_async(code):
    raise SystemExit(code)

@service.register
def cancel_me():
    raise asyncio.CancelledError

@service.register
async def cancel_me_async():
    raise asyncio.CancelledError

@service.register
def echo(x):
    return x

async def main():
    service.bind(sys.argv[1])
    print("serving", flush=True)
    await service.serve()

try:
    asyncio.run(main())
finally:
    service.context.destroy(linger=200)
"""


@pytest.fixture
def service_process() -> Any:
    url = tcp_url()
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVICE), url],
        env=netcall_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "serving\n"
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("method", ["exit_now", "exit_async"])
async def test_system_exit_in_a_handler_is_answered_then_exits(
    service_process: Any, method: str
) -> None:
    url, proc = service_process
    async with RPCClient(timeout=5) as client:
        client.connect(url)
        assert await client.echo(1) == 1
        with pytest.raises(RemoteRPCError) as info:
            await client.call(method, 3)
    assert info.value.type_name == "SystemExit"
    assert "interrupted" in str(info.value)
    assert proc.wait(timeout=10) == 3  # and then it left the loop, as from a task


@pytest.mark.parametrize("method", ["cancel_me", "cancel_me_async"])
async def test_cancelled_error_in_a_handler_run_inline_gets_no_answer_and_the_service_goes_on(
    service_process: Any, method: str
) -> None:
    url, proc = service_process
    async with RPCClient(timeout=5) as client:
        client.connect(url)
        with pytest.raises(RPCTimeoutError):
            await client.call(method, timeout=0.5)  # as for a cancelled task
        results = await asyncio.gather(*(client.echo(i) for i in range(20)))
        assert results == list(range(20))
    assert proc.poll() is None
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    assert "Traceback" not in err, err  # nothing escaped into the loop's callbacks
