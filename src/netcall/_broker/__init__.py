"""The broker's internals, sans-IO: :mod:`.routing` (what each message does), :mod:`.core` (the
routes and the moves they share), :mod:`.table` (services and waiting calls)."""
