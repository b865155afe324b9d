"""The PostgreSQL implementation of :class:`~lnproxy.store.interface.IStore`,
and the ownership of nodes by the processes of a deployment.

Several lnproxy processes share one PostgreSQL database (see
``docs/protocol.md, "Running several processes (scale-out)"``). The store
keeps the same guarantees as :class:`~lnproxy.store.sqlite.SqliteStore`:

- seqs are numbered in the owning process's memory and checked here against
  ``nodes.next_seq`` with the node row locked; ``PRIMARY KEY (node_id, seq)``
  is the last guard (no ``bigserial``: a reader could skip an event whose
  transaction commits after a later one);
- a write has happened when the method (or the outermost
  :meth:`PostgresStore.transaction`) returns;
- a versioned schema (``sql/postgres/vN.sql``, ``upgrade-to-vN.sql``),
  created or upgraded under an advisory lock, and a :class:`DBError` for a
  newer one, which is never touched.

**Ownership.** After :meth:`PostgresStore.register`, the store fences: each
node is served by one process, its owner (``nodes.owner``), and every write
transaction locks the rows of the nodes it writes for and checks that this
process still owns them at the epoch it claimed them with. A write for a
node that was taken over raises :class:`NodeLost`, naming the nodes, and
changes nothing. A process keeps its nodes by renewing one row of
``processes`` (:meth:`PostgresStore.renew`: one UPDATE, however many nodes
it owns); when ``expires`` (the database's clock) passes, any other process
may claim its nodes (:meth:`PostgresStore.claim`,
:meth:`PostgresStore.take_over`), raising the epoch.

Every method is synchronous and may wait on the network: call them from a
database thread (:mod:`lnproxy.store.executor`), never from the reactor
thread of a serving process. One store object is one connection and is not
thread-safe; :meth:`PostgresStore.clone` opens another one.
"""

from __future__ import annotations

import importlib.resources
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from lnproxy.store import datadir
from lnproxy.store.interface import (
    CONNECTION_STATES,
    MAX_PEER_STORAGE_BLOB,
    AccountRow,
    ConnectionRow,
    DBError,
    EventRow,
    IStore,
    NodeLost,
    StoreError,
    UserTaken,
    VaultEntry,
    VaultFull,
    VersionConflict,
    WebhookRow,
)

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError:  # pragma: no cover (the postgresql extra is missing)
    psycopg = None  # type: ignore[assignment]
    pg_errors = None  # type: ignore[assignment]

__all__ = [
    "SCHEMA_VERSION",
    "Claim",
    "PostgresStore",
    "describe_url",
    "is_postgres_url",
]

_log = Logger()

#: The schema version this code creates and works with.
SCHEMA_VERSION = 1

#: The advisory lock key taken while the schema is created or upgraded
#: (``'lnpx'`` as an integer).
_SCHEMA_LOCK = 0x6C6E7078

_EVENT_COLUMNS = "node_id, seq, kind, summon, at, params"
_CONNECTION_COLUMNS = (
    "conn_id, node_id, peer, address, persist, since, state, their_init, closed_seq"
)
_WEBHOOK_COLUMNS = "node_id, webhook_id, url, created"


def is_postgres_url(text: str) -> bool:
    """Whether ``--database`` names PostgreSQL (``postgresql://`` or
    ``postgres://``)."""
    return text.startswith(("postgresql://", "postgres://"))


def describe_url(url: str) -> str:
    """The URL without its password, for messages and logs.

    :param url: a ``postgresql://`` URL (or any libpq connection string).
    """
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:
        return "<unparsable database URL>"
    user = str(parts.get("user") or "")
    host = str(parts.get("host") or "localhost")
    port = str(parts.get("port") or "")
    db = str(parts.get("dbname") or "")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{user + '@' if user else ''}{where}/{db}"


def _read_sql(name: str) -> str:
    """Return the text of a PostgreSQL schema file (``sql/postgres/``).

    :param name: e.g. ``"v1.sql"``.
    :raises FileNotFoundError: if there is no such file.
    """
    resource = (
        importlib.resources.files("lnproxy.store.sql")
        .joinpath("postgres")
        .joinpath(name)
    )
    return resource.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Claim:
    """What :meth:`PostgresStore.claim` found or did for one node.

    :param node_id: the node.
    :param owned: True if this process owns the node now.
    :param url: the owner's public URL when another live process owns it.
    :param epoch: the fencing token this process holds (0 when not owned).
    :param next_seq: the seq the node's next event gets.
    :param pending: its stored, unacknowledged events.
    :param failed_owner: the process whose expired lease this claim ended,
        or None (a new node, a released one, or already ours).
    :param unclosed: connections a previous owner left not closed; the new
        owner must write their ``closed`` events.
    :param webhooks: the node's webhooks (the owner keeps them in memory).
    :param newest_summon: its newest unacknowledged summon-class event, if
        any (a node taken over is woken with it even when no connection
        was open).
    :param peer_storage: the blobs its peers gave, by peer (the owner keeps
        them in memory to hand back after the client's next ``init``).
    """

    node_id: str
    owned: bool
    url: str | None = None
    epoch: int = 0
    next_seq: int = 1
    pending: int = 0
    failed_owner: str | None = None
    unclosed: list[ConnectionRow] = field(default_factory=list)
    webhooks: list[WebhookRow] = field(default_factory=list)
    newest_summon: EventRow | None = None
    peer_storage: dict[str, bytes] = field(default_factory=dict)


def _event_row(row: tuple[Any, ...]) -> EventRow:
    """Build an :class:`EventRow` from a SELECT of :data:`_EVENT_COLUMNS`."""
    node_id, seq, kind, summon, at, params = row
    return EventRow(node_id, int(seq), kind, bool(summon), float(at), params)


def _connection_row(row: tuple[Any, ...]) -> ConnectionRow:
    """Build a :class:`ConnectionRow` from a SELECT of
    :data:`_CONNECTION_COLUMNS`."""
    conn_id, node_id, peer, address, persist, since, state, init, closed = row
    return ConnectionRow(
        conn_id,
        node_id,
        peer,
        address,
        bool(persist),
        float(since),
        state,
        init,
        None if closed is None else int(closed),
    )


class _ProbeDone(Exception):
    """Rolls back the probe transaction of a test helper."""


