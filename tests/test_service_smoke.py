"""A first end-to-end pass: login, split handshake, messages both ways."""

from __future__ import annotations

from twisted.internet import defer

from lnproxy import wire

from .harness import ProxyTestCase


class HappyPathTests(ProxyTestCase):
    """The shortest useful flow through a real proxy."""

    @defer.inlineCallbacks
    def test_connect_finish_relay(self) -> defer.Generator:
        """A client logs in, opens a peer through the proxy, and messages
        flow both ways; the peer's init arrives as a stored event."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        opened = peer.wait_open()
        conn, _ = yield client.open_peer(peer, port)
        p = yield opened
        got = peer.wait_message(lambda m: wire.message_type(m) == wire.INIT)
        yield got
        init_event = yield client.wait_event(lambda e: e["params"].get("type") == 16)
        self.assertEqual(init_event["method"], "message")
        self.assertEqual(init_event["params"]["conn"], conn)
        self.assertEqual(init_event["params"]["summon"], False)
        # peer -> client
        p.send(bytes.fromhex("0080") + b"x" * 10)
        ev = yield client.wait_event(lambda e: e["params"].get("type") == 128)
        self.assertEqual(ev["params"]["msg"], "0080" + (b"x" * 10).hex())
        self.assertTrue(ev["params"]["summon"])
        # client -> peer
        got = peer.wait_message(lambda m: m[:2] == b"\x00\x85")
        yield client.call("send", conn=conn, msg="0085abcd")
        msg = yield got
        self.assertEqual(msg, bytes.fromhex("0085abcd"))
        conns = yield client.call("connections")
        self.assertEqual(conns["connections"][0]["state"], "open")
        self.assertEqual(conns["connections"][0]["their_init"], init_event["params"]["msg"])
        yield client.call("ack", seq=ev["params"]["seq"])

    @defer.inlineCallbacks
    def test_message_before_garbage_is_kept(self) -> defer.Generator:
        """A valid message and garbage in one TCP write: the message is
        stored and delivered, then the connection closes with a decryption
        failure (nothing authentic is lost)."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        opened = peer.wait_open()
        conn, _ = yield client.open_peer(peer, port)
        p = yield opened
        yield client.wait_event(lambda e: e["params"].get("type") == 16)
        frame = p.transport_cipher.encrypt(bytes.fromhex("0011") + bytes(32) + b"\x00\x00")
        p.transport.write(frame + b"\xff" * 40)
        err = yield client.wait_event(lambda e: e["params"].get("type") == 17)
        self.assertEqual(err["params"]["conn"], conn)
        closed = yield client.wait_event(lambda e: e["method"] == "closed")
        self.assertIn("decryption failure", closed["params"]["reason"])
        self.assertGreater(closed["params"]["seq"], err["params"]["seq"])

    @defer.inlineCallbacks
    def test_frames_of_every_length_class(self) -> defer.Generator:
        """Replies and events are written as WebSocket frames by the proxy
        itself: a short reply (7-bit length), a medium event (16-bit length)
        and an event of a 65535-byte message (64-bit length) all arrive whole
        at a real Autobahn client, byte for byte."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        opened = peer.wait_open()
        conn, _ = yield client.open_peer(peer, port)
        p = yield opened
        result = yield client.call("ack", seq=0)  # a 37-byte reply frame
        self.assertEqual(result, {})
        medium = bytes.fromhex("8001") + bytes(range(256)) * 4
        large = bytes.fromhex("8003") + b"\xab" * 65533
        for msg in (medium, large):
            p.send(msg)
        for msg in (medium, large):
            ev = yield client.wait_event(
                lambda e, m=msg: e["params"].get("type") == wire.message_type(m)
            )
            self.assertEqual(bytes.fromhex(ev["params"]["msg"]), msg)
            self.assertEqual(ev["params"]["conn"], conn)
