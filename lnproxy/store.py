"""The durable store of the lnproxy server: one SQLite database in a data dir.

The data dir holds:

- ``lnproxy.sqlite``: the database (mode 0600), in WAL mode with
  ``synchronous=FULL`` so that a committed event survives a power cut;
- ``server.key``: the proxy's own secp256k1 secret key, hex, created once
  (mode 0600);
- ``lock``: an exclusive ``flock`` held for the life of the :class:`Store`, so
  that a second lnproxy process refuses to start instead of corrupting the
  data; it holds the pid of the process that owns it.

The schema is versioned in the way of magic-wormhole-mailbox-server: a
``version`` table, full schemas ``schema/vN.sql`` for fresh databases and
``schema/upgrade-to-vN.sql`` steps for old ones, an atomic create (temp file +
rename), a backup copy before any upgrade, and a :class:`DBError` for a
database this code cannot handle.

All methods are synchronous and run on the calling thread. The service calls
them from the reactor thread, so every method does a small, bounded amount of
work (one short transaction). Nothing here reads the clock: timestamps arrive
inside the rows.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.resources
import os
import re
import sqlite3
import stat
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType

import coincurve
from twisted.logger import Logger

__all__ = [
    "SCHEMA_VERSION",
    "DB_FILE",
    "KEY_FILE",
    "LOCK_FILE",
    "StoreError",
    "DBError",
    "DataDirLocked",
    "EventRow",
    "ConnectionRow",
    "WebhookRow",
    "Store",
    "get_db",
    "dump_db",
]

_log = Logger()

#: The schema version this code creates and works with.
SCHEMA_VERSION = 2

#: File names inside the data dir.
DB_FILE = "lnproxy.sqlite"
KEY_FILE = "server.key"
LOCK_FILE = "lock"

#: Seconds SQLite waits for a lock held by another connection. Only an
#: operator's tool can hold one (our own process is the only writer, guarded
#: by the data dir lock), and a wait blocks the reactor, so keep it short.
BUSY_TIMEOUT = 1.0

#: Connection states, as in the protocol's connection object.
CONNECTION_STATES = frozenset({"handshake", "open", "closed"})

_SYNCHRONOUS_MODES = frozenset({"FULL", "NORMAL"})
_KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")
# A valid key file is 65 bytes; read a little more so that trailing junk is
# detected rather than silently ignored.
_KEY_FILE_MAX = 128


class StoreError(Exception):
    """The store cannot do what was asked (bad data dir, key, or data)."""


class DBError(StoreError):
    """The database file cannot be used: unreadable, not ours, or a schema
    version this code cannot create, upgrade or understand."""


class DataDirLocked(StoreError):
    """Another process (or another :class:`Store` in this one) holds the data
    dir lock."""


@dataclass(frozen=True)
class EventRow:
    """One stored event of a node.

    :param node_id: the node, lowercase hex (66 characters).
    :param seq: the per-node sequence number, starting at 1.
    :param kind: the event method, e.g. ``"message"`` or ``"closed"``.
    :param summon: whether the event needs the node's client (wake it up).
    :param at: unix seconds when the event happened.
    :param params: JSON text of the notification params (includes ``seq``).
    """

    node_id: str
    seq: int
    kind: str
    summon: bool
    at: float
    params: str


@dataclass(frozen=True)
class ConnectionRow:
    """One peer connection of a node.

    :param conn_id: the connection id, unique over all nodes.
    :param node_id: the owning node, lowercase hex.
    :param peer: the peer's node id, lowercase hex.
    :param address: ``host:port`` the proxy connected to.
    :param persist: whether a drop should summon the client.
    :param since: unix seconds when the connection was requested.
    :param state: ``"handshake"``, ``"open"`` or ``"closed"``.
    :param their_init: the peer's init message as hex, once received.
    :param closed_seq: seq of the ``closed`` event; set exactly when closed.
    """

    conn_id: str
    node_id: str
    peer: str
    address: str
    persist: bool
    since: float
    state: str
    their_init: str | None = None
    closed_seq: int | None = None


@dataclass(frozen=True)
class WebhookRow:
    """One webhook of a node.

    :param node_id: the owning node, lowercase hex.
    :param webhook_id: the id given to the client by ``webhook.set``.
    :param url: where to POST.
    :param created: unix seconds when it was set.
    """

    node_id: str
    webhook_id: str
    url: str
    created: float


class _ProbeDone(Exception):
    """Raised inside :meth:`Store.writable` to roll its probe back."""


# ---------------------------------------------------------------------------
# Database file: create, check, upgrade


def _read_sql(name: str) -> str:
    """Return the text of one SQL file shipped in :mod:`lnproxy.schema`.

    :param name: the file name, e.g. ``"v2.sql"``.
    :raises FileNotFoundError: if there is no such file.
    """
    resource = importlib.resources.files("lnproxy.schema").joinpath(name)
    return resource.read_text(encoding="utf-8")


def _connect(path: str) -> sqlite3.Connection:
    """Open a connection in autocommit mode; transactions are explicit.

    :param path: the database file.
    """
    # isolation_level=None stops the sqlite3 module from opening transactions
    # behind our back; Store.transaction issues BEGIN IMMEDIATE itself.
    return sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT)


def _fsync_dir(directory: str) -> None:
    """Make a rename or link in ``directory`` durable.

    :param directory: the directory whose entries changed.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(*paths: str) -> None:
    """Remove files that may or may not exist (temp files on failure)."""
    for path in paths:
        with suppress(FileNotFoundError):
            os.unlink(path)


