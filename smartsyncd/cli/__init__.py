"""Command-line entry points: ``smartsync`` (client) and ``smartsync-admin`` (server metadata)."""
