"""The pure rules of docs/protocol.md, "What the proxy does by itself":
pong matching (:class:`lnproxy.answer.PingLedger`), which client messages
ask for gossip (:func:`lnproxy.answer.asks_for_gossip`), what
:func:`lnproxy.answer.answer` decides for pongs and ``peer_storage``, and
the peer storage messages' encoding."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lnproxy import wire
from lnproxy.answer import (
    CONSUMED,
    MAX_WAITING_PINGS,
    Answer,
    AnswerBudget,
    AnswerContext,
    PingLedger,
    PingOwner,
    answer,
    asks_for_gossip,
)

P, C = PingOwner.PROXY, PingOwner.CLIENT
CHAIN = bytes(range(32))


def ping(n: int) -> bytes:
    """A ping asking for ``n`` pong bytes."""
    return wire.Ping(n).encode()


class PingLedgerTests(SynchronousTestCase):
    """Which ping a pong answers."""

    def test_fifo(self) -> None:
        """Pongs answer the waiting pings in the order they were sent."""
        ledger = PingLedger()
        for owner in (P, C, C, P):
            self.assertTrue(ledger.sent(owner, ping(0)))
        self.assertEqual([ledger.match(0) for _ in range(4)], [P, C, C, P])
        self.assertIsNone(ledger.match(0), "nothing waits: unsolicited")
        self.assertEqual(len(ledger), 0)

    def test_no_pong_expected(self) -> None:
        """A ping asking for 65532 or more bytes, a malformed ping and a
        message that is not a ping are not recorded."""
        ledger = PingLedger()
        for msg in (ping(65532), ping(65535), b"\x00\x12\x00", b"\x00", b"\x00\x13"):
            self.assertFalse(ledger.sent(C, msg), msg)
        self.assertTrue(ledger.sent(C, ping(65531)))
        self.assertEqual(ledger.waiting, ((C, 65531),))

    def test_skipped_pings_are_forgotten(self) -> None:
        """The client's 4-byte ping, ignored by the peer, does not take the
        pong of the proxy's later keepalive ping (0 bytes): the pong answers
        the oldest ping of its length and the skipped one is forgotten."""
        ledger = PingLedger()
        ledger.sent(C, ping(4))
        ledger.sent(P, ping(0))
        self.assertIs(ledger.match(0), P)
        self.assertEqual(ledger.waiting, ())
        # A pong of a length no ping asked for is unsolicited; the list is
        # untouched.
        ledger.sent(C, ping(4))
        self.assertIsNone(ledger.match(7))
        self.assertEqual(ledger.waiting, ((C, 4),))

    def test_bounded(self) -> None:
        """A client pinging a peer that never answers keeps at most
        MAX_WAITING_PINGS entries; the proxy's newest ping still matches."""
        ledger = PingLedger()
        for _ in range(1000):
            ledger.sent(C, ping(4))
        self.assertEqual(len(ledger), MAX_WAITING_PINGS)
        ledger.sent(P, ping(0))
        self.assertEqual(len(ledger), MAX_WAITING_PINGS)
        self.assertIs(ledger.match(0), P)
        self.assertEqual(len(ledger), 0)

    def test_restored(self) -> None:
        """A ledger rebuilt from ``waiting`` matches as the original."""
        ledger = PingLedger([(P, 0), (C, 9)])
        self.assertEqual(PingLedger(ledger.waiting).waiting, ((P, 0), (C, 9)))
        self.assertIs(ledger.match(9), C)


class PingLedgerMemoryTests(SynchronousTestCase):
    """Every connection has a ledger: an idle one must cost next to
    nothing (docs/performance.md, "Scale")."""

    def test_empty_ledger_holds_no_container(self) -> None:
        """A new ledger, and one whose pings were all answered, hold no
        deque (an empty deque costs ~760 bytes per connection)."""
        ledger = PingLedger()
        self.assertIsNone(ledger._waiting)
        self.assertEqual((len(ledger), ledger.waiting), (0, ()))
        self.assertIsNone(ledger.match(0))
        self.assertTrue(ledger.sent(PingOwner.PROXY, wire.Ping(0).encode()))
        self.assertEqual(ledger.match(0), PingOwner.PROXY)
        self.assertEqual(len(ledger), 0)

    def test_restored_ledger_keeps_order_and_bound(self) -> None:
        """A ledger rebuilt from a snapshot keeps the order and the bound."""
        pings = [(PingOwner.CLIENT, n) for n in range(MAX_WAITING_PINGS + 3)]
        ledger = PingLedger(pings)
        self.assertEqual(ledger.waiting, tuple(pings[3:]))


