"""Versioned schema of the metadata database, and ``migrate(conn, dialect)``.

Migrations are numbered; ``schema_version`` holds the highest one applied. ``migrate`` applies
the missing ones, each in its own write transaction together with its version row, so a crash
mid-migration leaves the previous version intact, and two daemons migrating at once serialize
on the write lock (the second finds nothing to do). A database newer than this code is refused.

The SQL is plain and portable; the few type names that differ between SQLite and PostgreSQL are
``{id_pk}`` (an auto-numbered primary key), ``{blob}`` (hashes and content ids are 32-byte
blobs), ``{fold_text}`` (the fold key column, compared bytewise so range scans work) and
``{path_text}`` (paths, ordered bytewise as SQLite does, not by the server's locale), filled
in from the ``Dialect``. SQLite gets exactly the DDL it always had.

Several daemons may start at once against one PostgreSQL database: ``migrate`` holds the
dialect's ``migration_lock`` (a PostgreSQL advisory lock) for its whole run, so one daemon
migrates and the others wait, then find nothing to do. DDL is transactional there too. Column names avoid SQL keywords (``user_name``, ``pack_offset``,
``committed_at``, ``group_ids``, ``session_id``).

Tables:
- users: local accounts (LDAP users are not listed here).
- engagements: ``head`` is the last sequence number of the change log (0 when empty).
- grants: (engagement, kind user|group, principal) -> role; ``display_name`` for admins.
- sessions: keyed by the token's hash (the token itself is never stored); ``group_ids`` JSON.
- packs / chunks: where each chunk's payload lives (pack, offset, stored size, codec); chunks are
  per engagement, never shared.
- manifests: the chunk list of each content (``core.manifest.encode_binary``), per engagement.
- changes: the change log, one row per accepted change, seq 1..head without gaps.
- files: the head state per path (tombstones stay with ``content`` NULL), with ``fold_key``
  (case/normalization key) indexed for clash checks and folder spelling lookups.
- batches: the stored answer for each commit batch key (idempotent retries).
- (2) changes.prev_hash/record_hash: the per-engagement hash chain (``core.audit``);
  engagements.finalized_*: the sign-off freeze; engagements.retention_days: history kept;
  locks: check-outs (by fold key); copies: known sync copies and what they hold unsynced;
  audit + audit_heads: the chained audit trail (``eng:<name>`` chains and one ``global``).
- (3) store_meta: one row, the store's identity (a uuid drawn when the row is made) and its
  generation (1, bumped by ``smartsync-admin restore`` and any rollback): a copy that synced
  with another identity or generation reconciles (docs/reliability.md, "Restores").
- (4) login_failures: failed sign-ins per throttle key (resolved account), all daemons'.
- (5) principals namespaced by backend (``core.principals``): sessions.principal; user grants
  become ``local:<name>`` (local accounts with a password) or ``name:<name>`` (directory
  accounts, claimed for ``ad:<SID>`` at their next sign-in); throttle keys ``sid:`` become
  ``ad:``; principal_blocks: principals of any backend that ``user disable|remove`` refused.
- (6) engagements.report_date/assembly_deadline/deadline_finalized_at: the assembly deadline
  and when the deadline timer finalized the engagement (``storage/lifecycle``).
- (7) engagements.min_retention_days/legal_hold_*/disposed_*: retention, legal hold and
  disposal (``storage/retention``).
- (8) quotas, packs.user_name: storage quotas per engagement and user (``storage/quotas``).
- (9) changes_content index: where a downloaded content lives (``storage/readaudit``); read
  events go to ``read:<name>`` chains in ``audit``.
- (10) grants.role may be ``reviewer`` (the CHECK is rebuilt: SQLite copies the table,
  PostgreSQL swaps the constraint); conflicts: the review queue (``storage/review``), one row
  per conflict copy a commit wrote, keyed by that write's seq.
- (11) copy_wipes: remote wipe orders for abandoned copies and the copies' reports of them;
  copies.key_hash: SHA-256 of the copy's own secret, which authenticates that report
  (``storage/wipes``).
- (14) changes/files.mtime_ns, readonly: a put's file date (nanoseconds since 1970 UTC) and
  read-only attribute (0/1), NULL when the client did not send them (issue 16).
- (16) engagements.volume: the storage volume holding the engagement's packs (NULL: the
  default volume, ``[storage] path``); engagements.moving_to: the volume an ``engagement move``
  is copying it to, until the switch (``storage/volumes``).
- (72) engagement_ignore: an engagement's published ignore rules, their digest and who set
  them when (``storage/ignorerules``, issue 16).
- (73) branches: branch offices' credentials (the SHA-256 of each secret, never the secret);
  branch_carry: which engagements each branch carries (prefetches), replicated to the
  branch's standby with everything else (``storage/branches``, issue 18).

Numbers may have gaps (several branches draw them at once): a migration runs when its own number
is not yet in ``schema_version``, whatever higher numbers are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smartsyncd.storage.db import Dialect

def _backfill_change_hashes(conn: Any, dialect: Dialect) -> None:
    """Migration 2's data step: chain the change records that existed before it."""
    from smartsyncd.storage.audit import backfill_change_hashes

    backfill_change_hashes(conn, dialect)


