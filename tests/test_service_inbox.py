"""End-to-end tests of the durable inbox and connection lifecycle: replay
and ack across logins, several sessions of one node, isolation between
nodes, ``closed`` events (client request, peer closed, persist, handshake and
init timeouts) and how closed connections stay listed until acknowledged.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer

from lnproxy import keys, wire

from .harness import ProxyTestCase, eventually


def _seqs(client: Any, method: str | None = None) -> list[int]:
    """Seqs of the events a client received, in arrival order."""
    return [
        e["params"]["seq"]
        for e in client.events
        if method is None or e["method"] == method
    ]


class ReplayAndAckTests(ProxyTestCase):
    """Events survive a client going away, and ack is shared by sessions."""

    def pending(self, secret: bytes) -> int:
        """The hub's count of unacknowledged events of a node."""
        node = self.proxy.hub.nodes.get(keys.public_key(secret).hex())
        return node.pending if node else 0

    @defer.inlineCallbacks
    def test_replay_in_order_after_login_response(self) -> Any:
        """Events a node has not acknowledged are re-sent after every login,
        in seq order and after the login response; ``inbox`` in the login
        result gives next_seq and pending; ack n removes every event <= n;
        new events follow the replay with the next seq."""
        self.start_proxy()
        factory, port = self.local_peer()
        secret = os.urandom(32)
        a = yield self.logged_in(secret)
        opened = factory.wait_open()
        conn, _ = yield a.open_peer(factory, port)
        p = yield opened
        for i in range(3):
            p.send(bytes([0, 0x81, i]))
        yield a.wait_event(lambda e: e["params"]["seq"] == 4)
        self.assertEqual(_seqs(a), [1, 2, 3, 4])
        yield a.call("ack", seq=2)
        a.sendClose()
        yield a.closed
        for i in range(3, 5):
            p.send(bytes([0, 0x81, i]))
        yield eventually(lambda: self.pending(secret) == 4)

        b = yield self.logged_in(secret)
        self.assertEqual(b.login_result["inbox"], {"next_seq": 7, "pending": 4})
        self.assertEqual([c["conn"] for c in b.login_result["connections"]], [conn])
        yield b.wait_event(lambda e: e["params"]["seq"] == 6)
        # hello, the login response, then the replay.
        self.assertEqual(b.frames[0]["method"], "hello")
        self.assertEqual(b.frames[1]["result"], b.login_result)
        self.assertEqual([f["params"]["seq"] for f in b.frames[2:]], [3, 4, 5, 6])
        self.assertEqual(
            [e["params"]["msg"] for e in b.events],
            [f"0081{i:02x}" for i in range(1, 5)],
        )
        p.send(bytes([0, 0x81, 5]))
        yield b.wait_event(lambda e: e["params"]["seq"] == 7)
        self.assertEqual(_seqs(b), [3, 4, 5, 6, 7])

        yield b.call("ack", seq=5)
        c = yield self.logged_in(secret)
        self.assertEqual(c.login_result["inbox"], {"next_seq": 8, "pending": 2})
        yield c.wait_event(lambda e: e["params"]["seq"] == 7)
        self.assertEqual(_seqs(c), [6, 7])
        yield c.call("ack", seq=7)
        d = yield self.logged_in(secret)
        self.assertEqual(d.login_result["inbox"], {"next_seq": 8, "pending": 0})
        # Acking an already acknowledged seq is harmless.
        self.assertEqual((yield d.call("ack", seq=3)), {})

    @defer.inlineCallbacks
    def test_two_sessions_share_events_and_acks(self) -> Any:
        """Two sessions of one node both receive every event; an ack from
        one counts for the other and for any later session."""
        self.start_proxy()
        factory, port = self.local_peer()
        secret = os.urandom(32)
        s1 = yield self.logged_in(secret)
        s2 = yield self.logged_in(secret)
        opened = factory.wait_open()
        conn, _ = yield s1.open_peer(factory, port)
        p = yield opened
        p.send(bytes.fromhex("0084aa"))
        for s in (s1, s2):
            yield s.wait_event(lambda e: e["params"]["seq"] == 2)
        self.assertEqual(s1.events, s2.events)
        self.assertEqual(s2.events[1]["params"]["conn"], conn)
        # s2 did not open the connection but may use it: it is the node's.
        got = factory.wait_message(lambda m: m == bytes.fromhex("0085bb"))
        yield s2.call("send", conn=conn, msg="0085bb")
        yield got
        yield s2.call("ack", seq=2)
        s3 = yield self.logged_in(secret)
        self.assertEqual(s3.login_result["inbox"], {"next_seq": 3, "pending": 0})
        s1.sendClose()
        yield s1.closed
        p.send(bytes.fromhex("0084cc"))
        for s in (s2, s3):
            yield s.wait_event(lambda e: e["params"]["seq"] == 3)
        self.assertEqual(_seqs(s3), [3])

    @defer.inlineCallbacks
    def test_nodes_are_isolated(self) -> Any:
        """Two nodes cannot see each other's connections, events or acks:
        each has its own seq from 1, B's ack of A's seq is refused, and
        neither node's ack changes the other's pending count."""
        self.start_proxy()
        factory, port = self.local_peer()
        sa, sb = os.urandom(32), os.urandom(32)
        a = yield self.logged_in(sa)
        b = yield self.logged_in(sb)
        opened = factory.wait_open()
        conn_a, _ = yield a.open_peer(factory, port)
        pa = yield opened
        pa.send(bytes.fromhex("0084aa"))
        yield a.wait_event(lambda e: e["params"]["seq"] == 2)
        self.assertEqual(b.events, [])
        self.assertEqual((yield b.call("connections")), {"connections": []})
        yield self.expect_error(b.call("ack", seq=1), -32602)
        opened = factory.wait_open()
        conn_b, _ = yield b.open_peer(factory, port)
        pb = yield opened
        yield b.wait_event(lambda e: e["params"]["seq"] == 1)
        self.assertEqual(b.events[0]["params"]["conn"], conn_b)
        yield b.call("ack", seq=1)
        self.assertEqual(self.pending(sa), 2)
        pb.send(bytes.fromhex("0084bb"))
        yield b.wait_event(lambda e: e["params"]["seq"] == 2)
        yield a.call("ack", seq=2)
        self.assertEqual(self.pending(sb), 1)
        self.assertEqual([e["params"]["conn"] for e in a.events], [conn_a, conn_a])
        self.assertEqual([e["params"]["conn"] for e in b.events], [conn_b, conn_b])
        listed_a = yield a.call("connections")
        self.assertEqual([c["conn"] for c in listed_a["connections"]], [conn_a])
        b2 = yield self.logged_in(sb)
        self.assertEqual(b2.login_result["inbox"], {"next_seq": 3, "pending": 1})


