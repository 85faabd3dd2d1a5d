"""Close a netcall socket while its connections break, many times over, in one ZeroMQ context;
then check that the context still moves messages. Run by tests/test_monitor_close.py in a
process of its own (a context whose I/O thread is stuck would also hang the exit).

    python _monitor_close_scenario.py client|service|broker ROUNDS

Prints ``ok ROUNDS``, or ``stuck after N`` and exits 1.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile

import zmq

from netcall import RPCClient, RPCService
from netcall.broker import Broker


def healthy(ctx: zmq.Context[zmq.Socket[bytes]]) -> bool:
    """A PAIR pair of ``ctx`` exchanges a message over tcp within 2 s."""
    a = ctx.socket(zmq.PAIR)
    b = ctx.socket(zmq.PAIR)
    try:
        a.linger = b.linger = 0
        port = a.bind_to_random_port("tcp://127.0.0.1")
        b.connect(f"tcp://127.0.0.1:{port}")
        b.send(b"x")
        return bool(a.poll(2000))
    finally:
        a.close()
        b.close()


async def settle(sock: zmq.Socket[bytes]) -> list[bytes]:
    """The first message ``sock`` receives (its connection is up), without blocking the loop."""
    for _ in range(5000):
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await asyncio.sleep(0.001)
    raise RuntimeError("no message within 5 s")


async def client_round(
    mine: zmq.Context[zmq.Socket[bytes]], other: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A client with a call in flight closes; its service goes away at once."""
    peer = other.socket(zmq.ROUTER)
    peer.linger = 0
    port = peer.bind_to_random_port("tcp://127.0.0.1")
    client = RPCClient(context=mine)
    client.connect(f"tcp://127.0.0.1:{port}")
    call = asyncio.ensure_future(client.call("anything", timeout=5))
    await settle(peer)
    client.close()
    peer.close(linger=0)
    await asyncio.gather(call, return_exceptions=True)


async def service_round(
    mine: zmq.Context[zmq.Socket[bytes]], other: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A service with clients connected closes; the clients go away at once."""
    service = RPCService(context=mine)
    port = service.bind_ports("127.0.0.1")
    service.start()
    peers = []
    for _ in range(3):
        peer = other.socket(zmq.DEALER)
        peer.linger = 0
        peer.connect(f"tcp://127.0.0.1:{port}")
        peer.send_multipart([b"\x00"])  # whatever it is, the connection is made
        peers.append(peer)
    await asyncio.sleep(0.01)
    service.close()
    for peer in peers:
        peer.close(linger=0)


async def broker_round(
    mine: zmq.Context[zmq.Socket[bytes]], other: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A broker with clients and services connected closes; they go away at once."""
    folder = tempfile.mkdtemp(prefix="nc-mon-")
    broker = Broker(f"ipc://{folder}/front", f"ipc://{folder}/back", context=mine)
    broker.start()
    peers = []
    for url in (*broker.frontend_urls, *broker.backend_urls):
        peer = other.socket(zmq.DEALER)
        peer.linger = 0
        peer.connect(url)
        peer.send_multipart([b"\x00"])
        peers.append(peer)
    await asyncio.sleep(0.01)
    broker.close()
    for peer in peers:
        peer.close(linger=0)
    shutil.rmtree(folder, ignore_errors=True)


async def main(kind: str, rounds: int) -> int:
    mine, other = zmq.Context(), zmq.Context()
    play = {"client": client_round, "service": service_round, "broker": broker_round}[kind]
    for i in range(rounds):
        await play(mine, other)
        if i % 5 == 4 and not healthy(mine):
            print(f"stuck after {i + 1}", flush=True)
            return 1
    print(f"ok {rounds}", flush=True)
    mine.term()
    other.term()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))