def _create_store_identity(conn: Any, dialect: Dialect) -> None:
    """Migration 3's data step: this store's identity, drawn once."""
    import uuid

    conn.execute(
        dialect.sql("INSERT INTO store_meta (store_id, generation) VALUES (?, 1)"), (str(uuid.uuid4()),)
    )


def _namespace_principals(conn: Any, dialect: Dialect) -> None:
    """Migration 5's data step: every user grant, session and throttle key says its backend."""
    conn.execute(
        "UPDATE grants SET principal = CASE WHEN principal IN"
        " (SELECT name FROM users WHERE password_hash IS NOT NULL)"
        " THEN 'local:' ELSE 'name:' END || principal WHERE kind = 'user'"
    )
    conn.execute(
        "UPDATE sessions SET principal = CASE WHEN backend = 'local' THEN 'local:'"
        " ELSE 'name:' END || user_name"
    )
    conn.execute(
        "UPDATE login_failures SET throttle_key = 'ad:' || substr(throttle_key, 5)"
        " WHERE substr(throttle_key, 1, 4) = 'sid:'"
    )


def _allow_reviewer_role(conn: Any, dialect: Dialect) -> None:
    """Migration 10's grants step: the role CHECK also allows ``reviewer``."""
    roles = "('reader', 'editor', 'reviewer', 'admin')"
    if dialect.name == "postgresql":
        conn.execute("ALTER TABLE grants DROP CONSTRAINT IF EXISTS grants_role_check")
        conn.execute(f"ALTER TABLE grants ADD CONSTRAINT grants_role_check CHECK (role IN {roles})")
        return
    # SQLite cannot alter a CHECK: copy into a new table of the same shape (nothing refers
    # to grants, so dropping the old one breaks no foreign key)
    conn.execute(
        f"""CREATE TABLE grants_v10 (
            engagement_id BIGINT NOT NULL REFERENCES engagements (id) ON DELETE CASCADE,
            kind TEXT NOT NULL CHECK (kind IN ('user', 'group')),
            principal TEXT NOT NULL,
            display_name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN {roles}),
            PRIMARY KEY (engagement_id, kind, principal)
        )"""
    )
    conn.execute(
        "INSERT INTO grants_v10 (engagement_id, kind, principal, display_name, role)"
        " SELECT engagement_id, kind, principal, display_name, role FROM grants"
    )
    conn.execute("DROP TABLE grants")
    conn.execute("ALTER TABLE grants_v10 RENAME TO grants")
    conn.execute("CREATE INDEX grants_principal ON grants (kind, principal)")