class GossipAskTests(SynchronousTestCase):
    """What the client's messages say about gossip."""

    def test_queries_ask(self) -> None:
        """Both queries and a real timestamp filter ask for gossip."""
        for msg in (
            wire.QueryShortChannelIds(CHAIN, b"\x00").encode(),
            wire.QueryChannelRange(CHAIN, 0, 1000).encode(),
            wire.GossipTimestampFilter(CHAIN, 1_700_000_000, 0xFFFFFFFF).encode(),
            wire.GossipTimestampFilter(CHAIN, 0, 1).encode(),
        ):
            self.assertIs(asks_for_gossip(wire.message_type(msg), msg), True)

    def test_stop_filter(self) -> None:
        """first_timestamp 0xFFFFFFFF or an empty range is the stop filter."""
        for first, width in ((0xFFFFFFFF, 0), (0xFFFFFFFF, 0xFFFFFFFF), (5, 0)):
            msg = wire.GossipTimestampFilter(CHAIN, first, width).encode()
            self.assertIs(asks_for_gossip(wire.GOSSIP_TIMESTAMP_FILTER, msg), False)

    def test_others_and_malformed_change_nothing(self) -> None:
        """Other types and truncated queries give None."""
        self.assertIsNone(asks_for_gossip(wire.INIT, wire.Init(b"").encode()))
        for t in (261, 263, 265):
            self.assertIsNone(asks_for_gossip(t, t.to_bytes(2, "big") + b"\x01"))


class AnswerTests(SynchronousTestCase):
    """answer() for pongs and peer storage."""

    def test_pong(self) -> None:
        """A pong to the client's ping is delivered; one to the proxy's
        ping, or unsolicited, is consumed."""
        pong = wire.Pong(bytes(4)).encode()
        self.assertEqual(
            answer(wire.PONG, pong, AnswerContext(C)), Answer(deliver=True)
        )
        self.assertIs(answer(wire.PONG, pong, AnswerContext(P)), CONSUMED)
        self.assertIs(answer(wire.PONG, pong), CONSUMED)

    def test_peer_storage_kept(self) -> None:
        """peer_storage's blob is kept, up to 65531 bytes; nothing is sent
        back and nothing delivered."""
        for blob in (b"", b"backup", bytes(65531)):
            msg = wire.PeerStorage(blob).encode()
            self.assertEqual(answer(wire.PEER_STORAGE, msg), Answer(keep=blob))

    def test_peer_storage_oversize_refused(self) -> None:
        """A blob over 65531 bytes (only possible in a message over 65535
        bytes) is refused with a reason, not kept."""
        msg = (7).to_bytes(2, "big") + (65532).to_bytes(2, "big") + bytes(65532)
        a = answer(wire.PEER_STORAGE, msg)
        self.assertIsNone(a.keep)
        self.assertEqual(a.refused, "peer_storage blob of 65532 bytes exceeds 65531")

    def test_peer_storage_malformed(self) -> None:
        """A truncated peer_storage raises WireError (logged, ignored)."""
        with self.assertRaises(wire.WireError):
            answer(wire.PEER_STORAGE, b"\x00\x07\x00\x05abc")


class PeerStorageWireTests(SynchronousTestCase):
    """wire.PeerStorage: types 7 and 9."""

    def test_round_trip(self) -> None:
        """Encoding and decoding give back the blob and the type; bytes
        follow BOLT 1 (type, u16 length, blob)."""
        m = wire.PeerStorage(b"abc", retrieval=True).encode()
        self.assertEqual(m, bytes.fromhex("00090003") + b"abc")
        self.assertEqual(wire.PeerStorage.decode(m), wire.PeerStorage(b"abc", True))
        m = wire.PeerStorage(b"").encode()
        self.assertEqual(m, bytes.fromhex("00070000"))
        self.assertEqual(wire.decode_message(m), wire.PeerStorage(b""))
        self.assertEqual(
            wire.PeerStorage.decode(m + b"trailing"), wire.PeerStorage(b"")
        )

    def test_refused(self) -> None:
        """An oversize blob cannot be encoded; another type or a truncated
        message cannot be decoded."""
        with self.assertRaises(wire.InvalidFieldError):
            wire.PeerStorage(bytes(65532)).encode()
        for bad in (b"\x00\x08\x00\x00", b"\x00\x07\x00", b"\x00\x09\x00\x02a"):
            with self.assertRaises(wire.WireError):
                wire.PeerStorage.decode(bad)


class AnswerBudgetTests(SynchronousTestCase):
    """The per-connection pace of the proxy's own answers."""

    def test_burst_then_rate(self) -> None:
        """Full at the start; an answer bigger than what is left is refused
        and takes nothing; time refills at the rate, up to the burst."""
        budget = AnswerBudget(100.0, rate=10.0, burst=100.0)
        self.assertTrue(budget.spend(60, 100.0))
        self.assertFalse(budget.spend(60, 100.0))
        self.assertTrue(budget.spend(40, 100.0))
        self.assertFalse(budget.spend(1, 100.0))
        self.assertTrue(budget.spend(50, 105.0))
        self.assertTrue(budget.spend(100, 1000.0))
        self.assertFalse(budget.spend(101, 5000.0), "never more than the burst")

    def test_defaults_cover_normal_pings(self) -> None:
        """A peer pinging every second for a 64-byte pong, for an hour, is
        always answered."""
        budget = AnswerBudget(0.0)
        self.assertTrue(all(budget.spend(70, float(t)) for t in range(3600)))
