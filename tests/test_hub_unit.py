"""Fast unit tests of the hub and the peer protocol on a fake clock and
in-memory transports: keepalive, body timeout, act 2 timeout, early bytes,
the write buffer cap, the inbox cap (pausing peers), handshake and init
timeouts, slow sessions, and a clean stop.

The peer side of each connection is a real BOLT 8 responder
(:class:`lnproxy.noise.Responder`) driven by hand over a ``StringTransport``;
the store is a real SQLite file (synchronous NORMAL: durability is not
under test here).
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from twisted.internet import defer, error
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lnproxy import keys, noise, wire
from lnproxy.hub import Hub, HubError, Limits
from lnproxy.journal import Journal, message_head
from lnproxy.lifecycle import ConnState
from lnproxy.peer import (
    MAX_EARLY_BYTES,
    IPeerListener,
    PeerFactory,
    PeerProtocol,
)
from lnproxy.policy import Policy
from lnproxy.snapshot import ConnectionSnapshot
from lnproxy.store import EventRow, Store

NODE_SECRET = bytes.fromhex("11" * 32)
NODE = keys.public_key(NODE_SECRET).hex()
PEER_SECRET = bytes.fromhex("22" * 32)
PEER = keys.public_key(PEER_SECRET)
#: The proxy's own keepalive ping (no pong bytes asked).
KEEPALIVE_PING = wire.Ping(0).encode()


class Transport(StringTransport):
    """A StringTransport that remembers an abort."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Link:
    """One in-memory TCP connection between a PeerProtocol and a hand-driven
    BOLT 8 responder."""

    def __init__(self, proto: PeerProtocol) -> None:
        self.proto = proto
        self.transport = Transport()
        self.responder = noise.Responder(PEER_SECRET)
        self.cipher: noise.Transport | None = None
        self.lost = False
        proto.makeConnection(self.transport)

    def take(self) -> bytes:
        """What the proxy wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    def answer_act1(self) -> bytes:
        """Read act 1, deliver act 2."""
        self.responder.read_act1(self.take())
        act2 = self.responder.act2()
        self.proto.dataReceived(act2)
        return act2

    def read_act3(self) -> None:
        """Read act 3 and set up the peer's transport cipher."""
        self.cipher = noise.Transport.from_keys(self.responder.read_act3(self.take()))

    def frames(self, *messages: bytes) -> bytes:
        """The encrypted frames of ``messages`` (the peer's cipher advances)."""
        assert self.cipher is not None
        return b"".join(self.cipher.encrypt(m) for m in messages)

    def send(self, *messages: bytes) -> None:
        """The peer sends whole messages."""
        self.proto.dataReceived(self.frames(*messages))

    def read(self) -> list[bytes]:
        """Messages the proxy sent to the peer since the last call."""
        assert self.cipher is not None
        return self.cipher.feed(self.take())

    def lose(self) -> None:
        """TCP is gone (what the reactor does after loseConnection)."""
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(ConnectionDone()))


