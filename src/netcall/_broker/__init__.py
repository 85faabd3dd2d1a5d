"""The broker's internals: :mod:`.routing` (sans-IO routing table)."""
