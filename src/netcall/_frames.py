"""Sending and receiving one multipart message on a ZeroMQ socket without blocking, as
:class:`netcall._reactor.SocketDriver` does: zero-copy for large frames, memoryviews for large
received frames, and a bound on the frames of one message."""

from __future__ import annotations

import logging
import sys
from typing import Any

import zmq

from . import _malloc
from ._ratelog import RateLimitedLog
from .protocol import MAX_FRAMES as MAX_MESSAGE_FRAMES

__all__ = [
    "MAX_FRAMES",
    "VIEW_MIN",
    "ZERO_COPY_MIN",
    "recv_frames",
    "recv_routed",
    "send_frames",
    "settle",
]

log = logging.getLogger("netcall")
# A hostile peer may send such messages endlessly: a few lines, then a summary now and then.
_dropped = RateLimitedLog(log)

#: ``bytes`` frames at least this large are sent without copying (``copy=False``). Measured
#: (benchmarks/cpu.py, CPU time per 1 MiB / 16 MiB echo, both ends in one process):
#: pyzmq's zero-copy bookkeeping (a Frame, and its release through pyzmq's garbage-collector
#: thread) cost more than copying a 1 MiB frame, and less than copying a 16 MiB one. Other
#: buffers (bytearray, arrays) are always copied into a message when handed over
#: (:func:`settle`): the sender could change them before libzmq's I/O thread reads them.
ZERO_COPY_MIN = 2 << 20
#: Frames after the head at least this large are received as memoryviews over the ZeroMQ
#: message (no copy; out-of-band buffers are copied at most once, into ``bytes``, after).
#: Such a view sent on as it is (a broker forwarding a payload, a handler returning a buffer
#: it was given as a memoryview) goes out as the same ZeroMQ message: no copy.
VIEW_MIN = 65536
#: Frames of one message beyond this are read and thrown away, and the message is dropped
#: (routing id + the largest message the protocol allows).
MAX_FRAMES = MAX_MESSAGE_FRAMES + 1

# Plain ints: pyzmq's enum flags cost an enum operation per frame on the hot path.
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

# The socket methods without pyzmq's Python-level wrappers (the sugar layer only adds
# routing_id/group handling, which netcall does not use).
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_Frame = zmq.Frame  # what _recv(copy=False) returns


def send_frames(sock: zmq.Socket[Any], frames: list[Any]) -> None:
    """Send one multipart message without blocking.

    Raises:
        zmq.Again: on the first frame, when the peer's pipe is full (nothing was sent).
        zmq.ZMQError: EHOSTUNREACH for an unknown peer (ROUTER_MANDATORY), and the like.
    """
    last = len(frames) - 1
    _send(sock, frames[0], _MORE_NOBLOCK)
    for i in range(1, last + 1):
        frame = frames[i]
        flags = _MORE_NOBLOCK if i < last else _NOBLOCK
        kind = type(frame)
        if kind is bytes:
            if len(frame) < VIEW_MIN:
                _send(sock, frame, flags)
                continue
            if not _malloc_tuned:
                _tune_malloc()
            if len(frame) >= ZERO_COPY_MIN and _gc_thread_is_a_thread():
                _send(sock, frame, flags, copy=False)
            else:
                _send(sock, frame, flags)
        elif kind is memoryview and _received(frame):
            _send(sock, frame.obj, flags, copy=False)
        else:
            if not _malloc_tuned and kind is _Frame and len(frame) >= VIEW_MIN:
                _tune_malloc()  # (a buffer settled into a ZeroMQ message)
            _send(sock, frame, flags)


def settle(frames: list[Any]) -> list[Any]:
    """``frames`` with every frame its sender could still change (a ``bytearray``, a
    writable ``memoryview``, a numpy array's data) copied now into a ZeroMQ message, which is
    sent later without another copy. Sends are corked until the end of the loop's turn, and
    queued behind a full pipe: without this a buffer changed meanwhile (a stream yielding one
    array it fills again, a caller reusing a bytearray) would go out with its later content.
    ``bytes``, read-only views over ``bytes`` and views over received ZeroMQ messages (which
    netcall never writes to: what it hands on of them is ``bytes``, read-only memoryviews, or
    a numpy array the receiver owns, which is copied here if sent) are kept.

    Raises:
        TypeError, BufferError: a frame that is not a contiguous buffer.
    """
    out = list(frames)
    for i, frame in enumerate(out):
        kind = type(frame)
        if kind is bytes or kind is _Frame:
            continue
        if kind is memoryview:
            owner = type(frame.obj)
            if owner is _Frame or (owner is bytes and frame.readonly):
                continue
        out[i] = _Frame(frame, copy=True)
    return out


