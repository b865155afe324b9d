"""Tests for lnproxy.store.

``StoreContractTests`` is the behaviour every
:class:`~lnproxy.store.interface.IStore` must show, written against the
interface only; a test case per implementation mixes it in and says how to
make, reopen and look into a store (``SqliteContractTests`` here). The rest
are SQLite-specific: data dir, lock, server key file, schema create and
upgrade, and the fsync pragmas, all against real SQLite files.
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from typing import TYPE_CHECKING

import coincurve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import lnproxy
from lnproxy.store import (
    DB_FILE,
    KEY_FILE,
    LOCK_FILE,
    AccountRow,
    ConnectionRow,
    DataDirLocked,
    DBError,
    EventRow,
    IStore,
    SqliteStore,
    Store,
    StoreError,
    UserTaken,
    VaultEntry,
    VaultFull,
    VersionConflict,
    WebhookRow,
    dump_db,
    get_db,
)
from lnproxy.store import datadir as datadir_module
from lnproxy.store import schema as schema_module
from lnproxy.store.postgres import PostgresStore
from tests.pg import new_database

if TYPE_CHECKING:
    _ContractBase = SynchronousTestCase
else:
    _ContractBase = object
# secp256k1 group order: not a valid secret key.
CURVE_ORDER_HEX = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lnproxy.__file__)))

# Opens the store given in argv[1]; exit 3 with the message if it is locked.
LOCKED_CHILD = """\
import sys
from lnproxy.store import DataDirLocked, Store
try:
    Store.open(sys.argv[1]).close()
except DataDirLocked as e:
    sys.stderr.write(str(e))
    sys.exit(3)
"""

# Appends one event and dies without closing anything, like a crash.
CRASHING_CHILD = """\
import os, sys
from lnproxy.store import EventRow, Store
s = Store.open(sys.argv[1])
s.append_events([EventRow(sys.argv[2], 1, "message", True, 5.0, "{}")])
os._exit(0)
"""


def node(i: int) -> str:
    """Return a well-formed node id (66 lowercase hex characters)."""
    return "02" + f"{i:064x}"


A = node(0xA)
B = node(0xB)


def event(
    node_id: str, seq: int, kind: str = "message", summon: bool = False
) -> EventRow:
    """Return an event row whose params look like the real notification."""
    at = 1700000000.25 + seq
    params = json.dumps({"seq": seq, "at": at, "conn": "c", "msg": "00" * 8})
    return EventRow(node_id, seq, kind, summon, at, params)


def connection(
    conn_id: str,
    node_id: str,
    since: float,
    state: str = "open",
    closed_seq: int | None = None,
) -> ConnectionRow:
    """Return a connection row of ``node_id`` to a fixed peer."""
    return ConnectionRow(
        conn_id=conn_id,
        node_id=node_id,
        peer=node(0xFEE),
        address="127.0.0.1:9735",
        persist=True,
        since=since,
        state=state,
        their_init="00100000" if state != "handshake" else None,
        closed_seq=closed_seq,
    )


def schema_sql(name: str) -> str:
    """Return a shipped schema file, read independently of lnproxy.store."""
    sql = importlib.resources.files("lnproxy.store.sql")
    resource = sql.joinpath("sqlite").joinpath(name)
    return resource.read_text(encoding="utf-8")


def schema_of(
    conn: sqlite3.Connection,
) -> tuple[list[str], list[tuple[str, str, str, str]]]:
    """Return the schema part of ``iterdump()`` and the sqlite_master rows,
    both with whitespace normalised and sorted."""
    dump = sorted(
        " ".join(line.split())
        for line in dump_db(conn).splitlines()
        if line.startswith("CREATE")
    )
    master = sorted(
        (kind, name, table, " ".join(sql.split()) if sql else "")
        for kind, name, table, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master"
        )
    )
    return dump, master


def file_mode(path: str) -> int:
    """Return the permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


def read_version(path: str) -> int:
    """Read the schema version with a plain sqlite3 connection."""
    conn = sqlite3.connect(path)
    try:
        (version,) = conn.execute("SELECT version FROM version").fetchone()
        return int(version)
    finally:
        conn.close()


