"""The rooms of :class:`netcall.RPCService` (private; the public face is :mod:`netcall.service`).

- :mod:`.inbox`: a message arrives: decode it, hand it to its room.
- :mod:`.registry`: which handlers exist, under which names; introspection.
- :mod:`.replies`: the one way replies leave (send frames, refuse, report an exception).
- :mod:`.runner`: where sync handlers and sync generator steps run (inline, executor, a hook).
- :mod:`.pongs`: a broker's PING to a service whose handlers run on one thread through a hook
  (gevent, trio), answered once that side has run a no-op.
- :mod:`.dispatch`: a CALL arrives: admission, deadline, the call's context, running the handler.
- :mod:`.streams`: the producer side of streams: a NEXT/THROW/CREDIT arrives, items go out,
  the lease reaper.
"""
