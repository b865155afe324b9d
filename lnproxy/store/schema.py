"""The SQLite database file: create, check, upgrade (versioned schema).

The schema is versioned in the way of magic-wormhole-mailbox-server: a
``version`` table, full schemas ``sql/sqlite/vN.sql`` for fresh databases
and ``sql/sqlite/upgrade-to-vN.sql`` steps for old ones, an atomic create
(temp file + rename), a backup copy before any upgrade, and a
:class:`~lnproxy.store.interface.DBError` for a database this code cannot
handle, including one of a newer version (never touched then).

The connection this returns is in WAL mode with ``synchronous=FULL`` so that
a committed event survives a power cut (see :func:`get_db`).
"""

from __future__ import annotations

import importlib.resources
import os
import sqlite3
import stat

from twisted.logger import Logger

from lnproxy.store.datadir import fsync_dir, temp_path_near, unlink_quietly
from lnproxy.store.interface import DBError

__all__ = ["SCHEMA_VERSION", "BUSY_TIMEOUT", "get_db", "dump_db"]

_log = Logger()

#: The schema version this code creates and works with.
SCHEMA_VERSION = 4

#: Seconds SQLite waits for a lock held by another connection. Only an
#: operator's tool can hold one (our own process is the only writer, guarded
#: by the data dir lock), and a wait blocks the reactor, so keep it short.
BUSY_TIMEOUT = 1.0

_SYNCHRONOUS_MODES = frozenset({"FULL", "NORMAL"})


def _read_sql(name: str) -> str:
    """Return the text of one SQLite schema file shipped in
    :mod:`lnproxy.store.sql` (directory ``sqlite/``).

    :param name: the file name, e.g. ``"v2.sql"``.
    :raises FileNotFoundError: if there is no such file.
    """
    resource = (
        importlib.resources.files("lnproxy.store.sql").joinpath("sqlite").joinpath(name)
    )
    return resource.read_text(encoding="utf-8")


def _connect(path: str) -> sqlite3.Connection:
    """Open a connection in autocommit mode; transactions are explicit.

    :param path: the database file.
    """
    # isolation_level=None stops the sqlite3 module from opening transactions
    # behind our back; SqliteStore.transaction issues BEGIN IMMEDIATE itself.
    return sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)


def _create_atomically(path: str) -> None:
    """Create a fresh database of :data:`SCHEMA_VERSION` at ``path``.

    The schema is built in a temp file that is renamed into place only when
    complete, so a crash or error never leaves a half-made database at
    ``path`` (the next start would otherwise refuse it or, worse, use it).

    :param path: where the database goes; must not exist yet.
    :raises DBError: if the schema cannot be created.
    """
    temp = temp_path_near(path)
    try:
        schema = _read_sql(f"v{SCHEMA_VERSION}.sql")
        conn = _connect(temp)
        try:
            conn.executescript(
                "BEGIN IMMEDIATE;\n"
                f"{schema}\n"
                f"INSERT INTO version (version) VALUES ({SCHEMA_VERSION});\n"
                "COMMIT;\n"
            )
        finally:
            # Closing with the transaction still open (after an error)
            # discards it; the temp file is removed below anyway.
            conn.close()
        os.rename(temp, path)
    except sqlite3.Error as e:
        unlink_quietly(temp, temp + "-journal")
        raise DBError(f"cannot create database {path}: {e}") from e
    except BaseException:
        unlink_quietly(temp, temp + "-journal")
        raise
    fsync_dir(os.path.dirname(path) or ".")


def _read_version(conn: sqlite3.Connection, path: str) -> int:
    """Return the schema version recorded in the database.

    This only reads, so a file that is not ours is left exactly as it was.

    :param conn: a connection to the database.
    :param path: its file name, for messages.
    :raises DBError: if the file is not a readable lnproxy database.
    """
    try:
        rows = conn.execute("SELECT version FROM version").fetchall()
    except sqlite3.Error as e:
        raise DBError(
            f"cannot read the schema version of {path}: {e} "
            "(is it an lnproxy database?)"
        ) from e
    if len(rows) != 1 or not isinstance(rows[0][0], int) or rows[0][0] < 1:
        raise DBError(f"{path} has a malformed version table: {rows!r}")
    version: int = rows[0][0]
    return version