def run_child(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args`` with lnproxy importable."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


class StoreContractTests(_ContractBase):
    """What every IStore must do, written against the interface only.

    Mix into a :class:`SynchronousTestCase` that defines :meth:`make_store`,
    :meth:`reopen_store` and :meth:`committed_count`. Each test gets a fresh,
    empty store as ``self.store``.
    """

    store: IStore

    def make_store(self) -> IStore:
        """Return a new, empty, open store; close it again at cleanup."""
        raise NotImplementedError

    def reopen_store(self, store: IStore) -> IStore:
        """Close ``store`` and open the same storage again (closed at
        cleanup): what a restart of the proxy sees."""
        raise NotImplementedError

    def committed_count(self, table: str) -> int:
        """Count the committed rows of ``table`` (``"events"``,
        ``"connections"``, ``"webhooks"``, ``"vault"`` or ``"accounts"``) as a separate connection to
        the same storage sees them."""
        raise NotImplementedError

    def setUp(self) -> None:
        super().setUp()
        self.store = self.make_store()

    def test_provides_istore(self) -> None:
        """The store provides IStore with every method and attribute, and
        its server secret is a valid 32-byte secp256k1 key."""
        self.assertTrue(verifyObject(IStore, self.store))
        self.assertEqual(len(self.store.server_secret), 32)
        coincurve.PrivateKey(self.store.server_secret)  # raises if invalid

    # -- lifecycle ----------------------------------------------------------

    def test_reopen_keeps_everything(self) -> None:
        """After close and reopen, events, next_seq (also of a node whose
        events were all acknowledged), connections, webhooks and the server
        key are all the same."""
        s = self.store
        s.append_events([event(A, 1), event(A, 2, summon=True), event(B, 1)])
        s.append_events([event(B, 2, kind="closed")])
        s.ack(B, 2)
        conns = [
            connection("c1", A, 10.0, state="handshake"),
            connection("c2", A, 11.0),
            connection("c3", A, 12.0, state="closed", closed_seq=2),
        ]
        for c in conns:
            s.put_connection(c)
        hook = WebhookRow(A, "w1", "https://example.com/hook", 13.0)
        s.add_webhook(hook)
        secret = s.server_secret

        s2 = self.reopen_store(s)
        self.assertEqual(s2.server_secret, secret)
        self.assertEqual(
            s2.events_after(A, 0, 10), [event(A, 1), event(A, 2, summon=True)]
        )
        self.assertEqual(s2.next_seq(A), 3)
        self.assertEqual(s2.next_seq(B), 3)
        self.assertEqual(s2.pending_count(B), 0)
        self.assertEqual(s2.connections(A), conns)
        self.assertEqual(s2.unclosed_connections(), conns[:2])
        self.assertEqual(s2.webhooks(A), [hook])

    def test_close_is_idempotent(self) -> None:
        """close() twice is fine; afterwards methods raise StoreError,
        writable() is False and resume() is refused."""
        s = self.store
        s.close()
        s.close()
        e = self.assertRaises(StoreError, s.next_seq, A)
        self.assertIn("closed", str(e))
        self.assertRaises(StoreError, s.append_events, [event(A, 1)])
        self.assertFalse(s.writable())
        e = self.assertRaises(StoreError, s.resume)
        self.assertIn("closed", str(e))

    def test_suspend_resume(self) -> None:
        """suspend() then resume() keeps everything and the store works as
        before; resume() on an open store changes nothing."""
        s = self.store
        s.append_events([event(A, 1)])
        secret = s.server_secret
        s.resume()
        s.suspend()
        s.resume()
        self.assertEqual(s.server_secret, secret)
        self.assertEqual(s.events_after(A, 0, 10), [event(A, 1)])
        s.append_events([event(A, 2)])
        self.assertEqual(s.next_seq(A), 3)
        self.assertTrue(s.writable())

    # -- events -------------------------------------------------------------

    def test_append_and_read(self) -> None:
        """Appended events come back equal, in seq order, honouring
        after_seq and limit; next_seq and pending_count follow."""
        rows = [event(A, 1), event(A, 2, "closed", True), event(A, 3)]
        self.store.append_events(rows[:1])
        self.store.append_events(rows[1:])
        self.assertEqual(self.store.events_after(A, 0, 10), rows)
        self.assertEqual(self.store.events_after(A, 1, 1), rows[1:2])
        self.assertEqual(self.store.events_after(A, 3, 10), [])
        self.assertEqual(self.store.next_seq(A), 4)
        self.assertEqual(self.store.pending_count(A), 3)

    def test_limit_must_be_positive(self) -> None:
        """limit 0 or negative is a ValueError (SQLite would read -1 as no
        limit at all)."""
        self.assertRaises(ValueError, self.store.events_after, A, 0, 0)
        self.assertRaises(ValueError, self.store.events_after, A, 0, -1)

    def test_empty_append(self) -> None:
        """Appending no rows changes nothing."""
        self.store.append_events([])
        self.assertEqual(self.store.next_seq(A), 1)

    def test_gaps_and_repeats_refused(self) -> None:
        """A first seq other than 1, a gap, a repeat and a reversed batch are
        each a StoreError naming the expected seq, and store nothing."""
        e = self.assertRaises(StoreError, self.store.append_events, [event(A, 2)])
        self.assertEqual(str(e), f"event seq 2 of node {A} is not its next seq 1")
        self.assertRaises(StoreError, self.store.append_events, [event(A, 0)])
        self.assertRaises(
            StoreError, self.store.append_events, [event(A, 2), event(A, 1)]
        )
        self.store.append_events([event(A, 1)])
        self.assertRaises(StoreError, self.store.append_events, [event(A, 1)])
        self.assertRaises(
            StoreError, self.store.append_events, [event(A, 2), event(A, 4)]
        )
        self.assertEqual(self.store.events_after(A, 0, 10), [event(A, 1)])
        self.assertEqual(self.store.next_seq(A), 2)

    def test_seq_never_repeats_after_ack(self) -> None:
        """Acknowledging every event keeps next_seq: the old seqs cannot be
        appended again, the next one can."""
        self.store.append_events([event(A, 1), event(A, 2)])
        self.assertEqual(self.store.ack(A, 2), [])
        self.assertEqual(self.store.pending_count(A), 0)
        self.assertEqual(self.store.next_seq(A), 3)
        self.assertRaises(StoreError, self.store.append_events, [event(A, 1)])
        self.store.append_events([event(A, 3)])
        self.assertEqual(self.store.events_after(A, 0, 10), [event(A, 3)])

    def test_batch_spans_nodes(self) -> None:
        """One batch may interleave several nodes; each node's seqs continue
        from its own next_seq."""
        self.store.append_events([event(B, 1)])
        self.store.append_events([event(A, 1), event(B, 2), event(A, 2)])
        self.assertEqual(self.store.next_seq(A), 3)
        self.assertEqual(self.store.next_seq(B), 3)
        self.assertEqual(self.store.events_after(B, 0, 10), [event(B, 1), event(B, 2)])

    def test_batch_is_all_or_nothing(self) -> None:
        """A bad row at the end of a batch rejects the whole batch, also the
        good rows of other nodes before it."""
        self.assertRaises(
            StoreError,
            self.store.append_events,
            [event(A, 1), event(B, 1), event(A, 3)],
        )
        self.assertEqual(self.store.pending_count(A), 0)
        self.assertEqual(self.store.pending_count(B), 0)
        self.assertEqual(self.store.next_seq(A), 1)
        self.assertEqual(self.store.next_seq(B), 1)

    def test_ack_deletes_up_to_seq(self) -> None:
        """ack(n) deletes events with seq <= n only; acking again or lower is
        harmless."""
        self.store.append_events([event(A, s) for s in range(1, 6)])
        self.store.ack(A, 3)
        self.assertEqual(self.store.events_after(A, 0, 10), [event(A, 4), event(A, 5)])
        self.store.ack(A, 2)
        self.assertEqual(self.store.pending_count(A), 2)
        self.assertEqual(self.store.next_seq(A), 6)

    def test_ack_deletes_acknowledged_closed_connections(self) -> None:
        """ack(n) deletes the node's closed connections with closed_seq <= n,
        returning their ids, and keeps later-closed, open and handshake
        ones."""
        self.store.append_events([event(A, s) for s in range(1, 5)])
        conns = {
            "c1": connection("c1", A, 1.0, "closed", closed_seq=2),
            "c2": connection("c2", A, 2.0, "closed", closed_seq=4),
            "c3": connection("c3", A, 3.0, "open"),
            "c4": connection("c4", A, 4.0, "handshake"),
            "c0": connection("c0", A, 0.5, "closed", closed_seq=1),
        }
        for c in conns.values():
            self.store.put_connection(c)
        self.assertEqual(self.store.ack(A, 3), ["c0", "c1"])
        self.assertEqual(
            self.store.connections(A), [conns["c2"], conns["c3"], conns["c4"]]
        )
        self.assertEqual(self.store.ack(A, 4), ["c2"])
        self.assertEqual(self.store.connections(A), [conns["c3"], conns["c4"]])

    def test_tenant_isolation(self) -> None:
        """Events, connections and acks of one node never touch or show
        another node's, even with equal seqs."""
        for n in (A, B):
            self.store.append_events([event(n, 1), event(n, 2)])
            self.store.put_connection(
                connection("conn-" + n[-1], n, 1.0, "closed", closed_seq=1)
            )
        self.assertEqual(self.store.ack(A, 2), ["conn-a"])
        self.assertEqual(self.store.events_after(A, 0, 10), [])
        self.assertEqual(self.store.events_after(B, 0, 10), [event(B, 1), event(B, 2)])
        self.assertEqual(
            self.store.connections(B),
            [connection("conn-b", B, 1.0, "closed", closed_seq=1)],
        )
        self.assertEqual(self.store.connections(A), [])
        self.assertEqual(self.store.pending_count(B), 2)

    # Every op of every example is an fsync'd commit (and a PostgreSQL
    # store pays a round trip per op too): a small budget keeps the
    # contract cheap for every implementation; the ops list still covers
    # appends and acks interleaved on two nodes.
    # One method of the mixin runs on every implementation's test case:
    # that is the point, not a flaky executor (the store is per test).
    @settings(
        max_examples=10,
        deadline=None,
        suppress_health_check=[HealthCheck.differing_executors],
    )
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["append", "ack"]),
                st.integers(0, 1),
                st.integers(0, 4),
            ),
            max_size=12,
        )
    )
    def test_matches_model(self, ops: list[tuple[str, int, int]]) -> None:
        """After any sequence of appends (0-4 events) and acks (up to a few
        seqs back from the newest) on two nodes, stored events, next_seq and
        pending_count match a simple in-memory model."""
        base = next(self._model_ids) * 2
        nodes = [node(base), node(base + 1)]
        model: dict[str, list[int]] = {n: [] for n in nodes}
        next_seq = {n: 1 for n in nodes}
        for op, which, k in ops:
            n = nodes[which]
            if op == "append":
                rows = [event(n, next_seq[n] + i) for i in range(k)]
                self.store.append_events(rows)
                model[n] += [r.seq for r in rows]
                next_seq[n] += k
            else:
                upto = max(next_seq[n] - 1 - k, 0)
                self.store.ack(n, upto)
                model[n] = [s for s in model[n] if s > upto]
            for m in nodes:
                got = self.store.events_after(m, 0, 100)
                self.assertEqual([r.seq for r in got], model[m])
                self.assertEqual(self.store.next_seq(m), next_seq[m])
                self.assertEqual(self.store.pending_count(m), len(model[m]))

    # Distinct node ids per hypothesis example: the store is shared.
    _model_ids = itertools.count(1000)

    def test_newest_summon_per_node_with_webhook(self) -> None:
        """One row per node that has a webhook: its newest unacknowledged
        summon-class event; nodes without webhooks, queue-class events and
        acknowledged events do not count."""
        s = self.store
        c = "0" * 66
        rows = [
            EventRow(A, 1, "message", True, 1.0, "{}"),
            EventRow(A, 2, "closed", True, 2.0, "{}"),
            EventRow(A, 3, "message", False, 3.0, "{}"),
            EventRow(B, 1, "message", True, 1.0, "{}"),
            EventRow(c, 1, "message", True, 1.0, "{}"),
        ]
        s.append_events(rows)
        s.add_webhook(WebhookRow(A, "w", "https://a.example/", 1.0))
        s.add_webhook(WebhookRow(B, "w", "https://b.example/", 1.0))
        self.assertEqual(s.newest_summons(), [rows[1], rows[3]])  # A < B
        s.ack(B, 1)
        self.assertEqual(s.newest_summons(), [rows[1]])

    # -- connections --------------------------------------------------------

    def test_put_replaces(self) -> None:
        """put_connection with an existing conn_id replaces the row (here
        handshake -> open with their_init)."""
        hs = connection("c1", A, 5.0, "handshake")
        self.store.put_connection(hs)
        self.assertEqual(self.store.get_connection("c1"), hs)
        opened = connection("c1", A, 5.0, "open")
        self.store.put_connection(opened)
        self.assertEqual(self.store.connections(A), [opened])
        self.assertIsNone(self.store.get_connection("nope"))

    def test_close_connection(self) -> None:
        """close_connection sets state closed and closed_seq; an unknown id
        is a StoreError."""
        self.store.put_connection(connection("c1", A, 5.0))
        self.store.close_connection("c1", 7)
        self.assertEqual(
            self.store.get_connection("c1"),
            connection("c1", A, 5.0, "closed", closed_seq=7),
        )
        e = self.assertRaises(StoreError, self.store.close_connection, "zz", 1)
        self.assertEqual(str(e), "unknown connection 'zz'")

    def test_invalid_rows_refused(self) -> None:
        """An unknown state, a closed row without closed_seq and an open row
        with one are StoreErrors and store nothing."""
        for bad in [
            connection("c1", A, 1.0, "dead"),
            connection("c1", A, 1.0, "closed"),
            connection("c1", A, 1.0, "open", closed_seq=3),
        ]:
            self.assertRaises(StoreError, self.store.put_connection, bad)
        self.assertEqual(self.store.connections(A), [])

    def test_unclosed_connections(self) -> None:
        """unclosed_connections lists handshake and open rows of every node,
        ordered by since, and no closed ones."""
        rows = [
            connection("c1", A, 3.0, "open"),
            connection("c2", B, 1.0, "handshake"),
            connection("c3", A, 2.0, "closed", closed_seq=1),
        ]
        for r in rows:
            self.store.put_connection(r)
        self.assertEqual(self.store.unclosed_connections(), [rows[1], rows[0]])

    # -- webhooks -----------------------------------------------------------

    def test_add_list_remove(self) -> None:
        """Webhooks are listed oldest first, counted, and removed once; a
        node cannot see, count or remove another node's webhook."""
        w1 = WebhookRow(A, "w1", "https://a.example/1", 2.0)
        w2 = WebhookRow(A, "w2", "https://a.example/2", 1.0)
        wb = WebhookRow(B, "w1", "https://b.example/1", 1.5)
        for w in (w1, w2, wb):
            self.store.add_webhook(w)
        self.assertEqual(self.store.webhooks(A), [w2, w1])
        self.assertEqual(self.store.webhook_count(A), 2)
        self.assertFalse(self.store.remove_webhook(B, "w2"))
        self.assertTrue(self.store.remove_webhook(A, "w1"))
        self.assertFalse(self.store.remove_webhook(A, "w1"))
        self.assertEqual(self.store.webhooks(A), [w2])
        self.assertEqual(self.store.webhooks(B), [wb])
        self.assertEqual(self.store.webhook_count(B), 1)

    def test_duplicate_id_refused(self) -> None:
        """A second webhook with the same id for the same node is a
        StoreError; the first one stays."""
        w = WebhookRow(A, "w1", "https://a.example/1", 2.0)
        self.store.add_webhook(w)
        e = self.assertRaises(
            StoreError,
            self.store.add_webhook,
            WebhookRow(A, "w1", "https://other.example/", 3.0),
        )
        self.assertEqual(str(e), f"node {A} already has a webhook 'w1'")
        self.assertEqual(self.store.webhooks(A), [w])

    # -- peer storage -------------------------------------------------------

    def test_peer_storage_keeps_the_newest_blob(self) -> None:
        """put_peer_storage keeps one blob per node and peer: a later one
        replaces it (no history), an empty blob is a blob, and it survives
        a reopen."""
        peer, other = node(0xFEE), node(0xFED)
        self.assertIsNone(self.store.get_peer_storage(A, peer))
        for i in range(50):
            self.store.put_peer_storage(A, peer, bytes([i]) * 100, float(i))
        self.store.put_peer_storage(A, other, b"", 1.0)
        self.assertEqual(self.store.get_peer_storage(A, peer), bytes([49]) * 100)
        self.assertEqual(self.store.get_peer_storage(A, other), b"")
        s2 = self.reopen_store(self.store)
        self.assertEqual(s2.get_peer_storage(A, peer), bytes([49]) * 100)
        self.assertEqual(s2.get_peer_storage(A, other), b"")

    def test_peer_storage_tenant_isolation(self) -> None:
        """A node never sees the blob another node's peer stored, even for
        the same peer."""
        peer = node(0xFEE)
        self.store.put_peer_storage(A, peer, b"for A", 1.0)
        self.assertIsNone(self.store.get_peer_storage(B, peer))
        self.store.put_peer_storage(B, peer, b"for B", 2.0)
        self.assertEqual(self.store.get_peer_storage(A, peer), b"for A")
        self.assertEqual(self.store.get_peer_storage(B, peer), b"for B")

    def test_peer_storage_size_limit(self) -> None:
        """A 65531-byte blob is kept; a 65532-byte one is a StoreError and
        leaves the kept blob as it was."""
        peer = node(0xFEE)
        biggest = bytes(range(256)) * 255 + bytes(251)
        self.assertEqual(len(biggest), 65531)
        self.store.put_peer_storage(A, peer, biggest, 1.0)
        self.assertEqual(self.store.get_peer_storage(A, peer), biggest)
        e = self.assertRaises(
            StoreError, self.store.put_peer_storage, A, peer, bytes(65532), 2.0
        )
        self.assertIn("65532 bytes exceeds 65531", str(e))
        self.assertEqual(self.store.get_peer_storage(A, peer), biggest)

    def test_peer_storage_in_transaction(self) -> None:
        """put_peer_storage joins an open transaction: undone with it."""
        peer = node(0xFEE)

        class Boom(Exception):
            pass

        with self.assertRaises(Boom):
            with self.store.transaction():
                self.store.put_peer_storage(A, peer, b"x", 1.0)
                raise Boom()
        self.assertIsNone(self.store.get_peer_storage(A, peer))

    # -- fsync=False --------------------------------------------------------

    def test_put_connection_without_fsync_commits(self) -> None:
        """put_connection(fsync=False) commits (a separate connection sees
        the row), still refuses a bad row, and inside a transaction is an
        ordinary write of it."""
        s = self.store
        row = ConnectionRow("c1", A, B, "127.0.0.1:9735", False, 1.0, "handshake")
        s.put_connection(row, fsync=False)
        self.assertEqual(self.committed_count("connections"), 1)
        self.assertEqual(s.get_connection("c1"), row)
        bad = ConnectionRow("c2", A, B, "127.0.0.1:9735", False, 1.0, "closed")
        self.assertRaises(StoreError, s.put_connection, bad, fsync=False)
        self.assertIsNone(s.get_connection("c2"))
        opened = ConnectionRow("c1", A, B, "127.0.0.1:9735", False, 1.0, "open")
        with s.transaction():
            s.put_connection(opened, fsync=False)
        self.assertEqual(s.get_connection("c1"), opened)

    def test_ack_without_fsync_commits(self) -> None:
        """ack(fsync=False) deletes the events and the deletion is
        committed."""
        s = self.store
        s.append_events([event(A, 1), event(A, 2)])
        s.ack(A, 1, fsync=False)
        self.assertEqual([r.seq for r in s.events_after(A, 0, 10)], [2])
        self.assertEqual(self.committed_count("events"), 1)

    # -- transactions -------------------------------------------------------

    def test_exception_rolls_back_everything(self) -> None:
        """An exception inside transaction() propagates and undoes every
        write made in it: events, next_seq, ack, connections, webhooks."""
        self.store.append_events([event(A, 1)])

        class Boom(Exception):
            pass

        def body() -> None:
            with self.store.transaction():
                self.store.append_events([event(A, 2), event(B, 1)])
                self.store.ack(A, 2)
                self.store.put_connection(connection("c1", A, 1.0))
                self.store.add_webhook(WebhookRow(A, "w", "https://x/", 1.0))
                raise Boom()

        self.assertRaises(Boom, body)
        self.assertEqual(self.store.events_after(A, 0, 10), [event(A, 1)])
        self.assertEqual(self.store.next_seq(A), 2)
        self.assertEqual(self.store.next_seq(B), 1)
        self.assertEqual(self.store.connections(A), [])
        self.assertEqual(self.store.webhooks(A), [])
        self.assertTrue(self.store.writable())

    def test_commit_happens_at_outer_end(self) -> None:
        """Writes in a transaction, also from nested ones, become visible to
        other connections only when the outermost block ends."""
        with self.store.transaction():
            with self.store.transaction():
                self.store.append_events([event(A, 1)])
            self.store.append_events([event(A, 2)])
            self.assertEqual(self.committed_count("events"), 0)
        self.assertEqual(self.committed_count("events"), 2)

    def test_failed_inner_block_undone_outer_continues(self) -> None:
        """If a nested block (or a store method, like a duplicate
        add_webhook) raises and the caller catches it, only that block's
        writes are undone; the outer transaction commits the rest."""
        hook = WebhookRow(A, "w", "https://x/", 1.0)
        self.store.add_webhook(hook)
        with self.store.transaction():
            self.store.append_events([event(A, 1)])
            try:
                with self.store.transaction():
                    self.store.append_events([event(A, 2)])
                    raise KeyError("inner")
            except KeyError:
                pass
            self.assertRaises(StoreError, self.store.add_webhook, hook)
            self.store.append_events([event(A, 2, kind="closed")])
        self.assertEqual(
            self.store.events_after(A, 0, 10), [event(A, 1), event(A, 2, "closed")]
        )
        self.assertEqual(self.store.next_seq(A), 3)
        self.assertEqual(self.store.webhooks(A), [hook])

    def test_outer_failure_undoes_finished_inner(self) -> None:
        """A nested block that finished is still undone when the outer one
        raises: inner blocks join the outer transaction."""

        def body() -> None:
            with self.store.transaction():
                with self.store.transaction():
                    self.store.append_events([event(A, 1)])
                raise ValueError("outer")

        self.assertRaises(ValueError, body)
        self.assertEqual(self.store.next_seq(A), 1)
        self.assertEqual(self.committed_count("events"), 0)

    # -- vault --------------------------------------------------------------

    def test_vault_round_trip(self) -> None:
        """put (0 -> 1 -> 2), get, list and remove; a removed name reads as
        never written and can be created again from version 0."""
        s = self.store
        self.assertIsNone(s.vault_get(A, "channels.v1"))
        self.assertEqual(s.vault_put(A, "channels.v1", b"\x8f\x3a", 0, 8, 1.0), 1)
        self.assertEqual(s.vault_get(A, "channels.v1"), (1, b"\x8f\x3a"))
        self.assertEqual(s.vault_put(A, "channels.v1", b"abc", 1, 8, 2.0), 2)
        self.assertEqual(s.vault_put(A, "a", b"", 0, 8, 3.0), 1)
        self.assertEqual(s.vault_get(A, "a"), (1, b""))
        self.assertEqual(
            s.vault_list(A),
            [VaultEntry("a", 1, 0), VaultEntry("channels.v1", 2, 3)],
        )
        s.vault_remove(A, "channels.v1", 2)
        self.assertIsNone(s.vault_get(A, "channels.v1"))
        self.assertEqual(s.vault_list(A), [VaultEntry("a", 1, 0)])
        self.assertEqual(s.vault_put(A, "channels.v1", b"new", 0, 8, 4.0), 1)
        self.assertEqual(self.committed_count("vault"), 2)

    def test_vault_conflicts_change_nothing(self) -> None:
        """A put or remove naming another version raises VersionConflict
        with the current version and leaves the entry as it was."""
        s = self.store
        s.vault_put(A, "n", b"one", 0, 8, 1.0)
        s.vault_put(A, "n", b"two", 1, 8, 1.0)
        for stale in (0, 1, 3):
            e = self.assertRaises(
                VersionConflict, s.vault_put, A, "n", b"x", stale, 8, 2.0
            )
            self.assertEqual(e.current, 2)
            e = self.assertRaises(VersionConflict, s.vault_remove, A, "n", stale)
            self.assertEqual(e.current, 2)
        self.assertEqual(s.vault_get(A, "n"), (2, b"two"))
        e = self.assertRaises(VersionConflict, s.vault_put, A, "new", b"x", 5, 8, 2.0)
        self.assertEqual(e.current, 0)
        self.assertIsNone(s.vault_get(A, "new"))
        e = self.assertRaises(VersionConflict, s.vault_remove, A, "new", 1)
        self.assertEqual(e.current, 0)
        s.vault_remove(A, "new", 0)  # nothing there, nothing to do
        self.assertIsInstance(e, StoreError)

    def test_vault_two_writers_one_wins(self) -> None:
        """Two writers that read the same version: the first write wins,
        the second conflicts, rereads and then wins."""
        s = self.store
        s.vault_put(A, "state", b"base", 0, 8, 1.0)
        seen_by_1 = seen_by_2 = s.vault_get(A, "state")
        assert seen_by_1 is not None and seen_by_2 is not None
        self.assertEqual(s.vault_put(A, "state", b"w1", seen_by_1[0], 8, 2.0), 2)
        e = self.assertRaises(
            VersionConflict, s.vault_put, A, "state", b"w2", seen_by_2[0], 8, 2.0
        )
        self.assertEqual(e.current, 2)
        self.assertEqual(s.vault_put(A, "state", b"w1+w2", e.current, 8, 3.0), 3)
        self.assertEqual(s.vault_get(A, "state"), (3, b"w1+w2"))

    def test_vault_entry_limit(self) -> None:
        """New names beyond max_entries raise VaultFull (nothing stored);
        existing names can still be rewritten, and removing frees a slot."""
        s = self.store
        s.vault_put(A, "a", b"1", 0, 2, 1.0)
        s.vault_put(A, "b", b"1", 0, 2, 1.0)
        self.assertRaises(VaultFull, s.vault_put, A, "c", b"1", 0, 2, 1.0)
        self.assertIsNone(s.vault_get(A, "c"))
        self.assertEqual(s.vault_put(A, "a", b"2", 1, 2, 1.0), 2)
        s.vault_put(B, "c", b"1", 0, 2, 1.0)  # another node's own limit
        s.vault_remove(A, "b", 1)
        self.assertEqual(s.vault_put(A, "c", b"1", 0, 2, 1.0), 1)

    def test_vault_isolation(self) -> None:
        """One node never sees or touches another's entries."""
        s = self.store
        s.vault_put(A, "n", b"a-secret", 0, 8, 1.0)
        self.assertIsNone(s.vault_get(B, "n"))
        self.assertEqual(s.vault_list(B), [])
        self.assertEqual(s.vault_put(B, "n", b"b", 0, 8, 1.0), 1)
        self.assertRaises(VersionConflict, s.vault_remove, B, "n", 5)
        s.vault_remove(B, "n", 1)
        self.assertEqual(s.vault_get(A, "n"), (1, b"a-secret"))

    def test_vault_and_accounts_survive_reopen(self) -> None:
        """Vault entries and accounts are durable."""
        self.store.vault_put(A, "n", b"blob", 0, 8, 1.0)
        row = AccountRow("alice", A, "scrypt$14$8$1$00$11", b"sealed", 5.0)
        self.store.set_account(row)
        s2 = self.reopen_store(self.store)
        self.assertEqual(s2.vault_get(A, "n"), (1, b"blob"))
        self.assertEqual(s2.get_account("alice"), row)

    # -- accounts -----------------------------------------------------------

    def test_account_set_get_remove(self) -> None:
        """set binds a user name, get finds it by exact name, remove
        deletes the node's account."""
        s = self.store
        row = AccountRow("alice", A, "scrypt$14$8$1$00$11", b"sealed", 5.0)
        s.set_account(row)
        self.assertEqual(s.get_account("alice"), row)
        self.assertIsNone(s.get_account("Alice"))
        self.assertIsNone(s.get_account("bob"))
        self.assertEqual(self.committed_count("accounts"), 1)
        self.assertTrue(s.remove_account(A))
        self.assertIsNone(s.get_account("alice"))
        self.assertFalse(s.remove_account(A))

    def test_account_replaced(self) -> None:
        """A node has one account: a new set replaces it (also under a new
        user name, which frees the old one)."""
        s = self.store
        s.set_account(AccountRow("alice", A, "h1", b"b1", 1.0))
        s.set_account(AccountRow("alice", A, "h2", b"b2", 2.0))
        self.assertEqual(
            s.get_account("alice"), AccountRow("alice", A, "h2", b"b2", 2.0)
        )
        s.set_account(AccountRow("alice2", A, "h3", b"b3", 3.0))
        self.assertIsNone(s.get_account("alice"))
        self.assertEqual(
            s.get_account("alice2"), AccountRow("alice2", A, "h3", b"b3", 3.0)
        )
        self.assertEqual(self.committed_count("accounts"), 1)
        s.set_account(AccountRow("alice", B, "h4", b"b4", 4.0))
        self.assertEqual(
            s.get_account("alice"), AccountRow("alice", B, "h4", b"b4", 4.0)
        )

    def test_account_user_taken(self) -> None:
        """A user name bound to another node raises UserTaken; nothing
        changes for either node."""
        s = self.store
        s.set_account(AccountRow("alice", A, "h1", b"b1", 1.0))
        s.set_account(AccountRow("bob", B, "h2", b"b2", 1.0))
        e = self.assertRaises(
            UserTaken, s.set_account, AccountRow("alice", B, "h3", b"b3", 2.0)
        )
        self.assertIsInstance(e, StoreError)
        self.assertEqual(
            s.get_account("alice"), AccountRow("alice", A, "h1", b"b1", 1.0)
        )
        self.assertEqual(s.get_account("bob"), AccountRow("bob", B, "h2", b"b2", 1.0))
        self.assertFalse(s.remove_account(node(0xC)))
        self.assertIsNotNone(s.get_account("alice"))

    def test_account_row_repr_hides_secrets(self) -> None:
        """An AccountRow's repr shows neither the auth hash nor the blob."""
        text = repr(AccountRow("alice", A, "scrypt$secret-hash", b"sealed-key", 1.0))
        self.assertNotIn("secret-hash", text)
        self.assertNotIn("sealed-key", text)
        self.assertIn("alice", text)

    def test_writable_probe_changes_nothing(self) -> None:
        """writable() is True on a healthy store, also inside a transaction
        whose writes it does not disturb, and changes nothing itself."""
        self.assertTrue(self.store.writable())
        with self.store.transaction():
            self.store.append_events([event(A, 1)])
            self.assertTrue(self.store.writable())
        self.assertEqual(self.store.events_after(A, 0, 10), [event(A, 1)])
        self.assertEqual(self.committed_count("events"), 1)


