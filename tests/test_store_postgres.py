"""PostgreSQL-specific tests of lnproxy.store: the versioned schema, node
ownership with epoch fencing, lease renewal, failover claims, and the
database executor, all against a real PostgreSQL (one server per run, a
fresh database per test; see tests/pg.py).

The contract every store keeps is tested in tests/test_store.py
(``PostgresContractTests``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

import psycopg
from twisted.internet import defer, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lnproxy.journal import Journal
from lnproxy.store import (
    KEY_FILE,
    ConnectionRow,
    DBError,
    EventRow,
    NodeLost,
    StoreError,
    WebhookRow,
)
from lnproxy.store import postgres as pg_module
from lnproxy.store.executor import DatabaseExecutor, ExecutorStopped
from lnproxy.store.postgres import PostgresStore, describe_url
from tests.pg import new_database


def node(i: int) -> str:
    """A well-formed node id."""
    return "02" + f"{i:064x}"


A = node(0xA)
B = node(0xB)


def event(node_id: str, seq: int, summon: bool = False) -> EventRow:
    """An event row of ``node_id``."""
    return EventRow(node_id, seq, "message", summon, 1.0 + seq, f'{{"seq":{seq}}}')


def conn_row(conn_id: str, node_id: str, persist: bool = True) -> ConnectionRow:
    """An open connection row of ``node_id``."""
    return ConnectionRow(
        conn_id, node_id, node(0xFEE), "127.0.0.1:9735", persist, 5.0, "open", "00"
    )


class PgCase(SynchronousTestCase):
    """A fresh database and key file per test; stores closed at cleanup."""

    def setUp(self) -> None:
        self.url = new_database()
        key_dir = os.path.abspath(self.mktemp())
        os.makedirs(key_dir)
        self.key_path = os.path.join(key_dir, KEY_FILE)

    def open(self) -> PostgresStore:
        """Open a store on the test's database."""
        s = PostgresStore.open(self.url, key_path=self.key_path)
        self.addCleanup(s.close)
        return s

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement on a separate connection; return its rows."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(query, args or None)
            return cur.fetchall() if cur.description else []

    def expire(self, store: PostgresStore) -> None:
        """Make ``store``'s lease run out now, as if it stopped renewing."""
        self.sql(
            "UPDATE processes SET expires = now() - interval '1 second'"
            " WHERE process_id = %s",
            store.process_id,
        )


