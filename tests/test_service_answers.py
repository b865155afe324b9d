"""End to end over 127.0.0.1, with pyln-proto as the independent BOLT 8
peer: docs/protocol.md, "What the proxy does by itself" as a client and a
peer see it.

- the client's ping is answered by the peer and the pong delivered;
- the proxy's keepalive ping is answered and the pong consumed, also while
  a client ping the peer ignores is waiting;
- a gossip query by the client gets the peer's reply delivered, the peer's
  own query is still answered by the proxy, unsolicited gossip is dropped;
- ``peer_storage`` is kept and not delivered (a flood keeps the last), and
  on the next connection the peer reads ``peer_storage_retrieval`` right
  after the client's ``init``;
- ``hello.features`` lists ``peer_storage``.

pyln-proto blocks, so the peer's steps run in a thread; one step at a time
(pyln rotates both directions' keys from either call).
"""

from __future__ import annotations

import os
from typing import Any

from pyln.proto import wire as pyln_wire
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from lnproxy import keys, wire

from .harness import ProxyTestCase, eventually
from .test_interop import close_socket, tame_pyln_connection

STEP_TIMEOUT = 30.0
CHAIN = bytes(range(32))
INIT = wire.Init(features=b"").encode()
#: A summon-class type the peer sends as "everything before is processed".
MARKER = bytes.fromhex("0081") + b"marker"


class PylnPeer:
    """One accepted pyln-proto connection, driven from the reactor thread
    one blocking step at a time."""

    def __init__(self, lconn: Any) -> None:
        self.lconn = lconn
        self.sock, _, _ = tame_pyln_connection(lconn)

    def send(self, *messages: bytes) -> defer.Deferred[None]:
        """Send ``messages`` in order (in a thread)."""

        def run() -> None:
            for m in messages:
                self.lconn.send_message(m)

        return deferToThread(run).addTimeout(STEP_TIMEOUT, reactor)

    def read(self, count: int) -> defer.Deferred[list[bytes]]:
        """Read ``count`` messages (in a thread)."""

        def run() -> list[bytes]:
            return [self.lconn.read_message() for _ in range(count)]

        return deferToThread(run).addTimeout(STEP_TIMEOUT, reactor)

    def close(self) -> None:
        """Drop the TCP connection."""
        close_socket(self.sock)