def _gc_thread_is_a_thread() -> bool:
    """Whether pyzmq's garbage-collector thread, which lets go of zero-copy frames, is (or will
    be) a real thread. Under gevent's ``monkey.patch_all()`` it is a greenlet: its blocking
    ZeroMQ receive then stalls whichever thread's hub runs it, and at exit pyzmq's join of it
    fails (``LoopExit``). Then large frames are copied, as smaller ones are."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return True
    garbage = sys.modules.get("zmq.utils.garbage")  # (imported at the first zero-copy send)
    thread = getattr(garbage or sys.modules.get("threading"), "Thread", None)
    return bool(thread is monkey.get_original("threading", "Thread"))


def _received(view: memoryview) -> bool:
    # A whole received frame (recv_frames' view of a large one), in its own order: sent as
    # that same ZeroMQ message, shared, with neither a copy nor pyzmq's garbage collector
    # (libzmq owns it). Nothing may write to it after (netcall never does; users only get
    # read-only views of it).
    frame: Any = view.obj
    return type(frame) is _Frame and view.c_contiguous and view.nbytes == len(frame)


def recv_frames(sock: zmq.Socket[Any], frame: Any = None) -> list[Any] | None:
    """Receive one multipart message without blocking (``frame``: its first frame, when the
    caller received it already): ``bytes`` frames, except that frames
    after the head of at least :data:`VIEW_MIN` bytes are memoryviews over the ZeroMQ
    message (not copied). ``None`` for a message of more than :data:`MAX_FRAMES` frames (read
    to its end, and dropped).

    Frames are received as ``zmq.Frame`` to read ``more`` from the message itself: asking the
    socket (``RCVMORE``) costs pyzmq an enum lookup per frame.

    Raises:
        zmq.Again: nothing is waiting.
    """
    if frame is None:
        frame = _recv(sock, _NOBLOCK, copy=False)
    frames: list[Any] = [frame.bytes]
    if not frame.more:
        return frames
    return _after_first(sock, frames)


def recv_routed(sock: zmq.Socket[Any]) -> list[Any] | None:
    """:func:`recv_frames` for a ROUTER socket: the same frames, the sender's routing id
    first. libzmq always sends that frame with ``more`` set, so it is received as ``bytes``,
    without the ``zmq.Frame`` that tells whether more follow (measured: a frame received as
    ``bytes`` 0.30 µs, as a ``zmq.Frame`` read with ``more`` and ``bytes`` 0.90 µs).

    Raises:
        zmq.Again: nothing is waiting.
    """
    frames = [_recv(sock, _NOBLOCK)]
    try:
        return _after_first(sock, frames)
    except BaseException:
        # Interrupted (Ctrl-C) between two frames: the rest of this message must not be
        # taken, next time, for the start of one (its first frame read as a routing id,
        # with more assumed, would swallow the message after it).
        _discard_rest(sock)
        raise


def _discard_rest(sock: zmq.Socket[Any]) -> None:
    try:
        while sock.getsockopt(zmq.RCVMORE):
            _recv(sock, _NOBLOCK)
    except zmq.ZMQError:  # closed meanwhile
        pass


def _after_first(sock: zmq.Socket[Any], frames: list[Any]) -> list[Any] | None:
    # The rest of a message whose first frame had more: see recv_frames.
    frame = _recv(sock, _NOBLOCK, copy=False)
    frames.append(frame.bytes)  # the head
    while frame.more:
        frame = _recv(sock, _NOBLOCK, copy=False)
        if len(frame) >= VIEW_MIN:
            if not _malloc_tuned:
                _tune_malloc()
            frames.append(frame.buffer)
        else:
            frames.append(frame.bytes)
        if len(frames) > MAX_FRAMES:
            while frame.more:  # a hostile peer: read the rest, keep nothing
                frame = _recv(sock, _NOBLOCK, copy=False)
            _dropped(
                "frames", logging.WARNING, "dropped a message of more than %d frames", MAX_FRAMES
            )
            return None
    return frames


_malloc_tuned = False


def _tune_malloc() -> None:
    # The first large frame this process receives or sends: glibc settings for large messages
    # (once). A sender allocates as much as a receiver: each large frame sent is copied into a
    # fresh ZeroMQ message (a service streaming large items may never receive one).
    global _malloc_tuned
    _malloc_tuned = True
    _malloc.tune()