class StoreTestCase(SynchronousTestCase):
    """Gives each test a fresh data dir path and closes stores it opened."""

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())

    def open_store(self, data_dir: str | None = None, **kwargs: str) -> Store:
        """Open a store (closed again at cleanup)."""
        s = Store.open(data_dir or self.data_dir, **kwargs)
        self.addCleanup(s.close)
        return s


class SqliteContractTests(StoreContractTests, StoreTestCase):
    """SqliteStore keeps the IStore contract."""

    def make_store(self) -> IStore:
        """Open a SqliteStore in a fresh data dir."""
        return self.open_store()

    def reopen_store(self, store: IStore) -> IStore:
        """Close the store and open its data dir again."""
        store.close()
        return self.open_store()

    def committed_count(self, table: str) -> int:
        """Count with a separate sqlite3 connection (committed rows only)."""
        assert table in {"events", "connections", "webhooks", "vault", "accounts"}
        conn = sqlite3.connect(os.path.join(self.data_dir, DB_FILE))
        try:
            (count,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(count)
        finally:
            conn.close()

    def test_store_is_sqlite_store(self) -> None:
        """``Store`` is the old name of SqliteStore: the same class."""
        self.assertIs(Store, SqliteStore)
        self.assertIsInstance(self.store, SqliteStore)


#: The tables committed_count may be asked about.
COMMITTED_TABLES = frozenset(
    {"events", "connections", "webhooks", "vault", "accounts", "peer_storage"}
)


class PostgresContractTests(StoreContractTests, SynchronousTestCase):
    """PostgresStore keeps the IStore contract, against a real PostgreSQL
    (one server for the run, a fresh database per test)."""

    def make_store(self) -> IStore:
        """Open a PostgresStore on a fresh database (key in a temp dir)."""
        self.url = new_database()
        key_dir = os.path.abspath(self.mktemp())
        os.makedirs(key_dir)
        self.key_path = os.path.join(key_dir, KEY_FILE)
        return self.open_pg()

    def open_pg(self) -> PostgresStore:
        """Open the test's database (closed again at cleanup)."""
        s = PostgresStore.open(self.url, key_path=self.key_path)
        self.addCleanup(s.close)
        return s

    def reopen_store(self, store: IStore) -> IStore:
        """Close the store and connect to the same database again."""
        store.close()
        return self.open_pg()

    def committed_count(self, table: str) -> int:
        """Count with a separate connection (committed rows only)."""
        import psycopg

        assert table in COMMITTED_TABLES, table
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])


