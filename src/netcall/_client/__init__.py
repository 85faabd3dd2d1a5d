"""The rooms of :class:`netcall.RPCClient` (private; the public face is :mod:`netcall.client`).

- :mod:`.inbox`: a reply arrives: settle its call, or feed its stream.
- :mod:`.peers`: the services connected to: routing (which one gets a call), liveness (the
  socket monitor, keepalive pings).
- :mod:`.calls`: encoding a call; calls waiting for an answer, and their timeouts.
- :mod:`.streams`: the consumer side of streams: an ITEM/END/ERROR arrives, credit goes out.
- :mod:`.generator`: :class:`RemoteGenerator`, the user's handle on a stream, and the item
  batching the bridges use.
- :mod:`.proxy`: ``client.name(...)``, ``client.with_options(...)``: calls not yet made.
"""