class AnswersEndToEndTests(ProxyTestCase):
    """A WebSocket client, the proxy and a pyln-proto peer."""

    timeout = 90

    def setUp(self) -> None:
        """A pyln-proto listener on a free loopback port."""
        self.peer_secret = os.urandom(32)
        self.server = pyln_wire.LightningServerSocket(
            pyln_wire.PrivateKey(self.peer_secret)
        )
        self.addCleanup(self.server.close)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.server.settimeout(STEP_TIMEOUT)

    @defer.inlineCallbacks
    def connect(self, client: Any) -> Any:
        """Open a connection from ``client`` to the pyln peer; the client
        sends its init, the peer reads it and sends its own; wait for the
        peer's init event.

        :return: ``(conn_id, PylnPeer)``.
        """
        accepted = deferToThread(self.server.accept)
        conn, _ = yield client.open_peer(
            keys.public_key(self.peer_secret), self.server.getsockname()[1]
        )
        lconn, _ = yield accepted.addTimeout(STEP_TIMEOUT, reactor)
        peer = PylnPeer(lconn)
        self.addCleanup(peer.close)
        their_init = yield peer.read(1)
        self.assertEqual(their_init, [INIT])
        before = len(client.events)
        yield peer.send(INIT)
        yield client.wait_event(
            lambda e: e["params"].get("type") == wire.INIT
            and e["params"].get("conn") == conn
        )
        self.assertGreater(len(client.events), before)
        return conn, peer

    @defer.inlineCallbacks
    def until_marker(self, client: Any, conn: str, peer: PylnPeer) -> Any:
        """The peer sends a new marker; return (type, msg, summon) of the
        connection's message events since its init or the previous marker,
        up to this marker."""
        self.markers = getattr(self, "markers", 0) + 1
        marker = MARKER + bytes([self.markers])
        yield peer.send(marker)
        yield client.wait_event(lambda e: e["params"].get("msg") == marker.hex())
        out: list[tuple[int, str, bool]] = []
        for e in client.events:
            p = e["params"]
            if e["method"] != "message" or p["conn"] != conn:
                continue
            if p["type"] == wire.INIT or p["msg"].startswith(MARKER.hex()):
                if p["msg"] == marker.hex():
                    break
                out = []
                continue
            out.append((p["type"], p["msg"], p["summon"]))
        return out

    @defer.inlineCallbacks
    def test_client_ping_answered_by_peer(self) -> Any:
        """The client's ping reaches the peer; the peer's pong reaches the
        client as a queue-class message event."""
        self.start_proxy()
        client = yield self.logged_in()
        conn, peer = yield self.connect(client)
        yield client.call("send", conn=conn, msg=wire.Ping(12, b"ab").encode().hex())
        (got,) = yield peer.read(1)
        self.assertEqual(got, wire.Ping(12, b"ab").encode())
        pong = wire.Pong(bytes(12)).encode()
        yield peer.send(pong)
        seen = yield self.until_marker(client, conn, peer)
        self.assertEqual(seen, [(wire.PONG, pong.hex(), False)])

    @defer.inlineCallbacks
    def test_keepalive_pong_consumed_despite_ignored_client_ping(self) -> Any:
        """The peer ignores the client's ping; the proxy's keepalive pings
        (one per silent second) are answered by the peer and consumed: no
        pong reaches the client and the connection stays open over several
        keepalive periods.  A later client ping that the peer answers gets
        its pong delivered."""
        self.start_proxy("--keepalive", "1")
        client = yield self.logged_in()
        conn, peer = yield self.connect(client)
        yield client.call("send", conn=conn, msg=wire.Ping(8).encode().hex())
        (ignored,) = yield peer.read(1)
        self.assertEqual(ignored, wire.Ping(8).encode())
        for _ in range(3):
            (ping,) = yield peer.read(1)
            self.assertEqual(ping, wire.Ping(0).encode(), "the keepalive ping")
            yield peer.send(wire.Pong(b"").encode())
        listed = yield client.call("connections")
        self.assertEqual(listed["connections"][0]["state"], "open")
        seen = yield self.until_marker(client, conn, peer)
        self.assertEqual(seen, [])
        yield client.call("send", conn=conn, msg=wire.Ping(5).encode().hex())
        while True:
            (got,) = yield peer.read(1)
            if got == wire.Ping(5).encode():
                break
            self.assertEqual(got, wire.Ping(0).encode())
            yield peer.send(wire.Pong(b"").encode())
        yield peer.send(wire.Pong(bytes(5)).encode())
        yield eventually(
            lambda: any(
                e["params"].get("type") == wire.PONG for e in client.events
            ),
            timeout=STEP_TIMEOUT,
        )
        pongs = [e["params"] for e in client.events if e["params"].get("type") == 19]
        self.assertEqual(
            [(p["msg"], p["summon"]) for p in pongs],
            [(wire.Pong(bytes(5)).encode().hex(), False)],
        )

    @defer.inlineCallbacks
    def test_gossip_query_reply_delivered(self) -> Any:
        """Unsolicited gossip is dropped; after the client's
        query_channel_range the peer's reply_channel_range and
        channel_update are delivered (queue class); the peer's own
        query_channel_range is still answered by the proxy."""
        self.start_proxy()
        client = yield self.logged_in()
        conn, peer = yield self.connect(client)
        gossip = [t.to_bytes(2, "big") + b"gossip" for t in (256, 257, 258, 262, 264)]
        yield peer.send(*gossip)
        seen = yield self.until_marker(client, conn, peer)
        self.assertEqual(seen, [], "gossip nobody asked for")
        query = wire.QueryChannelRange(CHAIN, 600_000, 200_000).encode()
        yield client.call("send", conn=conn, msg=query.hex())
        (got,) = yield peer.read(1)
        self.assertEqual(got, query)
        reply = wire.ReplyChannelRange(CHAIN, 600_000, 200_000, 1, b"\x00").encode()
        update = (258).to_bytes(2, "big") + b"update"
        yield peer.send(wire.QueryChannelRange(CHAIN, 1, 2).encode(), reply, update)
        (answered,) = yield peer.read(1)
        self.assertEqual(
            wire.ReplyChannelRange.decode(answered),
            wire.ReplyChannelRange(CHAIN, 1, 2, 1, b"\x00"),
        )
        events = [e for e in client.events if e["params"].get("conn") == conn]
        seen = yield self.until_marker(client, conn, peer)
        self.assertEqual(
            seen, [(264, reply.hex(), False), (258, update.hex(), False)]
        )
        self.assertFalse(any(e["params"].get("type") == 263 for e in events))

    @defer.inlineCallbacks
    def test_peer_storage_kept_and_retrieved(self) -> Any:
        """The peer's peer_storage messages (a flood of 50) are not
        delivered; after the link drops and the client reconnects, the peer
        reads the client's init, then peer_storage_retrieval with the last
        blob, then the client's next message."""
        self.start_proxy()
        client = yield self.logged_in()
        conn, peer = yield self.connect(client)
        blobs = [os.urandom(100 + i) for i in range(50)]
        yield peer.send(*[wire.PeerStorage(b).encode() for b in blobs])
        retrieval = wire.PeerStorage(b"mine", retrieval=True).encode()
        yield peer.send(retrieval)
        seen = yield self.until_marker(client, conn, peer)
        self.assertEqual(seen, [(9, retrieval.hex(), False)])
        peer.close()
        yield client.wait_event(lambda e: e["method"] == "closed")
        again, peer2 = yield self.connect(client)
        self.assertNotEqual(again, conn)
        reestablish = bytes.fromhex("0088") + bytes(40)
        yield client.call("send", conn=again, msg=reestablish.hex())
        got = yield peer2.read(2)
        self.assertEqual(
            got, [wire.PeerStorage(blobs[-1], retrieval=True).encode(), reestablish]
        )

    @defer.inlineCallbacks
    def test_hello_features(self) -> Any:
        """The hello notification lists peer_storage."""
        self.start_proxy()
        client = yield self.ws()
        hello = yield client.hello
        self.assertIn("peer_storage", hello["features"])

    @defer.inlineCallbacks
    def test_no_peer_storage_feature_when_overridden(self) -> Any:
        """With ``--policy 7=summon`` the proxy keeps no peer storage, so
        hello does not list peer_storage."""
        self.start_proxy("--policy", "7=summon")
        client = yield self.ws()
        hello = yield client.hello
        self.assertNotIn("peer_storage", hello["features"])