class DataDirTests(StoreTestCase):
    """Creating, reopening and closing a data dir."""

    def test_create_fresh(self) -> None:
        """A missing data dir (and its missing parents) is created with mode
        0700, holding a v4 database, a lock file and a valid 32-byte key, all
        owner-only."""
        data_dir = os.path.join(self.data_dir, "nested", "data")
        s = self.open_store(data_dir)
        self.assertEqual(file_mode(data_dir), 0o700)
        self.assertEqual(
            sorted(n for n in os.listdir(data_dir) if not n.endswith(("-wal", "-shm"))),
            sorted([DB_FILE, KEY_FILE, LOCK_FILE]),
        )
        for name in os.listdir(data_dir):
            self.assertEqual(file_mode(os.path.join(data_dir, name)), 0o600, name)
        self.assertEqual(read_version(os.path.join(data_dir, DB_FILE)), 4)
        self.assertEqual(Store.SCHEMA_VERSION, 4)
        self.assertEqual(len(s.server_secret), 32)
        coincurve.PrivateKey(s.server_secret)  # raises if invalid
        self.assertEqual(s.data_dir, data_dir)
        self.assertEqual(s.next_seq(A), 1)

    def test_key_file_format(self) -> None:
        """server.key is the secret as 64 lowercase hex digits and a newline."""
        s = self.open_store()
        with open(os.path.join(self.data_dir, KEY_FILE)) as f:
            text = f.read()
        self.assertRegex(text, r"\A[0-9a-f]{64}\n\Z")
        self.assertEqual(bytes.fromhex(text), s.server_secret)

    def test_survives_process_crash(self) -> None:
        """An event committed by a process that dies without closing the
        store is there at the next open, and the dead process' lock is gone."""
        result = run_child(CRASHING_CHILD, self.data_dir, A)
        self.assertEqual(result.returncode, 0, result.stderr)
        s = self.open_store()
        self.assertEqual(
            s.events_after(A, 0, 10), [EventRow(A, 1, "message", True, 5.0, "{}")]
        )
        self.assertEqual(s.next_seq(A), 2)

    def test_data_dir_is_a_file(self) -> None:
        """A data dir path that is a regular file is a StoreError naming it."""
        with open(self.data_dir, "w") as f:
            f.write("x")
        e = self.assertRaises(StoreError, Store.open, self.data_dir)
        self.assertIs(type(e), StoreError)
        self.assertIn(self.data_dir, str(e))
        self.assertIn("not a directory", str(e))

    def test_repr_has_no_secret(self) -> None:
        """repr names the data dir and state, never the server key."""
        s = self.open_store()
        self.assertEqual(repr(s), f"<Store {self.data_dir!r} open>")
        self.assertNotIn(s.server_secret.hex(), repr(s))
        s.close()
        self.assertEqual(repr(s), f"<Store {self.data_dir!r} closed>")

    def test_context_manager_closes(self) -> None:
        """Leaving a ``with Store.open(...)`` block releases the lock."""
        with Store.open(self.data_dir) as s:
            s.append_events([event(A, 1)])
        self.assertFalse(s.writable())
        self.open_store()  # would raise DataDirLocked if still held

    def test_resume_writes_pid(self) -> None:
        """resume() after suspend() writes this process's pid into the lock
        file again (after twistd's fork it is the child's) and keeps the
        lock throughout."""
        s = self.open_store()
        lock = os.path.join(self.data_dir, LOCK_FILE)
        with open(lock, "w") as f:
            f.write("1\n")
        s.suspend()
        self.assertRaises(DataDirLocked, Store.open, self.data_dir)
        s.resume()
        with open(lock) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")


