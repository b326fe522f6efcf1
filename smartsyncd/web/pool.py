"""The CPU pool as the web layer sees it: ``RunBlocking`` runs a function off the reactor.

The service passes its pool's ``deferToThreadPool``; unit tests pass a function that runs the
call at once. The type itself lives in ``runtime/blocking.py`` (the client uses it too).
"""

from __future__ import annotations

from smartsyncd.runtime.blocking import RunBlocking

__all__ = ["RunBlocking"]
