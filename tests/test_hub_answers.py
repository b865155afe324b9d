"""The hub carrying out docs/protocol.md, "What the proxy does by itself",
on a fake clock with in-memory peers: pongs matched to the proxy's and the
client's pings, gossip the client asked for, and peer storage (kept,
retrieved behind the client's ``init``), with the bad-input cases (a client
ping never answered, a flood, an oversize blob, a malformed message) and
the new per-connection state across a hot-restart snapshot."""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher

from lnproxy import wire
from lnproxy.answer import (
    ANSWER_BURST_BYTES,
    ANSWER_RATE_BYTES,
    MAX_WAITING_PINGS,
    PingOwner,
)
from lnproxy.policy import MessageClass, Policy
from lnproxy.snapshot import ConnectionSnapshot

from .test_hub_unit import KEEPALIVE_PING, NODE, PEER, HubCase

CHAIN = bytes(range(32))
PEER_HEX = PEER.hex()
INIT = wire.Init(features=b"").encode()
GOSSIP = (256, 257, 258, 262, 264)


def message_events(events: list[dict[str, Any]]) -> list[tuple[int, str, bool]]:
    """(type, msg hex, summon) of the message events after the peer's init."""
    out = [(e["type"], e["msg"], e["summon"]) for e in events if "type" in e]
    assert out and out[0][0] == wire.INIT, out
    return out[1:]