class Sink:
    """A session's client, recording what it is sent."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.closed_with: str | None = None

    def send_event(self, text: str) -> None:
        self.events.append(json.loads(text))

    def close_session(self, reason: str) -> defer.Deferred[None]:
        self.closed_with = reason
        return defer.succeed(None)


class HubCase(SynchronousTestCase):
    """A hub on a Clock with fake peer connections."""

    def make_hub(self, **limits: Any) -> Hub:
        """Build and start a hub with the given limits."""
        self.clock = Clock()
        self.store = Store.open(self.mktemp(), synchronous="NORMAL")
        self.addCleanup(self.store.close)
        self.links: list[Link] = []
        self.hub = Hub(
            self.store, self.clock, self.connect_peer, Policy(), Limits(**limits)
        )
        self.hub.startService()
        self.addCleanup(self.stop_hub)
        return self.hub

    def connect_peer(
        self, host: str, port: int, factory: PeerFactory, timeout: float
    ) -> defer.Deferred[Any]:
        """The hub's ConnectPeer: TCP is up at once, in memory."""
        link = Link(factory.buildProtocol(None))
        self.links.append(link)
        return defer.succeed(link.proto)

    def stop_hub(self) -> None:
        """Stop the hub as SIGTERM would, letting every TCP close."""
        if not self.hub.running:
            return
        d = self.hub.stopService()
        for link in self.links:
            link.lose()
        self.clock.advance(0)
        self.successResultOf(d)

    def start_connect(self, persist: bool = False) -> tuple[str, Link, noise.Initiator]:
        """``connect`` until act 2 is relayed."""
        init = noise.Initiator(NODE_SECRET, PEER)
        d = self.hub.connect(NODE, PEER.hex(), "127.0.0.1", 9735, init.act1(), persist)
        link = self.links[-1]
        self.assertEqual(link.proto.state, ConnState.ACT1_SENT)
        link.answer_act1()
        conn_id, act2 = self.successResultOf(d)
        init.read_act2(act2)
        return conn_id, link, init

    def open(self, persist: bool = False, send_init: bool = True) -> tuple[str, Link]:
        """A finished connection whose peer sent init (events flushed)."""
        conn_id, link, init = self.start_connect(persist)
        self.finish(conn_id, link, init, send_init)
        return conn_id, link

    def finish(
        self, conn_id: str, link: Link, init: noise.Initiator, send_init: bool = True
    ) -> None:
        """``finish`` a started connection; the peer sends init."""
        act3, tk = init.act3()
        self.hub.finish(NODE, conn_id, act3, tk.sk, tk.rk, tk.ck)
        link.read_act3()
        if send_init:
            link.send(wire.Init(features=b"").encode())
        self.clock.advance(0)

    def adopt_in_new_hub(
        self, snap: ConnectionSnapshot
    ) -> tuple[Hub, PeerProtocol, Transport]:
        """Hand ``snap`` over as a hot restart would: this hub goes away
        without a stop (no closed event); a second hub on the same store
        adopts the connection on a new transport.  Returns
        ``(hub2, protocol, transport)``."""
        self.hub.keepalive.stop()
        self.hub.running = False
        hub2 = Hub(
            self.store, self.clock, self.connect_peer, Policy(), Limits(keepalive=1000)
        )
        proto = hub2.adopt(snap)
        transport = Transport()
        proto.makeConnection(transport)
        return hub2, proto, transport

    def advance_to(self, t: float) -> None:
        """Advance the clock to absolute time ``t`` in sweep-sized steps."""
        while self.clock.seconds() < t:
            self.clock.advance(min(1.0, t - self.clock.seconds()))

    def events(self) -> list[dict[str, Any]]:
        """Every stored event of the node, as JSON params."""
        return [json.loads(r.params) for r in self.store.events_after(NODE, 0, 1000)]

    def closed_reasons(self) -> list[str]:
        """Reasons of the node's stored closed events."""
        return [e["reason"] for e in self.events() if "reason" in e]


