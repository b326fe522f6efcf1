"""A console "tray" hosting ``CopyService``: how a desktop app embeds the sync loop.

    python docs/examples/desktop_tray.py DIR [--config-dir D]

Sign in first with ``smartsync login URL --user NAME`` (the example reads the same settings:
pinned fingerprint or CA file, and the session token). It prints one line per state change and
event, and reads commands on stdin: ``p`` pause, ``r`` resume, ``w`` wake (what a real app calls
from the system's "resumed from sleep" / "network changed" notice), ``q`` quit (after the
running sync). A GUI host does the same from its own callbacks, e.g. with pystray::

    # icon = pystray.Icon("smartsync", image, menu=pystray.Menu(
    #     pystray.MenuItem("Pause", lambda: reactor.callFromThread(service.pause)),
    #     pystray.MenuItem("Resume", lambda: reactor.callFromThread(service.resume))))
    # service.subscribe(lambda e: e.kind == "state" and setattr(icon, "title", e.value.value))

and on Windows/macOS it forwards power and network notices to ``service.wake()``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twisted.internet import stdio
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.protocols.basic import LineReceiver

from smartsyncd.client.copyservice import CopyEvent, CopyService
from smartsyncd.client.engine import SyncCopy
from smartsyncd.client.http import ServerAPI
from smartsyncd.client.trust import PinnedPolicy, ca_policy
from smartsyncd.client.userconfig import UserConfig


def show(event: CopyEvent) -> None:
    """One line per event, flushed: a pipe reader (a test, a GUI) sees it at once."""
    value = event.value
    if event.kind == "state":
        text = value.value
    elif event.kind == "report":
        text = (f"uploaded {value.uploaded}, downloaded {value.downloaded}, "
                f"conflicts {len(value.conflicts)}, skipped {len(value.skipped)}")
    elif event.kind == "progress":
        return  # a real tray would move a bar
    elif event.kind == "retry" and not isinstance(value, dict):
        text = value.describe()
    else:
        text = str(value)
    print(f"{event.kind}: {text}", flush=True)


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, service: CopyService, quit: Deferred[None]) -> None:
        self.service = service
        self.quit = quit

    def lineReceived(self, line: bytes) -> None:
        command = line.strip().decode(errors="replace")
        if command == "p":
            self.service.pause()
        elif command == "r":
            self.service.resume()
        elif command == "w":
            self.service.wake()
        elif command == "q":
            if not self.quit.called:
                self.quit.callback(None)
        elif command:
            print(f"unknown command {command!r}: p, r, w or q", flush=True)

    def connectionLost(self, reason: Any = None) -> None:  # stdin closed: quit too
        if not self.quit.called:
            self.quit.callback(None)


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--config-dir")
    args = parser.parse_args(argv)
    copy = SyncCopy.open(args.directory)  # takes the copy lock: one sync per copy
    entry = UserConfig.load(args.config_dir).server(copy.server_url)
    policy = ca_policy(entry.ca_file) if entry.ca_file else PinnedPolicy(entry.fingerprint or "")
    api = ServerAPI(entry.url, reactor=reactor, policy=policy, token=entry.token,  # type: ignore[arg-type]
                    max_attempts=3)  # a tray tells of an outage soon; the loop retries on
    service = CopyService(copy, api, long_poll=25.0)
    service.subscribe(show)
    quit: Deferred[None] = Deferred()
    stdio.StandardIO(Commands(service, quit), reactor=reactor)
    running = service.start()

    def ended(result: object) -> object:  # a wipe order or a missing folder ends it too
        if not quit.called:
            quit.callback(None)
        return result

    running.addBoth(ended)
    try:
        await quit
        await service.stop()
        await running
    finally:
        await api.close()
        copy.close()
    print("bye", flush=True)


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, sys.argv[1:])))