class SchemaTests(PgCase):
    """Creating, checking and refusing the PostgreSQL schema."""

    def test_created_once_with_version(self) -> None:
        """A fresh database gets every table and version 1; a second open
        (another process) uses it as it is."""
        self.open()
        self.open()
        self.assertEqual(self.sql("SELECT version FROM version"), [(1,)])
        tables = {
            r[0]
            for r in self.sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        self.assertEqual(
            tables,
            {
                "version",
                "processes",
                "nodes",
                "events",
                "connections",
                "webhooks",
                "peer_storage",
                "vault",
                "accounts",
            },
        )

    def test_concurrent_first_opens(self) -> None:
        """Four processes starting at once on an empty database create the
        schema exactly once (the advisory lock), and all of them work."""
        errors: list[BaseException] = []
        stores: list[PostgresStore] = []

        def opener() -> None:
            try:
                stores.append(PostgresStore.open(self.url, key_path=self.key_path))
            except BaseException as e:  # pragma: no cover (the failure shown)
                errors.append(e)

        threads = [threading.Thread(target=opener) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for s in stores:
            self.addCleanup(s.close)
        self.assertEqual(errors, [])
        self.assertEqual(len(stores), 4)
        self.assertEqual(self.sql("SELECT version FROM version"), [(1,)])

    def test_newer_version_refused_untouched(self) -> None:
        """A schema newer than this code is refused with a DBError that
        says so, and nothing in it changes."""
        self.open().close()
        self.sql("UPDATE version SET version = 7")
        e = self.assertRaises(DBError, self.open)
        self.assertIn("schema version 7", str(e))
        self.assertIn("newer", str(e))
        self.assertEqual(self.sql("SELECT version FROM version"), [(7,)])

    def test_foreign_database_refused(self) -> None:
        """A database with lnproxy-like tables but no version table is not
        ours: refused, untouched."""
        self.sql("CREATE TABLE events (x int)")
        e = self.assertRaises(DBError, self.open)
        self.assertIn("not an lnproxy database", str(e))
        self.assertEqual(
            self.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'version'"),
            [(0,)],
        )

    def test_upgrade_steps_run_in_order(self) -> None:
        """An older schema is upgraded by ``upgrade-to-vN.sql`` steps inside
        the same locked transaction; a missing step is a DBError that leaves
        the version as it was."""
        self.open().close()
        real_read = pg_module._read_sql

        def read(name: str) -> str:
            if name == "upgrade-to-v2.sql":
                return (
                    "ALTER TABLE nodes ADD COLUMN note TEXT;"
                    " UPDATE version SET version = 2;"
                )
            return real_read(name)

        self.patch(pg_module, "SCHEMA_VERSION", 3)
        self.patch(pg_module, "_read_sql", read)
        e = self.assertRaises(DBError, self.open)
        self.assertIn("no upgrade script", str(e))
        self.assertEqual(self.sql("SELECT version FROM version"), [(1,)])

        def read2(name: str) -> str:
            if name == "upgrade-to-v2.sql":
                return (
                    "ALTER TABLE nodes ADD COLUMN note TEXT;"
                    " UPDATE version SET version = 2;"
                )
            if name == "upgrade-to-v3.sql":
                return "UPDATE version SET version = 3;"
            return real_read(name)

        self.patch(pg_module, "_read_sql", read2)
        self.open()
        self.assertEqual(self.sql("SELECT version FROM version"), [(3,)])
        self.assertEqual(
            self.sql(
                "SELECT count(*) FROM information_schema.columns"
                " WHERE table_name = 'nodes' AND column_name = 'note'"
            ),
            [(1,)],
        )

    def test_database_down_is_a_clear_error(self) -> None:
        """Nothing listening: a DBError naming where it tried, without the
        password, raised within the connect timeout."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"postgresql://lnproxy:sekrit@127.0.0.1:{port}/lnproxy"
        start = time.monotonic()
        e = self.assertRaises(
            DBError, PostgresStore.open, url, key_path=self.key_path
        )
        self.assertLess(time.monotonic() - start, 10)
        self.assertIn(f"127.0.0.1:{port}/lnproxy", str(e))
        self.assertIn("cannot connect", str(e))
        self.assertNotIn("sekrit", str(e))

    def test_wrong_url_is_a_clear_error(self) -> None:
        """A malformed URL and an unknown database are DBErrors too."""
        e = self.assertRaises(
            DBError,
            PostgresStore.open,
            "postgresql://127.0.0.1:notaport/x",
            key_path=self.key_path,
        )
        self.assertIn("cannot connect", str(e))
        missing = self.url.rsplit("/", 1)[0] + "/no_such_db"
        e = self.assertRaises(
            DBError, PostgresStore.open, missing, key_path=self.key_path
        )
        self.assertIn("no_such_db", str(e))

    def test_describe_url_hides_password(self) -> None:
        """describe_url keeps user, host, port and database, drops the
        password."""
        self.assertEqual(
            describe_url("postgresql://u:pw@db.example:5433/lnp"),
            "postgresql://u@db.example:5433/lnp",
        )

    def test_reconnects_after_the_link_broke(self) -> None:
        """When the server ends the connection, the next call fails with a
        DBError and the one after connects again and works."""
        s = self.open()
        s.append_events([event(A, 1)])
        self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'lnproxy' AND datname = current_database()"
        )
        self.assertRaises(DBError, s.next_seq, A)
        self.assertEqual(s.next_seq(A), 2)
        self.assertTrue(s.writable())


class CommitCutter:
    """A TCP relay to PostgreSQL that, when armed, lets the next ``COMMIT``
    through, waits until the server has committed, and then cuts the link
    before the answer reaches the client: the commit happened, the client
    sees a broken connection (the ambiguous failure a writer must retry
    safely)."""

    def __init__(self, url: str) -> None:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        parts = conninfo_to_dict(url)
        self.target = (str(parts["host"]), int(str(parts["port"])))
        self.listener = socket.create_server(("127.0.0.1", 0))
        port = self.listener.getsockname()[1]
        self.url = make_conninfo(url, host="127.0.0.1", port=str(port))
        self.armed = threading.Event()
        #: Set once a COMMIT was let through and the link cut.
        self.cut = threading.Event()
        self.holding = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._socks += [client, server]
            threading.Thread(
                target=self._pump, args=(client, server, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while data := src.recv(65536):
                commit = upward and self.armed.is_set() and b"COMMIT\x00" in data
                if commit:
                    self.armed.clear()
                    self.holding.set()  # the answer never goes back
                if upward or not self.holding.is_set():
                    dst.sendall(data)
                if commit:
                    time.sleep(0.5)  # the server commits meanwhile
                    for sock in (src, dst):
                        sock.shutdown(socket.SHUT_RDWR)
                    self.cut.set()
                    self.holding.clear()
                    return
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Stop listening and cut every link."""
        self.listener.close()
        for sock in self._socks:
            try:
                sock.close()
            except OSError:
                pass


class OwnershipTests(PgCase):
    """Leases, claims, redirects, fencing and failover between processes."""

    def two(self) -> tuple[PostgresStore, PostgresStore]:
        """Two registered processes on the same database."""
        p1, p2 = self.open(), self.open()
        p1.register("ws://127.0.0.1:1001", 15)
        p2.register("ws://127.0.0.1:1002", 15)
        return p1, p2

    def test_claim_new_node_then_redirect(self) -> None:
        """The first process to ask owns a new node; another live process
        gets the owner's public URL and owns nothing."""
        p1, p2 = self.two()
        c1 = p1.claim(A)
        self.assertTrue(c1.owned)
        self.assertEqual((c1.epoch, c1.next_seq, c1.failed_owner), (1, 1, None))
        c2 = p2.claim(A)
        self.assertFalse(c2.owned)
        self.assertEqual(c2.url, "ws://127.0.0.1:1001")
        self.assertEqual(p2.owner_url(A), "ws://127.0.0.1:1001")
        self.assertEqual(p2.owned(), {})
        # Claiming again what one owns changes nothing.
        self.assertEqual(p1.claim(A).epoch, 1)

    def test_writes_for_unowned_node_refused(self) -> None:
        """A fencing process cannot write for a node it does not own: every
        kind of write raises NodeLost and stores nothing."""
        p1, p2 = self.two()
        p1.claim(A)
        p1.append_events([event(A, 1)])
        p1.put_connection(conn_row("c1", A))
        for write in (
            lambda: p2.append_events([event(A, 2)]),
            lambda: p2.ack(A, 1),
            lambda: p2.put_connection(conn_row("c2", A)),
            lambda: p2.close_connection("c1", 2),
            lambda: p2.add_webhook(WebhookRow(A, "w", "http://x", 1.0)),
            lambda: p2.remove_webhook(A, "w"),
        ):
            e = self.assertRaises(NodeLost, write)
            self.assertEqual(e.node_ids, (A,))
        self.assertEqual(self.sql("SELECT count(*) FROM events"), [(1,)])
        self.assertEqual(
            self.sql("SELECT state FROM connections WHERE conn_id = 'c1'"), [("open",)]
        )

    def test_failover_claim_and_fencing(self) -> None:
        """Once the owner's lease expired, another process claims the node
        with a higher epoch and gets the connections to close; the old
        owner's next write fails with NodeLost and its renewal reports the
        loss. The seqs continue without a gap."""
        p1, p2 = self.two()
        p1.claim(A)
        p1.append_events([event(A, 1), event(A, 2)])
        p1.put_connection(conn_row("c1", A))
        p1.put_connection(conn_row("c2", A, persist=False))
        self.assertFalse(p2.claim(A).owned)
        self.expire(p1)
        self.assertEqual(p2.expired_owners(), [p1.process_id])
        c = p2.claim(A)
        self.assertTrue(c.owned)
        self.assertEqual((c.epoch, c.next_seq, c.pending), (2, 3, 2))
        self.assertEqual(c.failed_owner, p1.process_id)
        self.assertEqual([r.conn_id for r in c.unclosed], ["c1", "c2"])
        self.assertEqual((c.webhooks, c.newest_summon), ([], None))
        e = self.assertRaises(NodeLost, p1.append_events, [event(A, 3)])
        self.assertEqual(e.node_ids, (A,))
        self.assertNotIn(A, p1.owned())
        p2.append_events([event(A, 3)])
        p2.close_connection("c1", 3)
        self.assertEqual(p1.renew(), [])  # already forgotten by the NodeLost
        self.assertEqual(
            [r.seq for r in p2.events_after(A, 0, 10)], [1, 2, 3]
        )

    def test_renew_reports_nodes_taken_while_expired(self) -> None:
        """A process that was paused past its lease learns at its next
        renewal which nodes were taken (and keeps the others)."""
        p1, p2 = self.two()
        p1.claim(A)
        p1.claim(B)
        self.expire(p1)
        self.assertTrue(p2.claim(A).owned)
        self.assertEqual(p1.renew(), [A])
        self.assertEqual(set(p1.owned()), {B})
        # Alive again: B stays with p1.
        self.assertFalse(p2.claim(B).owned)
        p1.append_events([event(B, 1)])

    def test_renew_is_one_update(self) -> None:
        """A healthy renewal is one UPDATE of the process row, whatever the
        number of nodes owned: the nodes' rows are not touched."""
        p1, _ = self.two()
        for i in range(50):
            p1.claim(node(i))
        before = self.sql(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'nodes'"
        )
        (expires_before,) = self.sql(
            "SELECT expires FROM processes WHERE process_id = %s", p1.process_id
        )[0]
        self.assertEqual(p1.renew(), [])
        (expires_after,) = self.sql(
            "SELECT expires FROM processes WHERE process_id = %s", p1.process_id
        )[0]
        self.assertGreater(expires_after, expires_before)
        time.sleep(0.6)  # statistics are flushed at most every 500 ms
        self.sql("SELECT pg_stat_force_next_flush()")
        after = self.sql(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'nodes'"
        )
        self.assertEqual(before, after)

    def test_take_over_shares_and_cleans_up(self) -> None:
        """take_over claims a dead process's nodes in chunks, with their
        unclosed connections, and removes its process row at the end."""
        p1, p2 = self.two()
        p3 = self.open()
        p3.register("ws://127.0.0.1:1003", 15)
        ids = [node(i) for i in range(10)]
        for n in ids:
            p1.claim(n)
            p1.put_connection(conn_row("c" + n[-4:], n))
        self.expire(p1)
        first = p2.take_over(limit=6)
        second = p3.take_over(limit=6)
        self.assertEqual(len(first), 6)
        self.assertEqual(len(second), 4)
        got = sorted(c.node_id for c in first + second)
        self.assertEqual(got, ids)
        for c in first + second:
            self.assertEqual(c.failed_owner, p1.process_id)
            self.assertEqual(len(c.unclosed), 1)
            self.assertEqual(c.epoch, 2)
        self.assertEqual(p2.take_over(), [])
        alive = {pid for pid, _, _ in p2.processes()}
        self.assertNotIn(p1.process_id, alive)
        # The dead one comes back: its row is gone, it re-registers and has
        # lost every node.
        self.assertEqual(sorted(p1.renew()), ids)
        self.assertEqual(p1.owned(), {})

    def test_take_over_is_a_few_statements_for_many_nodes(self) -> None:
        """A take-over of 150 nodes runs a fixed handful of statements (not
        a few per node), and each claim carries its own node's pending
        count, webhooks, newest summon, peer storage and connections."""
        p1, p2 = self.two()
        ids = [node(i) for i in range(150)]
        for n in ids:
            p1.claim(n)
        hooked, quiet = ids[3], ids[7]
        p1.append_events([event(hooked, 1, summon=True), event(hooked, 2)])
        p1.append_events([event(quiet, 1, summon=True)])
        p1.add_webhook(WebhookRow(hooked, "w2", "http://b", 2.0))
        p1.add_webhook(WebhookRow(hooked, "w1", "http://a", 1.0))
        p1.put_peer_storage(hooked, node(0xFEE), b"blob", 3.0)
        p1.put_connection(conn_row("c1", quiet))
        self.expire(p1)
        statements = []
        execute = psycopg.Connection.execute

        def counting(conn: Any, query: Any, *a: Any, **kw: Any) -> Any:
            statements.append(query)
            return execute(conn, query, *a, **kw)

        self.patch(psycopg.Connection, "execute", counting)
        claims = {c.node_id: c for c in p2.take_over(limit=1000)}
        self.assertLessEqual(len(statements), 12)
        self.assertEqual(sorted(claims), ids)
        h, q = claims[hooked], claims[quiet]
        self.assertEqual((h.pending, h.epoch, h.next_seq), (2, 2, 3))
        self.assertEqual([w.webhook_id for w in h.webhooks], ["w1", "w2"])
        self.assertEqual(h.newest_summon, event(hooked, 1, summon=True))
        self.assertEqual(h.peer_storage, {node(0xFEE): b"blob"})
        self.assertEqual(h.unclosed, [])
        self.assertEqual((q.pending, q.webhooks, q.newest_summon), (1, [], None))
        self.assertEqual([c.conn_id for c in q.unclosed], ["c1"])
        self.assertEqual(claims[ids[0]].pending, 0)
        self.assertEqual(p2.owned(), {n: 2 for n in ids})
        p2.append_events([event(hooked, 3)])  # fencing knows the new epochs

    def test_unregister_hands_nodes_over_at_once(self) -> None:
        """A clean stop ends the lease at once: another process claims a
        node at its login right away, and its next take-over round gets the
        rest (with nothing to close) and removes the stopped process."""
        p1, p2 = self.two()
        p1.claim(A)
        p1.claim(B)
        p1.append_events([event(A, 1)])
        p1.unregister()
        c = p2.claim(A)
        self.assertTrue(c.owned)
        self.assertEqual((c.next_seq, c.unclosed), (2, []))
        self.assertRaises(NodeLost, p1.append_events, [event(B, 1)])
        rest = p2.take_over()
        self.assertEqual([r.node_id for r in rest], [B])
        self.assertEqual(len(p2.processes()), 1)

    def test_claim_waits_for_the_owners_open_write(self) -> None:
        """A claim that races the old owner's commit waits for it (the row
        lock) and then continues after its events: no seq is lost or given
        twice; the old owner's later writes are refused."""
        p1, p2 = self.two()
        p1.claim(A)
        self.expire(p1)
        claimed: list[Any] = []
        with p1.transaction():
            p1.append_events([event(A, 1), event(A, 2)])
            t = threading.Thread(target=lambda: claimed.append(p2.claim(A)))
            t.start()
            t.join(0.5)
            self.assertTrue(t.is_alive(), "the claim did not wait for the lock")
        t.join(10)
        self.assertEqual(claimed[0].next_seq, 3)
        self.assertRaises(NodeLost, p1.append_events, [event(A, 3)])
        p2.append_events([event(A, 3)])

    def test_lost_node_in_batch_fails_the_batch(self) -> None:
        """A batch that spans a lost node and a kept one stores nothing and
        names the lost one; the caller retries without it."""
        p1, p2 = self.two()
        p1.claim(A)
        p1.claim(B)
        self.expire(p1)
        p2.claim(A)
        p1.renew()  # alive again, but A is gone (learned via NodeLost below)
        e = self.assertRaises(
            NodeLost, p1.append_events, [event(A, 1), event(B, 1)]
        )
        self.assertEqual(e.node_ids, (A,))
        self.assertEqual(self.sql("SELECT count(*) FROM events"), [(0,)])
        p1.append_events([event(B, 1)])

    def test_scoped_startup_queries(self) -> None:
        """With fencing on, unclosed_connections and newest_summons list
        only this process's nodes."""
        p1, p2 = self.two()
        p1.claim(A)
        p2.claim(B)
        for s, n in ((p1, A), (p2, B)):
            s.put_connection(conn_row("c" + n[-1], n))
            s.add_webhook(WebhookRow(n, "w", "http://x", 1.0))
            s.append_events([event(n, 1, summon=True)])
        self.assertEqual([c.node_id for c in p1.unclosed_connections()], [A])
        self.expire(p2)
        taken = p1.claim(B)
        self.assertEqual(taken.webhooks, [WebhookRow(B, "w", "http://x", 1.0)])
        self.assertEqual(taken.newest_summon, event(B, 1, summon=True))
        p1.release([B])
        p2.renew()
        self.assertTrue(p2.claim(B).owned)
        self.assertEqual([r.node_id for r in p2.newest_summons()], [B])
        self.assertEqual(p1.newest_summon(A), event(A, 1, summon=True))
        self.assertIsNone(p1.newest_summon(node(0x77)))

    def test_restart_with_the_same_url_takes_over_at_once(self) -> None:
        """A process that registers with the public URL of a registered one
        (its earlier run, killed) ends that one's lease: its nodes are
        claimed at once instead of redirected to the same URL."""
        p1 = self.open()
        p1.register("ws://127.0.0.1:1001", 15)
        p1.claim(A)
        again = self.open()
        again.register("ws://127.0.0.1:1001", 15)
        c = again.claim(A)
        self.assertTrue(c.owned)
        self.assertEqual(c.failed_owner, p1.process_id)

    def test_unregistered_store_cannot_claim(self) -> None:
        """Ownership calls need register() first."""
        s = self.open()
        self.assertRaises(StoreError, s.claim, A)
        self.assertRaises(ValueError, s.register, "ws://x", 0)


class _Log:
    """A node's numbering, as the hub's Node keeps it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.next_seq = 1


class LostCommitTests(TestCase):
    """A commit that happened although the writer saw the link break."""

    timeout = 30

    @defer.inlineCallbacks
    def test_commit_lost_after_the_server_committed_is_not_repeated(
        self,
    ) -> Any:
        """The link to PostgreSQL breaks after the server committed a group
        and before the writer heard it: the journal's retry (same seqs, same
        rows) neither repeats nor skips an event, takes no new seq, and
        every event is offered once; the next event continues the seqs."""
        url = new_database()
        cutter = CommitCutter(url)
        self.addCleanup(cutter.close)
        key_dir = os.path.abspath(self.mktemp())
        os.makedirs(key_dir)
        key_path = os.path.join(key_dir, KEY_FILE)
        writer = PostgresStore.open(cutter.url, key_path=key_path)
        self.addCleanup(writer.close)
        writer.register("ws://127.0.0.1:1001", 15)
        writer.claim(A)
        ex: DatabaseExecutor[PostgresStore] = DatabaseExecutor(reactor, writer)
        ex.start()
        self.addCleanup(ex.stop)
        offered: list[int] = []

        def offer(row: EventRow) -> bool:
            offered.append(row.seq)
            return False

        journal = Journal(writer, reactor, offer, retry_delay=0.2, executor=ex)
        log = _Log(A)
        journal.emit(log, "closed", {"conn": "c"}, False)
        yield journal.idle()
        cutter.armed.set()
        for _ in range(2):
            journal.emit(log, "closed", {"conn": "c"}, False)
        yield journal.idle()
        self.assertTrue(cutter.cut.is_set())
        journal.emit(log, "closed", {"conn": "c"}, False)
        yield journal.idle()
        self.assertEqual(offered, [1, 2, 3, 4])
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT seq FROM events ORDER BY seq").fetchall()
            (next_seq,) = conn.execute("SELECT next_seq FROM nodes").fetchone() or (
                0,
            )
        self.assertEqual((rows, next_seq), ([(1,), (2,), (3,), (4,)], 5))


class ExecutorTests(TestCase):
    """DatabaseExecutor: group commit on one writer thread, reads on a
    reader thread, Deferreds on the reactor thread."""

    def setUp(self) -> None:
        self.url = new_database()
        key_dir = os.path.abspath(self.mktemp())
        os.makedirs(key_dir)
        writer = PostgresStore.open(self.url, key_path=os.path.join(key_dir, KEY_FILE))
        reader = writer.clone()
        self.addCleanup(writer.close)
        self.addCleanup(reader.close)
        self.ex: DatabaseExecutor[PostgresStore] = DatabaseExecutor(
            reactor, writer, [reader]
        )
        self.ex.start()
        self.addCleanup(self.ex.stop)

    @defer.inlineCallbacks
    def test_group_commit(self) -> Any:
        """Writes queued in one reactor turn commit in far fewer
        transactions than jobs, each Deferred fires with its result after
        the commit, and none of the work ran on the reactor thread."""
        main = threading.get_ident()
        threads: set[int] = set()

        def job(i: int) -> Any:
            def run(s: PostgresStore) -> int:
                threads.add(threading.get_ident())
                s.append_events([event(node(i), 1)])
                return i

            return run

        results = yield defer.gatherResults([self.ex.write(job(i)) for i in range(200)])
        self.assertEqual(results, list(range(200)))
        self.assertNotIn(main, threads)
        self.assertLess(self.ex.commits, 100)
        self.assertEqual(self.ex.jobs, 200)
        count = yield self.ex.read(
            lambda s: sum(s.pending_count(node(i)) for i in range(200))
        )
        self.assertEqual(count, 200)
        self.assertEqual(self.ex.queued, 0)

    @defer.inlineCallbacks
    def test_failing_job_is_undone_alone(self) -> Any:
        """A job that raises fails its own Deferred and undoes only its own
        writes; the others of the same group commit."""

        def bad(s: PostgresStore) -> None:
            s.append_events([event(B, 1)])
            s.append_events([event(B, 5)])  # not the next seq

        d1 = self.ex.write(lambda s: s.append_events([event(A, 1)]))
        d2 = self.ex.write(bad)
        d3 = self.ex.write(lambda s: s.append_events([event(A, 2)]))
        yield d1
        yield self.assertFailure(d2, StoreError)
        yield d3
        seqs = yield self.ex.read(lambda s: (s.next_seq(A), s.next_seq(B)))
        self.assertEqual(seqs, (3, 1))

    @defer.inlineCallbacks
    def test_broken_link_fails_then_recovers(self) -> Any:
        """When the database ends the writer's connection, the group fails
        with DBError; the next write reconnects and commits."""
        yield self.ex.write(lambda s: s.append_events([event(A, 1)]))
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'lnproxy'"
                " AND datname = current_database()"
            )
        d = self.ex.write(lambda s: s.append_events([event(A, 2)]))
        yield self.assertFailure(d, DBError)
        yield self.ex.write(lambda s: s.append_events([event(A, 2)]))
        n = yield self.ex.read(lambda s: s.next_seq(A))
        if n != 3:  # the reader's link was cut too: one retry
            n = yield self.ex.read(lambda s: s.next_seq(A))
        self.assertEqual(n, 3)

    @defer.inlineCallbacks
    def test_stop_finishes_queued_work(self) -> Any:
        """stop() lets queued writes commit; later ones fail at once."""
        d = self.ex.write(lambda s: s.append_events([event(A, 1)]))
        yield self.ex.stop()
        yield d
        self.assertEqual(self.ex.commits, 1)
        yield self.assertFailure(self.ex.write(lambda s: None), ExecutorStopped)
