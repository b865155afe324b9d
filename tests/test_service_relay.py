"""End-to-end relay tests: messages through the proxy with an independent
BOLT 8 peer (pyln-proto), the proxy's own ping/pong and gossip answers, the
default policy table and ``--policy`` overrides, and a peer sending garbage.
"""

from __future__ import annotations

import os
import random
from typing import Any

from pyln.proto import wire as pyln_wire
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from lnproxy import keys, wire

from .harness import ProxyTestCase, eventually
from .test_interop import close_socket, tame_pyln_connection

#: Messages per direction after init: 1,201 in all crosses 2 key rotations.
COUNT = 1200
#: Bound for the pyln thread's blocking steps and for the whole exchange.
STEP_TIMEOUT = 30.0
CHAIN = bytes(range(32))
#: A message type that is summon by default, used to mark "everything
#: before this has been processed" (a connection's messages stay in order).
MARKER_TYPE = 0x0081


def _peer_messages(seed: int) -> list[bytes]:
    """Messages a peer sends that the default policy delivers (queue or
    summon types), of varied sizes including the largest."""
    rng = random.Random(seed)
    types = list(range(32, 256)) + [32769, 40001, 65535, 600, 1000]
    out = []
    for i in range(COUNT):
        size = (
            65533
            if i % 400 == 7
            else rng.choice((0, 1, rng.randint(2, 300), rng.randint(300, 3000)))
        )
        out.append(rng.choice(types).to_bytes(2, "big") + rng.randbytes(size))
    return out


def _client_messages(seed: int) -> list[bytes]:
    """Messages a client sends: any type (the proxy does not filter what a
    client sends), 2 to 65535 bytes."""
    rng = random.Random(seed)
    out = []
    for i in range(COUNT):
        size = (
            65535
            if i % 400 == 9
            else rng.choice((2, rng.randint(2, 300), rng.randint(300, 3000)))
        )
        out.append(rng.randbytes(size))
    return out


def _pyln_side(
    lconn: Any, outgoing: list[bytes], expected: int
) -> tuple[bytes, list[bytes]]:
    """pyln's side (in a thread): send init, read the client's init, send
    every message, then read ``expected`` messages.  One thread does both
    (pyln-proto rotates both directions' keys from either call)."""
    lconn.send_message(wire.Init(features=b"").encode())
    their_init = lconn.read_message()
    for msg in outgoing:
        lconn.send_message(msg)
    received = [lconn.read_message() for _ in range(expected)]
    return their_init, received


class PylnRelayTests(ProxyTestCase):
    """1,200 messages each way between a WebSocket client and pyln-proto."""

    timeout = 120

    @defer.inlineCallbacks
    def test_1200_each_way(self) -> Any:
        """Every message pyln sends arrives as a ``message`` event, in order,
        with consecutive seqs and the right type and summon flag; every
        message the client sends arrives at pyln byte for byte; the 1,201
        messages per direction cross two key rotations."""
        self.start_proxy()
        secret = os.urandom(32)
        server = pyln_wire.LightningServerSocket(pyln_wire.PrivateKey(secret))
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(STEP_TIMEOUT)
        threads: list[defer.Deferred[Any]] = []
        self.addCleanup(
            lambda: defer.DeferredList(threads, consumeErrors=True).addTimeout(
                STEP_TIMEOUT, reactor
            )
        )
        accepted = deferToThread(server.accept)
        threads.append(accepted)
        client = yield self.logged_in()
        node_id = keys.public_key(secret)
        conn, _ = yield client.open_peer(node_id, server.getsockname()[1])
        lconn, _ = yield accepted.addTimeout(STEP_TIMEOUT, reactor)
        sock, _, _ = tame_pyln_connection(lconn)
        self.addCleanup(close_socket, sock)
        self.assertEqual(
            lconn.remote_pubkey.serializeCompressed(),
            keys.public_key(client.node_secret),
        )
        theirs, ours = _peer_messages(1), _client_messages(2)
        pyln = deferToThread(_pyln_side, lconn, theirs, len(ours))
        threads.append(pyln)
        sends = defer.gatherResults(
            [client.call("send", conn=conn, msg=m.hex()) for m in ours],
            consumeErrors=True,
        )
        yield eventually(lambda: len(client.events) >= COUNT + 1, timeout=STEP_TIMEOUT)
        their_init, received = yield pyln.addTimeout(STEP_TIMEOUT, reactor)
        results = yield sends
        self.assertEqual(results, [{}] * COUNT)
        self.assertEqual(their_init, wire.Init(features=b"").encode())
        self.assertEqual(len(received), COUNT)
        self.assertTrue(received == ours, "pyln received other bytes")
        events = [e["params"] for e in client.events]
        self.assertEqual([e["seq"] for e in events], list(range(1, COUNT + 2)))
        self.assertEqual(events[0]["type"], wire.INIT)
        got = [bytes.fromhex(e["msg"]) for e in events[1:]]
        self.assertEqual(len(got), COUNT)
        self.assertTrue(got == theirs, "the client received other bytes")
        for e, msg in zip(events[1:], theirs, strict=True):
            t = int.from_bytes(msg[:2], "big")
            self.assertEqual(
                (e["type"], e["conn"], e["peer"]), (t, conn, node_id.hex())
            )
            self.assertEqual(e["summon"], 32 <= t <= 255 or t % 2 == 0)
        yield client.call("ack", seq=COUNT + 1)
        again = yield self.logged_in(client.node_secret)
        self.assertEqual(
            again.login_result["inbox"], {"next_seq": COUNT + 2, "pending": 0}
        )