def _configure(conn: sqlite3.Connection, path: str, synchronous: str) -> None:
    """Set the per-connection pragmas.

    WAL lets a commit be one append plus one fsync (cheaper than a rollback
    journal) and never blocks readers; ``synchronous=FULL`` makes that fsync
    happen on every commit, because an event must be durable before it is
    sent. ``NORMAL`` is accepted for measurements (see ``bench/store.py``).

    :param conn: the connection.
    :param path: the database file, for messages.
    :param synchronous: ``"FULL"`` or ``"NORMAL"``.
    :raises DBError: if WAL mode cannot be enabled.
    """
    (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    if str(mode).lower() != "wal":
        raise DBError(f"cannot put {path} in WAL journal mode (it is {mode!r})")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")


def _backup(conn: sqlite3.Connection, path: str, version: int) -> str:
    """Copy the database to ``<path>-backup-v<version>`` before an upgrade.

    SQLite's online backup is used instead of a file copy because in WAL mode
    committed pages may still live in the ``-wal`` file only.

    :param conn: a connection to the database.
    :param path: the database file.
    :param version: its current schema version.
    :return: the backup file name.
    """
    backup_path = f"{path}-backup-v{version}"
    temp = temp_path_near(backup_path)
    try:
        dest = sqlite3.connect(temp)
        try:
            conn.backup(dest)
        finally:
            dest.close()
        os.replace(temp, backup_path)
    except BaseException:
        unlink_quietly(temp, temp + "-journal")
        raise
    fsync_dir(os.path.dirname(path) or ".")
    return backup_path


def _upgrade_step(conn: sqlite3.Connection, path: str, to_version: int) -> None:
    """Run ``upgrade-to-v<to_version>.sql`` in one transaction.

    Either the whole step is committed and the version is ``to_version``, or
    nothing changed.

    :param conn: a connection to the database at version ``to_version - 1``.
    :param path: the database file, for messages.
    :param to_version: the version to upgrade to.
    :raises DBError: if there is no such step or it fails.
    """
    try:
        script = _read_sql(f"upgrade-to-v{to_version}.sql")
    except FileNotFoundError:
        raise DBError(
            f"cannot upgrade {path} from schema version {to_version - 1} "
            f"to {to_version}: no upgrade script"
        ) from None
    try:
        # executescript would COMMIT an open transaction first, so the BEGIN
        # goes into the script itself; COMMIT comes after the version check.
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\n")
        got = conn.execute("SELECT version FROM version").fetchall()
        if got != [(to_version,)]:
            raise DBError(
                f"upgrade-to-v{to_version}.sql left {path} at version {got!r}"
            )
        conn.execute("COMMIT")
    except BaseException as e:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(e, sqlite3.Error):
            raise DBError(
                f"upgrading {path} to schema version {to_version} failed "
                f"(the database is unchanged): {e}"
            ) from e
        raise


def _restrict_mode(path: str) -> None:
    """Make the database file owner-only (0600) if it is not already.

    It holds Lightning messages; a file copied in by an operator or an older
    tool may have a wider mode.

    :param path: the database file.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        _log.info(
            "restricting the mode of {path} from {old} to 0600",
            path=path,
            old=f"{mode:04o}",
        )
        os.chmod(path, 0o600)


def get_db(path: str, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open the database at ``path``, creating or upgrading it as needed.

    A missing file is created atomically at :data:`SCHEMA_VERSION`. An older
    one is copied to ``<path>-backup-v<N>`` and upgraded step by step, each
    step in its own transaction. A newer, unknown or unreadable one raises
    :class:`DBError` and is left untouched. The caller must make sure no
    other process does the same at the same time (:meth:`SqliteStore.open` holds
    the data dir lock).

    :param path: the database file; its directory must exist.
    :param synchronous: ``"FULL"`` (the default, durable on power loss) or
        ``"NORMAL"`` (durable on process crash only).
    :return: a connection in autocommit mode (``isolation_level=None``) with
        WAL, the given ``synchronous`` and foreign keys on.
    :raises DBError: if the database cannot be used.
    """
    if synchronous not in _SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
    if path == ":memory:" or path.startswith("file:"):
        # WAL, the atomic create and the backup all need a plain file.
        raise ValueError(f"get_db needs a plain file path, not {path!r}")
    if not os.path.exists(path):
        _log.info(
            "creating database {path} at schema version {version}",
            path=path,
            version=SCHEMA_VERSION,
        )
        _create_atomically(path)
    conn = _connect(path)
    try:
        version = _read_version(conn, path)
        if version > SCHEMA_VERSION:
            raise DBError(
                f"{path} has schema version {version}, newer than the "
                f"version {SCHEMA_VERSION} this lnproxy understands; refusing "
                "to open it (run a newer lnproxy, or restore a backup)"
            )
        # Only now that the file is known to be ours may it be changed.
        _restrict_mode(path)
        _configure(conn, path, synchronous)
        if version < SCHEMA_VERSION:
            backup_path = _backup(conn, path, version)
            _log.info(
                "upgrading {path} from schema version {old} to {new}, "
                "backup in {backup}",
                path=path,
                old=version,
                new=SCHEMA_VERSION,
                backup=backup_path,
            )
            for to_version in range(version + 1, SCHEMA_VERSION + 1):
                _upgrade_step(conn, path, to_version)
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise DBError(f"{path} fails its foreign key check: {problems!r}")
    except sqlite3.Error as e:
        conn.close()
        raise DBError(f"cannot open database {path}: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


def dump_db(conn: sqlite3.Connection) -> str:
    """Return the SQL text dump of a database (schema and rows).

    :param conn: the connection to dump.
    """
    return "\n".join(conn.iterdump())