MIGRATIONS: list[tuple[int, list[Any]]] = [
    (
        1,
        [
            """CREATE TABLE users (
                name TEXT PRIMARY KEY,
                password_hash TEXT,
                created_at TEXT NOT NULL,
                disabled INTEGER NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE engagements (
                id {id_pk},
                name TEXT NOT NULL UNIQUE,
                title TEXT NOT NULL,
                created_at TEXT NOT NULL,
                head BIGINT NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE grants (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id) ON DELETE CASCADE,
                kind TEXT NOT NULL CHECK (kind IN ('user', 'group')),
                principal TEXT NOT NULL,
                display_name TEXT NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('reader', 'editor', 'admin')),
                PRIMARY KEY (engagement_id, kind, principal)
            )""",
            "CREATE INDEX grants_principal ON grants (kind, principal)",
            """CREATE TABLE sessions (
                token_hash TEXT PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                user_name TEXT NOT NULL,
                group_ids TEXT NOT NULL,
                backend TEXT NOT NULL,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                refreshed_at TEXT NOT NULL
            )""",
            "CREATE INDEX sessions_user ON sessions (user_name)",
            "CREATE INDEX sessions_expiry ON sessions (expires_at)",
            """CREATE TABLE packs (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                id TEXT NOT NULL,
                size BIGINT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (engagement_id, id)
            )""",
            """CREATE TABLE chunks (
                engagement_id BIGINT NOT NULL,
                hash {blob} NOT NULL,
                pack_id TEXT NOT NULL,
                pack_offset BIGINT NOT NULL,
                stored_size INTEGER NOT NULL,
                codec INTEGER NOT NULL,
                raw_size INTEGER NOT NULL,
                PRIMARY KEY (engagement_id, hash),
                FOREIGN KEY (engagement_id, pack_id) REFERENCES packs (engagement_id, id)
            )""",
            "CREATE INDEX chunks_pack ON chunks (engagement_id, pack_id)",
            """CREATE TABLE manifests (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                content {blob} NOT NULL,
                size BIGINT NOT NULL,
                chunk_count INTEGER NOT NULL,
                body {blob} NOT NULL,
                PRIMARY KEY (engagement_id, content)
            )""",
            """CREATE TABLE changes (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                seq BIGINT NOT NULL,
                path {path_text} NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('put', 'delete')),
                content {blob},
                size BIGINT NOT NULL,
                prev_seq BIGINT,
                user_name TEXT NOT NULL,
                session_id TEXT,
                committed_at TEXT NOT NULL,
                conflict_of TEXT,
                batch TEXT,
                PRIMARY KEY (engagement_id, seq)
            )""",
            """CREATE TABLE files (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                path {path_text} NOT NULL,
                fold_key {fold_text} NOT NULL,
                seq BIGINT NOT NULL,
                content {blob},
                size BIGINT NOT NULL,
                PRIMARY KEY (engagement_id, path)
            )""",
            "CREATE INDEX files_fold ON files (engagement_id, fold_key)",
            """CREATE TABLE batches (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                batch TEXT NOT NULL,
                result TEXT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (engagement_id, batch)
            )""",
        ],
    ),
    (
        # Engagement workflow (docs/workflow.md): the change log's hash chain, sign-off
        # freeze and retention per engagement, check-out locks, known sync copies, and the
        # chained audit trail. Existing change records get their hashes here.
        2,
        [
            "ALTER TABLE changes ADD COLUMN prev_hash {blob}",
            "ALTER TABLE changes ADD COLUMN record_hash {blob}",
            "CREATE INDEX changes_path ON changes (engagement_id, path, seq)",
            "ALTER TABLE engagements ADD COLUMN finalized_at TEXT",
            "ALTER TABLE engagements ADD COLUMN finalized_by TEXT",
            "ALTER TABLE engagements ADD COLUMN finalized_reason TEXT",
            "ALTER TABLE engagements ADD COLUMN retention_days INTEGER",
            """CREATE TABLE locks (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                fold_key {fold_text} NOT NULL,
                path {path_text} NOT NULL,
                holder TEXT NOT NULL,
                session_id TEXT,
                since TEXT NOT NULL,
                expires_at TEXT,
                PRIMARY KEY (engagement_id, fold_key)
            )""",
            """CREATE TABLE copies (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                copy_id TEXT NOT NULL,
                user_name TEXT NOT NULL,
                host TEXT NOT NULL,
                session_id TEXT,
                registered_at TEXT NOT NULL,
                last_contact TEXT NOT NULL,
                unsynced BIGINT NOT NULL DEFAULT 0,
                unsynced_since TEXT,
                abandoned_at TEXT,
                abandoned_by TEXT,
                PRIMARY KEY (engagement_id, copy_id)
            )""",
            """CREATE TABLE audit_heads (
                chain TEXT PRIMARY KEY,
                seq BIGINT NOT NULL,
                record_hash {blob} NOT NULL
            )""",
            """CREATE TABLE audit (
                chain TEXT NOT NULL,
                seq BIGINT NOT NULL,
                event TEXT NOT NULL,
                actor TEXT NOT NULL,
                at TEXT NOT NULL,
                engagement TEXT,
                detail TEXT NOT NULL,
                prev_hash {blob} NOT NULL,
                record_hash {blob} NOT NULL,
                PRIMARY KEY (chain, seq)
            )""",
            _backfill_change_hashes,
        ],
    ),
    (
        # The store's identity and generation (docs/reliability.md, "Restores").
        3,
        [
            """CREATE TABLE store_meta (
                store_id TEXT NOT NULL,
                generation BIGINT NOT NULL
            )""",
            _create_store_identity,
        ],
    ),
    (
        # Failed sign-ins per resolved account, shared by every daemon on this database so the
        # per-user limit holds for the firm, not per daemon (issue 14). ``at`` is Unix seconds.
        4,
        [
            """CREATE TABLE login_failures (
                throttle_key TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX login_failures_key ON login_failures (throttle_key, at)",
            "CREATE INDEX login_failures_at ON login_failures (at)",
        ],
    ),
    (
        # A local and a directory account of one name are two principals (issue 14).
        5,
        [
            "ALTER TABLE sessions ADD COLUMN principal TEXT",
            "CREATE INDEX sessions_principal ON sessions (principal)",
            """CREATE TABLE principal_blocks (
                principal TEXT PRIMARY KEY,
                display_name TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('disabled', 'removed')),
                since TEXT NOT NULL
            )""",
            _namespace_principals,
        ],
    ),
    # Issue 20: the engagement's whole life (6-9).
    (
        # Report date and assembly deadline (docs/workflow.md, "Report date and assembly
        # deadline"): at ``assembly_deadline`` a daemon's timer finalizes the engagement.
        6,
        [
            "ALTER TABLE engagements ADD COLUMN report_date TEXT",
            "ALTER TABLE engagements ADD COLUMN assembly_deadline TEXT",
            "ALTER TABLE engagements ADD COLUMN deadline_finalized_at TEXT",
            "CREATE INDEX engagements_deadline ON engagements (assembly_deadline)",
        ],
    ),
    (
        # Minimum retention, legal hold and disposal (docs/workflow.md, "Retention"):
        # ``storage/retention``. A disposed engagement keeps its change log and audit chain.
        7,
        [
            "ALTER TABLE engagements ADD COLUMN min_retention_days INTEGER",
            "ALTER TABLE engagements ADD COLUMN legal_hold_reason TEXT",
            "ALTER TABLE engagements ADD COLUMN legal_hold_by TEXT",
            "ALTER TABLE engagements ADD COLUMN legal_hold_at TEXT",
            "ALTER TABLE engagements ADD COLUMN disposed_at TEXT",
            "ALTER TABLE engagements ADD COLUMN disposed_by TEXT",
        ],
    ),
    (
        # Storage quotas per engagement (by name) and per user (``storage/quotas``); which
        # user's upload wrote each pack, for the per-user stored bytes.
        8,
        [
            """CREATE TABLE quotas (
                scope TEXT NOT NULL CHECK (scope IN ('engagement', 'user')),
                principal TEXT NOT NULL,
                bytes BIGINT NOT NULL,
                PRIMARY KEY (scope, principal)
            )""",
            "ALTER TABLE packs ADD COLUMN user_name TEXT",
            "CREATE INDEX packs_user ON packs (user_name)",
        ],
    ),
    (
        # Read access in the audit trail (``storage/readaudit``): a download names its content
        # id; this index finds the paths and versions that hold it.
        9,
        ["CREATE INDEX changes_content ON changes (engagement_id, content)"],
    ),
    (
        # Issue 20's review queue (docs/workflow.md, "Conflict review"): a ``reviewer`` role,
        # and one item per conflict copy (``id`` is the seq that wrote the copy). ``theirs_*``
        # is the version the edit lost to, ``ours_*`` the losing edit; ``resolution`` and
        # ``resolved_seq`` (the head after the resolving commit) once resolved.
        10,
        [
            _allow_reviewer_role,
            """CREATE TABLE conflicts (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                id BIGINT NOT NULL,
                path {path_text} NOT NULL,
                copy_path {path_text} NOT NULL,
                theirs_seq BIGINT,
                theirs_user TEXT,
                theirs_content {blob},
                theirs_size BIGINT NOT NULL,
                ours_user TEXT NOT NULL,
                ours_content {blob} NOT NULL,
                ours_size BIGINT NOT NULL,
                created_at TEXT NOT NULL,
                resolved_at TEXT,
                resolved_by TEXT,
                resolution TEXT CHECK (resolution IN ('ours', 'theirs', 'merged')),
                resolved_seq BIGINT,
                resolved_batch TEXT,
                PRIMARY KEY (engagement_id, id)
            )""",
            "CREATE INDEX conflicts_open ON conflicts (engagement_id, resolved_at)",
        ],
    ),
    (
        # Remote wipe of an abandoned copy (docs/workflow.md, "Remote wipe"): the admin's order,
        # the copy's report of it, and the hash of the copy's secret that authenticates the
        # report (the copy's session ended when it was abandoned).
        11,
        [
            "ALTER TABLE copies ADD COLUMN key_hash TEXT",
            """CREATE TABLE copy_wipes (
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                copy_id TEXT NOT NULL,
                ordered_by TEXT NOT NULL,
                ordered_at TEXT NOT NULL,
                reported_at TEXT,
                reported_host TEXT,
                reported_address TEXT,
                files_removed BIGINT,
                PRIMARY KEY (engagement_id, copy_id)
            )""",
            "CREATE INDEX copy_wipes_copy ON copy_wipes (copy_id)",
        ],
    ),
    (
        # File dates and the read-only attribute travel with each version (issue 16).
        14,
        [
            "ALTER TABLE changes ADD COLUMN mtime_ns BIGINT",
            "ALTER TABLE changes ADD COLUMN readonly INTEGER",
            "ALTER TABLE files ADD COLUMN mtime_ns BIGINT",
            "ALTER TABLE files ADD COLUMN readonly INTEGER",
        ],
    ),
    (
        # Several storage volumes (docs/operations.md, "Storage volumes"): existing engagements
        # stay on the default volume (NULL), so no file moves.
        16,
        [
            "ALTER TABLE engagements ADD COLUMN volume TEXT",
            "ALTER TABLE engagements ADD COLUMN moving_to TEXT",
        ],
    ),
    (
        # Engagement-wide ignore rules (docs/client.md, "Ignore rules"); numbered apart from
        # the other branches' migrations drawn at the same time.
        72,
        [
            """CREATE TABLE engagement_ignore (
                engagement_id BIGINT PRIMARY KEY REFERENCES engagements (id),
                rules TEXT NOT NULL,
                digest TEXT NOT NULL,
                set_by TEXT NOT NULL,
                set_at TEXT NOT NULL
            )""",
        ],
    ),
    (
        # Branch offices' credentials and carry lists (docs/branch-offices.md, "Carry").
        73,
        [
            """CREATE TABLE branches (
                name TEXT PRIMARY KEY,
                secret_hash TEXT NOT NULL UNIQUE,
                created_by TEXT NOT NULL,
                created_at TEXT NOT NULL,
                rotated_at TEXT
            )""",
            """CREATE TABLE branch_carry (
                branch TEXT NOT NULL REFERENCES branches (name) ON DELETE CASCADE,
                engagement_id BIGINT NOT NULL REFERENCES engagements (id),
                added_by TEXT NOT NULL,
                added_at TEXT NOT NULL,
                PRIMARY KEY (branch, engagement_id)
            )""",
        ],
    ),
]

LATEST_VERSION = max(version for version, _ in MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer smartsyncd; refuse rather than misread it."""


def _applied(conn: Any, dialect: Dialect) -> set[int]:
    if not dialect.table_exists(conn, "schema_version"):
        return set()
    return {int(row[0]) for row in conn.execute("SELECT version FROM schema_version").fetchall()}


def current_version(conn: Any, dialect: Dialect) -> int:
    if not dialect.table_exists(conn, "schema_version"):
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(conn: Any, dialect: Dialect) -> int:
    """Bring the database up to ``LATEST_VERSION``; return the version it is at now.

    ``conn`` must be in autocommit mode (transactions are explicit).
    """
    if dialect.migration_lock:
        conn.execute(dialect.migration_lock)
        try:
            return _migrate(conn, dialect)
        finally:
            assert dialect.migration_unlock is not None
            conn.execute(dialect.migration_unlock)
    return _migrate(conn, dialect)


def _migrate(conn: Any, dialect: Dialect) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
    for version, statements in MIGRATIONS:
        conn.execute(dialect.begin_write)
        try:
            found = current_version(conn, dialect)
            if found > LATEST_VERSION:
                raise SchemaTooNew(
                    f"database schema version {found} is newer than this smartsyncd "
                    f"supports ({LATEST_VERSION}); upgrade smartsyncd"
                )
            if version in _applied(conn, dialect):
                conn.execute("ROLLBACK")
                continue
            for statement in statements:
                if callable(statement):  # a data step (e.g. computing hashes of existing rows)
                    statement(conn, dialect)
                else:
                    conn.execute(statement.format(**dialect.types))
            conn.execute(dialect.sql("INSERT INTO schema_version (version) VALUES (?)"), (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return current_version(conn, dialect)