class KeepaliveTests(HubCase):
    """Keepalive: silence means no complete authenticated message."""

    def test_silence_then_ping(self) -> None:
        """After ``keepalive`` seconds without a message the proxy sends its
        ping (asking for no pong bytes), and not before."""
        self.make_hub(keepalive=60)
        _, link = self.open()
        self.advance_to(59)
        self.assertEqual(link.read(), [])
        self.advance_to(60)
        self.assertEqual(link.read(), [KEEPALIVE_PING])
        self.advance_to(100)
        self.assertEqual(link.read(), [], "one ping per silence")

    def test_no_pong_closes(self) -> None:
        """No pong within ``keepalive`` after the ping closes the connection
        with reason ``keepalive timeout`` (reconnect = persist)."""
        self.make_hub(keepalive=60)
        conn_id, link = self.open(persist=True)
        self.advance_to(60)
        self.assertEqual(link.read(), [KEEPALIVE_PING])
        self.advance_to(119)
        self.assertFalse(link.transport.disconnecting)
        self.advance_to(120)
        self.assertTrue(link.transport.disconnecting)
        link.lose()
        self.clock.advance(0)
        (closed,) = [e for e in self.events() if "reason" in e]
        self.assertEqual(
            (closed["conn"], closed["reason"], closed["reconnect"]),
            (conn_id, "keepalive timeout", True),
        )

    def test_pong_resets(self) -> None:
        """A pong answers the ping: no close; the next ping comes
        ``keepalive`` seconds after that pong."""
        self.make_hub(keepalive=60)
        _, link = self.open()
        self.advance_to(60)
        self.assertEqual(link.read(), [KEEPALIVE_PING])
        self.advance_to(70)
        link.send(wire.Pong(b"").encode())
        self.advance_to(129)
        self.assertFalse(link.transport.disconnecting)
        self.assertEqual(link.read(), [])
        self.advance_to(130)
        self.assertEqual(link.read(), [KEEPALIVE_PING])
        # The pong never became an event.
        self.assertEqual([e.get("type") for e in self.events()], [wire.INIT])

    def test_authenticated_traffic_resets(self) -> None:
        """Any complete message (here one that is dropped by policy) counts
        as traffic and pushes the ping back."""
        self.make_hub(keepalive=60)
        _, link = self.open()
        self.advance_to(50)
        link.send((256).to_bytes(2, "big") + b"gossip")
        self.advance_to(109)
        self.assertEqual(link.read(), [])
        self.advance_to(110)
        self.assertEqual(link.read(), [KEEPALIVE_PING])

    def test_partial_frame_does_not_count(self) -> None:
        """Bytes of an unfinished frame are not traffic: the ping comes on
        time and, with no pong, the connection is closed for keepalive."""
        self.make_hub(keepalive=60, body_timeout=1000)
        _, link = self.open()
        frame = link.frames(bytes.fromhex("0081") + b"x" * 100)
        self.advance_to(50)
        link.proto.dataReceived(frame[:10])  # part of the length header
        self.advance_to(60)
        self.assertEqual(link.read(), [KEEPALIVE_PING])
        self.advance_to(100)
        link.proto.dataReceived(frame[10:30])  # header done, body begun
        self.advance_to(120)
        self.assertTrue(link.transport.disconnecting)
        link.lose()
        self.clock.advance(0)
        self.assertEqual(self.closed_reasons(), ["keepalive timeout"])

    def test_body_timeout(self) -> None:
        """Once a length header has arrived, its body must follow within
        ``body_timeout`` seconds, however chatty the peer was before."""
        self.make_hub(keepalive=60, body_timeout=30)
        _, link = self.open()
        frame = link.frames(bytes.fromhex("0081") + b"x" * 100)
        self.advance_to(1)
        link.proto.dataReceived(frame[:18])
        self.assertTrue(link.proto.awaiting_body)
        self.advance_to(30)
        self.assertFalse(link.transport.disconnecting)
        self.advance_to(40)
        self.assertTrue(link.transport.disconnecting)
        self.assertTrue(link.transport.aborted is False)
        link.lose()
        self.clock.advance(0)
        self.assertEqual(self.closed_reasons(), ["message body timeout"])

    def test_body_arrives_in_time(self) -> None:
        """A body that completes resets the body timer and is delivered."""
        self.make_hub(keepalive=60, body_timeout=30)
        _, link = self.open()
        frame = link.frames(bytes.fromhex("0081") + b"x" * 100)
        link.proto.dataReceived(frame[:18])
        self.advance_to(20)
        link.proto.dataReceived(frame[18:])
        self.advance_to(59)
        self.assertFalse(link.transport.disconnecting)
        self.assertEqual(self.events()[-1]["msg"], "0081" + (b"x" * 100).hex())