class LockTests(StoreTestCase):
    """Only one Store, in one process, may use a data dir at a time."""

    def test_second_open_same_process(self) -> None:
        """A second open while the first is open raises DataDirLocked naming
        the dir and our pid; after close() opening works again."""
        s = Store.open(self.data_dir)
        self.addCleanup(s.close)
        e = self.assertRaises(DataDirLocked, Store.open, self.data_dir)
        self.assertEqual(
            str(e),
            f"another lnproxy process (pid {os.getpid()}) is using the data dir "
            f"{self.data_dir}; refusing to start",
        )
        s.close()
        self.open_store().append_events([event(A, 1)])

    def test_second_open_other_process(self) -> None:
        """Another process gets DataDirLocked (exit 3 here) while we hold the
        store, with the dir and our pid in the message; once we close, it
        opens the store fine."""
        s = Store.open(self.data_dir)
        self.addCleanup(s.close)
        locked = run_child(LOCKED_CHILD, self.data_dir)
        self.assertEqual(locked.returncode, 3, locked.stderr)
        self.assertIn(f"data dir {self.data_dir}", locked.stderr)
        self.assertIn(f"another lnproxy process (pid {os.getpid()})", locked.stderr)
        s.close()
        free = run_child(LOCKED_CHILD, self.data_dir)
        self.assertEqual(free.returncode, 0, free.stderr)

    def test_lock_file_holds_pid(self) -> None:
        """The lock file holds the owner's pid."""
        self.open_store()
        with open(os.path.join(self.data_dir, LOCK_FILE)) as f:
            self.assertEqual(f.read(), f"{os.getpid()}\n")

    def test_failed_open_releases_lock(self) -> None:
        """When open fails after taking the lock (bad key), the lock is
        released, so a fixed data dir opens at once."""
        os.mkdir(self.data_dir, 0o700)
        key = os.path.join(self.data_dir, KEY_FILE)
        with open(key, "w") as f:
            f.write("nonsense\n")
        os.chmod(key, 0o600)
        self.assertRaises(StoreError, Store.open, self.data_dir)
        os.unlink(key)
        self.open_store()


