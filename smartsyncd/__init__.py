"""smartsyncd: server-managed sync of accounting engagement files over HTTPS.

Layers (dependencies point down only):

- ``core``: pure sync rules (paths, manifests, conflicts, commit decisions, client planning).
- ``storage``: metadata (SQLite; PostgreSQL later) and the content-addressed chunk store.
- ``auth``: local users, directory sign-in, sessions, roles.
- ``web``: the HTTP adapter (routes, auth, error mapping, body limits, long-poll).
- ``service``: twistd wiring (config, TLS, logging, thread pools).
- ``client``: the embeddable treq-based client library.
- ``cli``: the ``smartsync`` and ``smartsync-admin`` commands.
- ``testing``: public fakes and fixtures for tests of this and embedding code.
"""

__version__ = "0.1.0"
