"""The HTTP adapter: routes of docs/protocol.md v1, the auth check, one error mapping, body
limits and long-poll waiters. No sync rules live here; they are in ``core`` and ``storage``."""
