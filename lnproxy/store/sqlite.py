"""The SQLite implementation of :class:`~lnproxy.store.interface.IStore`.

One SQLite database, ``lnproxy.sqlite`` (mode 0600), in the data dir (see
:mod:`lnproxy.store.datadir` for the directory, its lock and the server key,
and :mod:`lnproxy.store.schema` for creating and upgrading the file). It is
in WAL mode with ``synchronous=FULL``, so a commit is one append plus one
fsync and a committed event survives a power cut; one process owns the data
dir at a time, guarded by the data dir lock.

All methods are synchronous and run on the calling thread. The service calls
them from the reactor thread, so every method does a small, bounded amount of
work (one short transaction). Nothing here reads the clock: timestamps arrive
inside the rows.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType

from zope.interface import implementer

from lnproxy.store import datadir
from lnproxy.store.interface import (
    CONNECTION_STATES,
    MAX_PEER_STORAGE_BLOB,
    AccountRow,
    ConnectionRow,
    EventRow,
    IStore,
    StoreError,
    UserTaken,
    VaultEntry,
    VaultFull,
    VersionConflict,
    WebhookRow,
)
from lnproxy.store.schema import SCHEMA_VERSION, get_db

__all__ = ["DB_FILE", "SqliteStore", "Store"]

#: The database file inside the data dir.
DB_FILE = "lnproxy.sqlite"


class _ProbeDone(Exception):
    """Raised inside :meth:`SqliteStore.writable` to roll its probe back."""


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


@implementer(IStore)
class SqliteStore:
    """The data dir of a running proxy: its SQLite database, key and lock.

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
        :param lock_fd: the data dir lock from
            :func:`~lnproxy.store.datadir.acquire_lock`.
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
    def open(
        cls,
        data_dir: str,
        *,
        synchronous: str = "FULL",
        key_path: str | None = None,
        lock_fd: int | None = None,
    ) -> SqliteStore:
        """Open (creating if needed) the data dir and everything in it.

        Order matters: the lock comes first so that nothing is touched while
        another process owns the dir, and the key is checked before the
        database so that a bad key refuses the start before any upgrade.

        :param data_dir: the data dir; created with mode 0700 if missing.
        :param synchronous: see :func:`get_db`; keep ``"FULL"`` in service.
        :param key_path: the server key file; None for ``server.key`` in the
            data dir. Created (mode 0600) if missing; its directory must
            exist.
        :param lock_fd: the lock handed over by a hot restart's old process
            (:func:`~lnproxy.store.datadir.adopt_lock`) instead of taking it.
        :raises DataDirLocked: if another process uses the data dir.
        :raises DBError: if the database cannot be used.
        :raises StoreError: for other problems (key, permissions).
        """
        data_dir = os.path.abspath(data_dir)
        if key_path is None:
            key_path = datadir.default_key_path(data_dir)
        datadir.make_data_dir(data_dir)
        if lock_fd is None:
            lock_fd = datadir.acquire_lock(data_dir)
        else:
            try:
                datadir.adopt_lock(data_dir, lock_fd)
            except BaseException:
                os.close(lock_fd)
                raise
        try:
            secret = datadir.load_or_create_server_secret(key_path)
            conn = get_db(os.path.join(data_dir, DB_FILE), synchronous=synchronous)
        except BaseException:
            datadir.release_lock(lock_fd)
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
        datadir.write_pid(self._lock_fd)

    @property
    def lock_fd(self) -> int | None:
        """The data dir lock's descriptor (None once closed)."""
        return self._lock_fd

    def close(self, unlock: bool = True) -> None:
        """Close the database and release the lock. Idempotent.

        An open transaction is rolled back by SQLite.

        :param unlock: False after a hot restart handed the lock over:
            close this process's descriptor, keep the lock held.
        """
        conn, self._conn = self._conn, None
        lock_fd, self._lock_fd = self._lock_fd, None
        self._depth = 0
        try:
            if conn is not None:
                conn.close()
        finally:
            if lock_fd is not None:
                datadir.release_lock(lock_fd, unlock=unlock)

    def __enter__(self) -> SqliteStore:
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

    # -- vault --------------------------------------------------------------

    def _vault_version(self, node_id: str, name: str) -> int:
        row = (
            self._db()
            .execute(
                "SELECT version FROM vault WHERE node_id = ? AND name = ?",
                (node_id, name),
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def vault_get(self, node_id: str, name: str) -> tuple[int, bytes] | None:
        """Return ``(version, blob)`` of the node's entry, or None.

        :param node_id: the node; another node's entries are never seen.
        :param name: the entry's name.
        """
        row = (
            self._db()
            .execute(
                "SELECT version, blob FROM vault WHERE node_id = ? AND name = ?",
                (node_id, name),
            )
            .fetchone()
        )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def vault_put(
        self,
        node_id: str,
        name: str,
        blob: bytes,
        version: int,
        max_entries: int,
        now: float,
    ) -> int:
        """Write an entry if its current version is ``version``; return the
        new version.  Check and write happen in one ``BEGIN IMMEDIATE``
        transaction, so two writers naming the same version cannot both
        win.

        :raises VersionConflict: ``version`` is not the current one.
        :raises VaultFull: a new name beyond ``max_entries``.
        """
        with self.transaction():
            current = self._vault_version(node_id, name)
            if current != version:
                raise VersionConflict(current)
            db = self._db()
            if current == 0:
                (count,) = db.execute(
                    "SELECT count(*) FROM vault WHERE node_id = ?", (node_id,)
                ).fetchone()
                if count >= max_entries:
                    raise VaultFull(
                        f"node {node_id} has {count} vault entries, the limit"
                    )
                db.execute(
                    "INSERT INTO vault (node_id, name, version, blob, updated)"
                    " VALUES (?, ?, 1, ?, ?)",
                    (node_id, name, blob, now),
                )
            else:
                db.execute(
                    "UPDATE vault SET version = version + 1, blob = ?, updated = ?"
                    " WHERE node_id = ? AND name = ?",
                    (blob, now, node_id, name),
                )
        return version + 1

    def vault_list(self, node_id: str) -> list[VaultEntry]:
        """Return the node's entries (name, version, size), by name.

        :param node_id: the node.
        """
        cursor = self._db().execute(
            "SELECT name, version, length(blob) FROM vault"
            " WHERE node_id = ? ORDER BY name",
            (node_id,),
        )
        return [VaultEntry(name, int(v), int(size)) for name, v, size in cursor]

    def vault_remove(self, node_id: str, name: str, version: int) -> None:
        """Delete an entry if its current version is ``version``.

        :raises VersionConflict: ``version`` is not the current one.
        """
        with self.transaction():
            current = self._vault_version(node_id, name)
            if current != version:
                raise VersionConflict(current)
            self._db().execute(
                "DELETE FROM vault WHERE node_id = ? AND name = ?", (node_id, name)
            )

    # -- accounts -----------------------------------------------------------

    def set_account(self, row: AccountRow) -> None:
        """Bind the user name to the node, replacing the node's previous
        account.

        :raises UserTaken: the user name belongs to another node.
        """
        with self.transaction():
            db = self._db()
            taken = db.execute(
                "SELECT node_id FROM accounts WHERE user_name = ?", (row.user,)
            ).fetchone()
            if taken is not None and taken[0] != row.node_id:
                raise UserTaken(f"user name {row.user!r} belongs to another node")
            db.execute("DELETE FROM accounts WHERE node_id = ?", (row.node_id,))
            db.execute(
                "INSERT INTO accounts (user_name, node_id, auth_hash, blob, updated)"
                " VALUES (?, ?, ?, ?, ?)",
                (row.user, row.node_id, row.auth_hash, row.blob, row.updated),
            )

    def get_account(self, user: str) -> AccountRow | None:
        """Return the account of a user name, or None.

        :param user: the user name, compared exactly.
        """
        row = (
            self._db()
            .execute(
                "SELECT user_name, node_id, auth_hash, blob, updated FROM accounts"
                " WHERE user_name = ?",
                (user,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return AccountRow(row[0], row[1], row[2], bytes(row[3]), row[4])

    def remove_account(self, node_id: str) -> bool:
        """Delete the node's account; return whether it had one."""
        with self.transaction():
            cursor = self._db().execute(
                "DELETE FROM accounts WHERE node_id = ?", (node_id,)
            )
        return cursor.rowcount > 0
    # -- peer storage -------------------------------------------------------

    def put_peer_storage(self, node_id: str, peer: str, blob: bytes, at: float) -> None:
        """Keep the newest blob of a node's peer, replacing the one before.

        :raises StoreError: if the blob is longer than 65531 bytes.
        """
        if len(blob) > MAX_PEER_STORAGE_BLOB:
            raise StoreError(
                f"peer storage blob of {len(blob)} bytes exceeds "
                f"{MAX_PEER_STORAGE_BLOB}"
            )
        with self.transaction():
            self._db().execute(
                "INSERT OR REPLACE INTO peer_storage (node_id, peer, blob, at)"
                " VALUES (?, ?, ?, ?)",
                (node_id, peer, bytes(blob), at),
            )

    def get_peer_storage(self, node_id: str, peer: str) -> bytes | None:
        """Return the blob kept for this node and peer, or None."""
        row = (
            self._db()
            .execute(
                "SELECT blob FROM peer_storage WHERE node_id = ? AND peer = ?",
                (node_id, peer),
            )
            .fetchone()
        )
        return None if row is None else bytes(row[0])

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


#: The name the rest of lnproxy has always used for the SQLite store.
Store = SqliteStore
