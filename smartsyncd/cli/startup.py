"""The ``smartsync`` command's start: no garbage collection while its modules import, and
the server's TCP connection begun meanwhile.

Importing the client (Twisted, OpenSSL, cryptography, the sync engine) allocates a few
hundred thousand objects that all live until the process ends; the collector's passes over
them while they are made cost about 30 ms of a 300 ms start (a median of 8 interleaved runs,
``import smartsyncd.cli.client`` with and without). ``smartsyncd.cli.client`` imports this
module first (which disables the collector and calls :func:`connect_early`) and calls
:func:`imported` after its own imports; the collector's state from
before comes back then, with what the imports made set aside for good.

:func:`connect_early` (issue 15): for ``clone``, ``sync``, ``status`` and ``engagements`` the
server is named on the command line or in the copy's marker; a thread connects to it while
the modules import (client/preconnect.py), which takes the name lookup and the TCP
handshake's round trip off the command's path. Only the standard library's light parts are
imported here; anything unusual in the arguments (an option it does not know, a proxy that
may be in use) means no early connection, and the command connects as before.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

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


# the options before or after the command that take a value, as cli/client_args.py has them
_VALUED = frozenset({"--ca-file", "--trust-fingerprint", "--config-dir", "--bwlimit",
                     "--attempts", "--proxy"})
_FLAGS = frozenset({"--quiet", "-q", "--json", "--system-trust"})
_SCRIPT_NAMES = frozenset({"smartsync", "smartsync.exe", "smartsync-script.py"})
_PROXY_OFF = frozenset({"", "direct", "none"})
_MARKER = os.path.join(".smartsync", "copy.json")


def server_to_reach(argv: Sequence[str], environ: Mapping[str, str],
                    platform: str = sys.platform) -> tuple[str, int, int] | None:
    """``(host, port, connections)`` the command will open first, when that is plain from
    ``argv`` (and the copy's marker) and no proxy can be in the way; else None. A clone asks
    for the file list and the rules at once: two connections."""
    if platform == "win32":
        return None  # adopting a socket there is not what Twisted's reactors promise
    command: str | None = None
    positionals: list[str] = []
    proxy: str | None = None
    words = iter(argv)
    for word in words:
        name, has_value, value = word.partition("=")
        if name in _VALUED:
            if not has_value:
                value = next(words, "")
            if name == "--proxy":
                proxy = value
        elif word in _FLAGS:
            pass
        elif word.startswith("-"):
            return None  # an option of which this knows nothing: do as before
        elif command is None:
            command = word
        else:
            positionals.append(word)
    if proxy is not None:
        if proxy.strip().lower() not in _PROXY_OFF:
            return None
    elif platform == "darwin" or any(
            key.lower() in ("https_proxy", "all_proxy") for key in environ):
        return None  # the system's proxy settings decide (client/proxy.py): not read here
    url: str | None
    if command in ("clone", "engagements") and positionals:
        url = positionals[0]
    elif command in ("sync", "status") and len(positionals) <= 1:
        url = copy_server(positionals[0] if positionals else ".")
    else:
        return None
    address = _address(url) if url else None
    if address is None:
        return None
    return (*address, 2 if command == "clone" else 1)


def copy_server(directory: str) -> str | None:
    """The server named in the copy's marker in ``directory`` (None if it cannot be read)."""
    try:
        with open(os.path.join(directory, _MARKER), "rb") as marker:
            server = json.loads(marker.read(65536)).get("server")
    except (OSError, ValueError, AttributeError):
        return None  # the command itself says what is wrong with the copy
    return server if isinstance(server, str) else None


def _address(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 443
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or not parts.hostname or ":" in parts.hostname:
        return None  # not a server URL (the command says so), or IPv6: left to Twisted
    return parts.hostname, port


def connect_early(argv: Sequence[str] | None = None) -> None:
    """Begin the server's TCP connection when this process is the ``smartsync`` command
    (its console script; not a program importing the module) and the server is known."""
    if argv is None:
        if os.path.basename(sys.argv[0]).lower() not in _SCRIPT_NAMES:
            return
        argv = sys.argv[1:]
    target = server_to_reach(argv, os.environ)
    if target is not None:
        from smartsyncd.client import preconnect

        host, port, count = target
        preconnect.start(host, port, count=count)


connect_early()