class HandshakeTimerTests(HubCase):
    """Timeouts between connect and init."""

    def test_handshake_timeout(self) -> None:
        """A connection not finished within ``handshake_timeout`` is closed
        with reason ``handshake timeout``; finish then answers code 6."""
        self.make_hub(handshake_timeout=10)
        conn_id, link, init = self.start_connect()
        self.clock.advance(9.9)
        self.assertFalse(link.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(link.transport.disconnecting)
        link.lose()
        self.clock.advance(0)
        self.assertEqual(self.closed_reasons(), ["handshake timeout"])
        act3, tk = init.act3()
        with self.assertRaises(HubError) as cm:
            self.hub.finish(NODE, conn_id, act3, tk.sk, tk.rk, tk.ck)
        self.assertEqual(cm.exception.code, 6)
        self.assertEqual(self.hub._handshakes, 0)

    def test_init_timeout(self) -> None:
        """A finished connection whose peer sends no init within
        ``handshake_timeout`` is closed with reason ``init timeout``; other
        messages do not count as init."""
        self.make_hub(handshake_timeout=10, keepalive=1000)
        _, link = self.open(send_init=False)
        self.clock.advance(5)
        link.send(bytes.fromhex("0081aa"))
        self.clock.advance(4.9)
        self.assertFalse(link.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(link.transport.disconnecting)
        link.lose()
        self.clock.advance(0)
        self.assertEqual(self.closed_reasons(), ["init timeout"])

    def test_init_in_time(self) -> None:
        """An init within the timeout cancels the init timer."""
        self.make_hub(handshake_timeout=10, keepalive=1000)
        _, link = self.open()
        self.clock.advance(100)
        self.assertFalse(link.transport.disconnecting)


class _Listener:
    """Records what a PeerProtocol reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def peer_connected(self, protocol: PeerProtocol) -> None:
        self.calls.append(("connected", None))

    def act2_received(self, act2: bytes) -> None:
        self.calls.append(("act2", act2))

    def handshake_failed(self, reason: str) -> None:
        self.calls.append(("failed", reason))

    def messages_received(self, messages: list[bytes]) -> None:
        self.calls.append(("messages", messages))

    def peer_closed(self, reason: str) -> None:
        self.calls.append(("closed", reason))


implementer(IPeerListener)(_Listener)


class PeerProtocolTests(SynchronousTestCase):
    """PeerProtocol alone."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.listener = _Listener()
        self.act1 = noise.Initiator(NODE_SECRET, PEER).act1()
        self.link = Link(PeerProtocol(self.listener, self.act1, self.clock, 10.0))

    def test_act2_timeout(self) -> None:
        """Act 1 is written at once; no act 2 within the timeout fails the
        handshake and aborts; the close is reported once, with that reason."""
        self.assertEqual(self.link.transport.value(), self.act1)
        self.clock.advance(9.99)
        self.assertEqual(self.listener.calls, [("connected", None)])
        self.clock.advance(0.01)
        reason = "no act 2 within the handshake timeout"
        self.assertEqual(self.listener.calls[1:], [("failed", reason)])
        self.assertTrue(self.link.transport.aborted)
        self.link.lose()
        self.assertEqual(
            self.listener.calls[1:], [("failed", reason), ("closed", reason)]
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_act2_in_pieces(self) -> None:
        """Act 2 delivered byte by byte is reported once, whole, and stops
        the act 2 timer."""
        responder = noise.Responder(PEER_SECRET)
        responder.read_act1(self.link.take())
        act2 = responder.act2()
        for i in range(len(act2)):
            self.link.proto.dataReceived(act2[i : i + 1])
        self.assertEqual(self.listener.calls[1:], [("act2", act2)])
        self.assertEqual(self.link.proto.state, ConnState.HANDSHAKE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_act2(self) -> None:
        """An act 2 with version 1 fails the handshake and aborts."""
        responder = noise.Responder(PEER_SECRET)
        responder.read_act1(self.link.take())
        self.link.proto.dataReceived(b"\x01" + responder.act2()[1:])
        self.assertEqual(self.listener.calls[1][0], "failed")
        self.assertIn("malformed act 2", self.listener.calls[1][1])
        self.assertTrue(self.link.transport.aborted)

    def test_peer_closes_before_act2(self) -> None:
        """TCP closing before act 2 fails the handshake, then reports the
        close, both as ``peer closed``."""
        self.link.lose()
        self.assertEqual(
            self.listener.calls[1:],
            [("failed", "peer closed"), ("closed", "peer closed")],
        )

    def test_early_bytes_cap(self) -> None:
        """More than MAX_EARLY_BYTES from the peer before act 3 aborts."""
        self.link.answer_act1()
        self.link.proto.dataReceived(b"\0" * MAX_EARLY_BYTES)
        self.assertFalse(self.link.transport.aborted)
        self.link.proto.dataReceived(b"\0")
        self.assertTrue(self.link.transport.aborted)
        self.link.lose()
        self.assertEqual(
            self.listener.calls[-1],
            ("closed", "peer sent data before the handshake finished"),
        )

    def open(self) -> None:
        """Finish the handshake (keys from a real responder)."""
        init = noise.Initiator(
            NODE_SECRET,
            PEER,
        )
        link = Link(PeerProtocol(self.listener, init.act1(), self.clock, 10.0))
        init.read_act2(link.answer_act1())
        act3, tk = init.act3()
        self.assertEqual(link.proto.finish(act3, tk.sk, tk.rk, tk.ck), [])
        link.read_act3()
        self.link = link

    def test_write_buffer_cap(self) -> None:
        """While TCP has paused us, up to 1 MiB of frames is accepted; the
        frame that crosses it is not written and the peer is aborted.
        Resuming resets the count."""
        self.open()
        proto, transport = self.link.proto, self.link.transport
        big = bytes(65535)
        frame = len(big) + 34
        proto.pauseProducing()
        for _ in range(15):
            proto.send_message(big)
        proto.resumeProducing()
        proto.pauseProducing()
        for _ in range(15):
            proto.send_message(big)
        self.assertFalse(transport.aborted)
        self.assertEqual(len(transport.value()), 30 * frame)
        self.assertLessEqual(16 * frame, 1024 * 1024 + frame)
        proto.send_message(big)
        self.assertTrue(transport.aborted)
        self.assertEqual(len(transport.value()), 30 * frame)
        self.assertIs(proto.state, ConnState.CLOSING)
        self.link.lose()
        self.assertEqual(
            self.listener.calls[-1],
            ("closed", "peer stopped reading (write buffer full)"),
        )

    def test_decryption_failure(self) -> None:
        """A frame that fails authentication aborts with a reason naming
        decryption."""
        self.open()
        self.link.proto.dataReceived(os.urandom(60))
        self.assertTrue(self.link.transport.aborted)
        self.link.lose()
        kind, reason = self.listener.calls[-1]
        self.assertEqual(kind, "closed")
        self.assertTrue(reason.startswith("decryption failure"), reason)


class WriteCapHubTests(HubCase):
    """The write cap as the client sees it."""

    def test_send_over_cap_is_code_6(self) -> None:
        """The client's ``send`` whose frame crossed the cap answers code 6
        (the frame was not handed to TCP), and so does every later send."""
        self.make_hub()
        conn_id, link = self.open()
        link.proto.pauseProducing()
        for _ in range(15):
            self.hub.send(NODE, conn_id, bytes(65535))
        with self.assertRaises(HubError) as cm:
            self.hub.send(NODE, conn_id, bytes(65535))
        self.assertEqual(cm.exception.code, 6)
        self.assertTrue(link.transport.aborted)
        with self.assertRaises(HubError) as cm:
            self.hub.send(NODE, conn_id, b"\x00\x85")
        self.assertEqual(cm.exception.code, 6)
        link.lose()
        self.clock.advance(0)
        self.assertEqual(
            self.closed_reasons(), ["peer stopped reading (write buffer full)"]
        )

    def test_pong_on_closing_connection_is_skipped(self) -> None:
        """A ping in the same read as a frame that closes the connection
        does not raise out of dataReceived."""
        self.make_hub()
        conn_id, link = self.open()
        self.hub.disconnect(NODE, conn_id)
        link.send(
            wire.Ping(4).encode(), wire.QueryChannelRange(bytes(32), 1, 2).encode()
        )
        self.assertEqual(link.read(), [])


class InboxCapTests(HubCase):
    """A full inbox pauses reading from the node's peers."""

    def test_pause_and_resume(self) -> None:
        """At ``events_per_node`` unacknowledged events every open peer of
        the node is paused (and a peer finished while full starts paused);
        paused peers are not pinged, nor closed for silence or for a missing
        init; an ack below the cap resumes them."""
        self.make_hub(events_per_node=3, keepalive=60, handshake_timeout=30)
        conn_id, link = self.open()
        second_id, second, second_init = self.start_connect()
        link.send(bytes.fromhex("0081aa"))
        self.assertEqual(link.transport.producerState, "producing")
        link.send(bytes.fromhex("0081bb"))
        self.clock.advance(0)
        self.assertEqual(link.transport.producerState, "paused")
        self.assertTrue(link.proto.read_paused)
        # A connect now is refused; one already in handshake finishes paused.
        with self.assertRaises(HubError) as cm:
            self.start_connect()
        self.assertEqual(cm.exception.code, 7)
        self.finish(second_id, second, second_init, send_init=False)
        self.assertEqual(second.transport.producerState, "paused")
        self.advance_to(500)
        self.assertEqual(link.read(), [])
        self.assertEqual(second.read(), [])
        self.assertFalse(link.transport.disconnecting)
        self.assertFalse(second.transport.disconnecting)
        self.hub.ack(NODE, 1)
        self.assertEqual(link.transport.producerState, "producing")
        self.assertEqual(second.transport.producerState, "producing")
        self.assertEqual(len(self.events()), 2)
        # The init that waited in the socket arrives once we read again.
        second.send(wire.Init(features=b"").encode())
        self.advance_to(600)
        self.assertFalse(second.transport.disconnecting)
        self.assertEqual(self.closed_reasons(), [])

    def test_ack_not_below_cap_keeps_paused(self) -> None:
        """Events that arrived in the same read as the one that hit the cap
        are still stored; only an ack that brings the count under the cap
        resumes."""
        self.make_hub(events_per_node=2)
        _, link = self.open()
        link.send(
            bytes.fromhex("0081aa"), bytes.fromhex("0081bb"), bytes.fromhex("0081cc")
        )
        self.clock.advance(0)
        self.assertEqual(len(self.events()), 4)
        self.hub.ack(NODE, 2)
        self.assertEqual(link.transport.producerState, "paused")
        self.hub.ack(NODE, 3)
        self.assertEqual(link.transport.producerState, "producing")


class SessionTests(HubCase):
    """Sessions: live delivery, pause and catch-up."""

    def test_paused_session_catches_up_in_order(self) -> None:
        """A session whose client stopped reading gets nothing new; when it
        drains it gets what it missed from the store, in seq order, then
        live events again."""
        self.make_hub()
        sink = Sink()
        session, result = self.hub.login(NODE, sink)
        self.assertEqual(result["inbox"], {"next_seq": 1, "pending": 0})
        session.start()
        _, link = self.open()
        self.assertEqual([e["params"]["seq"] for e in sink.events], [1])
        session.pause()
        link.send(bytes.fromhex("0081aa"), bytes.fromhex("0081bb"))
        self.clock.advance(0)
        self.assertEqual(len(sink.events), 1)
        session.resume()
        self.clock.advance(0)
        link.send(bytes.fromhex("0081cc"))
        self.clock.advance(0)
        self.assertEqual([e["params"]["seq"] for e in sink.events], [1, 2, 3, 4])
        self.assertEqual(
            [e["params"]["msg"] for e in sink.events[1:]],
            ["0081aa", "0081bb", "0081cc"],
        )

    def test_replay_of_large_backlog(self) -> None:
        """A backlog larger than one replay chunk is sent whole and in order
        across reactor turns."""
        self.make_hub()
        _, link = self.open()
        link.send(*[bytes([0, 0x81]) + i.to_bytes(2, "big") for i in range(600)])
        self.clock.advance(0)
        sink = Sink()
        session, result = self.hub.login(NODE, sink)
        self.assertEqual(result["inbox"], {"next_seq": 602, "pending": 601})
        session.start()
        for _ in range(5):
            self.clock.advance(0)
        self.assertEqual([e["params"]["seq"] for e in sink.events], list(range(1, 602)))

    def test_clean_stop(self) -> None:
        """stopService records ``proxy stopped`` (reconnect = persist) for
        open and handshaking connections, offers them to sessions, asks each
        session to close, and closes every peer."""
        self.make_hub()
        sink = Sink()
        session, _ = self.hub.login(NODE, sink)
        session.start()
        a, link_a = self.open(persist=True)
        b, link_b, _ = self.start_connect()
        d = self.hub.stopService()
        self.assertNoResult(d)
        self.assertTrue(
            link_a.transport.disconnecting and link_b.transport.disconnecting
        )
        closed = [e["params"] for e in sink.events if e["method"] == "closed"]
        self.assertEqual(
            [(c["conn"], c["reason"], c["reconnect"]) for c in closed],
            [(a, "proxy stopped", True), (b, "proxy stopped", False)],
        )
        self.assertEqual(sink.closed_with, "proxy stopping")
        link_a.lose()
        link_b.lose()
        self.successResultOf(d)
        self.assertEqual(self.store.unclosed_connections(), [])


class MalformedMessageTests(HubCase):
    """Messages that are authentic but not Lightning messages."""

    def test_shorter_than_type_closes(self) -> None:
        """A message of 1 byte (no room for its type) closes the connection
        after the messages before it were stored."""
        self.make_hub()
        _, link = self.open()
        link.send(bytes.fromhex("0081aa"), b"\x00", bytes.fromhex("0081bb"))
        self.assertTrue(link.transport.disconnecting)
        link.lose()
        self.clock.advance(0)
        self.assertEqual([e.get("msg") for e in self.events()][1:], ["0081aa", None])
        self.assertEqual(
            self.closed_reasons(), ["malformed message (shorter than its type)"]
        )

    def test_malformed_ping_is_ignored(self) -> None:
        """A ping whose ignored bytes are truncated gets no pong and does
        not close the connection."""
        self.make_hub()
        _, link = self.open()
        link.send(wire.Ping(4, bytes(8)).encode()[:-4])
        link.send(wire.Ping(2).encode())
        self.assertEqual(link.read(), [wire.Pong(bytes(2)).encode()])
        self.assertFalse(link.transport.disconnecting)


class UnreachableTests(HubCase):
    """TCP failures of ``connect`` are code 4."""

    def test_tcp_failures_are_code_4(self) -> None:
        """Refused, timed out (the connect timeout is passed to the
        connector) and DNS failures all answer code 4 and leave nothing
        behind."""
        self.make_hub(connect_timeout=30.0)
        seen: list[float] = []
        for exc in (
            error.ConnectionRefusedError(),
            error.TimeoutError(),
            error.DNSLookupError("no.such.host"),
        ):

            def fail(
                host: str,
                port: int,
                factory: PeerFactory,
                timeout: float,
                exc: Exception = exc,
            ) -> defer.Deferred[Any]:
                seen.append(timeout)
                return defer.fail(exc)

            self.hub.connect_peer = fail
            d = self.hub.connect(NODE, PEER.hex(), "host", 9735, bytes(50), False)
            f = self.failureResultOf(d, HubError)
            self.assertEqual(f.value.code, 4)
            self.assertTrue(f.value.message.startswith("peer unreachable: "))
        self.assertEqual(seen, [30.0, 30.0, 30.0])
        self.assertEqual(self.hub._handshakes, 0)
        self.assertEqual(self.hub.connections, {})
        self.assertEqual(self.hub.list_connections(NODE), [])


class CommitFailureTests(HubCase):
    """A failed commit loses nothing and shows nothing early."""

    def test_failed_commit_is_retried_and_offered_once(self) -> None:
        """When the store refuses a batch (disk full, I/O error), no event of
        it reaches a session; a second later the same events are committed
        with the same seqs, in order, and offered exactly once."""
        self.make_hub()
        sink = Sink()
        session, _ = self.hub.login(NODE, sink)
        session.start()
        _, link = self.open()
        self.assertEqual([e["params"]["seq"] for e in sink.events], [1])
        real = self.store.append_events
        failures = [sqlite3.OperationalError("database or disk is full")]

        def append_events(rows: Any) -> None:
            if failures:
                raise failures.pop()
            real(rows)

        self.store.append_events = append_events  # type: ignore[method-assign]
        link.send(bytes.fromhex("0081aa"), bytes.fromhex("0081bb"))
        self.clock.advance(0)
        self.assertEqual(len(sink.events), 1)
        self.assertEqual([e["seq"] for e in self.events()], [1])
        errors = self.flushLoggedErrors(sqlite3.OperationalError)
        self.assertEqual(len(errors), 1)
        link.send(bytes.fromhex("0081cc"))
        self.clock.advance(0)
        self.assertEqual(len(sink.events), 1)  # waits behind the retry
        self.clock.advance(1.0)
        self.assertEqual([e["seq"] for e in self.events()], [1, 2, 3, 4])
        self.assertEqual(
            [(e["params"]["seq"], e["params"]["msg"]) for e in sink.events[1:]],
            [(2, "0081aa"), (3, "0081bb"), (4, "0081cc")],
        )


class _Log:
    """An EventLog: a node id and its next seq."""

    def __init__(self, node_id: str, next_seq: int = 1) -> None:
        self.node_id = node_id
        self.next_seq = next_seq


class JournalTests(SynchronousTestCase):
    """lnproxy.journal.Journal on its own (no hub)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = Store.open(self.mktemp(), synchronous="NORMAL")
        self.addCleanup(self.store.close)
        self.offered: list[tuple[int, int]] = []
        self.observed: list[tuple[int, bool]] = []
        self.journal = Journal(self.store, self.clock, self.offer)
        self.journal.observers.append(lambda row, on: self.observed.append((row.seq, on)))

    def offer(self, row: EventRow) -> bool:
        """Record the row and how many events the store held when offered."""
        self.offered.append((row.seq, len(self.store.events_after(NODE, 0, 100))))
        return row.seq % 2 == 0

    def test_closed_journal_schedules_nothing(self) -> None:
        """After close() (the service stopped) the scheduled commit is
        cancelled and no other is scheduled: a stop leaves no timer behind,
        even when something is emitted or a commit fails afterwards."""
        log = _Log(NODE)
        self.journal.emit(log, "closed", {"why": "x"}, True)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.journal.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.journal.emit(log, "closed", {"why": "late"}, True)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.store.events_after(NODE, 0, 9), [])

    def test_numbered_batched_committed_then_offered(self) -> None:
        """Events of one turn get consecutive seqs, are committed at the end
        of the turn in one batch, and each is offered only once the whole
        batch is on disk, then shown to observers with ``online``."""
        log = _Log(NODE)
        head = message_head(5.0, "c0", "p0")
        self.assertEqual(self.journal.emit(log, "closed", {"why": "x"}, True), 1)
        self.journal.emit_message(log, 0x8001, b"\x80\x01", False, 5.0, head)
        self.assertEqual(log.next_seq, 3)
        self.assertEqual((self.offered, self.store.events_after(NODE, 0, 9)), ([], []))
        self.clock.advance(0)
        self.assertEqual(self.offered, [(1, 2), (2, 2)])
        self.assertEqual(self.observed, [(1, False), (2, True)])
        rows = self.store.events_after(NODE, 0, 9)
        self.assertEqual(
            json.loads(rows[1].params),
            {
                "seq": 2,
                "at": 5.0,
                "conn": "c0",
                "peer": "p0",
                "type": 0x8001,
                "msg": "8001",
                "summon": False,
            },
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