class ServerKeyTests(StoreTestCase):
    """The server key file is checked strictly before anything else."""

    def write_key(self, content: bytes, mode: int = 0o600) -> str:
        """Write ``server.key`` into a fresh data dir; return its path."""
        os.mkdir(self.data_dir, 0o700)
        path = os.path.join(self.data_dir, KEY_FILE)
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        return path

    def test_existing_key_reused(self) -> None:
        """A valid key written by someone else is used as is."""
        secret = bytes(range(1, 33))
        self.write_key(secret.hex().upper().encode() + b"\n")
        self.assertEqual(self.open_store().server_secret, secret)

    def test_group_readable_key_refused(self) -> None:
        """A key with mode 0644 is refused with a message naming the file,
        the mode and the fix, and no database is created."""
        secret = bytes(range(1, 33))
        path = self.write_key(secret.hex().encode() + b"\n", 0o644)
        e = self.assertRaises(StoreError, Store.open, self.data_dir)
        self.assertIs(type(e), StoreError)
        self.assertEqual(
            str(e),
            f"server key {path} has mode 0644; it must not be accessible by "
            f"group or others (run: chmod 600 {path})",
        )
        self.assertNotIn(secret.hex(), str(e))
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DB_FILE)))

    def test_loosened_key_refused_on_reopen(self) -> None:
        """A key created by the store and later made world-readable (0604)
        is refused at the next open."""
        self.open_store().close()
        os.chmod(os.path.join(self.data_dir, KEY_FILE), 0o604)
        e = self.assertRaises(StoreError, Store.open, self.data_dir)
        self.assertIn("has mode 0604", str(e))

    def test_malformed_key_refused(self) -> None:
        """Empty, non-hex, short, long, trailing junk and non-ASCII contents
        are each refused as malformed."""
        contents = [
            b"",
            b"zz" * 32 + b"\n",
            b"ab" * 31 + b"\n",
            b"ab" * 33 + b"\n",
            b"ab" * 32 + b"\njunk\n",
            b"\xff" * 64,
            b"ab" * 200,
        ]
        for content in contents:
            path = self.write_key(content)
            e = self.assertRaises(StoreError, Store.open, self.data_dir)
            self.assertEqual(
                str(e),
                f"server key {path} is malformed: expected 64 hex digits "
                "(32 bytes) and an optional newline",
                content,
            )
            os.unlink(path)
            shutil.rmtree(self.data_dir)

    def test_invalid_scalar_refused(self) -> None:
        """Zero and the curve order are well-formed hex but not secp256k1
        secret keys; both are refused without echoing the key."""
        for hex_key in ["00" * 32, CURVE_ORDER_HEX]:
            path = self.write_key(hex_key.encode() + b"\n")
            e = self.assertRaises(StoreError, Store.open, self.data_dir)
            self.assertEqual(
                str(e),
                f"server key {path} does not hold a valid secp256k1 secret key",
            )
            os.unlink(path)
            shutil.rmtree(self.data_dir)

    def test_symlinked_key_refused(self) -> None:
        """A server.key that is a symlink (even to a good key) is refused."""
        os.mkdir(self.data_dir, 0o700)
        target = os.path.abspath(self.mktemp())
        with open(target, "w") as f:
            f.write(bytes(range(1, 33)).hex())
        os.chmod(target, 0o600)
        os.symlink(target, os.path.join(self.data_dir, KEY_FILE))
        e = self.assertRaises(StoreError, Store.open, self.data_dir)
        self.assertIn("is a symlink", str(e))

    def test_stale_temp_key_ignored(self) -> None:
        """A server.key.tmp left by a crash during key creation is replaced
        and removed; the new key is valid."""
        os.mkdir(self.data_dir, 0o700)
        temp = os.path.join(self.data_dir, KEY_FILE + ".tmp")
        with open(temp, "w") as f:
            f.write("half")
        s = self.open_store()
        self.assertFalse(os.path.exists(temp))
        coincurve.PrivateKey(s.server_secret)


class ExplicitKeyPathTests(StoreTestCase):
    """Store.open(key_path=...): the server key lives in a given file."""

    def setUp(self) -> None:
        super().setUp()
        self.key_dir = os.path.abspath(self.mktemp())
        os.mkdir(self.key_dir, 0o700)
        self.key_path = os.path.join(self.key_dir, "node.key")

    def test_created_there_and_reused(self) -> None:
        """A missing key file is created at the given path (mode 0600, hex
        and newline), none in the data dir, and the same key is read at the
        next open; a relative path is resolved against the working
        directory."""
        s = self.open_store(key_path=self.key_path)
        self.assertEqual(file_mode(self.key_path), 0o600)
        with open(self.key_path) as f:
            self.assertEqual(f.read(), s.server_secret.hex() + "\n")
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, KEY_FILE)))
        self.assertEqual(os.listdir(self.key_dir), ["node.key"])
        secret = s.server_secret
        s.close()
        relative = os.path.relpath(self.key_path)
        self.assertEqual(self.open_store(key_path=relative).server_secret, secret)

    def test_checked_like_the_default(self) -> None:
        """A group-readable key at the given path is refused, naming that
        path, before the database is created."""
        with open(self.key_path, "w") as f:
            f.write(bytes(range(1, 33)).hex() + "\n")
        os.chmod(self.key_path, 0o640)
        e = self.assertRaises(
            StoreError, Store.open, self.data_dir, key_path=self.key_path
        )
        self.assertIn(f"server key {self.key_path} has mode 0640", str(e))
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, DB_FILE)))

    def test_missing_directory(self) -> None:
        """A key path in a missing directory is a StoreError naming it, and
        the data dir lock is released."""
        path = os.path.join(self.key_dir, "missing", "node.key")
        e = self.assertRaises(StoreError, Store.open, self.data_dir, key_path=path)
        self.assertIn(f"cannot create server key {path}", str(e))
        self.open_store()

    def test_creation_race_uses_the_winner(self) -> None:
        """If another process creates the key file while we create ours,
        ours is discarded (no temp file left) and theirs is used, so every
        process ends up with the same key."""
        theirs = bytes(range(1, 33))
        real = datadir_module._new_secret

        def racing() -> bytes:
            with open(self.key_path, "x") as f:
                f.write(theirs.hex() + "\n")
            os.chmod(self.key_path, 0o600)
            return real()

        self.patch(datadir_module, "_new_secret", racing)
        s = self.open_store(key_path=self.key_path)
        self.assertEqual(s.server_secret, theirs)
        self.assertEqual(os.listdir(self.key_dir), ["node.key"])