@implementer(IStore)
class PostgresStore:
    """One connection to the deployment's PostgreSQL database.

    Use :meth:`open`; call :meth:`close` when done (also a context manager).
    Every mutating method runs inside the current :meth:`transaction` if one
    is open, otherwise in its own. When the connection breaks (the database
    restarted, the network dropped) the method raises :class:`DBError` and
    the next call outside a transaction connects again.
    """

    SCHEMA_VERSION = SCHEMA_VERSION

    def __init__(
        self,
        url: str,
        server_secret: bytes,
        *,
        connect_timeout: float = 5.0,
        lock_fd: int | None = None,
        data_dir: str | None = None,
    ) -> None:
        """Wrap the parts; use :meth:`open` instead (it checks the schema).

        :param url: the database URL.
        :param server_secret: the 32-byte server secret key.
        :param connect_timeout: seconds a connection attempt may take.
        :param lock_fd: the data dir lock, if a data dir is used.
        :param data_dir: the data dir, if any.
        """
        if psycopg is None:  # pragma: no cover
            raise DBError(
                "PostgreSQL needs psycopg: pip install 'lnproxy[postgresql]'"
            )
        self._url = url
        self._server_secret = server_secret
        self._connect_timeout = connect_timeout
        self._lock_fd = lock_fd
        self._data_dir = data_dir
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._suspended = False
        self._depth = 0
        #: Per open transaction level, the nodes whose ownership was checked
        #: (and whose rows are locked) at that level.
        self._checked: list[set[str]] = []
        #: The process identity once :meth:`register` ran (fencing on).
        self._process_id: str | None = None
        self._public_url: str | None = None
        self._lease_timeout = 15.0
        #: node_id -> epoch of every node this process owns.
        self._epochs: dict[str, int] = {}

    # -- lifecycle ----------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str,
        *,
        key_path: str,
        data_dir: str | None = None,
        connect_timeout: float = 5.0,
    ) -> PostgresStore:
        """Connect, create or upgrade the schema, and load the server key.

        :param url: ``postgresql://user@host:port/db`` (any libpq URL).
        :param key_path: the server key file (created if missing); every
            process of a deployment is given the same one.
        :param data_dir: this process's own data dir (locked while open),
            or None.
        :param connect_timeout: seconds a connection attempt may take.
        :raises DataDirLocked: if another process uses the data dir.
        :raises DBError: if the database cannot be reached or used (wrong
            URL, down, a newer schema).
        :raises StoreError: for other problems (key, permissions).
        """
        lock_fd = None
        if data_dir is not None:
            data_dir = os.path.abspath(data_dir)
            datadir.make_data_dir(data_dir)
            lock_fd = datadir.acquire_lock(data_dir)
        try:
            secret = datadir.load_or_create_server_secret(key_path)
            store = cls(
                url,
                secret,
                connect_timeout=connect_timeout,
                lock_fd=lock_fd,
                data_dir=data_dir,
            )
            store._ensure_schema()
        except BaseException:
            if lock_fd is not None:
                datadir.release_lock(lock_fd)
            raise
        return store

    def clone(self) -> PostgresStore:
        """Another connection to the same database with the same key, for
        another thread. It holds no lock and does not fence (use it to
        read)."""
        self._check_open()
        return PostgresStore(
            self._url, self._server_secret, connect_timeout=self._connect_timeout
        )

    def _connect(self) -> psycopg.Connection[Any]:
        """Open a connection in autocommit mode (transactions are explicit).

        :raises DBError: if it cannot be opened, saying where it tried.
        """
        try:
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="lnproxy",
                # A dead link must show as an error, not as a hang.
                keepalives=1,
                keepalives_idle=5,
                keepalives_interval=2,
                keepalives_count=3,
                options="-c lock_timeout=10000 -c statement_timeout=30000",
            )
        except psycopg.Error as e:
            raise DBError(
                f"cannot connect to the database {describe_url(self._url)}: "
                f"{str(e).strip()}"
            ) from e
        return conn

    def _ensure_schema(self) -> None:
        """Create the schema in an empty database, upgrade an older one,
        refuse a newer or foreign one; all in one transaction under an
        advisory lock.

        :raises DBError: if the database cannot be used.
        """
        conn = self._db()
        where = describe_url(self._url)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                (table,) = conn.execute(
                    "SELECT to_regclass('version')::text"
                ).fetchone() or (None,)
                if table is None:
                    (others,) = conn.execute(
                        "SELECT count(*) FROM pg_tables WHERE schemaname ="
                        " current_schema() AND tablename IN"
                        " ('nodes', 'events', 'connections', 'webhooks')"
                    ).fetchone() or (0,)
                    if others:
                        raise DBError(
                            f"{where} has lnproxy-like tables but no version "
                            "table: not an lnproxy database; refusing it"
                        )
                    _log.info(
                        "creating the lnproxy schema version {version} in {db}",
                        version=SCHEMA_VERSION,
                        db=where,
                    )
                    conn.execute(_read_sql(f"v{SCHEMA_VERSION}.sql"))
                    conn.execute(
                        "INSERT INTO version (version) VALUES (%s)", (SCHEMA_VERSION,)
                    )
                    return
                rows = conn.execute("SELECT version FROM version").fetchall()
                if len(rows) != 1 or not isinstance(rows[0][0], int):
                    raise DBError(f"{where} has a malformed version table: {rows!r}")
                version = rows[0][0]
                if version > SCHEMA_VERSION:
                    raise DBError(
                        f"{where} has schema version {version}, newer than "
                        f"the version {SCHEMA_VERSION} this lnproxy "
                        "understands; refusing to use it (run a newer lnproxy, "
                        "or restore a backup)"
                    )
                for to_version in range(version + 1, SCHEMA_VERSION + 1):
                    try:
                        script = _read_sql(f"upgrade-to-v{to_version}.sql")
                    except FileNotFoundError:
                        raise DBError(
                            f"cannot upgrade {where} from schema version "
                            f"{to_version - 1} to {to_version}: no upgrade script"
                        ) from None
                    _log.info(
                        "upgrading {db} to schema version {version}",
                        db=where,
                        version=to_version,
                    )
                    conn.execute(script)
                    got = conn.execute("SELECT version FROM version").fetchall()
                    if got != [(to_version,)]:
                        raise DBError(
                            f"upgrade-to-v{to_version}.sql left {where} at "
                            f"version {got!r}"
                        )
        except psycopg.Error as e:
            raise DBError(f"cannot use the database {where}: {e}") from e

    def suspend(self) -> None:
        """Close the connection (``twistd`` forks after building the
        service); keep the lock and the key."""
        conn, self._conn = self._conn, None
        self._suspended = True
        self._reset_transaction_state()
        if conn is not None:
            conn.close()

    def resume(self) -> None:
        """Reconnect after :meth:`suspend`; a no-op when connected.

        :raises StoreError: if the store was closed.
        :raises DBError: if the database cannot be reached.
        """
        self._check_open()
        self._suspended = False
        if self._lock_fd is not None:
            datadir.write_pid(self._lock_fd)
        self._db()

    def close(self) -> None:
        """Close the connection and release the lock. Idempotent; an open
        transaction is rolled back by the server."""
        self._closed = True
        conn, self._conn = self._conn, None
        lock_fd, self._lock_fd = self._lock_fd, None
        self._reset_transaction_state()
        try:
            if conn is not None:
                conn.close()
        finally:
            if lock_fd is not None:
                datadir.release_lock(lock_fd)

    def __enter__(self) -> PostgresStore:
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
        """Name the database (never its password, never the key)."""
        state = "closed" if self._closed else "open"
        return f"<PostgresStore {describe_url(self._url)} {state}>"

    @property
    def server_secret(self) -> bytes:
        """The proxy's own 32-byte secp256k1 secret key. Never log it."""
        return self._server_secret

    @property
    def url(self) -> str:
        """The database URL (it may hold a password: do not log it; use
        :func:`describe_url`)."""
        return self._url

    def _reset_transaction_state(self) -> None:
        """Forget any open transaction (its connection is gone)."""
        self._depth = 0
        self._checked = []

    def _check_open(self) -> None:
        """Raise :class:`StoreError` if the store was closed."""
        if self._closed:
            raise StoreError(f"the store of {describe_url(self._url)} is closed")

    def _db(self) -> psycopg.Connection[Any]:
        """Return a working connection, reconnecting outside a transaction
        if the last one broke.

        :raises StoreError: if the store is closed or suspended.
        :raises DBError: if the connection broke inside a transaction, or
            cannot be opened again.
        """
        self._check_open()
        if self._suspended:
            raise StoreError(f"the store of {describe_url(self._url)} is suspended")
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if self._depth > 0:
            raise DBError("the database connection broke inside a transaction")
        if conn is not None:
            conn.close()
            self._conn = None
        self._conn = self._connect()
        return self._conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn psycopg's errors into :class:`DBError`."""
        try:
            yield
        except psycopg.Error as e:
            raise DBError(f"database error: {str(e).strip()}") from e

    # -- transactions -------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the block in one transaction; commit at the end of the
        outermost block, roll back on any exception (which propagates).

        Inner blocks are savepoints: if one raises, only its writes (and the
        node row locks it took) are undone. The transaction is READ
        COMMITTED; every write locks the rows of the nodes it touches, so
        writes for one node never interleave.
        """
        conn = self._db()
        self._checked.append(set())
        self._depth += 1
        ok = False
        try:
            with self._errors(), conn.transaction():
                yield
            ok = True
        finally:
            self._depth -= 1
            done = self._checked.pop() if self._checked else set()
            if ok and self._checked:
                self._checked[-1] |= done
            if self._depth == 0:
                self._checked = []

    @contextmanager
    def _write(
        self, fsync: bool = True, savepoint: bool = False
    ) -> Iterator[psycopg.Connection[Any]]:
        """A write: in its own transaction, or inside the open one.

        Inside an open transaction no savepoint is taken unless asked for:
        the hot writes check everything that can be refused (seqs,
        ownership, unknown rows, sizes) before they change anything, so a
        refusal the caller catches leaves the outer transaction as it was,
        and two round trips per write are saved. Only a database error
        (which aborts the whole transaction in PostgreSQL) or an expected
        constraint violation needs one (``savepoint=True``).
        ``fsync=False`` makes an outermost commit asynchronous.
        """
        if self._depth > 0 and not savepoint:
            yield self._db()
            return
        relaxed = not fsync and self._depth == 0
        with self.transaction():
            conn = self._db()
            if relaxed:
                conn.execute("SET LOCAL synchronous_commit TO off")
            yield conn

    def _guard(self, conn: psycopg.Connection[Any], node_ids: Iterable[str]) -> None:
        """Lock the nodes' rows for this transaction and, when fencing, check
        that this process still owns each one at the epoch it claimed.

        :raises NodeLost: naming the nodes this process no longer owns.
        """
        if self._process_id is None:
            return
        done: set[str] = set()
        for level in self._checked:
            done |= level
        wanted = sorted(set(node_ids) - done)
        if not wanted:
            return
        rows = conn.execute(
            "SELECT node_id, owner, epoch FROM nodes WHERE node_id = ANY(%s)"
            " ORDER BY node_id FOR NO KEY UPDATE",
            (wanted,),
        ).fetchall()
        found = {node_id: (owner, epoch) for node_id, owner, epoch in rows}
        lost = []
        for node_id in wanted:
            held = self._epochs.get(node_id)
            owner, epoch = found.get(node_id, (None, None))
            if held is None or owner != self._process_id or epoch != held:
                lost.append(node_id)
        if lost:
            for node_id in lost:
                self._epochs.pop(node_id, None)
            raise NodeLost(lost)
        if self._checked:
            self._checked[-1].update(wanted)

    def _lock_owned(
        self, conn: psycopg.Connection[Any], node_ids: list[str]
    ) -> dict[str, int]:
        """Lock the nodes' rows, check this process owns them at its epoch
        (fencing on), and return their next_seq.

        :raises NodeLost: naming the nodes this process no longer owns.
        """
        rows = conn.execute(
            "SELECT node_id, owner, epoch, next_seq FROM nodes"
            " WHERE node_id = ANY(%s) ORDER BY node_id FOR NO KEY UPDATE",
            (node_ids,),
        ).fetchall()
        found = {n: (owner, epoch, next_seq) for n, owner, epoch, next_seq in rows}
        lost = []
        for node_id in node_ids:
            owner, epoch, _ = found.get(node_id, (None, None, 1))
            held = self._epochs.get(node_id)
            if held is None or owner != self._process_id or epoch != held:
                lost.append(node_id)
        if lost:
            for node_id in lost:
                self._epochs.pop(node_id, None)
            raise NodeLost(lost)
        if self._checked:
            self._checked[-1].update(node_ids)
        return {n: int(v[2]) for n, v in found.items()}

    # -- events -------------------------------------------------------------

    def next_seq(self, node_id: str) -> int:
        """Return the seq the node's next event will get (1 if unknown).

        :param node_id: the node.
        """
        with self._errors():
            row = (
                self._db()
                .execute("SELECT next_seq FROM nodes WHERE node_id = %s", (node_id,))
                .fetchone()
            )
        return 1 if row is None else int(row[0])

    def append_events(self, rows: Sequence[EventRow]) -> None:
        """Store new events, all or none, and advance each node's next_seq.

        The nodes' rows are locked (in node order) and their next_seq checked
        first; when fencing, so is their ownership.

        :param rows: the events, in seq order per node.
        :raises StoreError: if a seq is not the node's next one.
        :raises NodeLost: if this process no longer owns one of the nodes.
        """
        if not rows:
            return
        node_ids = sorted({r.node_id for r in rows})
        with self._write() as conn:
            if self._process_id is None:
                # Create missing node rows and lock all of them, in node
                # order, in one statement.
                found = conn.execute(
                    "INSERT INTO nodes (node_id, next_seq)"
                    " SELECT unnest(%s::text[]), 1 ON CONFLICT (node_id)"
                    " DO UPDATE SET next_seq = nodes.next_seq"
                    " RETURNING node_id, next_seq",
                    (node_ids,),
                ).fetchall()
                current = {n: int(q) for n, q in found}
            else:
                current = self._lock_owned(conn, node_ids)
            expected: dict[str, int] = {}
            for row in rows:
                want = expected.get(row.node_id)
                if want is None:
                    want = current.get(row.node_id, 1)
                if row.seq != want:
                    raise StoreError(
                        f"event seq {row.seq} of node {row.node_id} is not "
                        f"its next seq {want}"
                    )
                expected[row.node_id] = want + 1
            conn.execute(
                "UPDATE nodes SET next_seq = v.seq FROM"
                " unnest(%s::text[], %s::bigint[]) AS v(node_id, seq)"
                " WHERE nodes.node_id = v.node_id",
                (list(expected), list(expected.values())),
            )
            conn.execute(
                f"INSERT INTO events ({_EVENT_COLUMNS}) SELECT * FROM unnest("
                "%s::text[], %s::bigint[], %s::text[], %s::boolean[],"
                " %s::double precision[], %s::text[])",
                (
                    [r.node_id for r in rows],
                    [r.seq for r in rows],
                    [r.kind for r in rows],
                    [r.summon for r in rows],
                    [r.at for r in rows],
                    [r.params for r in rows],
                ),
            )

    def events_after(self, node_id: str, after_seq: int, limit: int) -> list[EventRow]:
        """Return up to ``limit`` stored events of the node with seq >
        ``after_seq``, in ascending seq order.

        :raises ValueError: if ``limit`` is below 1.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        with self._errors():
            rows = (
                self._db()
                .execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events"
                    " WHERE node_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                    (node_id, after_seq, limit),
                )
                .fetchall()
            )
        return [_event_row(row) for row in rows]

    def pending_count(self, node_id: str) -> int:
        """Return the number of stored (unacknowledged) events of the node."""
        with self._errors():
            row = (
                self._db()
                .execute("SELECT count(*) FROM events WHERE node_id = %s", (node_id,))
                .fetchone()
            )
        return int(row[0]) if row else 0

    def newest_summons(self) -> list[EventRow]:
        """The newest unacknowledged summon-class event of every node that
        has a webhook, one row per node, ordered by node id. When fencing,
        only nodes this process owns are listed (the others are their own
        owners' business)."""
        owned = ""
        args: tuple[Any, ...] = ()
        if self._process_id is not None:
            owned = " AND node_id IN (SELECT node_id FROM nodes WHERE owner = %s)"
            args = (self._process_id,)
        with self._errors():
            rows = (
                self._db()
                .execute(
                    f"SELECT DISTINCT ON (node_id) {_EVENT_COLUMNS} FROM events"
                    " WHERE summon AND node_id IN (SELECT node_id FROM webhooks)"
                    f"{owned} ORDER BY node_id, seq DESC",
                    args,
                )
                .fetchall()
            )
        return [_event_row(row) for row in rows]

    def newest_summon(self, node_id: str) -> EventRow | None:
        """The node's newest unacknowledged summon-class event, or None (a
        node just taken over is woken with it)."""
        with self._errors():
            row = (
                self._db()
                .execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE node_id = %s"
                    " AND summon ORDER BY seq DESC LIMIT 1",
                    (node_id,),
                )
                .fetchone()
            )
        return None if row is None else _event_row(row)

    def ack(self, node_id: str, seq: int, *, fsync: bool = True) -> list[str]:
        """Acknowledge the node's events up to and including ``seq``; delete
        them and the closed connections whose closed event is among them.

        :return: the ids of the deleted connections, ordered by ``since``.
        :raises NodeLost: if this process no longer owns the node.
        """
        with self._write(fsync) as conn:
            self._guard(conn, [node_id])
            conn.execute(
                "DELETE FROM events WHERE node_id = %s AND seq <= %s", (node_id, seq)
            )
            gone = conn.execute(
                "DELETE FROM connections WHERE node_id = %s AND state = 'closed'"
                " AND closed_seq <= %s RETURNING since, conn_id",
                (node_id, seq),
            ).fetchall()
        return [conn_id for _, conn_id in sorted(gone)]

    # -- connections --------------------------------------------------------

    def put_connection(self, row: ConnectionRow, *, fsync: bool = True) -> None:
        """Insert a connection, or replace the one with the same conn_id.

        :raises StoreError: if the state or closed_seq is invalid.
        :raises NodeLost: if this process no longer owns the node.
        """
        if row.state not in CONNECTION_STATES:
            raise StoreError(f"invalid connection state {row.state!r}")
        if (row.state == "closed") != (row.closed_seq is not None):
            raise StoreError(
                f"connection {row.conn_id}: closed_seq must be set exactly "
                f"when the state is closed (state {row.state!r}, "
                f"closed_seq {row.closed_seq!r})"
            )
        with self._write(fsync) as conn:
            self._guard(conn, [row.node_id])
            conn.execute(
                f"INSERT INTO connections ({_CONNECTION_COLUMNS})"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (conn_id) DO UPDATE SET node_id = excluded.node_id,"
                " peer = excluded.peer, address = excluded.address,"
                " persist = excluded.persist, since = excluded.since,"
                " state = excluded.state, their_init = excluded.their_init,"
                " closed_seq = excluded.closed_seq",
                (
                    row.conn_id,
                    row.node_id,
                    row.peer,
                    row.address,
                    row.persist,
                    row.since,
                    row.state,
                    row.their_init,
                    row.closed_seq,
                ),
            )

    def close_connection(self, conn_id: str, closed_seq: int) -> None:
        """Mark a connection closed by the event ``closed_seq``.

        :raises StoreError: ``unknown connection '<id>'`` if there is none.
        :raises NodeLost: if this process no longer owns its node.
        """
        with self._write() as conn:
            found = conn.execute(
                "SELECT node_id FROM connections WHERE conn_id = %s", (conn_id,)
            ).fetchone()
            if found is None:
                raise StoreError(f"unknown connection {conn_id!r}")
            self._guard(conn, [found[0]])
            conn.execute(
                "UPDATE connections SET state = 'closed', closed_seq = %s"
                " WHERE conn_id = %s",
                (closed_seq, conn_id),
            )

    def get_connection(self, conn_id: str) -> ConnectionRow | None:
        """Return one connection by id, or None."""
        with self._errors():
            row = (
                self._db()
                .execute(
                    f"SELECT {_CONNECTION_COLUMNS} FROM connections"
                    " WHERE conn_id = %s",
                    (conn_id,),
                )
                .fetchone()
            )
        return None if row is None else _connection_row(row)

    def connections(self, node_id: str) -> list[ConnectionRow]:
        """Return all connections of the node, ordered by ``since``."""
        with self._errors():
            rows = (
                self._db()
                .execute(
                    f"SELECT {_CONNECTION_COLUMNS} FROM connections"
                    " WHERE node_id = %s ORDER BY since, conn_id",
                    (node_id,),
                )
                .fetchall()
            )
        return [_connection_row(row) for row in rows]

    def unclosed_connections(self) -> list[ConnectionRow]:
        """Return every connection not closed, ordered by ``since``. When
        fencing, only those of nodes this process owns: the others belong
        to live processes or are closed by whoever takes their node over."""
        owned = ""
        args: tuple[Any, ...] = ()
        if self._process_id is not None:
            owned = " AND node_id IN (SELECT node_id FROM nodes WHERE owner = %s)"
            args = (self._process_id,)
        with self._errors():
            rows = (
                self._db()
                .execute(
                    f"SELECT {_CONNECTION_COLUMNS} FROM connections"
                    f" WHERE state <> 'closed'{owned} ORDER BY since, conn_id",
                    args,
                )
                .fetchall()
            )
        return [_connection_row(row) for row in rows]

    # -- webhooks -----------------------------------------------------------

    def add_webhook(self, row: WebhookRow) -> None:
        """Store a new webhook.

        :raises StoreError: if the node already has a webhook with that id.
        :raises NodeLost: if this process no longer owns the node.
        """
        try:
            with self._write(savepoint=True) as conn:
                self._guard(conn, [row.node_id])
                conn.execute(
                    f"INSERT INTO webhooks ({_WEBHOOK_COLUMNS})"
                    " VALUES (%s, %s, %s, %s)",
                    (row.node_id, row.webhook_id, row.url, row.created),
                )
        except DBError as e:
            if isinstance(e.__cause__, pg_errors.UniqueViolation):
                raise StoreError(
                    f"node {row.node_id} already has a webhook {row.webhook_id!r}"
                ) from e
            raise

    def webhooks(self, node_id: str) -> list[WebhookRow]:
        """Return the node's webhooks, oldest first."""
        with self._errors():
            rows = (
                self._db()
                .execute(
                    f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks"
                    " WHERE node_id = %s ORDER BY created, webhook_id",
                    (node_id,),
                )
                .fetchall()
            )
        return [WebhookRow(n, w, u, float(c)) for n, w, u, c in rows]

    def remove_webhook(self, node_id: str, webhook_id: str) -> bool:
        """Delete one of the node's webhooks; return whether it existed.

        :raises NodeLost: if this process no longer owns the node.
        """
        with self._write() as conn:
            self._guard(conn, [node_id])
            cur = conn.execute(
                "DELETE FROM webhooks WHERE node_id = %s AND webhook_id = %s",
                (node_id, webhook_id),
            )
            return cur.rowcount > 0

    def webhook_count(self, node_id: str) -> int:
        """Return the number of the node's webhooks."""
        with self._errors():
            row = (
                self._db()
                .execute(
                    "SELECT count(*) FROM webhooks WHERE node_id = %s", (node_id,)
                )
                .fetchone()
            )
        return int(row[0]) if row else 0

    # -- vault ----------------------------------------------------------------

    def vault_get(self, node_id: str, name: str) -> tuple[int, bytes] | None:
        """Return ``(version, blob)`` of the node's entry, or None."""
        with self._errors():
            row = (
                self._db()
                .execute(
                    "SELECT version, blob FROM vault WHERE node_id = %s AND name = %s",
                    (node_id, name),
                )
                .fetchone()
            )
        return None if row is None else (int(row[0]), bytes(row[1]))

    def _vault_version(
        self, conn: psycopg.Connection[Any], node_id: str, name: str
    ) -> int:
        """The entry's current version (0 if none), its row locked."""
        row = conn.execute(
            "SELECT version FROM vault WHERE node_id = %s AND name = %s FOR UPDATE",
            (node_id, name),
        ).fetchone()
        return 0 if row is None else int(row[0])

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
        new version. The entry's row is locked (and, when fencing, the node
        row, as by every write of a node), so two writers naming the same
        version cannot both win.

        :raises VersionConflict: ``version`` is not the current one.
        :raises VaultFull: a new name beyond ``max_entries``.
        :raises NodeLost: if this process no longer owns the node.
        """
        try:
            with self._write(savepoint=True) as conn:
                self._guard(conn, [node_id])
                current = self._vault_version(conn, node_id, name)
                if current != version:
                    raise VersionConflict(current)
                if current == 0:
                    (count,) = conn.execute(
                        "SELECT count(*) FROM vault WHERE node_id = %s", (node_id,)
                    ).fetchone() or (0,)
                    if count >= max_entries:
                        raise VaultFull(
                            f"node {node_id} has {count} vault entries, the limit"
                        )
                    conn.execute(
                        "INSERT INTO vault (node_id, name, version, blob, updated)"
                        " VALUES (%s, %s, 1, %s, %s)",
                        (node_id, name, bytes(blob), now),
                    )
                else:
                    conn.execute(
                        "UPDATE vault SET version = version + 1, blob = %s,"
                        " updated = %s WHERE node_id = %s AND name = %s",
                        (bytes(blob), now, node_id, name),
                    )
        except DBError as e:
            if isinstance(e.__cause__, pg_errors.UniqueViolation):
                # Another writer created the name first (only possible
                # without fencing; with it the node row serializes writers).
                raise VersionConflict(1) from e
            raise
        return version + 1

    def vault_list(self, node_id: str) -> list[VaultEntry]:
        """Return the node's entries (name, version, size), by name."""
        with self._errors():
            rows = (
                self._db()
                .execute(
                    "SELECT name, version, length(blob) FROM vault"
                    " WHERE node_id = %s ORDER BY name COLLATE \"C\"",
                    (node_id,),
                )
                .fetchall()
            )
        return [VaultEntry(name, int(v), int(size)) for name, v, size in rows]

    def vault_remove(self, node_id: str, name: str, version: int) -> None:
        """Delete an entry if its current version is ``version``.

        :raises VersionConflict: ``version`` is not the current one.
        :raises NodeLost: if this process no longer owns the node.
        """
        with self._write() as conn:
            self._guard(conn, [node_id])
            current = self._vault_version(conn, node_id, name)
            if current != version:
                raise VersionConflict(current)
            conn.execute(
                "DELETE FROM vault WHERE node_id = %s AND name = %s", (node_id, name)
            )

    # -- accounts -------------------------------------------------------------

    def set_account(self, row: AccountRow) -> None:
        """Bind the user name to the node, replacing the node's previous
        account.

        :raises UserTaken: the user name belongs to another node (also when
            another process binds it at the same moment).
        :raises NodeLost: if this process no longer owns the node.
        """
        try:
            with self._write(savepoint=True) as conn:
                self._guard(conn, [row.node_id])
                taken = conn.execute(
                    "SELECT node_id FROM accounts WHERE user_name = %s", (row.user,)
                ).fetchone()
                if taken is not None and taken[0] != row.node_id:
                    raise UserTaken(f"user name {row.user!r} belongs to another node")
                conn.execute("DELETE FROM accounts WHERE node_id = %s", (row.node_id,))
                conn.execute(
                    "INSERT INTO accounts (user_name, node_id, auth_hash, blob,"
                    " updated) VALUES (%s, %s, %s, %s, %s)",
                    (
                        row.user,
                        row.node_id,
                        row.auth_hash,
                        bytes(row.blob),
                        row.updated,
                    ),
                )
        except DBError as e:
            if isinstance(e.__cause__, pg_errors.UniqueViolation):
                raise UserTaken(
                    f"user name {row.user!r} belongs to another node"
                ) from e
            raise

    def get_account(self, user: str) -> AccountRow | None:
        """Return the account of a user name, or None."""
        with self._errors():
            row = (
                self._db()
                .execute(
                    "SELECT user_name, node_id, auth_hash, blob, updated FROM accounts"
                    " WHERE user_name = %s",
                    (user,),
                )
                .fetchone()
            )
        if row is None:
            return None
        return AccountRow(row[0], row[1], row[2], bytes(row[3]), float(row[4]))

    def remove_account(self, node_id: str) -> bool:
        """Delete the node's account; return whether it had one.

        :raises NodeLost: if this process no longer owns the node.
        """
        with self._write() as conn:
            self._guard(conn, [node_id])
            cur = conn.execute("DELETE FROM accounts WHERE node_id = %s", (node_id,))
            return cur.rowcount > 0

    # -- peer storage -------------------------------------------------------

    def put_peer_storage(self, node_id: str, peer: str, blob: bytes, at: float) -> None:
        """Keep the newest blob of a node's peer, replacing the one before.

        :raises StoreError: if the blob is longer than 65531 bytes.
        :raises NodeLost: if this process no longer owns the node.
        """
        if len(blob) > MAX_PEER_STORAGE_BLOB:
            raise StoreError(
                f"peer storage blob of {len(blob)} bytes exceeds "
                f"{MAX_PEER_STORAGE_BLOB}"
            )
        with self._write() as conn:
            self._guard(conn, [node_id])
            conn.execute(
                "INSERT INTO peer_storage (node_id, peer, blob, at)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (node_id, peer)"
                " DO UPDATE SET blob = excluded.blob, at = excluded.at",
                (node_id, peer, bytes(blob), at),
            )

    def get_peer_storage(self, node_id: str, peer: str) -> bytes | None:
        """Return the blob kept for this node and peer, or None."""
        with self._errors():
            row = (
                self._db()
                .execute(
                    "SELECT blob FROM peer_storage WHERE node_id = %s AND peer = %s",
                    (node_id, peer),
                )
                .fetchone()
            )
        return None if row is None else bytes(row[0])

    # -- health -------------------------------------------------------------

    def writable(self) -> bool:
        """Health check: is the database reachable and accepting writes
        (not a read-only standby)? Changes nothing; never raises."""
        if self._closed or self._suspended:
            return False
        try:
            conn = self._db()
            row = conn.execute(
                "SELECT NOT pg_is_in_recovery()"
                " AND current_setting('transaction_read_only') = 'off'"
            ).fetchone()
        except (psycopg.Error, StoreError):
            return False
        return bool(row and row[0])

    # -- ownership ----------------------------------------------------------

    @property
    def process_id(self) -> str | None:
        """This process's id in ``processes`` once registered."""
        return self._process_id

    def owned(self) -> dict[str, int]:
        """The nodes this process owns (as far as it knows) and their
        epochs."""
        return dict(self._epochs)

    def register(
        self,
        public_url: str,
        lease_timeout: float,
        process_id: str | None = None,
    ) -> str:
        """Enter this process in ``processes`` and turn fencing on.

        :param public_url: where clients reach this process (``ws://`` or
            ``wss://``); sent to clients redirected here. A registered
            process with the same URL is an earlier run of this one: its
            lease ends now.
        :param lease_timeout: seconds after the last renewal at which the
            others may take this process's nodes over.
        :param process_id: the id to use (a new random one by default).
        :return: the process id.
        """
        if lease_timeout <= 0:
            raise ValueError(f"lease timeout must be positive, not {lease_timeout}")
        self._process_id = process_id or uuid.uuid4().hex
        self._public_url = public_url
        self._lease_timeout = float(lease_timeout)
        self._epochs = {}
        with self._write(savepoint=True) as conn:
            conn.execute(
                "INSERT INTO processes (process_id, public_url, expires)"
                " VALUES (%s, %s, now() + make_interval(secs => %s))"
                " ON CONFLICT (process_id) DO UPDATE SET public_url ="
                " excluded.public_url, expires = excluded.expires",
                (self._process_id, public_url, self._lease_timeout),
            )
            # An earlier run of this process (same public URL: it listened
            # where this one listens now) is dead: end its lease at once, so
            # that its nodes are claimed here instead of being redirected
            # here, to ourselves, until the lease runs out.
            conn.execute(
                "UPDATE processes SET expires = now() - interval '1 second'"
                " WHERE public_url = %s AND process_id <> %s AND expires > now()",
                (public_url, self._process_id),
            )
        return self._process_id

    def _registered(self) -> str:
        """The process id, or StoreError if :meth:`register` did not run."""
        if self._process_id is None:
            raise StoreError("this store is not registered as a process")
        return self._process_id

    def renew(self) -> list[str]:
        """Extend this process's lease: one UPDATE of its ``processes`` row.

        Normally that is all. If the lease had expired before this renewal
        (the process was paused or cut off for longer than its lease) or the
        row is gone (another process took every node over and removed it),
        some nodes may belong to others now: the row is put back and the
        nodes this process no longer owns at its epoch are returned (and
        forgotten); the caller must stop serving them at once.

        :return: the nodes lost, usually none.
        :raises DBError: if the database cannot be reached.
        """
        me = self._registered()
        with self._write(savepoint=True) as conn:
            row = conn.execute(
                "UPDATE processes SET expires = now() + make_interval(secs => %s)"
                " WHERE process_id = %s"
                " RETURNING (SELECT expires < now() FROM processes"
                " WHERE process_id = %s)",
                (self._lease_timeout, me, me),
            ).fetchone()
            if row is not None and not row[0]:
                return []
            if row is None:
                conn.execute(
                    "INSERT INTO processes (process_id, public_url, expires)"
                    " VALUES (%s, %s, now() + make_interval(secs => %s))",
                    (me, self._public_url, self._lease_timeout),
                )
            if not self._epochs:
                return []
            still = dict(
                conn.execute(
                    "SELECT node_id, epoch FROM nodes WHERE owner = %s", (me,)
                ).fetchall()
            )
        lost = [n for n, e in self._epochs.items() if still.get(n) != e]
        for node_id in lost:
            del self._epochs[node_id]
        if lost:
            _log.warn(
                "lease had expired: {count} nodes were taken over by other "
                "processes",
                count=len(lost),
            )
        return sorted(lost)

    def claim(self, node_id: str) -> Claim:
        """Find the node's owner, becoming it if there is no live one.

        A node nobody knows, nobody owns (released at a stop), or whose
        owner's lease expired becomes this process's, with a new epoch; an
        expired owner's unclosed connections are returned for their closed
        events. A node owned by a live other process is left alone and its
        public URL returned (the client is redirected there).

        :raises DBError: if the database cannot be reached.
        """
        me = self._registered()
        with self._write(savepoint=True) as conn:
            conn.execute(
                "INSERT INTO nodes (node_id, next_seq, owner, epoch)"
                " VALUES (%s, 1, NULL, 0) ON CONFLICT (node_id) DO NOTHING",
                (node_id,),
            )
            row = conn.execute(
                "SELECT n.owner, n.epoch, n.next_seq, p.public_url,"
                " p.expires > now() FROM nodes n LEFT JOIN processes p"
                " ON p.process_id = n.owner WHERE n.node_id = %s FOR UPDATE OF n",
                (node_id,),
            ).fetchone()
            assert row is not None
            owner, epoch, next_seq, url, alive = row
            if owner == me and self._epochs.get(node_id) == epoch:
                return self._claimed(conn, node_id, epoch, next_seq, None)
            if owner is not None and owner != me and alive:
                return Claim(node_id, owned=False, url=url, next_seq=int(next_seq))
            failed = owner if owner is not None and owner != me else None
            new_epoch = int(epoch) + 1
            conn.execute(
                "UPDATE nodes SET owner = %s, epoch = %s WHERE node_id = %s",
                (me, new_epoch, node_id),
            )
            self._epochs[node_id] = new_epoch
            return self._claimed(conn, node_id, new_epoch, next_seq, failed)

    def _claimed(
        self,
        conn: psycopg.Connection[Any],
        node_id: str,
        epoch: int,
        next_seq: int,
        failed_owner: str | None,
        unclosed: list[ConnectionRow] | None = None,
    ) -> Claim:
        """The :class:`Claim` of a node this process now owns."""
        if unclosed is None:
            rows = conn.execute(
                f"SELECT {_CONNECTION_COLUMNS} FROM connections"
                " WHERE node_id = %s AND state <> 'closed' ORDER BY since, conn_id",
                (node_id,),
            ).fetchall()
            unclosed = [_connection_row(r) for r in rows]
        (pending,) = conn.execute(
            "SELECT count(*) FROM events WHERE node_id = %s", (node_id,)
        ).fetchone() or (0,)
        hooks = [
            WebhookRow(n, w, u, float(c))
            for n, w, u, c in conn.execute(
                f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks"
                " WHERE node_id = %s ORDER BY created, webhook_id",
                (node_id,),
            ).fetchall()
        ]
        summon = None
        if hooks and pending:
            found = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE node_id = %s"
                " AND summon ORDER BY seq DESC LIMIT 1",
                (node_id,),
            ).fetchone()
            summon = None if found is None else _event_row(found)
        blobs = {
            peer: bytes(blob)
            for peer, blob in conn.execute(
                "SELECT peer, blob FROM peer_storage WHERE node_id = %s", (node_id,)
            ).fetchall()
        }
        if self._checked:
            # The row is locked and ours at this epoch: writes in this same
            # transaction need not check it again.
            self._checked[-1].add(node_id)
        return Claim(
            node_id,
            owned=True,
            epoch=int(epoch),
            next_seq=int(next_seq),
            pending=int(pending),
            failed_owner=failed_owner,
            unclosed=unclosed,
            webhooks=hooks,
            newest_summon=summon,
            peer_storage=blobs,
        )

    def take_over(self, limit: int = 200) -> list[Claim]:
        """Claim up to ``limit`` nodes whose owner's lease expired (or whose
        owner is no longer listed): the failover of a dead process.

        Rows another survivor is claiming right now are skipped (``SKIP
        LOCKED``), so several survivors share the work without waiting on
        each other. Process rows left with no nodes and an expired lease are
        removed. Call it again while it returns ``limit`` claims.

        :return: the claims, each with the connections to close.
        """
        me = self._registered()
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        with self._write(savepoint=True) as conn:
            rows = conn.execute(
                "SELECT n.node_id, n.owner, n.epoch, n.next_seq FROM nodes n"
                " LEFT JOIN processes p ON p.process_id = n.owner"
                " WHERE n.owner IS NOT NULL AND n.owner <> %s"
                " AND (p.process_id IS NULL OR p.expires < now())"
                " ORDER BY n.node_id LIMIT %s FOR UPDATE OF n SKIP LOCKED",
                (me, limit),
            ).fetchall()
            claims = self._claimed_many(conn, me, rows) if rows else []
            conn.execute(
                "DELETE FROM processes p WHERE p.expires < now() AND NOT EXISTS"
                " (SELECT 1 FROM nodes n WHERE n.owner = p.process_id)"
                " AND p.process_id <> %s",
                (me,),
            )
        return claims

    def _claimed_many(
        self,
        conn: psycopg.Connection[Any],
        me: str,
        rows: list[tuple[Any, ...]],
    ) -> list[Claim]:
        """Take the locked ``(node_id, owner, epoch, next_seq)`` rows over
        and build their claims: a fixed number of statements however many
        nodes (a take-over of 10,000 nodes is a few round trips, not a few
        per node)."""
        ids = [r[0] for r in rows]
        conn.execute(
            "UPDATE nodes SET owner = %s, epoch = epoch + 1"
            " WHERE node_id = ANY(%s)",
            (me, ids),
        )
        unclosed: dict[str, list[ConnectionRow]] = {n: [] for n in ids}
        for r in conn.execute(
            f"SELECT {_CONNECTION_COLUMNS} FROM connections"
            " WHERE node_id = ANY(%s) AND state <> 'closed'"
            " ORDER BY since, conn_id",
            (ids,),
        ).fetchall():
            c = _connection_row(r)
            unclosed[c.node_id].append(c)
        pending = dict(
            conn.execute(
                "SELECT node_id, count(*) FROM events WHERE node_id = ANY(%s)"
                " GROUP BY node_id",
                (ids,),
            ).fetchall()
        )
        hooks: dict[str, list[WebhookRow]] = {n: [] for n in ids}
        for n, w, u, c in conn.execute(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE node_id = ANY(%s)"
            " ORDER BY node_id, created, webhook_id",
            (ids,),
        ).fetchall():
            hooks[n].append(WebhookRow(n, w, u, float(c)))
        hooked = [n for n in ids if hooks[n] and pending.get(n)]
        summons: dict[str, EventRow] = {}
        if hooked:
            for r in conn.execute(
                f"SELECT DISTINCT ON (node_id) {_EVENT_COLUMNS} FROM events"
                " WHERE node_id = ANY(%s) AND summon ORDER BY node_id, seq DESC",
                (hooked,),
            ).fetchall():
                e = _event_row(r)
                summons[e.node_id] = e
        blobs: dict[str, dict[str, bytes]] = {n: {} for n in ids}
        for n, peer, blob in conn.execute(
            "SELECT node_id, peer, blob FROM peer_storage WHERE node_id = ANY(%s)",
            (ids,),
        ).fetchall():
            blobs[n][peer] = bytes(blob)
        claims = []
        for node_id, owner, epoch, next_seq in rows:
            self._epochs[node_id] = int(epoch) + 1
            claims.append(
                Claim(
                    node_id,
                    owned=True,
                    epoch=int(epoch) + 1,
                    next_seq=int(next_seq),
                    pending=int(pending.get(node_id, 0)),
                    failed_owner=owner,
                    unclosed=unclosed[node_id],
                    webhooks=hooks[node_id],
                    newest_summon=summons.get(node_id),
                    peer_storage=blobs[node_id],
                )
            )
        if self._checked:
            self._checked[-1].update(ids)
        return claims

    def expired_owners(self) -> list[str]:
        """The processes whose lease expired while they still own nodes (the
        failover query; cheap, for a periodic check)."""
        me = self._registered()
        with self._errors():
            rows = (
                self._db()
                .execute(
                    "SELECT DISTINCT n.owner FROM nodes n LEFT JOIN processes p"
                    " ON p.process_id = n.owner WHERE n.owner IS NOT NULL"
                    " AND n.owner <> %s AND (p.process_id IS NULL"
                    " OR p.expires < now()) ORDER BY 1",
                    (me,),
                )
                .fetchall()
            )
        return [r[0] for r in rows]

    def other_live_owner(self, node_id: str, me: str) -> str | None:
        """The public URL of the node's owner if it is a live process other
        than ``me``, else None; reads only (a reader connection may ask:
        a login for a node served elsewhere is redirected without a write
        transaction)."""
        with self._errors():
            row = (
                self._db()
                .execute(
                    "SELECT p.public_url FROM nodes n JOIN processes p ON"
                    " p.process_id = n.owner WHERE n.node_id = %s"
                    " AND n.owner <> %s AND p.expires > now()",
                    (node_id, me),
                )
                .fetchone()
            )
        return None if row is None else str(row[0])

    def owner_url(self, node_id: str) -> str | None:
        """The public URL of the node's live owner, or None."""
        with self._errors():
            row = (
                self._db()
                .execute(
                    "SELECT p.public_url FROM nodes n JOIN processes p ON"
                    " p.process_id = n.owner WHERE n.node_id = %s"
                    " AND p.expires > now()",
                    (node_id,),
                )
                .fetchone()
            )
        return None if row is None else str(row[0])

    def release(self, node_ids: Iterable[str]) -> None:
        """Give nodes up (no owner): the next login anywhere claims them.

        Only rows this process owns at its epoch are changed.
        """
        me = self._registered()
        held = [
            (n, self._epochs[n]) for n in sorted(set(node_ids)) if n in self._epochs
        ]
        if not held:
            return
        with self._write(savepoint=True) as conn:
            conn.cursor().executemany(
                "UPDATE nodes SET owner = NULL WHERE node_id = %s AND owner = %s"
                " AND epoch = %s",
                [(n, me, e) for n, e in held],
            )
        for node_id, _ in held:
            self._epochs.pop(node_id, None)

    def forget(self, node_ids: Iterable[str]) -> None:
        """Drop nodes from this process's memory of what it owns (after a
        :class:`NodeLost`); the database is not touched."""
        for node_id in node_ids:
            self._epochs.pop(node_id, None)

    def unregister(self) -> None:
        """A clean stop (after this process wrote its ``closed`` events):
        end this process's lease now. Its nodes stay owned by it, so that
        another process claims each one at once at its next login, and the
        others' next take-over round picks the rest up and wakes the
        clients that wait for a summon (the row goes when the last node is
        taken). Fencing stays on, with nothing owned."""
        me = self._registered()
        with self._write(savepoint=True) as conn:
            conn.execute(
                "UPDATE processes SET expires = now() - interval '1 second'"
                " WHERE process_id = %s",
                (me,),
            )
        self._epochs = {}

    def processes(self) -> list[tuple[str, str, bool]]:
        """Every process of the deployment: ``(process_id, public_url,
        alive)``, oldest first (for operators and tests)."""
        with self._errors():
            rows = (
                self._db()
                .execute(
                    "SELECT process_id, public_url, expires > now() FROM processes"
                    " ORDER BY started, process_id"
                )
                .fetchall()
            )
        return [(p, u, bool(a)) for p, u, a in rows]