class PongTests(HubCase):
    """Pongs matched to pings, per connection, in order."""

    def test_client_ping_pong_delivered(self) -> None:
        """The pong to a client's ping (sent with ``send``) becomes a
        queue-class message event; the proxy answers nothing."""
        self.make_hub(keepalive=60)
        conn_id, link = self.open()
        self.hub.send(NODE, conn_id, wire.Ping(4).encode())
        self.assertEqual(link.read(), [wire.Ping(4).encode()])
        pong = wire.Pong(bytes(4)).encode()
        link.send(pong)
        self.clock.advance(0)
        self.assertEqual(message_events(self.events()), [(19, pong.hex(), False)])
        self.assertEqual(link.read(), [])

    def test_keepalive_pong_consumed(self) -> None:
        """The pong to the proxy's keepalive ping is consumed: no event, and
        the connection is not closed after another ``keepalive``."""
        self.make_hub(keepalive=60)
        _, link = self.open()
        self.advance_to(60)
        self.assertEqual(link.read(), [KEEPALIVE_PING])
        link.send(wire.Pong(b"").encode())
        self.advance_to(125)
        self.assertEqual(message_events(self.events()), [])
        self.assertFalse(link.transport.disconnecting)
        self.assertEqual(link.read(), [KEEPALIVE_PING], "the next silence's ping")

    def test_both_in_order(self) -> None:
        """Keepalive ping, then the client's ping of the same size: the
        first pong is the proxy's (consumed), the second the client's."""
        self.make_hub(keepalive=60)
        conn_id, link = self.open()
        self.advance_to(60)
        self.hub.send(NODE, conn_id, wire.Ping(0).encode())
        self.assertEqual(link.read(), [KEEPALIVE_PING, wire.Ping(0).encode()])
        link.send(wire.Pong(b"").encode())
        self.clock.advance(0)
        self.assertEqual(message_events(self.events()), [])
        link.send(wire.Pong(b"").encode())
        self.clock.advance(0)
        self.assertEqual(message_events(self.events()), [(19, "00130000", False)])

    def test_unanswered_client_pings_do_not_break_keepalive(self) -> None:
        """A peer that ignores the client's pings but answers the proxy's:
        the proxy's pongs are consumed (never handed to the client), the
        waiting list stays bounded, and keepalive never closes the
        connection; the client's later answered ping still gets its pong."""
        self.make_hub(keepalive=60)
        conn_id, link = self.open()
        conn = self.hub.connections[conn_id]
        t = 0.0
        for _ in range(5):
            for _ in range(20):
                self.hub.send(NODE, conn_id, wire.Ping(8).encode())
            t += 60
            self.advance_to(t)
            sent = link.read()
            self.assertEqual(sent[-1], KEEPALIVE_PING)
            link.send(wire.Pong(b"").encode())
            self.clock.advance(0)
            self.assertLessEqual(len(conn.pings), MAX_WAITING_PINGS)
        self.advance_to(t + 59)
        self.assertFalse(link.transport.disconnecting)
        self.assertEqual(message_events(self.events()), [])
        self.hub.send(NODE, conn_id, wire.Ping(8).encode())
        link.send(wire.Pong(bytes(8)).encode())
        self.clock.advance(0)
        self.assertEqual(
            message_events(self.events()), [(19, "00130008" + "00" * 8, False)]
        )

    def test_silent_peer_still_closed(self) -> None:
        """The client's waiting pings do not keep a dead peer open: no
        answer to the keepalive ping closes it as before."""
        self.make_hub(keepalive=60)
        conn_id, link = self.open()
        self.hub.send(NODE, conn_id, wire.Ping(8).encode())
        self.advance_to(120)
        self.assertTrue(link.transport.disconnecting)

    def test_no_pong_expected_and_unsolicited(self) -> None:
        """A client ping asking for 65532 bytes or a malformed one expects
        no pong: a pong that then arrives is unsolicited and consumed, as is
        one with nothing waiting."""
        self.make_hub(keepalive=60)
        conn_id, link = self.open()
        self.hub.send(NODE, conn_id, wire.Ping(65532).encode())
        self.hub.send(NODE, conn_id, b"\x00\x12\x00\x00\x00\x09ab")  # truncated
        self.assertEqual(len(self.hub.connections[conn_id].pings), 0)
        link.send(wire.Pong(b"").encode(), wire.Pong(bytes(9)).encode())
        link.send(b"\x00\x13\x00")  # a malformed pong: ignored
        self.clock.advance(0)
        self.assertEqual(message_events(self.events()), [])
        self.assertFalse(link.transport.disconnecting)

    def test_big_pong_flood_is_paced(self) -> None:
        """A peer flooding 6-byte pings that ask for 65,531-byte pongs gets
        pongs only up to the connection's answer budget; the rest are
        ignored and counted, and the budget refills with time.  Another
        connection's answers are not affected."""
        self.make_hub(keepalive=60)
        counts: list[str] = []
        self.hub.on_count.append(counts.append)
        _, link = self.open()
        big = wire.Ping(65531).encode()
        pong_size = len(wire.Pong(bytes(65531)).encode())
        allowed = ANSWER_BURST_BYTES // pong_size
        for _ in range(allowed + 20):
            link.send(big)
        self.clock.advance(0)
        pongs = [m for m in link.read() if m[:2] == b"\x00\x13"]
        self.assertEqual(len(pongs), allowed)
        self.assertEqual(counts.count("answer_throttled"), 20)
        # One pong's worth of time later, one more is answered.
        self.clock.advance(pong_size / ANSWER_RATE_BYTES)
        link.send(big)
        self.clock.advance(0)
        self.assertEqual(len(link.read()), 1)
        self.assertFalse(link.transport.disconnecting)

    def test_pongs_are_per_connection(self) -> None:
        """A pong on one connection never answers a ping sent on another."""
        self.make_hub(keepalive=60)
        a_id, a = self.open()
        b_id, b = self.open()
        self.hub.send(NODE, a_id, wire.Ping(2).encode())
        b.send(wire.Pong(bytes(2)).encode())
        self.clock.advance(0)
        self.assertEqual(message_events(self.events()), [(16, INIT.hex(), False)])
        a.send(wire.Pong(bytes(2)).encode())
        self.clock.advance(0)
        got = [(t, m) for t, m, _ in message_events(self.events())]
        self.assertEqual(got[-1], (19, "00130002" + "0000"))


