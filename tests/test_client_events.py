"""Unit tests of the client's event pipeline and its peer follow-up, on a
Clock with an in-memory state and no network.

The end-to-end behaviour (real proxy, crashes, restarts) is in
tests.test_client; these pin down the seams between the parts: what is
recorded with an event, against which proxy, and what the peers part
remembers.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import keys
from lnproxy.client.events import Event, EventPipeline
from lnproxy.client.peers import PeerLink, Peers
from lnproxy.client.state import ClientState, MemoryState, SavedState, StateChange

SECRET = b"\x11" * 32
NODE = keys.public_key(SECRET).hex()
PEER_A = keys.public_key(b"\x12" * 32).hex()
PEER_B = keys.public_key(b"\x13" * 32).hex()
SERVER_1 = "02" + "aa" * 32
SERVER_2 = "03" + "bb" * 32


def message(seq: int) -> Event:
    """A ``message`` event with ``seq``."""
    return Event("message", {"seq": seq, "conn": "c1", "peer": PEER_A, "type": 128})


def closed(seq: int, conn: str, peer: str, reconnect: bool) -> Event:
    """A ``closed`` event."""
    return Event(
        "closed",
        {"seq": seq, "conn": conn, "peer": peer, "reconnect": reconnect},
    )


class FollowUp:
    """An EventFollowUp whose changes the test hands out by hand."""

    def __init__(self) -> None:
        self.asked: list[tuple[Event, defer.Deferred[StateChange | None]]] = []
        self.recorded_events: list[Event] = []
        #: Answer at once with None (no change) when True.
        self.at_once = True

    def change_for(self, event: Event) -> defer.Deferred[StateChange | None]:
        """Record the question; answer now or when the test says."""
        if self.at_once:
            return defer.succeed(None)
        d: defer.Deferred[StateChange | None] = defer.Deferred()
        self.asked.append((event, d))
        return d

    def recorded(self, event: Event) -> None:
        """Note the event."""
        self.recorded_events.append(event)


class PipelineTests(SynchronousTestCase):
    """EventPipeline: order, record-then-ack, and the proxy it records for."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.saved = SavedState(MemoryState(), NODE)
        self.follow_up = FollowUp()
        self.acks: list[int] = []
        self.delivered: list[int] = []
        self.pending: list[defer.Deferred[None]] = []
        #: Hand events over with an unfired Deferred when True.
        self.slow = False
        self.pipeline = EventPipeline(
            self.clock,
            self.saved,
            deliver=self.deliver,
            ack=self.acks.append,
            retry_policy=lambda attempt: 1.0,
            follow_up=self.follow_up,
        )
        self.pipeline.start()
        self.pipeline.adopt_server(SERVER_1)

    def deliver(self, event: Event) -> Any:
        """The application: note the seq; maybe take its time."""
        self.delivered.append(event.seq)
        if self.slow:
            d: defer.Deferred[None] = defer.Deferred()
            self.pending.append(d)
            return d
        return None

    def test_in_order_record_then_ack_replays_skipped(self) -> None:
        """Events go out one at a time in arrival order; each seq is saved
        and then acknowledged; a replay is acknowledged, not delivered."""
        self.slow = True
        for seq in (1, 2, 3):
            self.pipeline.push(message(seq))
        self.assertEqual(self.delivered, [1])
        self.pending[0].callback(None)
        self.clock.advance(0)
        self.assertEqual((self.delivered, self.acks), ([1, 2], [1]))
        self.assertEqual(self.saved.current.last_seq, 1)
        self.pending[1].callback(None)
        self.clock.advance(0)
        self.pending[2].callback(None)
        self.clock.advance(0)
        self.pipeline.push(message(2))
        self.clock.advance(0)
        self.assertEqual(self.delivered, [1, 2, 3])
        self.assertEqual(self.acks, [1, 2, 3, 2])
        self.assertEqual(self.saved.current.last_seq, 3)

    def test_another_proxy_mid_callback(self) -> None:
        """A proxy with another server_id turns up while a callback runs:
        the former proxy's seq is neither recorded nor acknowledged to the
        new one, its queued events are dropped, and the new proxy's seq 1
        is delivered (it used to be skipped as a replay of seq 5)."""
        self.slow = True
        self.pipeline.push(message(5))
        self.pipeline.push(message(6))
        self.pipeline.adopt_server(SERVER_2)
        self.pending[0].callback(None)
        self.clock.advance(0)
        self.assertEqual(self.saved.current.server_id, SERVER_2)
        self.assertEqual(self.saved.current.last_seq, 0)
        self.assertEqual(self.acks, [])
        self.assertEqual(self.delivered, [5])
        self.slow = False
        self.pipeline.push(message(1))
        self.clock.advance(0)
        self.assertEqual(self.delivered, [5, 1])
        self.assertEqual((self.saved.current.last_seq, self.acks), (1, [1]))

    def test_same_proxy_keeps_the_record(self) -> None:
        """The same server_id again (a reconnect) changes nothing."""
        self.pipeline.push(message(4))
        self.pipeline.adopt_server(SERVER_1)
        self.assertEqual(self.saved.current.last_seq, 4)

    def test_change_applies_to_the_state_of_the_write(self) -> None:
        """A change prepared while another part saved the state (a
        re-handshake finishing during the follow-up's lookup) does not undo
        that part's change (it used to write back the older state)."""
        entry = {"address": "127.0.0.1:9735", "features": ""}
        self.saved.update(lambda st: st.evolve(rehandshake={PEER_B: entry}))
        self.follow_up.at_once = False
        self.pipeline.push(closed(7, "c9", PEER_A, reconnect=True))
        [(event, d)] = self.follow_up.asked
        self.assertEqual(event.seq, 7)
        # Meanwhile the re-handshake with PEER_B is done and saved.
        self.saved.update(lambda st: st.evolve(rehandshake={}))

        def wanted(st: ClientState) -> ClientState:
            return st.evolve(rehandshake={**st.rehandshake, PEER_A: entry})

        d.callback(wanted)
        self.clock.advance(0)
        self.assertEqual(self.saved.current.rehandshake, {PEER_A: entry})
        self.assertEqual(self.saved.current.last_seq, 7)
        self.assertEqual(self.acks, [7])
        self.assertEqual(self.follow_up.recorded_events, [event])

    def test_failed_save_retried_then_acked(self) -> None:
        """A save that fails is retried after the retry delay, before any
        later event, and only then acknowledged."""
        store = self.saved.store
        assert isinstance(store, MemoryState)
        real_save = store.save
        failures = [OSError("disk full")]

        def flaky(state: ClientState) -> None:
            if failures:
                raise failures.pop()
            real_save(state)

        store.save = flaky  # type: ignore[method-assign]
        self.pipeline.push(message(1))
        self.pipeline.push(message(2))
        self.assertEqual((self.delivered, self.acks), ([1], []))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.clock.advance(1.0)
        # Both recorded in the turn of the retry: one ack of the highest.
        self.assertEqual((self.delivered, self.acks), ([1, 2], [2]))

    def test_acks_coalesced_per_turn(self) -> None:
        """The events recorded in one reactor turn (replays included) are
        acknowledged once, with the highest seq, when the turn ends; the
        next turn's events get their own ack."""
        for seq in (1, 2, 3):
            self.pipeline.push(message(seq))
        self.assertEqual((self.delivered, self.acks), ([1, 2, 3], []))
        self.assertEqual(self.saved.current.last_seq, 3)
        self.clock.advance(0)
        self.assertEqual(self.acks, [3])
        # A replay and a new event in one turn: one ack.
        self.pipeline.push(message(2))
        self.pipeline.push(message(4))
        self.clock.advance(0)
        self.assertEqual((self.delivered, self.acks), ([1, 2, 3, 4], [3, 4]))
        # A turn with nothing recorded sends nothing.
        self.clock.advance(0)
        self.assertEqual(self.acks, [3, 4])

    def test_ack_only_after_handler_and_save(self) -> None:
        """No coalesced ack covers an event whose handler has not finished,
        and every acked seq was saved before the ack was sent."""
        seen: list[tuple[int, int]] = []
        self.pipeline._send_ack = lambda seq: seen.append(
            (seq, self.saved.current.last_seq)
        )
        self.slow = True
        for seq in (1, 2, 3):
            self.pipeline.push(message(seq))
        self.clock.advance(0)
        self.assertEqual(seen, [])
        self.pending[0].callback(None)
        self.pending[1].callback(None)
        # Seq 3's handler still runs: the ack says 2.
        self.clock.advance(0)
        self.assertEqual(seen, [(2, 2)])
        self.pending[2].callback(None)
        self.clock.advance(0)
        self.assertEqual(seen, [(2, 2), (3, 3)])

    def test_abort_drops_the_pending_ack(self) -> None:
        """An abort (as a crash) sends no ack still waiting for the turn's
        end; the proxy replays the event, which is then acknowledged."""
        self.pipeline.push(message(1))
        self.pipeline.abort()
        self.clock.advance(0)
        self.assertEqual(self.acks, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_halt_sends_the_pending_ack_at_once(self) -> None:
        """A clean stop sends the ack still waiting for the turn's end
        before the session goes, and only once."""
        self.pipeline.push(message(1))
        self.pipeline.push(message(2))
        self.pipeline.halt()
        self.assertEqual(self.acks, [2])
        self.clock.advance(0)
        self.assertEqual(self.acks, [2])

    def test_another_proxy_drops_the_pending_ack(self) -> None:
        """A pending ack for the former proxy's seq is not sent to a proxy
        with another server_id."""
        self.pipeline.push(message(5))
        self.pipeline.adopt_server(SERVER_2)
        self.clock.advance(0)
        self.assertEqual(self.acks, [])
        self.pipeline.push(message(1))
        self.clock.advance(0)
        self.assertEqual(self.acks, [1])


class FakeRequests:
    """PeerRequests answering ``connections`` when the test says."""

    def __init__(self) -> None:
        self.lookups: list[defer.Deferred[list[dict[str, Any]]]] = []

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> defer.Deferred[Any]:
        """Not used by these tests."""
        raise AssertionError(f"unexpected request {method}")

    def send(self, conn: str, msg: bytes) -> defer.Deferred[None]:
        """Not used by these tests."""
        raise AssertionError("unexpected send")

    def disconnect(self, conn: str) -> defer.Deferred[None]:
        """Not used by these tests."""
        raise AssertionError("unexpected disconnect")

    def connections(self) -> defer.Deferred[list[dict[str, Any]]]:
        """A lookup the test answers."""
        d: defer.Deferred[list[dict[str, Any]]] = defer.Deferred()
        self.lookups.append(d)
        return d


class PeersFollowUpTests(SynchronousTestCase):
    """Peers as the pipeline's follow-up: what a closed connection adds to
    the record, and what is forgotten after it."""

    def setUp(self) -> None:
        self.saved = SavedState(MemoryState(), NODE)
        self.requests = FakeRequests()
        self.links: list[PeerLink] = []
        self.peers = Peers(
            self.requests,
            Clock(),
            SECRET,
            self.saved,
            features=b"\x02",
            retry_policy=lambda attempt: 1.0,
            narrate=lambda step, detail: None,
            linked=self.links.append,
        )
        self.peers.start()

    def test_reconnect_lists_the_peer(self) -> None:
        """A closed persist connection's change lists its peer with the
        remembered address and the default features; other events add
        nothing."""
        self.peers.remember({"conn": "c1", "address": "127.0.0.1:9", "peer": PEER_A})
        change = self.successResultOf(
            self.peers.change_for(closed(3, "c1", PEER_A, reconnect=True))
        )
        assert change is not None
        st = change(ClientState(rehandshake={PEER_B: {"address": "h:1"}}))
        self.assertEqual(
            st.rehandshake,
            {
                PEER_B: {"address": "h:1"},
                PEER_A: {"address": "127.0.0.1:9", "features": "02"},
            },
        )
        for event in (
            message(4),
            closed(5, "c1", PEER_A, reconnect=False),
        ):
            self.assertIsNone(self.successResultOf(self.peers.change_for(event)))

    def test_unknown_address_looked_up(self) -> None:
        """A connection whose address is unknown is looked up with
        ``connections`` (whose answer the client feeds to remember)."""
        d = self.peers.change_for(closed(3, "c2", PEER_A, reconnect=True))
        self.assertNoResult(d)
        self.peers.remember({"conn": "c2", "address": "[::1]:9735"})
        self.requests.lookups[0].callback([])
        change = self.successResultOf(d)
        assert change is not None
        self.assertEqual(
            change(ClientState()).rehandshake[PEER_A]["address"], "[::1]:9735"
        )

    def test_closed_connection_forgotten(self) -> None:
        """Once a connection's ``closed`` is recorded its address is
        forgotten, so a long-running client does not keep one entry per
        connection it ever had (it used to)."""
        for i in range(3):
            self.peers.remember({"conn": f"c{i}", "address": "127.0.0.1:9"})
        self.peers.recorded(message(1))
        self.peers.recorded(closed(2, "c0", PEER_A, reconnect=False))
        self.peers.recorded(closed(3, "c1", PEER_A, reconnect=False))
        self.assertEqual(
            [self.peers.known(c) for c in ("c0", "c1", "c2")], [False, False, True]
        )
