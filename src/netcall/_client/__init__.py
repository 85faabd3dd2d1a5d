"""The rooms of :class:`netcall.RPCClient` (private; the public face is :mod:`netcall.client`).

- :mod:`.peers`: the services connected to: routing (which one gets a call), liveness (the
  socket monitor, keepalive pings).
- :mod:`.calls`: calls waiting for an answer, and their timeouts.
- :mod:`.streams`: the consumer side of streams: an ITEM/END/ERROR arrives, credit goes out;
  :class:`RemoteGenerator`.
- :mod:`.proxy`: ``client.name(...)``, ``client.with_options(...)``: calls not yet made.
"""