class GossipTests(HubCase):
    """Gossip reaches the client only after it asked on that connection."""

    def gossip(self) -> list[bytes]:
        """One message of each gossip type (the proxy does not parse them)."""
        return [t.to_bytes(2, "big") + b"gossip" for t in GOSSIP]

    def test_unsolicited_gossip_dropped(self) -> None:
        """Without a query from the client, all of it is dropped."""
        self.make_hub()
        _, link = self.open()
        link.send(*self.gossip())
        self.clock.advance(0)
        self.assertEqual(message_events(self.events()), [])

    def test_after_query(self) -> None:
        """After the client's query_channel_range, the peer's gossip on that
        connection is queued (summon false), and only there; the peer's own
        query is still answered by the proxy, not delivered."""
        self.make_hub()
        conn_id, link = self.open()
        other_id, other = self.open()
        query = wire.QueryChannelRange(CHAIN, 0, 1000).encode()
        self.hub.send(NODE, conn_id, query)
        self.assertEqual(link.read(), [query])
        link.send(*self.gossip())
        other.send(*self.gossip())
        link.send(wire.QueryChannelRange(CHAIN, 5, 6).encode())
        self.clock.advance(0)
        got = message_events(self.events())
        self.assertEqual(
            [(t, s) for t, _, s in got if t != wire.INIT],
            [(t, False) for t in GOSSIP],
        )
        (reply,) = link.read()
        self.assertEqual(
            wire.ReplyChannelRange.decode(reply),
            wire.ReplyChannelRange(CHAIN, 5, 6, 1, b"\x00"),
        )

    def test_each_query_type_and_stop(self) -> None:
        """261 and 265 open the gossip too; the stop filter (first_timestamp
        0xFFFFFFFF) closes it again; a malformed query changes nothing."""
        self.make_hub()
        for query in (
            wire.QueryShortChannelIds(CHAIN, b"\x00").encode(),
            wire.GossipTimestampFilter(CHAIN, 1_700_000_000, 86400).encode(),
        ):
            conn_id, link = self.open()
            self.hub.send(NODE, conn_id, b"\x01\x05\x00")  # malformed 261
            self.assertFalse(self.hub.connections[conn_id].gossip_asked)
            self.hub.send(NODE, conn_id, query)
            self.assertTrue(self.hub.connections[conn_id].gossip_asked)
            stop = wire.GossipTimestampFilter(CHAIN, 0xFFFFFFFF, 0).encode()
            self.hub.send(NODE, conn_id, stop)
            self.assertFalse(self.hub.connections[conn_id].gossip_asked)
            link.send(*self.gossip())
        self.clock.advance(0)
        got = [t for t, _, _ in message_events(self.events())]
        self.assertEqual(got, [wire.INIT], "only the second connection's init")

    def test_override_wins(self) -> None:
        """``--policy 256=drop --policy 258=summon``: after a query 256 is
        still dropped and 258 summons; the rest is queued."""
        self.make_hub()
        self.hub.policy = Policy({256: MessageClass.DROP, 258: MessageClass.SUMMON})
        self.hub._table = self.hub.policy.table
        self.hub._gossip_table = self.hub.policy.gossip_table
        conn_id, link = self.open()
        self.hub.send(NODE, conn_id, wire.QueryChannelRange(CHAIN, 0, 1).encode())
        link.send(*self.gossip())
        self.clock.advance(0)
        got = [(t, s) for t, _, s in message_events(self.events())]
        self.assertEqual(got, [(257, False), (258, True), (262, False), (264, False)])