class ProxyAnswersTests(ProxyTestCase):
    """What the proxy answers by itself, and what it keeps from the client."""

    @defer.inlineCallbacks
    def open(self, *extra: str) -> Any:
        """Start a proxy, open a connection to a local peer, wait for the
        peer's init event; return ``(client, conn, peer_protocol, factory)``."""
        self.start_proxy(*extra)
        factory, port = self.local_peer()
        client = yield self.logged_in()
        opened = factory.wait_open()
        conn, _ = yield client.open_peer(factory, port)
        p = yield opened
        yield client.wait_event(lambda e: e["params"].get("type") == wire.INIT)
        return client, conn, p, factory

    @defer.inlineCallbacks
    def events_until_marker(self, client: Any, p: Any, tag: bytes) -> Any:
        """Send a marker from the peer and return every message event
        (type, summon) after init, up to and excluding the marker."""
        p.send(MARKER_TYPE.to_bytes(2, "big") + tag)
        marker = MARKER_TYPE.to_bytes(2, "big").hex() + tag.hex()
        yield client.wait_event(lambda e: e["params"].get("msg") == marker)
        out = []
        first_init = True
        for e in client.events:
            params = e["params"]
            if e["method"] != "message":
                continue
            if params["type"] == wire.INIT and first_init:
                first_init = False  # the peer's own init, after the handshake
                continue
            if params["msg"] == marker:
                break
            out.append((params["type"], params["summon"]))
        return out

    @defer.inlineCallbacks
    def test_ping_answered_by_proxy(self) -> Any:
        """A ping asking for 10 bytes gets a pong of 10 zero bytes from the
        proxy; one asking for 65531 gets a 65535-byte pong; one asking for
        65532 or more gets nothing and does not close the connection; no
        ping or pong ever reaches the client."""
        client, conn, p, factory = yield self.open()
        pongs: list[bytes] = []
        factory.on_message.append(
            lambda _p, m: pongs.append(m) if wire.message_type(m) == wire.PONG else None
        )
        got = factory.wait_message(lambda m: wire.message_type(m) == wire.PONG)
        p.send(wire.Ping(10, bytes(4)).encode())
        pong = yield got
        self.assertEqual(pong, wire.Pong(bytes(10)).encode())
        self.assertEqual(pong, bytes.fromhex("0013000a") + bytes(10))
        for n in (65532, 65535):
            p.send(wire.Ping(n).encode())
        got = factory.wait_message(
            lambda m: wire.message_type(m) == wire.PONG and len(m) > 14
        )
        p.send(wire.Ping(65531).encode())
        self.assertEqual(len((yield got)), 65535)
        got = factory.wait_message(lambda m: m == wire.Pong(bytes(3)).encode())
        p.send(wire.Ping(3).encode())
        yield got
        self.assertEqual([len(m) - 4 for m in pongs], [10, 65531, 3])
        # An unsolicited pong is consumed too.
        p.send(wire.Pong(bytes(5)).encode())
        seen = yield self.events_until_marker(client, p, b"ping")
        self.assertEqual(seen, [])
        listed = yield client.call("connections")
        self.assertEqual(listed["connections"][0]["state"], "open")
        got = factory.wait_message(lambda m: m == bytes.fromhex("0085"))
        yield client.call("send", conn=conn, msg="0085")
        yield got

    @defer.inlineCallbacks
    def test_gossip_queries_answered(self) -> Any:
        """query_short_channel_ids (261) is answered with
        reply_short_channel_ids_end (262, full_information 0) and
        query_channel_range (263) with an empty, complete reply_channel_range
        (264) over the same range; gossip_timestamp_filter (265) is consumed;
        none reaches the client.  A malformed query is ignored, not fatal."""
        client, conn, p, factory = yield self.open()
        got = factory.wait_message(lambda m: wire.message_type(m) == 262)
        p.send(wire.QueryShortChannelIds(CHAIN, b"\x00").encode())
        reply = wire.ReplyShortChannelIdsEnd.decode((yield got))
        self.assertEqual(reply, wire.ReplyShortChannelIdsEnd(CHAIN, 0))
        got = factory.wait_message(lambda m: wire.message_type(m) == 264)
        p.send(wire.QueryChannelRange(CHAIN, 700_000, 1000).encode())
        rng = wire.ReplyChannelRange.decode((yield got))
        self.assertEqual(
            (
                rng.chain_hash,
                rng.first_blocknum,
                rng.number_of_blocks,
                rng.sync_complete,
            ),
            (CHAIN, 700_000, 1000, 1),
        )
        self.assertEqual(rng.encoded_short_ids, b"\x00")
        p.send(wire.GossipTimestampFilter(CHAIN, 0, 0xFFFFFFFF).encode())
        p.send((261).to_bytes(2, "big") + b"\x01\x02")  # truncated query
        seen = yield self.events_until_marker(client, p, b"gossip")
        self.assertEqual(seen, [])
        self.assertEqual(
            [
                wire.message_type(m)
                for m in p.received
                if wire.message_type(m) in (262, 264)
            ],
            [262, 264],
        )

    @defer.inlineCallbacks
    def test_default_policy_classes(self) -> Any:
        """Gossip (256-258) and gossip replies (262, 264) are dropped (the
        client asked for none); init, warning, peer_storage_retrieval (9)
        and unknown odd types are queued (summon false); peer_storage (7)
        is kept by the proxy (this one is malformed: ignored); 2, 17,
        32-255, 259, 513 and unknown even types summon the client."""
        client, conn, p, factory = yield self.open()
        sent = [
            256,
            257,
            258,
            262,
            264,  # drop
            7,  # handled
            16,
            1,
            9,
            33,
            32769,
            65535,
            601,  # queue
            2,
            17,
            32,
            100,
            128,
            132,
            133,
            136,
            255,
            259,
            513,
            32768,
            600,
            1000,
            65534,  # summon
        ]
        for t in sent:
            p.send(t.to_bytes(2, "big") + b"payload")
        seen = yield self.events_until_marker(client, p, b"policy")
        queue = {16, 1, 9, 32769, 65535, 601}
        expected = [
            (t, t not in queue) for t in sent if t not in (256, 257, 258, 262, 264, 7)
        ]
        self.assertEqual(seen, expected)
        # Type 33 is in 32-255: summon even though it is odd.
        self.assertIn((33, True), seen)

    @defer.inlineCallbacks
    def test_policy_override(self) -> Any:
        """``--policy 128=queue`` turns update_add_htlc's summon flag off,
        ``--policy 130=drop`` drops 130, ``--policy 256=summon`` delivers a
        channel_announcement, ``--policy 18=queue`` hands pings to the
        client instead of answering them; other types keep their class."""
        client, conn, p, factory = yield self.open(
            "--policy",
            "128=queue",
            "--policy",
            "130=drop",
            "--policy",
            "256=summon",
            "--policy",
            "18=queue",
        )
        for t in (128, 130, 256, 132, 257):
            p.send(t.to_bytes(2, "big") + b"x")
        p.send(wire.Ping(4).encode())
        seen = yield self.events_until_marker(client, p, b"override")
        self.assertEqual(seen, [(128, False), (256, True), (132, True), (18, False)])
        self.assertFalse(any(wire.message_type(m) == wire.PONG for m in p.received))


