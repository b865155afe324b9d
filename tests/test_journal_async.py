"""lnproxy.journal.Journal with a database executor (the PostgreSQL path):
one commit in flight, later events gathered into the next one, offers only
after a commit, retries, NodeLost dropping a node's rows, idle(); and the
hub's session replay on that path (an event committed while a replay read
was on its way is not skipped).

The executor is a manual fake: the test decides when a queued commit runs
(against a real SQLite store, to exercise the same writes) and whether it
fails; time is a task.Clock.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lnproxy.hub import Hub, HubError, Session
from lnproxy.journal import Journal
from lnproxy.store import ConnectionRow, DBError, EventRow, NodeLost, Store
from lnproxy.store.executor import DatabaseExecutor, ExecutorStopped
from lnproxy.store.postgres import Claim

A = "02" + "aa" * 32
B = "02" + "bb" * 32


def conn(conn_id: str, node_id: str) -> ConnectionRow:
    """An open connection row of ``node_id``."""
    return ConnectionRow(
        conn_id, node_id, "02" + "ee" * 32, "127.0.0.1:9735", True, 5.0, "open", "00"
    )


class Log:
    """A node's numbering, as the hub's Node keeps it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.next_seq = 1


class ManualExecutor:
    """Queues write jobs; the test runs or fails them one by one."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.jobs: list[tuple[Callable[[Any], Any], defer.Deferred[Any]]] = []

    def write(self, fn: Callable[[Any], Any]) -> defer.Deferred[Any]:
        """Queue a job."""
        d: defer.Deferred[Any] = defer.Deferred()
        self.jobs.append((fn, d))
        return d

    def run(self) -> None:
        """Run the oldest job in a transaction and answer it."""
        fn, d = self.jobs.pop(0)
        with self.store.transaction():
            result = fn(self.store)
        d.callback(result)

    def commit_then_fail(self, error: Exception) -> None:
        """Run and commit the oldest job, then fail it: the link broke after
        the database committed, before the answer came back."""
        fn, d = self.jobs.pop(0)
        with self.store.transaction():
            fn(self.store)
        d.errback(error)

    def fail(self, error: Exception) -> None:
        """Fail the oldest job without running it."""
        _, d = self.jobs.pop(0)
        d.errback(error)


class AsyncJournalTests(SynchronousTestCase):
    """The journal's executor path."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = Store.open(self.mktemp(), synchronous="NORMAL")
        self.addCleanup(self.store.close)
        self.ex = ManualExecutor(self.store)
        self.offered: list[tuple[str, int]] = []
        self.lost: list[tuple[str, ...]] = []
        self.journal = Journal(
            self.store,
            self.clock,
            self.offer,
            executor=cast(DatabaseExecutor[Any], self.ex),
            on_lost=lambda ids: self.lost.append(tuple(ids)),
        )

    def offer(self, row: EventRow) -> bool:
        """Record what was offered; it must be committed by then."""
        stored = [r.seq for r in self.store.events_after(row.node_id, 0, 100)]
        self.assertIn(row.seq, stored)
        self.offered.append((row.node_id, row.seq))
        return False

    def emit(self, log: Log, n: int = 1) -> None:
        """Emit ``n`` closed events for a node."""
        for _ in range(n):
            self.journal.emit(log, "closed", {"conn": "c"}, False)

    def test_one_commit_in_flight(self) -> None:
        """Events of later turns wait while a commit is in flight and go,
        together, in the next one, started as soon as the first is done;
        idle() fires after both; nothing is offered before its commit."""
        a = Log(A)
        self.emit(a, 2)
        self.clock.advance(0)
        self.assertEqual(len(self.ex.jobs), 1)
        self.emit(a)
        self.clock.advance(0)
        self.emit(a)
        self.clock.advance(0)
        self.assertEqual(len(self.ex.jobs), 1)
        idle = self.journal.idle()
        self.assertNoResult(idle)
        self.assertEqual(self.offered, [])
        self.ex.run()
        self.assertEqual(self.offered, [(A, 1), (A, 2)])
        self.assertEqual(len(self.ex.jobs), 1)
        self.assertNoResult(idle)
        self.ex.run()
        self.assertEqual(self.offered, [(A, 1), (A, 2), (A, 3), (A, 4)])
        self.successResultOf(idle)
        self.assertFalse(self.journal.pending)

    def test_failed_commit_retried_same_seqs(self) -> None:
        """A failed commit offers nothing, counts a failure and is tried
        again after the retry delay with the same rows; offered once."""
        a = Log(A)
        self.emit(a, 2)
        self.clock.advance(0)
        self.ex.fail(DBError("database unreachable"))
        self.assertEqual((self.offered, self.journal.failures), ([], 1))
        self.assertEqual(self.ex.jobs, [])
        self.clock.advance(self.journal.retry_delay)
        self.ex.run()
        self.assertEqual(self.offered, [(A, 1), (A, 2)])
        self.assertEqual(self.journal.failures, 0)

    def test_commit_that_happened_but_failed_is_not_repeated(self) -> None:
        """The commit reached the database but its answer was lost (DBError
        after COMMIT): the retry skips the stored events and the recorded
        close instead of failing on them forever, commits what came
        meanwhile, and offers every event once, in seq order, without a gap
        or a new seq."""
        a, b = Log(A), Log(B)
        self.store.put_connection(conn("c1", A))
        self.emit(a, 2)
        self.journal.record_close("c1", 2, A)
        self.clock.advance(0)
        self.ex.commit_then_fail(DBError("server closed the connection"))
        self.assertEqual(self.offered, [])
        self.emit(a)
        self.emit(b)
        self.clock.advance(self.journal.retry_delay)
        self.ex.run()
        self.assertEqual(self.offered, [(A, 1), (A, 2), (A, 3), (B, 1)])
        self.assertEqual(
            [r.seq for r in self.store.events_after(A, 0, 10)], [1, 2, 3]
        )
        closed = self.store.get_connection("c1")
        self.assertEqual(closed and closed.closed_seq, 2)
        self.assertEqual((self.journal.failures, self.journal.pending), (0, False))
        self.emit(a)
        self.clock.advance(0)
        self.ex.run()
        self.assertEqual(self.offered[-1], (A, 4))

    def test_failed_commit_of_a_new_connection_and_its_close(self) -> None:
        """A commit that did not happen, holding a new connection's row and
        its close: the retry stores both (the connection ends closed)."""
        a = Log(A)
        self.journal.stage_connection(conn("c2", A))
        self.emit(a)
        self.journal.record_close("c2", 1, A)
        self.clock.advance(0)
        self.ex.fail(DBError("database unreachable"))
        self.clock.advance(self.journal.retry_delay)
        self.ex.run()
        row = self.store.get_connection("c2")
        self.assertEqual(row and (row.state, row.closed_seq), ("closed", 1))
        self.assertEqual(self.offered, [(A, 1)])

    def test_stopped_executor_is_not_retried(self) -> None:
        """A commit refused because the executor stopped (the process is
        stopping) schedules no retry: nothing outlives the service."""
        self.emit(Log(A), 2)
        self.clock.advance(0)
        self.ex.fail(ExecutorStopped("the database executor is stopped"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.offered, [])
        self.assertTrue(self.journal.pending)

    def test_node_lost_drops_its_rows_and_commits_the_rest(self) -> None:
        """A commit refused with NodeLost reports the node, drops its rows
        and commits the other nodes' rows at once."""
        a, b = Log(A), Log(B)
        self.emit(a)
        self.emit(b, 2)
        self.clock.advance(0)
        self.ex.fail(NodeLost([A]))
        self.assertEqual(self.lost, [(A,)])
        self.assertEqual(len(self.ex.jobs), 1)
        self.ex.run()
        self.assertEqual(self.offered, [(B, 1), (B, 2)])
        self.assertEqual(self.store.events_after(A, 0, 10), [])

    def test_discard_staged(self) -> None:
        """discard() drops what a node has not committed; a waiter on
        idle() fires when nothing else is left."""
        a = Log(A)
        self.emit(a)
        self.journal.keep_peer_storage(A, "p", b"blob", 1.0)
        idle = self.journal.idle()
        self.journal.discard([A])
        self.successResultOf(idle)
        self.clock.advance(0)
        self.assertEqual(self.ex.jobs, [])


class Sink:
    """A session's event sink that records what it was sent."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def send_event(self, text: str) -> None:
        """Record the seq of a sent event."""
        self.sent.append(json.loads(text)["params"]["seq"])

    def close_session(self, reason: str) -> defer.Deferred[None]:
        """Nothing to close."""
        return defer.succeed(None)


class ReadWriteExecutor(ManualExecutor):
    """ManualExecutor that also queues reads (run or delivered apart)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.reads: list[tuple[Callable[[Any], Any], defer.Deferred[Any]]] = []

    def read(self, fn: Callable[[Any], Any]) -> defer.Deferred[Any]:
        """Queue a read."""
        d: defer.Deferred[Any] = defer.Deferred()
        self.reads.append((fn, d))
        return d


class SharedHubTests(SynchronousTestCase):
    """The hub's PostgreSQL paths on a manual executor (SQLite underneath)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = Store.open(self.mktemp(), synchronous="NORMAL")
        self.addCleanup(self.store.close)
        self.ex = ReadWriteExecutor(self.store)
        self.hub = Hub(
            self.store,
            self.clock,
            lambda *a: defer.fail(Exception("no peers here")),
            executor=cast(DatabaseExecutor[Any], self.ex),
        )

    def test_event_committed_during_a_replay_read_is_not_skipped(self) -> None:
        """A replay read taken before an event's commit returns without it;
        the event, offered while the session was catching up, is read
        again instead of being skipped."""
        self.hub.adopt_claim(Claim(A, owned=True, epoch=1))
        node = self.hub.nodes[A]
        sink = Sink()
        session = Session(self.hub, node, sink)
        node.sessions.append(session)
        session.start()
        (read_fn, read_d) = self.ex.reads.pop(0)
        snapshot = read_fn(self.store)  # taken now: no events yet
        self.hub.journal.emit(node, "closed", {"conn": "c"}, False)
        self.clock.advance(0)
        self.ex.run()  # committed and offered while catching up
        self.assertEqual(sink.sent, [])
        read_d.callback(snapshot)
        self.clock.advance(0)
        (read_fn, read_d) = self.ex.reads.pop(0)
        read_d.callback(read_fn(self.store))
        self.assertEqual(sink.sent, [1])
        self.hub.journal.emit(node, "closed", {"conn": "d"}, False)
        self.clock.advance(0)
        self.ex.run()
        self.assertEqual(sink.sent, [1, 2])  # in step now: offered directly

    def test_unknown_node_is_not_read_on_the_reactor(self) -> None:
        """With an executor, a node that is not served here is code 1, not
        a store read."""
        err = self.assertRaises(HubError, self.hub.newest_seq, B)
        self.assertEqual(err.code, 1)
