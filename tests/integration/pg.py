"""A real PostgreSQL 15 cluster in a temp folder, for tests (see ../shared/guide/infra.md).

``PgCluster(folder).start()`` runs ``initdb`` as the ``postgres`` user (initdb refuses root) with
``runuser``, then ``pg_ctl start`` on a free loopback port with its socket in the folder (no
dependency on /var/run/postgresql). ``create_database()`` gives each test a fresh database;
``url(db)`` is what smartsyncd's ``[database] url`` takes; ``fresh_url()`` is a URL to a new,
empty schema (for the store suite: instant, where a database takes about 0.4 s). ``stop()`` is ``pg_ctl stop -m fast``.
``PgCluster.standby_of(primary)`` is a hot standby streaming from ``primary`` (``pg_basebackup
-R -X stream``, then started with ``hot_standby=on``): a branch office's metadata (issue 18);
``wait_replayed()`` polls (with a deadline) until it has replayed the primary's current WAL.
A cluster that cannot start raises ``PgStartError`` with its log: the test fails, never skips.

Used by tests/unit/test_storage.py (one cluster per session) and the integration tests.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
START_TIMEOUT_S = 30


class PgStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(args, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


class PgCluster:
    """One PostgreSQL server owned by the test run."""

    _names = itertools.count(1)

    def __init__(
        self, folder: Path | None = None, *, durable: bool = False, primary: PgCluster | None = None
    ) -> None:
        # pytest's tmp folders are 0700 root, out of the postgres user's reach: by default the
        # cluster lives in its own folder under /tmp, removed again by ``stop``.
        self._own_folder = folder is None
        self.durable = durable  # False: fsync=off (tests); True: PostgreSQL's defaults (bench)
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="smartsync-pg-"))
        self.data = self.folder / "data"
        self.logfile = self.folder / "postgres.log"
        self.port = 0
        self.running = False
        self.primary = primary  # set: a streaming standby of this cluster

    @classmethod
    def standby_of(
        cls, primary: PgCluster, folder: Path | None = None, *, via_port: int | None = None
    ) -> PgCluster:
        """A hot standby of ``primary`` (not started: call ``start``); with ``via_port`` it
        streams through that loopback port (a relay standing for the office link)."""
        standby = cls(folder, durable=primary.durable, primary=primary)
        standby.via_port = via_port
        return standby

    def start(self) -> PgCluster:
        if not (PG_BIN / "initdb").exists():
            raise PgStartError(f"PostgreSQL 15 is not installed ({PG_BIN}); .ci/run installs it")
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        if not self.data.exists() and self.primary is not None:
            done = _as_postgres(
                [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.primary.port),
                 "-U", "postgres", "-D", str(self.data), "-R", "-X", "stream", "--no-sync"]
            )
            if done.returncode == 0 and getattr(self, "via_port", None):
                with open(self.data / "postgresql.auto.conf", "a") as conf:  # the last one wins
                    conf.write(f"primary_conninfo = 'host=127.0.0.1 port={self.via_port} user=postgres'\n")
            if done.returncode != 0:
                raise PgStartError(f"pg_basebackup failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        if not self.data.exists():
            done = _as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                 "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]
            )
            if done.returncode != 0:
                raise PgStartError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        self.port = free_port()
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        if not self.durable:
            options += " -c fsync=off"
        if self.primary is not None:
            options += " -c hot_standby=on"
        done = _as_postgres(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w",
             "-t", str(START_TIMEOUT_S), "start", "-o", options]
        )
        if done.returncode != 0:
            raise PgStartError(
                f"pg_ctl start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"--- log ---\n{self.log_text()}"
            )
        self.running = True
        return self

    def stop(self) -> None:
        if not self.running:
            return
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        self.running = False
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement (autocommit) and return its rows (empty for no result)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[arg-type]
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def fresh_url(self) -> str:
        """A URL to an empty schema of its own (much faster than a database per test)."""
        if not getattr(self, "_schema_db", None):
            self._schema_db = self.create_database("schemas")
        name = f"s_{next(self._names)}"
        self.sql(f'CREATE SCHEMA "{name}"', self._schema_db)
        return f"{self.url(self._schema_db)}?options=-csearch_path%3D{name}"

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Poll until this standby replayed everything the primary has written so far."""
        assert self.primary is not None
        target = self.primary.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        deadline = time.monotonic() + timeout
        while True:
            done = self.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")[0][0]
            if done:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby did not replay {target} within {timeout} s")
            time.sleep(0.02)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
