"""Sending a call and reading its reply: the steps of :meth:`netcall.RPCClient._invoke` that
the blocking and gevent clients' fast path (:meth:`Sending._start_call`, see
:mod:`netcall._bridge`) shares with it, and the client's raw sends."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from .. import protocol as p
from .._deadline import MIN_REMAINING, SPENT
from .._edge import serializer_error
from .._frames import settle
from .._metadata import check_metadata
from .._reactor import SocketDriver
from .._timers import TimeoutQueues
from ..errors import ClientClosedError, RPCError
from ..protocol.session import first_credit
from ..serializers import Serializer
from .calls import MAX_RESENDS, CallRegistry, PendingCall, ResendableCall, call_frames
from .generator import RemoteGenerator
from .outgoing import ClientChain
from .peers import Peer, PeerTable
from .proxy import UNSET, Call
from .streams import ConsumerStreams, error_from

if TYPE_CHECKING:
    from .._bridge import Bridge

__all__ = ["Sending"]


class Sending:
    """Mixed into :class:`~netcall.RPCClient`."""

    serializer: Serializer
    timeout: float | None
    window: int
    _calls: CallRegistry
    _call_flags: int
    _chain: ClientChain
    _closed: bool
    _driver: SocketDriver | None
    _ids: itertools.count[int]
    _loop: asyncio.AbstractEventLoop | None
    _peers: PeerTable
    _streams: ConsumerStreams
    _timeouts: TimeoutQueues | None
    _start: Callable[[], SocketDriver]

    def _send_call(
        self,
        driver: SocketDriver,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        oneway: bool,
        prefetch: bool,
        metadata: Mapping[str, str] | None,
    ) -> tuple[asyncio.Future[Any], int, PendingCall, asyncio.TimerHandle | None]:
        """Encode and send one call, recorded as pending with its timeout: its future,
        request id, record and own timer (usually none); :meth:`_call_over` forgets it. The
        record's ``peer`` is where the call is now (see :meth:`_refused`): a CANCEL goes
        there."""
        if metadata:
            metadata = check_metadata(metadata)
        # Everything that can fail (encoding) comes before any state is recorded.
        buffers: list[Any] = []
        dump = self._streams.dump
        try:
            arguments = (
                dump(list(args), buffers),
                dump(kwargs, buffers) if kwargs else None,
                buffers,
            )
        except Exception as exc:
            raise serializer_error(exc, "cannot serialize the arguments") from exc
        rid = next(self._ids)
        peer = self._peers.pick(method)
        window = first_credit(self.window) if prefetch else 0
        frames = call_frames(
            peer,
            rid,
            method,
            self.serializer.name,
            timeout,
            oneway,
            window,
            arguments,
            metadata,
            self._call_flags,
        )
        loop = self._loop
        assert loop is not None
        fut = loop.create_future()
        pend: PendingCall
        if peer.methods is None:  # a service this client connected to
            pend = PendingCall(fut, peer, timeout, window)
        else:
            # A service that connected to this client: it may say BYE and refuse the call
            # unstarted, which then goes to another (_refused). Kept as sent: a buffer the
            # caller changes later does not change the call.
            if arguments[2]:
                frames = settle(frames)
            pend = ResendableCall(fut, peer, timeout, window, method, frames, loop.time())
        self._calls.by_id[rid] = pend
        peer.inflight += 1
        driver.send(frames)
        timer = None
        if timeout is not None and not self._timeouts.add(timeout, rid):  # type: ignore[union-attr]
            timer = loop.call_later(timeout, self._calls.expire, rid)
        return fut, rid, pend, timer

    def _call_over(self, rid: int, pend: PendingCall, timer: asyncio.TimerHandle | None) -> None:
        """A call is answered, failed or abandoned: forget it."""
        self._calls.by_id.pop(rid, None)
        pend.peer.inflight -= 1
        if timer is not None:
            timer.cancel()

    def _refused(self, rid: int, pend: ResendableCall, error: p.Error) -> p.Error | None:
        """A service that connected to this client answered ``error`` to the call: None when
        the call went to another service instead (the caller waits on), else the error for
        the caller. A service refuses as busy, after its BYE, only a call it never started
        (one cut short by the stop is answered ServiceStopping: it may have had effects): the
        call goes to another service that has the method, with the same request id and the
        time it has left, at most :data:`MAX_RESENDS` times; with none left the caller gets
        ServiceStoppingError. A service at its ``max_concurrent`` (busy, not stopping): the
        caller gets ServiceBusyError, as from any service."""
        old = pend.peer
        if error.type_name != p.ERR_BUSY or not old.draining:
            return error
        driver = self._driver
        peer = None
        if pend.resends < MAX_RESENDS and driver is not None and not self._closed:
            try:
                peer = self._peers.pick(pend.method)  # never one that said BYE
            except RPCError:  # none has the method (any more), or refused our handshake
                pass
        if peer is None or peer is old:
            return p.Error(rid, p.ERR_SERVICE_STOPPING, error.message, error.traceback)
        assert driver is not None
        frames = pend.frames
        head = frames[1]
        timeout = pend.timeout
        if timeout is not None:
            left = timeout - (self._loop.time() - pend.sent_at)  # type: ignore[union-attr]
            head = p.retime(head, left if left >= MIN_REMAINING else SPENT)
        old.inflight -= 1
        peer.inflight += 1
        pend.travels_to(peer)
        pend.resends += 1
        self._calls.by_id[rid] = pend
        driver.send([peer.rid, head, *frames[2:]])
        return None

    def _start_call(
        self, call: Call, done: Callable[[asyncio.Future[Any]], None]
    ) -> asyncio.Future[Any] | None:
        """Start ``call`` now, on the client's loop, without a task (the blocking and gevent
        clients' fast path, see :mod:`netcall._bridge`): its future, whose result is the raw
        reply for :meth:`_reply_value`, and ``done(future)`` once it is done (in the same loop
        callback as the call's own bookkeeping: one callback fewer per call). ``None`` (and
        ``done`` is not called) when it needs :meth:`_invoke` (the first call, a middleware, a
        call made inside a handler).

        Raises: what :meth:`_invoke` raises before sending (encoding, metadata, not connected).
        """
        if self._driver is None or self._chain.run is not None or call._parent is not None:
            return None
        timeout = self.timeout if call._timeout is UNSET else call._timeout
        driver = self._start()
        fut, rid, pend, timer = self._send_call(
            driver,
            call._name,
            call._args,
            call._kwargs,
            timeout,
            call._oneway,
            False,
            call._metadata,
        )

        def over(fut: asyncio.Future[Any]) -> None:
            try:
                if fut.cancelled() and rid in self._calls.by_id:  # abandoned by its waiter
                    self._send_cancel(pend.peer, rid)
                self._call_over(rid, pend, timer)
            finally:
                done(fut)

        fut.add_done_callback(over)
        return fut

    def _run_bridged(self, bridge: Bridge, call: Awaitable[Any]) -> Any:
        """Run ``call`` (made by this client's proxy, in a blocking or gevent client's thread
        or greenlet) on ``bridge``'s loop and return its result: a plain call starts there
        without a task (:meth:`_start_call`) and its reply is decoded here; anything else (a
        middleware's awaitable) runs as a task.

        Raises: what the call raises, and what :meth:`Bridge.run` raises.
        """
        if type(call) is Call:
            return bridge.run_started(self._start_call, call, self._call_value)
        return bridge.run(call)

    def _call_value(self, call: Call, reply: Any) -> Any:
        return self._reply_value(reply, call._name)

    def _reply_value(self, reply: Any, method: str) -> Any:
        """A call's result from its reply (any thread), or raise the error it carries."""
        kind = type(reply)
        if kind is bytes:
            return self.serializer.loads(reply)
        if kind is p.Result:
            return self._streams.load(reply)
        if kind is RemoteGenerator or kind is p.Ack:
            return None if kind is p.Ack else reply
        raise error_from(reply, method)

    def _send_cancel(self, peer: Peer, rid: int) -> None:
        if self._driver is not None and not self._closed:
            self._driver.send([peer.rid, *p.Cancel(rid).to_frames()])

    def _send(self, peer: Peer, frames: list[Any]) -> None:
        if self._driver is None or self._closed:
            raise ClientClosedError("the client is closed")
        frames.insert(0, peer.rid)
        self._driver.send(frames)
