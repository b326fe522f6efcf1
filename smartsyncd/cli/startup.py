"""The ``smartsync`` command's start: no garbage collection while its modules import.

Importing the client (Twisted, OpenSSL, cryptography, the sync engine) allocates a few
hundred thousand objects that all live until the process ends; the collector's passes over
them while they are made cost about 30 ms of a 300 ms start (a median of 8 interleaved runs,
``import smartsyncd.cli.client`` with and without). ``smartsyncd.cli.client`` imports this
module first and calls :func:`imported` after its own imports; the collector's state from
before comes back then, with what the imports made set aside for good.
"""

from __future__ import annotations

import gc

_was_enabled = gc.isenabled()
gc.disable()


def imported() -> None:
    """The command's modules are loaded: collect as before, but never over what was made so
    far (``gc.freeze``: modules, classes, functions, which live as long as the process).
    Without it the first collection after the imports walks all of them at once (measured:
    about 100 ms spent in the middle of a clone's first answer)."""
    if _was_enabled:
        gc.freeze()
        gc.enable()