def _temp_path_near(path: str) -> str:
    """Create an empty mode-0600 temp file next to ``path``; return its name.

    :param path: the final file the temp file will be renamed to.
    """
    fd, name = tempfile.mkstemp(
        prefix=os.path.basename(path) + ".",
        suffix=".tmp",
        dir=os.path.dirname(path) or ".",
    )
    os.close(fd)
    return name


def _create_atomically(path: str) -> None:
    """Create a fresh database of :data:`SCHEMA_VERSION` at ``path``.

    The schema is built in a temp file that is renamed into place only when
    complete, so a crash or error never leaves a half-made database at
    ``path`` (the next start would otherwise refuse it or, worse, use it).

    :param path: where the database goes; must not exist yet.
    :raises DBError: if the schema cannot be created.
    """
    temp = _temp_path_near(path)
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
        _unlink_quietly(temp, temp + "-journal")
        raise DBError(f"cannot create database {path}: {e}") from e
    except BaseException:
        _unlink_quietly(temp, temp + "-journal")
        raise
    _fsync_dir(os.path.dirname(path) or ".")


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
    temp = _temp_path_near(backup_path)
    try:
        dest = sqlite3.connect(temp)
        try:
            conn.backup(dest)
        finally:
            dest.close()
        os.replace(temp, backup_path)
    except BaseException:
        _unlink_quietly(temp, temp + "-journal")
        raise
    _fsync_dir(os.path.dirname(path) or ".")
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
    other process does the same at the same time (:meth:`Store.open` holds
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


# ---------------------------------------------------------------------------
# Data dir, lock and server key


def _make_data_dir(data_dir: str) -> None:
    """Create the data dir with mode 0700 (and its parents) if missing.

    :param data_dir: absolute path of the data dir.
    :raises StoreError: if it cannot be created or is not a directory.
    """
    try:
        os.makedirs(os.path.dirname(data_dir), exist_ok=True)
        os.mkdir(data_dir, 0o700)
        # mkdir's mode goes through the umask; make it exactly 0700.
        os.chmod(data_dir, 0o700)
    except FileExistsError:
        if not os.path.isdir(data_dir):
            raise StoreError(
                f"data dir {data_dir} exists and is not a directory"
            ) from None
    except OSError as e:
        raise StoreError(f"cannot create data dir {data_dir}: {e.strerror}") from e


def _acquire_lock(data_dir: str) -> int:
    """Take the data dir lock and write our pid into it.

    ``flock`` belongs to the open file description, so a second open of the
    lock file conflicts even inside the same process, and the kernel drops
    the lock when the process dies: a crash never leaves a stale lock.

    :param data_dir: absolute path of the data dir.
    :return: the lock file descriptor; keep it open to keep the lock.
    :raises DataDirLocked: if another process or :class:`Store` holds it.
    """
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StoreError(f"cannot open lock file {path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = "another lnproxy process" + (f" (pid {holder})" if holder else "")
        raise DataDirLocked(
            f"{who} is using the data dir {data_dir}; refusing to start"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    """Return the pid written in a lock file, or None if unreadable.

    :param fd: an open descriptor of the lock file.
    """
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text.isdigit() else None
    except (OSError, UnicodeDecodeError):
        return None


def _release_lock(fd: int) -> None:
    """Release the data dir lock taken by :func:`_acquire_lock`.

    The file itself stays: deleting it would let two processes lock two
    different files of the same name.

    :param fd: the descriptor returned by :func:`_acquire_lock`.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _new_secret() -> bytes:
    """Return 32 random bytes that are a valid secp256k1 secret key."""
    while True:
        secret = os.urandom(32)
        try:
            coincurve.PrivateKey(secret)
        except ValueError:
            # Zero or >= the group order: about 2**-128 likely. Draw again.
            continue
        return secret


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _create_server_secret(data_dir: str) -> bytes:
    """Create ``server.key`` with a new secret; return the secret.

    The key is written to a temp file (O_CREAT|O_EXCL, mode 0600, fsync'd)
    which is then hard-linked into place. The link fails if the file exists,
    so an existing key is never overwritten, and a crash mid-write leaves
    only the temp file, never a truncated ``server.key``.

    :param data_dir: the data dir; the caller holds its lock.
    """
    path = os.path.join(data_dir, KEY_FILE)
    temp = path + ".tmp"
    # Only a crashed earlier start can have left this; we hold the lock.
    _unlink_quietly(temp)
    secret = _new_secret()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
    try:
        fd = os.open(temp, flags, 0o600)
        try:
            _write_all(fd, secret.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        finally:
            os.unlink(temp)
        _fsync_dir(data_dir)
    except OSError as e:
        raise StoreError(f"cannot create server key {path}: {e.strerror}") from e
    _log.info("created a new server key in {path}", path=path)
    return secret


def _load_or_create_server_secret(data_dir: str) -> bytes:
    """Return the server's secret key, creating ``server.key`` if missing.

    :param data_dir: the data dir; the caller holds its lock.
    :raises StoreError: if the file is readable by group or others, is not a
        regular file, is malformed, or does not hold a valid secp256k1 key.
        Messages never contain the key's content.
    """
    path = os.path.join(data_dir, KEY_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return _create_server_secret(data_dir)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(f"server key {path} is a symlink; refusing it") from e
        raise StoreError(f"cannot open server key {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"server key {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise StoreError(
                f"server key {path} has mode {mode:04o}; it must not be "
                f"accessible by group or others (run: chmod 600 {path})"
            )
        data = os.read(fd, _KEY_FILE_MAX + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if len(data) > _KEY_FILE_MAX or not _KEY_HEX.fullmatch(text):
        raise StoreError(
            f"server key {path} is malformed: expected 64 hex digits "
            "(32 bytes) and an optional newline"
        )
    secret = bytes.fromhex(text)
    try:
        coincurve.PrivateKey(secret)
    except ValueError:
        raise StoreError(
            f"server key {path} does not hold a valid secp256k1 secret key"
        ) from None
    return secret


# ---------------------------------------------------------------------------
# The store


_EVENT_COLUMNS = "node_id, seq, kind, summon, at, params"
_CONNECTION_COLUMNS = (
    "conn_id, node_id, peer, address, persist, since, state, their_init, closed_seq"
)
_WEBHOOK_COLUMNS = "node_id, webhook_id, url, created"


def _event_row(row: tuple[str, int, str, int, float, str]) -> EventRow:
    """Build an :class:`EventRow` from a SELECT of :data:`_EVENT_COLUMNS`."""
    node_id, seq, kind, summon, at, params = row
    return EventRow(node_id, seq, kind, bool(summon), at, params)


def _connection_row(
    row: tuple[str, str, str, str, int, float, str, str | None, int | None],
) -> ConnectionRow:
    """Build a :class:`ConnectionRow` from a SELECT of
    :data:`_CONNECTION_COLUMNS`."""
    conn_id, node_id, peer, address, persist, since, state, init, closed = row
    return ConnectionRow(
        conn_id, node_id, peer, address, bool(persist), since, state, init, closed
    )


class Store:
    """The data dir of a running proxy: its database, key and lock.

    Use :meth:`open`; call :meth:`close` when done (also usable as a context
    manager). Every mutating method runs inside the current
    :meth:`transaction` if one is open, otherwise in its own. A transaction
    must not span a reactor turn: it holds SQLite's write lock.
    """

    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(
        self,
        data_dir: str,
        conn: sqlite3.Connection,
        lock_fd: int,
        server_secret: bytes,
    ) -> None:
        """Wrap already opened parts; use :meth:`open` instead.

        :param data_dir: absolute path of the data dir.
        :param conn: the database connection from :func:`get_db`.
        :param lock_fd: the data dir lock from :func:`_acquire_lock`.
        :param server_secret: the 32-byte server secret key.
        """
        self._data_dir = data_dir
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd: int | None = lock_fd
        self._server_secret = server_secret
        # Nesting depth of transaction(): 0 means autocommit.
        self._depth = 0
        self._synchronous = "FULL"

    @classmethod
    def open(cls, data_dir: str, *, synchronous: str = "FULL") -> Store:
        """Open (creating if needed) the data dir and everything in it.

        Order matters: the lock comes first so that nothing is touched while
        another process owns the dir, and the key is checked before the
        database so that a bad key refuses the start before any upgrade.

        :param data_dir: the data dir; created with mode 0700 if missing.
        :param synchronous: see :func:`get_db`; keep ``"FULL"`` in service.
        :raises DataDirLocked: if another process uses the data dir.
        :raises DBError: if the database cannot be used.
        :raises StoreError: for other problems (key, permissions).
        """
        data_dir = os.path.abspath(data_dir)
        _make_data_dir(data_dir)
        lock_fd = _acquire_lock(data_dir)
        try:
            secret = _load_or_create_server_secret(data_dir)
            conn = get_db(os.path.join(data_dir, DB_FILE), synchronous=synchronous)
        except BaseException:
            _release_lock(lock_fd)
            raise
        store = cls(data_dir, conn, lock_fd, secret)
        store._synchronous = synchronous
        return store

    def suspend(self) -> None:
        """Close the database connection; keep the lock and the key.

        ``twistd`` builds the service and then, unless run with ``-n``, forks
        to daemonize.  A SQLite connection must not cross a ``fork``, so the
        service checks (and upgrades) the database while it is built, calls
        this, and calls :meth:`resume` when it starts.  The ``flock`` is
        inherited by the child and stays held throughout.
        """
        conn, self._conn = self._conn, None
        self._depth = 0
        if conn is not None:
            conn.close()

    def resume(self) -> None:
        """Reopen the database in the process that will use it, and write
        that process's pid into the lock file.  No-op when already open.

        :raises StoreError: if the store was closed.
        """
        if self._lock_fd is None:
            raise StoreError(f"the store of {self._data_dir} is closed")
        if self._conn is not None:
            return
        self._conn = get_db(
            os.path.join(self._data_dir, DB_FILE), synchronous=self._synchronous
        )
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode("ascii"), 0)

    def close(self) -> None:
        """Close the database and release the lock. Idempotent.

        An open transaction is rolled back by SQLite.
        """
        conn, self._conn = self._conn, None
        lock_fd, self._lock_fd = self._lock_fd, None
        self._depth = 0
        try:
            if conn is not None:
                conn.close()
        finally:
            if lock_fd is not None:
                _release_lock(lock_fd)

    def __enter__(self) -> Store:
        """Return the store itself."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()

    def __repr__(self) -> str:
        """Name the data dir and whether it is open (never the key)."""
        state = "open" if self._conn is not None else "closed"
        return f"<Store {self._data_dir!r} {state}>"

    @property
    def data_dir(self) -> str:
        """Absolute path of the data dir."""
        return self._data_dir

    @property
    def server_secret(self) -> bytes:
        """The proxy's own 32-byte secp256k1 secret key. Never log it."""
        return self._server_secret

    def _db(self) -> sqlite3.Connection:
        """Return the connection, or raise :class:`StoreError` if closed."""
        if self._conn is None:
            raise StoreError(f"the store of {self._data_dir} is closed")
        return self._conn

    @contextmanager
    def _maybe_without_fsync(self, fsync: bool) -> Iterator[None]:
        """Run one commit without its fsync when ``fsync`` is False.

        Only outside an open transaction (an outer one decides) and only when
        the store runs at ``FULL``: ``synchronous=NORMAL`` for the commit,
        then back.  The commit survives a crash of the process, not a power
        cut until the next fsync'd commit, which also makes it durable.
        """
        relaxed = not fsync and self._depth == 0 and self._synchronous == "FULL"
        db = self._db()
        if relaxed:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            if relaxed:
                db.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one transaction; commit at the end, roll back on
        any exception (which then propagates).

        The outermost level is ``BEGIN IMMEDIATE`` (take the write lock now,
        so a conflict shows at the start rather than at COMMIT). Inner levels
        join it through a SAVEPOINT: their writes commit only with the outer
        transaction, and if an inner block raises, its own writes are undone
        even when the caller catches the exception and carries on.
        """
        db = self._db()
        if self._depth == 0:
            db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        else:
            name = f"lnproxy_{self._depth}"
            db.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if db.in_transaction:
                    db.execute(f"ROLLBACK TO {name}")
                    db.execute(f"RELEASE {name}")
                raise
            self._depth -= 1
            db.execute(f"RELEASE {name}")

    # -- events -------------------------------------------------------------

    def next_seq(self, node_id: str) -> int:
        """Return the seq the node's next event will get (1 if unknown).

        :param node_id: the node.
        """
        row = (
            self._db()
            .execute("SELECT next_seq FROM nodes WHERE node_id = ?", (node_id,))
            .fetchone()
        )
        return 1 if row is None else int(row[0])

    def append_events(self, rows: Sequence[EventRow]) -> None:
        """Store new events, all or none, and advance each node's next_seq.

        The rows may belong to several nodes; for each node their seqs must
        continue exactly from :meth:`next_seq`, one by one in the given order.
        That is what keeps the protocol's promise that seq increases by
        exactly 1 and never repeats.

        :param rows: the events, in seq order per node.
        :raises StoreError: if a seq is not the node's next one (nothing is
            stored then).
        """
        if not rows:
            return
        with self.transaction():
            expected: dict[str, int] = {}
            for row in rows:
                want = expected.get(row.node_id)
                if want is None:
                    want = self.next_seq(row.node_id)
                if row.seq != want:
                    raise StoreError(
                        f"event seq {row.seq} of node {row.node_id} is not "
                        f"its next seq {want}"
                    )
                expected[row.node_id] = want + 1
            db = self._db()
            # nodes first: events.node_id references it.
            db.executemany(
                "INSERT INTO nodes (node_id, next_seq) VALUES (?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET next_seq = excluded.next_seq",
                expected.items(),
            )
            db.executemany(
                f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (r.node_id, r.seq, r.kind, 1 if r.summon else 0, r.at, r.params)
                    for r in rows
                ],
            )

    def events_after(self, node_id: str, after_seq: int, limit: int) -> list[EventRow]:
        """Return up to ``limit`` stored events of the node with seq >
        ``after_seq``, in ascending seq order.

        :param node_id: the node.
        :param after_seq: return only events after this seq (0 for all).
        :param limit: the maximum number of rows, at least 1 (it bounds the
            time spent on the reactor thread).
        """
        if limit < 1:
            # SQLite treats a negative LIMIT as no limit at all.
            raise ValueError(f"limit must be at least 1, not {limit}")
        cursor = self._db().execute(
            f"SELECT {_EVENT_COLUMNS} FROM events"
            " WHERE node_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (node_id, after_seq, limit),
        )
        return [_event_row(row) for row in cursor]

    def pending_count(self, node_id: str) -> int:
        """Return the number of stored (unacknowledged) events of the node.

        :param node_id: the node.
        """
        (count,) = (
            self._db()
            .execute("SELECT count(*) FROM events WHERE node_id = ?", (node_id,))
            .fetchone()
        )
        return int(count)

    def newest_summons(self) -> list[EventRow]:
        """The newest unacknowledged summon-class event of every node that
        has a webhook, one row per node (for the notifier at startup: nodes
        left waiting by a stop or crash are woken again).
        """
        cursor = self._db().execute(
            f"SELECT {_EVENT_COLUMNS} FROM events"
            " WHERE (node_id, seq) IN ("
            "   SELECT node_id, max(seq) FROM events WHERE summon = 1"
            "   AND node_id IN (SELECT node_id FROM webhooks) GROUP BY node_id"
            " ) ORDER BY node_id"
        )
        return [_event_row(row) for row in cursor]

    def ack(self, node_id: str, seq: int, *, fsync: bool = True) -> list[str]:
        """Acknowledge the node's events up to and including ``seq``.

        Deletes those events and the node's closed connections whose
        ``closed`` event is among them (the protocol lists a closed
        connection until its closed event is acknowledged). next_seq is not
        changed. Checking that ``seq`` is not beyond the newest event is the
        caller's job (compare with :meth:`next_seq`).

        :param node_id: the node.
        :param seq: the highest acknowledged seq.
        :param fsync: see :meth:`_maybe_without_fsync`; an ack lost to a
            power cut only makes those events be delivered again, which
            clients recognise by their ``seq``.
        :return: the ids of the deleted connections, ordered by ``since``.
        """
        with self._maybe_without_fsync(fsync), self.transaction():
            db = self._db()
            db.execute(
                "DELETE FROM events WHERE node_id = ? AND seq <= ?", (node_id, seq)
            )
            where = "WHERE node_id = ? AND state = 'closed' AND closed_seq <= ?"
            closed = [
                conn_id
                for (conn_id,) in db.execute(
                    f"SELECT conn_id FROM connections {where} ORDER BY since, conn_id",
                    (node_id, seq),
                )
            ]
            db.execute(f"DELETE FROM connections {where}", (node_id, seq))
        return closed

    # -- connections --------------------------------------------------------

    def put_connection(self, row: ConnectionRow, *, fsync: bool = True) -> None:
        """Insert a connection, or replace the one with the same conn_id.

        :param row: the connection; ``closed_seq`` must be set exactly when
            ``state`` is ``"closed"`` (otherwise :meth:`ack` could never
            delete it).
        :param fsync: with False, and outside any transaction, the commit
            skips its fsync (``synchronous=NORMAL`` for this one commit): it
            survives a crash of the process but not a power cut until the
            next fsync'd commit, which also flushes it.  For rows whose loss
            in a power cut costs little and whose fsync sits on a client's
            critical path.
        :raises StoreError: if the state or closed_seq is invalid.
        """
        if row.state not in CONNECTION_STATES:
            raise StoreError(f"invalid connection state {row.state!r}")
        if (row.state == "closed") != (row.closed_seq is not None):
            raise StoreError(
                f"connection {row.conn_id}: closed_seq must be set exactly "
                f"when the state is closed (state {row.state!r}, "
                f"closed_seq {row.closed_seq!r})"
            )
        db = self._db()
        with self._maybe_without_fsync(fsync), self.transaction():
            db.execute(
                f"INSERT OR REPLACE INTO connections ({_CONNECTION_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.conn_id,
                    row.node_id,
                    row.peer,
                    row.address,
                    1 if row.persist else 0,
                    row.since,
                    row.state,
                    row.their_init,
                    row.closed_seq,
                ),
            )

    def close_connection(self, conn_id: str, closed_seq: int) -> None:
        """Mark a connection closed by the event ``closed_seq``.

        :param conn_id: the connection.
        :param closed_seq: the seq of its ``closed`` event.
        :raises StoreError: if there is no such connection.
        """
        with self.transaction():
            cursor = self._db().execute(
                "UPDATE connections SET state = 'closed', closed_seq = ?"
                " WHERE conn_id = ?",
                (closed_seq, conn_id),
            )
            if cursor.rowcount != 1:
                raise StoreError(f"unknown connection {conn_id!r}")

    def get_connection(self, conn_id: str) -> ConnectionRow | None:
        """Return one connection by id, or None.

        Connection ids are unique over all nodes; the caller must still check
        that the row's node_id is the asking node's.

        :param conn_id: the connection.
        """
        row = (
            self._db()
            .execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections WHERE conn_id = ?",
                (conn_id,),
            )
            .fetchone()
        )
        return None if row is None else _connection_row(row)

    def connections(self, node_id: str) -> list[ConnectionRow]:
        """Return all connections of the node (handshake, open, and closed
        ones whose closed event is not acknowledged), ordered by ``since``.

        :param node_id: the node.
        """
        cursor = self._db().execute(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections"
            " WHERE node_id = ? ORDER BY since, conn_id",
            (node_id,),
        )
        return [_connection_row(row) for row in cursor]

    def unclosed_connections(self) -> list[ConnectionRow]:
        """Return every connection not closed, of any node, ordered by
        ``since``. At start these are the ones a crash left behind; they need
        a ``closed`` event (reason ``proxy restarted``).
        """
        cursor = self._db().execute(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections"
            " WHERE state != 'closed' ORDER BY since, conn_id"
        )
        return [_connection_row(row) for row in cursor]

    # -- webhooks -----------------------------------------------------------

    def add_webhook(self, row: WebhookRow) -> None:
        """Store a new webhook.

        :param row: the webhook.
        :raises StoreError: if the node already has a webhook with that id.
        """
        try:
            with self.transaction():
                self._db().execute(
                    f"INSERT INTO webhooks ({_WEBHOOK_COLUMNS}) VALUES (?, ?, ?, ?)",
                    (row.node_id, row.webhook_id, row.url, row.created),
                )
        except sqlite3.IntegrityError as e:
            raise StoreError(
                f"node {row.node_id} already has a webhook {row.webhook_id!r}"
            ) from e

    def webhooks(self, node_id: str) -> list[WebhookRow]:
        """Return the node's webhooks, oldest first.

        :param node_id: the node.
        """
        cursor = self._db().execute(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks"
            " WHERE node_id = ? ORDER BY created, webhook_id",
            (node_id,),
        )
        return [WebhookRow(*row) for row in cursor]

    def remove_webhook(self, node_id: str, webhook_id: str) -> bool:
        """Delete one of the node's webhooks.

        :param node_id: the node; another node's webhook is never touched.
        :param webhook_id: the webhook.
        :return: whether it existed.
        """
        with self.transaction():
            cursor = self._db().execute(
                "DELETE FROM webhooks WHERE node_id = ? AND webhook_id = ?",
                (node_id, webhook_id),
            )
        return cursor.rowcount > 0

    def webhook_count(self, node_id: str) -> int:
        """Return the number of the node's webhooks.

        :param node_id: the node.
        """
        (count,) = (
            self._db()
            .execute("SELECT count(*) FROM webhooks WHERE node_id = ?", (node_id,))
            .fetchone()
        )
        return int(count)

    # -- health -------------------------------------------------------------

    def writable(self) -> bool:
        """Health check: can the store still take the write lock and write?

        Runs a no-op UPDATE in a transaction (or savepoint) that is rolled
        back, so nothing changes and nothing is flushed to disk. It does not
        detect a full disk, which only shows at commit.

        :return: False if the store is closed or SQLite reports an error.
        """
        if self._conn is None:
            return False
        try:
            with self.transaction():
                self._db().execute("UPDATE version SET version = version")
                raise _ProbeDone()
        except _ProbeDone:
            return True
        except sqlite3.Error:
            return False