class DatabaseTests(StoreTestCase):
    """Creating, checking and upgrading the database file."""

    def setUp(self) -> None:
        super().setUp()
        os.mkdir(self.data_dir, 0o700)
        self.db_path = os.path.join(self.data_dir, DB_FILE)

    def make_v1_db(self) -> None:
        """Build a v1 database from v1.sql with a few rows, as lnproxy 1
        would have left it."""
        conn = sqlite3.connect(self.db_path, isolation_level=None)
        conn.executescript(schema_sql("v1.sql"))
        conn.execute("INSERT INTO version (version) VALUES (1)")
        conn.execute("INSERT INTO nodes VALUES (?, ?)", (A, 3))
        for seq in (1, 2):
            e = event(A, seq)
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                (e.node_id, e.seq, e.kind, int(e.summon), e.at, e.params),
            )
        conn.execute(
            "INSERT INTO connections VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ("c1", A, node(0xFEE), "127.0.0.1:9735", 1, 10.0, "open", "0010", None),
        )
        conn.close()

    def schema_now(self) -> tuple[list[str], list[tuple[str, str, str, str]]]:
        """Return :func:`schema_of` the database file, via its own connection."""
        conn = sqlite3.connect(self.db_path)
        try:
            return schema_of(conn)
        finally:
            conn.close()

    def test_pragmas(self) -> None:
        """get_db gives WAL, synchronous=FULL (2), foreign keys on, and
        autocommit mode; synchronous=NORMAL (1) on request."""
        conn = get_db(self.db_path)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        self.assertEqual(conn.execute("PRAGMA synchronous").fetchone(), (2,))
        self.assertEqual(conn.execute("PRAGMA foreign_keys").fetchone(), (1,))
        self.assertIsNone(conn.isolation_level)
        other = get_db(self.db_path, synchronous="NORMAL")
        self.addCleanup(other.close)
        self.assertEqual(other.execute("PRAGMA synchronous").fetchone(), (1,))
        self.assertRaises(ValueError, get_db, self.db_path, synchronous="OFF")

    def test_memory_database_refused(self) -> None:
        """get_db refuses ":memory:" (no WAL, nothing to rename) instead of
        creating a file named ":memory:" in the current directory."""
        e = self.assertRaises(ValueError, get_db, ":memory:")
        self.assertEqual(str(e), "get_db needs a plain file path, not ':memory:'")
        self.assertFalse(os.path.exists(":memory:"))

    def make_v2_db(self) -> None:
        """Build a v2 database from v2.sql with a few rows and a webhook,
        as lnproxy before peer storage would have left it."""
        conn = sqlite3.connect(self.db_path, isolation_level=None)
        conn.executescript(schema_sql("v2.sql"))
        conn.execute("INSERT INTO version (version) VALUES (2)")
        conn.execute("INSERT INTO nodes VALUES (?, ?)", (A, 2))
        e = event(A, 1)
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
            (e.node_id, e.seq, e.kind, int(e.summon), e.at, e.params),
        )
        conn.execute(
            "INSERT INTO webhooks VALUES (?, ?, ?, ?)",
            (A, "w1", "https://example.com/", 1.0),
        )
        conn.close()

    def test_upgrade_v2_to_v3(self) -> None:
        """A v2 database is backed up and upgraded (to v3, then v4) with its
        rows kept; peer storage works on it; its iterdump schema then equals
        a fresh database's, the new table included."""
        self.make_v2_db()
        s = self.open_store()
        self.assertEqual(read_version(self.db_path), 4)
        self.assertEqual(read_version(self.db_path + "-backup-v2"), 2)
        self.assertEqual(s.events_after(A, 0, 10), [event(A, 1)])
        self.assertEqual(s.next_seq(A), 2)
        self.assertEqual(
            s.webhooks(A), [WebhookRow(A, "w1", "https://example.com/", 1.0)]
        )
        s.put_peer_storage(A, node(0xFEE), b"blob", 1.0)
        self.assertEqual(s.get_peer_storage(A, node(0xFEE)), b"blob")
        s.close()
        fresh = get_db(os.path.join(self.data_dir, "fresh.sqlite"))
        self.addCleanup(fresh.close)
        upgraded = get_db(self.db_path)
        self.addCleanup(upgraded.close)
        self.assertEqual(schema_of(upgraded), schema_of(fresh))
        dump, master = schema_of(fresh)
        self.assertIn("peer_storage", {name for _, name, _, _ in master})
        self.assertTrue(any("peer_storage" in line for line in dump))

    def test_upgrade_v1_to_v2(self) -> None:
        """A v1 database is backed up, upgraded (to v2, v3, then v4) with
        its rows kept, made owner-only, and then has exactly the schema of a
        fresh database."""
        self.make_v1_db()
        s = self.open_store()
        self.assertEqual(read_version(self.db_path), 4)
        self.assertEqual(file_mode(self.db_path), 0o600)
        backup = self.db_path + "-backup-v1"
        self.assertEqual(read_version(backup), 1)
        self.assertEqual(file_mode(backup), 0o600)

        self.assertEqual(s.events_after(A, 0, 10), [event(A, 1), event(A, 2)])
        self.assertEqual(s.next_seq(A), 3)
        self.assertEqual(
            s.connections(A),
            [
                ConnectionRow(
                    "c1", A, node(0xFEE), "127.0.0.1:9735", True, 10.0, "open", "0010"
                )
            ],
        )
        hook = WebhookRow(A, "w1", "https://example.com/", 1.0)
        s.add_webhook(hook)
        self.assertEqual(s.webhooks(A), [hook])
        s.close()

        fresh = get_db(os.path.join(self.data_dir, "fresh.sqlite"))
        self.addCleanup(fresh.close)
        upgraded = get_db(self.db_path)
        self.addCleanup(upgraded.close)
        self.assertEqual(schema_of(upgraded), schema_of(fresh))
        # The comparison is not vacuous: it covers every table and index.
        dump, master = schema_of(fresh)
        names = {name for _, name, _, _ in master}
        self.assertTrue(
            {"version", "nodes", "events", "connections", "webhooks"} <= names
        )
        self.assertTrue({"peer_storage", "vault", "accounts"} <= names)
        self.assertIn("connections_node_id", names)
        self.assertEqual(len(dump), 9)

    def make_v3_db(self) -> None:
        """Build a v3 database from v3.sql with an event, a webhook and a
        peer storage blob, as lnproxy before the vault would have left it."""
        conn = sqlite3.connect(self.db_path, isolation_level=None)
        conn.executescript(schema_sql("v3.sql"))
        conn.execute("INSERT INTO version (version) VALUES (3)")
        conn.execute("INSERT INTO nodes VALUES (?, ?)", (A, 2))
        e = event(A, 1)
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
            (e.node_id, e.seq, e.kind, int(e.summon), e.at, e.params),
        )
        conn.execute(
            "INSERT INTO webhooks VALUES (?, ?, ?, ?)", (A, "w1", "https://x/", 1.0)
        )
        conn.execute(
            "INSERT INTO peer_storage VALUES (?, ?, ?, ?)", (A, node(0xFEE), b"ps", 1.0)
        )
        conn.close()

    def test_upgrade_v3_to_v4(self) -> None:
        """A v3 database is backed up as v3, upgraded to v4 with its rows
        kept, gets a working vault and accounts, and has exactly the schema
        of a fresh v4 database."""
        self.make_v3_db()
        s = self.open_store()
        self.assertEqual(read_version(self.db_path), 4)
        self.assertEqual(read_version(self.db_path + "-backup-v3"), 3)
        self.assertEqual(s.events_after(A, 0, 10), [event(A, 1)])
        self.assertEqual(s.webhooks(A), [WebhookRow(A, "w1", "https://x/", 1.0)])
        self.assertEqual(s.get_peer_storage(A, node(0xFEE)), b"ps")
        self.assertEqual(s.vault_put(A, "n", b"x", 0, 8, 2.0), 1)
        s.set_account(AccountRow("alice", A, "h", b"b", 2.0))
        self.assertEqual(s.get_account("alice"), AccountRow("alice", A, "h", b"b", 2.0))
        s.close()
        fresh = get_db(os.path.join(self.data_dir, "fresh.sqlite"))
        self.addCleanup(fresh.close)
        upgraded = get_db(self.db_path)
        self.addCleanup(upgraded.close)
        self.assertEqual(schema_of(upgraded), schema_of(fresh))
        _, master = schema_of(fresh)
        self.assertTrue({"vault", "accounts"} <= {name for _, name, _, _ in master})

    def test_upgrade_scripts_match_fresh_schema(self) -> None:
        """The CREATE statements of upgrade-to-v4.sql appear word for word
        in v4.sql (the two texts are kept identical)."""
        upgrade = " ".join(schema_sql("upgrade-to-v4.sql").split())
        fresh = " ".join(schema_sql("v4.sql").split())
        for table in ("vault", "accounts"):
            start = upgrade.index(f"CREATE TABLE {table}")
            end = upgrade.index(";", start)
            self.assertIn(upgrade[start:end], fresh)

    def test_upgrade_failure_leaves_v1(self) -> None:
        """If the upgrade script fails halfway, DBError is raised, the
        database is still exactly v1 (one transaction) with its backup, and
        a later open with the real script upgrades it."""
        self.make_v1_db()
        before = self.schema_now()
        real = schema_module._read_sql

        def broken(name: str) -> str:
            if name == "upgrade-to-v2.sql":
                return real(name) + "\nTHIS IS NOT SQL;\n"
            return real(name)

        patcher = self.patch(schema_module, "_read_sql", broken)
        e = self.assertRaises(DBError, Store.open, self.data_dir)
        self.assertIn("upgrading", str(e))
        self.assertIn("the database is unchanged", str(e))
        self.assertEqual(read_version(self.db_path), 1)
        self.assertEqual(self.schema_now(), before)
        self.assertTrue(os.path.exists(self.db_path + "-backup-v1"))
        patcher.restore()
        s = self.open_store()
        self.assertEqual(read_version(self.db_path), 4)
        self.assertEqual(s.next_seq(A), 3)

    def test_newer_version_refused(self) -> None:
        """A database claiming version 99 is refused with a clear DBError,
        and neither changed nor backed up."""
        get_db(self.db_path).close()
        conn = sqlite3.connect(self.db_path, isolation_level=None)
        conn.execute("UPDATE version SET version = 99")
        conn.close()
        e = self.assertRaises(DBError, Store.open, self.data_dir)
        self.assertEqual(
            str(e),
            f"{self.db_path} has schema version 99, newer than the version 4 "
            "this lnproxy understands; refusing to open it (run a newer "
            "lnproxy, or restore a backup)",
        )
        self.assertEqual(read_version(self.db_path), 99)
        self.assertEqual([n for n in os.listdir(self.data_dir) if "backup" in n], [])

    def test_corrupt_file_refused(self) -> None:
        """A file that is not SQLite is a DBError naming it, and is left
        byte for byte as it was."""
        junk = b"this is not a database file\n" * 100
        with open(self.db_path, "wb") as f:
            f.write(junk)
        e = self.assertRaises(DBError, Store.open, self.data_dir)
        self.assertIn(f"cannot read the schema version of {self.db_path}", str(e))
        self.assertIn("file is not a database", str(e))
        with open(self.db_path, "rb") as f:
            self.assertEqual(f.read(), junk)

    def test_foreign_sqlite_file_refused(self) -> None:
        """A SQLite file without our version table (or an empty file) is a
        DBError, not silently initialised."""
        conn = sqlite3.connect(self.db_path)
        conn.execute("CREATE TABLE other (x)")
        conn.close()
        e = self.assertRaises(DBError, get_db, self.db_path)
        self.assertIn("no such table: version", str(e))
        os.unlink(self.db_path)
        open(self.db_path, "wb").close()
        e = self.assertRaises(DBError, get_db, self.db_path)
        self.assertIn("no such table: version", str(e))

    def test_malformed_version_table_refused(self) -> None:
        """Two version rows are a DBError."""
        get_db(self.db_path).close()
        conn = sqlite3.connect(self.db_path, isolation_level=None)
        conn.execute("INSERT INTO version VALUES (2)")
        conn.close()
        e = self.assertRaises(DBError, get_db, self.db_path)
        self.assertIn("malformed version table", str(e))

    def test_failed_create_leaves_nothing(self) -> None:
        """If creating the schema fails, DBError is raised and nothing (no
        database, no temp file) is left in the directory."""
        self.patch(
            schema_module,
            "_read_sql",
            lambda name: "CREATE TABLE version (version INTEGER);\nCREATE TABLE (;",
        )
        e = self.assertRaises(DBError, get_db, self.db_path)
        self.assertIn(f"cannot create database {self.db_path}", str(e))
        self.assertEqual(os.listdir(self.data_dir), [])