class PeerStorageTests(HubCase):
    """peer_storage kept by the proxy and handed back behind init."""

    def setUp(self) -> None:
        """Capture log events (the oversize blob's line)."""
        super().setUp()
        self.logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_kept_not_delivered(self) -> None:
        """A peer's peer_storage is stored durably (for this node and peer)
        and produces no event; a peer_storage_retrieval is queue class."""
        self.make_hub()
        _, link = self.open()
        link.send(wire.PeerStorage(b"their backup").encode())
        retrieval = wire.PeerStorage(b"my backup", retrieval=True).encode()
        link.send(retrieval)
        self.clock.advance(0)
        self.assertEqual(self.store.get_peer_storage(NODE, PEER_HEX), b"their backup")
        self.assertEqual(message_events(self.events()), [(9, retrieval.hex(), False)])
        self.assertEqual(link.read(), [])

    def test_flood_keeps_one(self) -> None:
        """1,000 peer_storage messages in one read leave one blob (the
        last), written in one commit; later ones replace it."""
        self.make_hub()
        _, link = self.open()
        commits: list[int] = []
        real = self.store.put_peer_storage

        def counting(*args: Any) -> None:
            commits.append(1)
            real(*args)

        self.patch(self.store, "put_peer_storage", counting)
        link.send(*[wire.PeerStorage(b"%d" % i).encode() for i in range(1000)])
        self.clock.advance(0)
        self.assertEqual(len(commits), 1)
        self.assertEqual(self.store.get_peer_storage(NODE, PEER_HEX), b"999")
        link.send(wire.PeerStorage(b"newer").encode())
        self.clock.advance(0)
        self.assertEqual(self.store.get_peer_storage(NODE, PEER_HEX), b"newer")
        self.assertEqual(message_events(self.events()), [])

    def test_oversize_and_malformed_ignored(self) -> None:
        """A blob over 65531 bytes (a message over 65535 bytes, as a proxy
        with a larger message limit could read) is ignored with a log line,
        and the kept blob stays; a truncated peer_storage is ignored too."""
        self.make_hub()
        conn_id, link = self.open()
        link.send(wire.PeerStorage(b"kept").encode())
        self.clock.advance(0)
        big = (7).to_bytes(2, "big") + (65535).to_bytes(2, "big") + bytes(65535)
        self.hub.messages_received(self.hub.connections[conn_id], [big])
        link.send(b"\x00\x07\x00\x09abc")
        self.clock.advance(0)
        self.assertEqual(self.store.get_peer_storage(NODE, PEER_HEX), b"kept")
        texts = [
            e.get("why") or e.get("err") for e in self.logged if e.get("type") == 7
        ]
        self.assertIn("peer_storage blob of 65535 bytes exceeds 65531", texts)
        self.assertEqual(len(texts), 2)
        self.assertEqual(message_events(self.events()), [])
        self.assertFalse(link.transport.disconnecting)

    def test_retrieval_right_after_init(self) -> None:
        """On the node's next connection to that peer, the client's init is
        followed directly by peer_storage_retrieval with the blob, before
        the client's next message; not again on a second init, and not on
        a connection whose client starts with something else."""
        self.make_hub()
        conn_id, link = self.open()
        self.hub.send(NODE, conn_id, INIT)
        self.assertEqual(link.read(), [INIT], "nothing kept yet")
        link.send(wire.PeerStorage(b"blob").encode())
        self.clock.advance(0)
        self.hub.disconnect(NODE, conn_id)
        link.lose()
        retrieval = wire.PeerStorage(b"blob", retrieval=True).encode()
        second_id, second = self.open()
        self.hub.send(NODE, second_id, INIT)
        self.hub.send(NODE, second_id, b"\x00\x88reestablish")
        self.hub.send(NODE, second_id, INIT)
        self.assertEqual(
            second.read(), [INIT, retrieval, b"\x00\x88reestablish", INIT]
        )
        third_id, third = self.open()
        self.hub.send(NODE, third_id, b"\x00\x01warning")
        self.hub.send(NODE, third_id, INIT)
        self.assertEqual(third.read(), [b"\x00\x01warning", INIT])

    def test_retrieval_of_blob_not_yet_committed(self) -> None:
        """A blob kept in this very reactor turn is already handed back."""
        self.make_hub()
        _, link = self.open()
        second_id, second = self.open()
        link.send(wire.PeerStorage(b"fresh").encode())
        self.hub.send(NODE, second_id, INIT)
        self.assertEqual(
            second.read(), [INIT, wire.PeerStorage(b"fresh", retrieval=True).encode()]
        )


class SnapshotStateTests(HubCase):
    """The new per-connection state survives a snapshot and adopt."""

    def test_pings_gossip_and_first_message_carried(self) -> None:
        """A connection with the client's ping waiting, gossip asked and
        its init sent is captured with that state; on the new hub the pong
        goes to the client, gossip is queued, and no retrieval goes out
        behind a later init."""
        self.make_hub(keepalive=1000)
        conn_id, link = self.open()
        self.hub.send(NODE, conn_id, INIT)
        self.hub.send(NODE, conn_id, wire.Ping(3).encode())
        self.hub.send(NODE, conn_id, wire.QueryChannelRange(CHAIN, 0, 1).encode())
        link.read()
        self.store.put_peer_storage(NODE, PEER_HEX, b"blob", 1.0)
        snap = ConnectionSnapshot.from_bytes(
            self.hub.snapshot(NODE, conn_id).to_bytes()
        )
        self.assertEqual(snap.pings, ((PingOwner.CLIENT, 3),))
        self.assertTrue(snap.gossip_asked)
        self.assertTrue(snap.client_spoke)
        hub2, proto, transport = self.adopt_in_new_hub(snap)
        pong = wire.Pong(bytes(3)).encode()
        proto.dataReceived(link.frames(pong, b"\x01\x00ann"))
        hub2.flush()
        got = [(t, m) for t, m, _ in message_events(self.events())]
        self.assertEqual(got, [(19, pong.hex()), (256, "0100" + b"ann".hex())])
        hub2.send(NODE, conn_id, INIT)
        assert link.cipher is not None
        self.assertEqual(link.cipher.feed(transport.value()), [INIT])
