"""Cross-daemon wake-ups: PostgreSQL LISTEN/NOTIFY feeding the local ``ChangeNotifier``.

Every commit that moves an engagement's head runs ``pg_notify('smartsync_changes',
'<engagement id>:<head>')`` inside its transaction (``storage/postgres.py``), so PostgreSQL
delivers it, once committed, to every daemon listening. ``PgNotifyBridge`` is the listening
side: one dedicated thread with its own connection in autocommit mode, ``LISTEN`` on the channel,
and a loop over ``conn.notifies(timeout=...)``; each payload is handed to the reactor with
``callFromThread(notify, engagement_id, head)``, which wakes the long-polls waiting on this
daemon (``web/notify.py``). The reactor thread never waits on the database.

Nothing may be missed silently: after every (re)connection the bridge reads every engagement's
head once and delivers those too, so notifications sent while it was disconnected still wake
the waiters behind them. A lost connection is retried with capped exponential backoff and
logged without the URL's password. ``stopService`` sets a flag the loop sees within
``POLL_S`` seconds and fires once the thread has closed its connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from smartsyncd.storage.postgres import NOTIFY_CHANNEL, connect_postgres

if TYPE_CHECKING:
    from smartsyncd.service.reactor import DaemonReactor

log = Logger(namespace="smartsyncd.service")

APPLICATION_NAME = "smartsyncd-notify"
POLL_S = 0.5
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0


def parse_payload(payload: str) -> tuple[int, int] | None:
    """``"<engagement id>:<head>"`` -> (id, head); None for anything else (ignored)."""
    left, sep, right = payload.partition(":")
    if not sep or not left.isdigit() or not right.isdigit():
        return None
    return int(left), int(right)


class PgNotifyBridge(Service):
    """Deliver committed heads from every daemon to ``notify(engagement_id, head)``."""

    def __init__(
        self, database_url: str, notify: Callable[[int, int], None], reactor: DaemonReactor
    ) -> None:
        self._url = database_url
        self._notify = notify
        self._reactor = reactor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done: Deferred[None] | None = None
        self.listening = threading.Event()  # set while LISTEN is active (for tests and health)
        self.setName("pgnotify")

    def startService(self) -> None:
        super().startService()
        self._stop.clear()
        done: Deferred[None] = Deferred()
        self._done = done
        self._thread = threading.Thread(
            target=self._run, args=(done,), name="smartsyncd-pgnotify", daemon=True
        )
        self._thread.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stop.set()
        done, self._done = self._done, None
        return done if done is not None else succeed(None)

    # -- the listening thread ---------------------------------------------------------------

    def _deliver(self, engagement_id: int, head: int) -> None:
        self._reactor.callFromThread(self._notify, engagement_id, head)

    def _run(self, done: Deferred[None]) -> None:
        delay = RETRY_FIRST_S
        try:
            while not self._stop.is_set():
                try:
                    self._listen_until_stopped()
                    return
                except Exception as e:  # noqa: BLE001 - any failure: reconnect after a pause
                    if self.listening.is_set():
                        delay = RETRY_FIRST_S  # it worked for a while: start the backoff again
                    self.listening.clear()
                    if self._stop.is_set():
                        return
                    log.warn(
                        "change notifications from other daemons interrupted ({error}); "
                        "reconnecting in {delay:.1f} s",
                        error=type(e).__name__,
                        delay=delay,
                    )
                    self._stop.wait(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
        finally:
            self.listening.clear()
            self._reactor.callFromThread(_fire, done)

    def _listen_until_stopped(self) -> None:
        conn = connect_postgres(self._url, application_name=APPLICATION_NAME)
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            # Whatever was committed while nobody listened: deliver every head once.
            for engagement_id, head in conn.execute("SELECT id, head FROM engagements").fetchall():
                self._deliver(int(engagement_id), int(head))
            self.listening.set()
            log.info("listening for changes committed by other daemons")
            while not self._stop.is_set():
                for note in conn.notifies(timeout=POLL_S):
                    parsed = parse_payload(note.payload)
                    if parsed is not None:
                        self._deliver(*parsed)
                    if self._stop.is_set():
                        break
        finally:
            conn.close()


def _fire(d: Deferred[None]) -> None:
    if not d.called:
        d.callback(None)