class RelaxedCommitTests(StoreTestCase):
    """put_connection/ack(fsync=False) on SQLite: one commit at
    synchronous=NORMAL, then back to FULL."""

    def synchronous(self, s: Store) -> int:
        (mode,) = s._db().execute("PRAGMA synchronous").fetchone()
        return int(mode)

    def test_committed_and_setting_restored(self) -> None:
        """The row is committed (another connection sees it), the
        connection is back at synchronous=FULL (2) afterwards, also when the
        row is refused; inside a transaction the flag changes nothing."""
        s = self.open_store()
        row = ConnectionRow("c1", A, B, "127.0.0.1:9735", False, 1.0, "handshake")
        statements: list[str] = []
        s._db().set_trace_callback(statements.append)
        s.put_connection(row, fsync=False)
        s._db().set_trace_callback(None)
        pragmas = [x for x in statements if x.startswith("PRAGMA synchronous")]
        self.assertEqual(
            pragmas, ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"]
        )
        self.assertLess(
            statements.index("PRAGMA synchronous=NORMAL"),
            [i for i, x in enumerate(statements) if x.startswith("INSERT")][0],
        )
        self.assertEqual(self.synchronous(s), 2)
        other = sqlite3.connect(os.path.join(self.data_dir, "lnproxy.sqlite"))
        self.addCleanup(other.close)
        (count,) = other.execute("SELECT count(*) FROM connections").fetchone()
        self.assertEqual(count, 1)
        bad = ConnectionRow("c2", A, B, "127.0.0.1:9735", False, 1.0, "closed")
        self.assertRaises(StoreError, s.put_connection, bad, fsync=False)
        self.assertEqual(self.synchronous(s), 2)
        with s.transaction():
            s.put_connection(row, fsync=False)
            self.assertEqual(self.synchronous(s), 2)

    def test_ack_without_fsync(self) -> None:
        """ack(fsync=False) deletes under synchronous=NORMAL and restores
        FULL; the deletion is committed."""
        s = self.open_store()
        s.append_events([event(A, 1), event(A, 2)])
        statements: list[str] = []
        s._db().set_trace_callback(statements.append)
        s.ack(A, 1, fsync=False)
        s._db().set_trace_callback(None)
        pragmas = [x for x in statements if x.startswith("PRAGMA synchronous")]
        self.assertEqual(
            pragmas, ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"]
        )
        self.assertEqual(self.synchronous(s), 2)
        self.assertEqual([r.seq for r in s.events_after(A, 0, 10)], [2])


class SqliteTransactionTests(StoreTestCase):
    """SQLite specifics of transaction() and writable()."""

    def setUp(self) -> None:
        super().setUp()
        self.store = self.open_store()
        self.db_path = os.path.join(self.data_dir, DB_FILE)

    def test_writable_probe_leaves_version(self) -> None:
        """writable()'s probe (a no-op UPDATE of the version table, rolled
        back) leaves the schema version as it was, also when run inside a
        transaction."""
        self.assertTrue(self.store.writable())
        with self.store.transaction():
            self.assertTrue(self.store.writable())
        self.assertEqual(read_version(self.db_path), SqliteStore.SCHEMA_VERSION)

    def test_writable_false_when_locked(self) -> None:
        """writable() is False when another connection holds SQLite's write
        lock (after a short busy wait), and True again once released."""
        self.store.close()
        self.patch(schema_module, "BUSY_TIMEOUT", 0.05)
        s = self.open_store()
        other = sqlite3.connect(self.db_path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        self.assertFalse(s.writable())
        other.execute("ROLLBACK")
        self.assertTrue(s.writable())