class ClosedEventTests(ProxyTestCase):
    """The ``closed`` event and the life of a closed connection."""

    def stored(self, secret: bytes, seq: int) -> Any:
        """The stored event row of a node's seq (for its summon flag)."""
        rows = self.proxy.store.events_after(keys.public_key(secret).hex(), seq - 1, 1)
        self.assertEqual(rows[0].seq, seq)
        return rows[0]

    @defer.inlineCallbacks
    def test_disconnect(self) -> Any:
        """``disconnect`` of a persist connection gives a closed event with
        reason ``client request`` and reconnect false (not a summon); the
        connection stays listed as closed until that event is acked."""
        self.start_proxy()
        factory, port = self.local_peer()
        client = yield self.logged_in()
        conn, _ = yield client.open_peer(factory, port, persist=True)
        listed = yield client.call("connections")
        self.assertIs(listed["connections"][0]["persist"], True)
        yield client.call("disconnect", conn=conn)
        ev = yield client.wait_event(lambda e: e["method"] == "closed")
        params = ev["params"]
        self.assertEqual(
            {k: params[k] for k in ("conn", "peer", "reason", "reconnect")},
            {
                "conn": conn,
                "peer": factory.node_id.hex(),
                "reason": "client request",
                "reconnect": False,
            },
        )
        self.assertEqual(
            set(params), {"seq", "at", "conn", "peer", "reason", "reconnect"}
        )
        self.assertIsInstance(params["at"], float)
        self.assertIs(self.stored(client.node_secret, params["seq"]).summon, False)
        yield eventually(lambda: factory.closed_count == 1)
        listed = yield client.call("connections")
        self.assertEqual(
            [(c["conn"], c["state"]) for c in listed["connections"]], [(conn, "closed")]
        )
        # Acking an earlier event (the init) keeps it listed.
        yield client.call("ack", seq=params["seq"] - 1)
        listed = yield client.call("connections")
        self.assertEqual(len(listed["connections"]), 1)
        yield client.call("ack", seq=params["seq"])
        listed = yield client.call("connections")
        self.assertEqual(listed, {"connections": []})
        # Once gone it is unknown (code 3), no longer "not open" (code 6).
        yield self.expect_error(client.call("send", conn=conn, msg="0085"), 3)

    @defer.inlineCallbacks
    def test_peer_closes(self) -> Any:
        """A peer closing gives a closed event: reconnect false (not a
        summon) for a plain connection, reconnect true (a summon) for a
        persist one."""
        self.start_proxy()
        factory, port = self.local_peer()
        client = yield self.logged_in()
        for persist in (False, True):
            opened = factory.wait_open()
            conn, _ = yield client.open_peer(factory, port, persist=persist)
            p = yield opened
            p.transport.loseConnection()
            ev = yield client.wait_event(
                lambda e, c=conn: e["method"] == "closed" and e["params"]["conn"] == c
            )
            self.assertEqual(ev["params"]["reason"], "peer closed")
            self.assertIs(ev["params"]["reconnect"], persist)
            self.assertIs(
                self.stored(client.node_secret, ev["params"]["seq"]).summon, persist
            )
        listed = yield client.call("connections")
        self.assertEqual(
            [c["state"] for c in listed["connections"]], ["closed", "closed"]
        )
        # A reset rather than a FIN is reported too.
        opened = factory.wait_open()
        conn, _ = yield client.open_peer(factory, port, persist=True)
        p = yield opened
        p.transport.abortConnection()
        ev = yield client.wait_event(
            lambda e: e["method"] == "closed" and e["params"]["conn"] == conn
        )
        self.assertIs(ev["params"]["reconnect"], True)

    @defer.inlineCallbacks
    def test_handshake_timeout(self) -> Any:
        """With ``--handshake-timeout 1`` a connection whose client never
        calls finish is closed with reason ``handshake timeout``; finish
        afterwards answers code 6."""
        self.start_proxy("--handshake-timeout", "1")
        factory, port = self.local_peer()
        client = yield self.logged_in()
        r, init = yield client.start_connect(factory, port)
        ev = yield client.wait_event(lambda e: e["method"] == "closed")
        self.assertEqual(
            (ev["params"]["conn"], ev["params"]["reason"], ev["params"]["reconnect"]),
            (r["conn"], "handshake timeout", False),
        )
        self.assertGreaterEqual(ev["params"]["at"], 0)
        listed = yield client.call("connections")
        self.assertEqual(listed["connections"][0]["state"], "closed")
        self.assertIsNone(listed["connections"][0]["their_init"])
        yield self.expect_error(client.finish(r, init), 6)
        self.assertEqual(self.proxy.hub._handshakes, 0)

    @defer.inlineCallbacks
    def test_init_timeout(self) -> Any:
        """With ``--handshake-timeout 1`` a finished connection whose peer
        never sends init is closed with reason ``init timeout``, while a
        connection finished at the same time whose peer did send init stays
        open."""
        self.start_proxy("--handshake-timeout", "1")
        mute, mute_port = self.scripted_peer(send_init=False)
        good, good_port = self.local_peer()
        client = yield self.logged_in()
        bad_conn, _ = yield client.open_peer(mute, mute_port)
        good_conn, _ = yield client.open_peer(good, good_port)
        ev = yield client.wait_event(lambda e: e["method"] == "closed")
        self.assertEqual(
            (ev["params"]["conn"], ev["params"]["reason"]), (bad_conn, "init timeout")
        )
        listed = yield client.call("connections")
        states = {c["conn"]: c["state"] for c in listed["connections"]}
        self.assertEqual(states, {bad_conn: "closed", good_conn: "open"})
        got = good.wait_message(lambda m: m == bytes.fromhex("0085"))
        yield client.call("send", conn=good_conn, msg="0085")
        yield got
        self.assertEqual(
            [e["params"]["type"] for e in client.events if e["method"] == "message"],
            [wire.INIT],
        )
