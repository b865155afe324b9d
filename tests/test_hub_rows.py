"""When the hub writes connection rows, and that the listing stays exact.

A connection row is committed on its own when act 2 is relayed (before the
client learns the conn id, so that a crash still yields its ``closed``
event).  Its later changes (``open`` at ``finish``, the peer's ``init``)
ride along with the next batch of events instead of costing a commit of
their own: ``finish`` must not wait for an fsync (bench/relay.py, figure 5).
These tests pin that down on a fake clock, with the helpers of
:mod:`tests.test_hub_unit`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from twisted.internet.task import Clock

from lnproxy import wire
from lnproxy.hub import Hub, Limits
from lnproxy.policy import Policy
from lnproxy.store import Store
from tests.test_hub_unit import NODE, HubCase

INIT = wire.Init(features=b"").encode()


class ConnectionRowTests(HubCase):
    """Connection rows: durable at announce, batched afterwards."""

    def count_commits(self) -> list[int]:
        """Record every outermost transaction (one commit each) the store
        opens from now on; nested ones join their outer transaction."""
        calls: list[int] = []
        depth = [0]
        real = self.store.transaction

        @contextmanager
        def counting() -> Iterator[None]:
            if depth[0] == 0:
                calls.append(1)
            depth[0] += 1
            try:
                with real():
                    yield
            finally:
                depth[0] -= 1

        self.store.transaction = counting  # type: ignore[method-assign]
        self.addCleanup(setattr, self.store, "transaction", real)
        return calls

    def test_announce_is_committed_before_the_reply(self) -> None:
        """By the time ``connect`` answers, the row is in the store (state
        ``handshake``): a crash from then on still yields a closed event."""
        self.make_hub()
        conn_id, _, _ = self.start_connect()
        row = self.store.get_connection(conn_id)
        assert row is not None
        self.assertEqual(row.state, "handshake")

    def test_finish_commits_nothing(self) -> None:
        """``finish`` opens no transaction, now or at the end of the turn,
        yet ``connections`` (which flushes) reports the connection open and
        the store then agrees."""
        self.make_hub()
        conn_id, link, init = self.start_connect()
        commits = self.count_commits()
        self.finish(conn_id, link, init, send_init=False)
        self.assertEqual(commits, [])
        stored = self.store.get_connection(conn_id)
        assert stored is not None
        self.assertEqual(stored.state, "handshake")
        (listed,) = self.hub.list_connections(NODE)
        self.assertEqual((listed["conn"], listed["state"]), (conn_id, "open"))
        stored = self.store.get_connection(conn_id)
        assert stored is not None
        self.assertEqual(stored.state, "open")

    def test_init_row_and_init_event_share_one_commit(self) -> None:
        """The peer's init is stored as an event and on the connection row
        in a single transaction."""
        self.make_hub()
        conn_id, link, init = self.start_connect()
        self.finish(conn_id, link, init, send_init=False)
        commits = self.count_commits()
        link.send(INIT)
        self.clock.advance(0)
        self.assertEqual(len(commits), 1)
        stored = self.store.get_connection(conn_id)
        assert stored is not None
        self.assertEqual((stored.state, stored.their_init), ("open", INIT.hex()))
        self.assertEqual([e.get("type") for e in self.events()], [wire.INIT])

    def test_init_then_close_in_one_turn_ends_closed(self) -> None:
        """A row queued while open does not overwrite a close recorded in
        the same batch: the row ends ``closed`` with its closed event's
        seq, and keeps the init."""
        self.make_hub()
        conn_id, link, init = self.start_connect()
        self.finish(conn_id, link, init, send_init=False)
        link.send(INIT)
        link.lose()
        self.clock.advance(0)
        (closed,) = [e for e in self.events() if "reason" in e]
        stored = self.store.get_connection(conn_id)
        assert stored is not None
        self.assertEqual(
            (stored.state, stored.closed_seq, stored.their_init),
            ("closed", closed["seq"], INIT.hex()),
        )
        (listed,) = self.hub.list_connections(NODE)
        self.assertEqual(listed["state"], "closed")

    def test_crash_after_finish_still_closes_at_restart(self) -> None:
        """A process that dies right after ``finish`` (the open state never
        committed) still gets the connection's closed event, reason
        ``proxy restarted``, at the next start."""
        self.make_hub()
        conn_id, link, init = self.start_connect(persist=True)
        self.finish(conn_id, link, init, send_init=False)
        # The crash: nothing more is written by this hub.
        self.hub.running = False
        data_dir = self.store.data_dir
        self.store.close()
        store = Store.open(data_dir, synchronous="NORMAL")
        self.addCleanup(store.close)
        hub = Hub(store, Clock(), self.connect_peer, Policy(), Limits())
        hub.startService()
        self.addCleanup(hub.stopService)
        (event,) = [r for r in store.events_after(NODE, 0, 10) if r.kind == "closed"]
        self.assertIn(f'"conn":"{conn_id}"', event.params)
        self.assertIn('"reason":"proxy restarted"', event.params)
        self.assertIn('"reconnect":true', event.params)
