"""lnproxy.leases.LeaseKeeper: renewal, the local deadline, claims,
take-over and release, on a fake clock against a real PostgreSQL (the
database work runs inline: the executor's threads are tested in
tests/test_store_postgres.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import psycopg
from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from lnproxy.leases import LeaseKeeper, LeaseLapsed
from lnproxy.store import KEY_FILE, DBError
from lnproxy.store.executor import DatabaseExecutor
from lnproxy.store.postgres import Claim, PostgresStore
from tests.pg import new_database


def node(i: int) -> str:
    """A well-formed node id."""
    return "02" + f"{i:064x}"


class InlineExecutor:
    """Runs each job at once on the calling thread (tests only); ``down``
    makes every job fail as if the database were unreachable."""

    def __init__(self, store: PostgresStore) -> None:
        self.writer = store
        self.down = False

    def write(self, fn: Callable[[PostgresStore], Any]) -> defer.Deferred[Any]:
        """Run ``fn(store)`` now."""
        if self.down:
            return defer.fail(DBError("database unreachable (test)"))
        return defer.maybeDeferred(fn, self.writer)

    read = write


class Recorder:
    """Collects what a keeper reports."""

    def __init__(self) -> None:
        self.lost: list[str] = []
        self.taken: list[Claim] = []

    def on_lost(self, node_ids: Sequence[str]) -> None:
        """Record lost nodes."""
        self.lost.extend(node_ids)

    def on_taken(self, claims: list[Claim]) -> None:
        """Record claims taken over."""
        self.taken.extend(claims)


class LeaseKeeperTests(SynchronousTestCase):
    """Two keepers on one database and one fake clock."""

    def setUp(self) -> None:
        self.url = new_database()
        key_dir = os.path.abspath(self.mktemp())
        os.makedirs(key_dir)
        self.key_path = os.path.join(key_dir, KEY_FILE)
        self.clock = task.Clock()

    def keeper(self, port: int) -> tuple[LeaseKeeper, InlineExecutor, Recorder]:
        """A registered, started keeper with a 3 s lease."""
        store = PostgresStore.open(self.url, key_path=self.key_path)
        self.addCleanup(store.close)
        ex = InlineExecutor(store)
        rec = Recorder()
        k = LeaseKeeper(
            cast(DatabaseExecutor[PostgresStore], ex),
            self.clock,
            f"ws://127.0.0.1:{port}",
            3.0,
            rec.on_lost,
            rec.on_taken,
        )
        k.register_now(store)
        k.startService()
        self.addCleanup(k.stopService)
        return k, ex, rec

    def expire(self, k: LeaseKeeper) -> None:
        """Make a keeper's lease run out in the database."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                "UPDATE processes SET expires = now() - interval '1 second'"
                " WHERE process_id = %s",
                (cast(PostgresStore, k.executor.writer).process_id,),
            )

    def test_renewal_moves_the_deadline(self) -> None:
        """Each tick renews: the lease stays valid for as long as ticks
        succeed, well past one lease timeout."""
        k, _, rec = self.keeper(1)
        for _ in range(10):
            self.clock.advance(1.0)
        self.assertTrue(k.valid)
        self.assertEqual(rec.lost, [])

    def test_unreachable_database_gives_nodes_up_at_the_deadline(self) -> None:
        """When renewals fail, every node is reported lost when the local
        deadline (last successful send + lease timeout) passes, not later;
        claims are refused until a renewal succeeds again."""
        k, ex, rec = self.keeper(1)
        claim = self.successResultOf(k.claim(node(1)))
        self.assertTrue(claim.owned)
        ex.down = True
        self.clock.advance(1.0)  # the first failing renewal
        self.assertTrue(k.valid)
        self.clock.advance(2.0)  # 3 s after the last successful one
        self.assertFalse(k.valid)
        self.assertEqual(rec.lost, [node(1)])
        self.failureResultOf(k.claim(node(2)), LeaseLapsed)
        ex.down = False
        self.clock.advance(1.0)
        self.assertTrue(k.valid)
        # Nobody took it meanwhile: claimed again before it is served again.
        self.assertTrue(self.successResultOf(k.claim(node(1))).owned)
        self.assertEqual(k.nodes, {node(1)})

    def test_renewal_answered_after_stop_schedules_nothing(self) -> None:
        """A renewal still on its way when the keeper stops (a slow
        database) starts no new deadline watchdog when it is answered:
        nothing of the keeper outlives the service."""
        k, ex, _ = self.keeper(1)
        held: defer.Deferred[Any] = defer.Deferred()
        ex.write = lambda fn: held  # type: ignore[method-assign]
        self.clock.advance(1.0)  # a tick: its renewal waits on the database
        k.stopService()
        held.callback([])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_renewal_failing_while_commits_succeed(self) -> None:
        """Only the renewal fails (every other write works): the nodes are
        still given up at the local deadline and claims refused, since
        others may take them over once the database's lease ends."""
        k, ex, rec = self.keeper(1)
        self.assertTrue(self.successResultOf(k.claim(node(1))).owned)

        def refuse() -> list[str]:
            raise DBError("renewal refused (test)")

        self.patch(ex.writer, "renew", refuse)
        self.clock.advance(3.0)
        self.assertFalse(k.valid)
        self.assertEqual(rec.lost, [node(1)])
        self.failureResultOf(k.claim(node(2)), LeaseLapsed)
        # Its epoch is forgotten too: a late write for it is refused.
        self.assertEqual(ex.writer.owned(), {})

    def test_redirect_takeover_and_loss(self) -> None:
        """A live owner's node is not claimed (its URL is given); once its
        lease expired, the other keeper's tick takes it over with the
        connections to close, and the old owner's next renewal reports the
        loss."""
        k1, ex1, rec1 = self.keeper(1)
        k2, _, rec2 = self.keeper(2)
        self.assertTrue(self.successResultOf(k1.claim(node(1))).owned)
        other = self.successResultOf(k2.claim(node(1)))
        self.assertEqual((other.owned, other.url), (False, "ws://127.0.0.1:1"))
        ex1.down = True  # k1 stops renewing (paused, cut off)
        self.expire(k1)
        ex1.down = False
        self.clock.advance(1.0)  # both tick, in either order
        taken = [c.node_id for c in rec2.taken]
        if not taken:  # k1 ticked first and renewed in time: expire again
            self.expire(k1)
            self.successResultOf(k2.tick())
            taken = [c.node_id for c in rec2.taken]
        self.assertEqual(taken, [node(1)])
        self.assertEqual(rec2.taken[0].failed_owner, ex1.writer.process_id)
        self.successResultOf(k1.tick())
        self.assertEqual(rec1.lost, [node(1)])
        self.assertEqual(k1.nodes, set())

    def test_unregister_hands_over(self) -> None:
        """A clean stop ends the lease: the other keeper claims a node at
        once at a login, and takes the rest over at its next tick."""
        k1, _, _ = self.keeper(1)
        k2, _, rec2 = self.keeper(2)
        self.successResultOf(k1.claim(node(1)))
        self.successResultOf(k1.claim(node(2)))
        k1.stopService()
        self.successResultOf(k1.unregister())
        claim = self.successResultOf(k2.claim(node(1)))
        self.assertTrue(claim.owned)
        self.successResultOf(k2.tick())
        self.assertEqual([c.node_id for c in rec2.taken], [node(2)])