class BadPeerTests(ProxyTestCase):
    """A peer that breaks BOLT 8 after the handshake."""

    @defer.inlineCallbacks
    def test_garbage_after_handshake(self) -> Any:
        """Garbage from an open peer closes that connection with a closed
        event whose reason mentions decryption; another connection of the
        same node and another node's connection keep working both ways."""
        self.start_proxy()
        bad_peer, bad_port = self.local_peer()
        good_peer, good_port = self.local_peer()
        a = yield self.logged_in()
        b = yield self.logged_in()
        opened = bad_peer.wait_open()
        bad_conn, _ = yield a.open_peer(bad_peer, bad_port)
        bad_p = yield opened
        opened = good_peer.wait_open()
        a_good, _ = yield a.open_peer(good_peer, good_port)
        a_good_p = yield opened
        opened = good_peer.wait_open()
        b_good, _ = yield b.open_peer(good_peer, good_port)
        b_good_p = yield opened
        bad_p.transport.write(os.urandom(200))
        closed = yield a.wait_event(lambda e: e["method"] == "closed")
        self.assertEqual(closed["params"]["conn"], bad_conn)
        self.assertIn("decryption", closed["params"]["reason"])
        self.assertIs(closed["params"]["reconnect"], False)
        for client, conn, p in ((a, a_good, a_good_p), (b, b_good, b_good_p)):
            tag = conn.encode()
            p.send(bytes.fromhex("0081") + tag)
            ev = yield client.wait_event(
                lambda e, t=tag: e["params"].get("msg") == "0081" + t.hex()
            )
            self.assertEqual(ev["params"]["conn"], conn)
            got = good_peer.wait_message(lambda m, t=tag: m == b"\x00\x85" + t)
            yield client.call("send", conn=conn, msg="0085" + tag.hex())
            yield got
        self.assertEqual([e["method"] for e in b.events].count("closed"), 0)
