"""Capturing an open connection as a value and rebuilding it elsewhere.

The cipher state (:class:`lnproxy.noise.TransportSnapshot`), its compact
encoding (:class:`lnproxy.snapshot.ConnectionSnapshot`), and the hub's
:meth:`~lnproxy.hub.Hub.snapshot` / :meth:`~lnproxy.hub.Hub.adopt`: a
connection captured mid-stream (a frame half received, after a key
rotation) goes on in a fresh hub on a new transport with both byte streams
continuing exactly.
"""

from __future__ import annotations

import json
import os

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import noise
from lnproxy.answer import MAX_WAITING_PINGS, PingOwner
from lnproxy.handover import HandedOver
from lnproxy.hub import Hub, HubError, Limits
from lnproxy.lifecycle import ConnState
from lnproxy.policy import Policy
from lnproxy.snapshot import ConnectionSnapshot, HandshakeSnapshot, SnapshotError

from .test_hub_unit import NODE, HubCase, Transport

#: An unknown odd type: queued for the client (policy default).
MSG_TYPE = 0x8001


def _msg(i: int, size: int = 8) -> bytes:
    """A queued message numbered ``i``."""
    return MSG_TYPE.to_bytes(2, "big") + i.to_bytes(4, "big") + bytes(size)


def _pair() -> tuple[noise.Transport, noise.Transport]:
    """Two transports facing each other (a's sending key is b's receiving)."""
    sk, rk, ck = os.urandom(32), os.urandom(32), os.urandom(32)
    return noise.Transport(sk, rk, ck), noise.Transport(rk, sk, ck)


class TransportSnapshotTests(SynchronousTestCase):
    """noise.Transport.snapshot / from_snapshot."""

    def test_streams_continue_after_rotation_mid_frame(self) -> None:
        """After 600 messages each way (a key rotation at 1000 nonces) and
        with a frame split after its header, a transport rebuilt from the
        snapshot decrypts the rest and encrypts the next messages exactly as
        the original goes on doing."""
        a, b = _pair()
        for i in range(600):
            self.assertEqual(b.feed(a.encrypt(_msg(i))), [_msg(i)])
            b.encrypt(_msg(i))
        frame = a.encrypt(_msg(600, 300))
        self.assertEqual(b.feed(frame[:100]), [])
        snap = b.snapshot()
        self.assertEqual(snap.rnonce, (2 * 600) % noise.ROTATE_EVERY + 1)
        self.assertEqual(snap.body_size, 2 + 4 + 300 + noise.MAC_SIZE)
        self.assertEqual(len(snap.buffered), 100 - noise.HEADER_SIZE)
        b2 = noise.Transport.from_snapshot(snap)
        rest = frame[100:] + b"".join(a.encrypt(_msg(i)) for i in range(601, 1200))
        expected = [_msg(600, 300)] + [_msg(i) for i in range(601, 1200)]
        self.assertEqual(b2.feed(rest), expected)
        self.assertEqual(b.feed(rest), expected)
        for i in range(1200):
            self.assertEqual(b2.encrypt(_msg(i)), b.encrypt(_msg(i)))

    def test_repr_hides_keys(self) -> None:
        """A snapshot's repr shows nonces, never a key or buffered byte."""
        a, _ = _pair()
        snap = a.snapshot()
        text = repr(snap)
        for secret in (snap.sk, snap.rk, snap.sck, snap.rck):
            self.assertNotIn(secret.hex(), text)
            self.assertNotIn(repr(secret), text)
        self.assertIn("snonce=0", text)

    def test_failed_decoder_cannot_be_captured(self) -> None:
        """A transport whose decoder failed has no state worth carrying."""
        _, b = _pair()
        with self.assertRaises(noise.TransportError):
            b.feed(os.urandom(40))
        with self.assertRaises(noise.TransportError):
            b.snapshot()

    def test_impossible_values_refused(self) -> None:
        """Wrong key sizes, nonces out of range, or buffered bytes that hold
        a whole header are refused when the value is built."""
        k = bytes(32)
        good = dict(
            sk=k, sck=k, snonce=0, rk=k, rck=k, rnonce=0, buffered=b"", body_size=-1
        )
        noise.TransportSnapshot(**good)  # type: ignore[arg-type]
        for change in (
            {"sk": bytes(31)},
            {"rnonce": noise.ROTATE_EVERY},
            {"buffered": bytes(noise.HEADER_SIZE)},
            {"body_size": 3},
            {"body_size": 20, "buffered": bytes(20)},
        ):
            with self.assertRaises(ValueError, msg=str(change)):
                noise.TransportSnapshot(**{**good, **change})  # type: ignore[arg-type]


class EncodingTests(SynchronousTestCase):
    """ConnectionSnapshot.to_bytes / from_bytes."""

    def snapshot(self, **changes: object) -> ConnectionSnapshot:
        """A snapshot with every optional field set."""
        a, _ = _pair()
        a.encrypt(b"\x00\x10")
        fields: dict[str, object] = dict(
            conn_id="00112233aabbccdd",
            node_id=NODE,
            peer="02" + "ab" * 32,
            address="[::1]:9735",
            persist=True,
            state=ConnState.OPEN,
            since=1.5,
            transport=a.snapshot(),
            their_init=b"\x00\x10\x00\x00\x00\x00",
            last_rx=2.25,
            ping_sent_at=3.0,
            body_since=4.0,
            init_deadline=None,
        )
        fields.update(changes)
        return ConnectionSnapshot(**fields)  # type: ignore[arg-type]

    def test_round_trip(self) -> None:
        """Decoding the bytes gives back an equal value, with and without
        the optional fields."""
        for snap in (
            self.snapshot(),
            self.snapshot(
                persist=False,
                their_init=None,
                ping_sent_at=None,
                body_since=None,
                init_deadline=9.0,
            ),
        ):
            self.assertEqual(ConnectionSnapshot.from_bytes(snap.to_bytes()), snap)

    def test_round_trip_new_state(self) -> None:
        """Version 2 carries the waiting pings (owner and size, in order),
        the gossip flag and the client's first-message flag."""
        pings = tuple(
            (PingOwner.CLIENT if i % 3 else PingOwner.PROXY, i * 1000)
            for i in range(MAX_WAITING_PINGS)
        )
        for changes in (
            dict(pings=pings, gossip_asked=True, client_spoke=False),
            dict(pings=((PingOwner.PROXY, 0),), gossip_asked=False),
            dict(pings=(), gossip_asked=True, client_spoke=True),
        ):
            snap = self.snapshot(**changes)
            data = snap.to_bytes()
            self.assertEqual(data[4], 2)
            self.assertEqual(ConnectionSnapshot.from_bytes(data), snap)
        with self.assertRaises(ValueError):
            self.snapshot(pings=pings + pings[:1]).to_bytes()

    def test_version_1_still_read(self) -> None:
        """A version 1 snapshot (no trailing pings, no new flags) decodes
        to no waiting pings, no gossip asked and a client that has spoken."""
        snap = self.snapshot(gossip_asked=False, client_spoke=True)
        data = snap.to_bytes()
        assert data.endswith(b"\x00")  # zero waiting pings
        v1 = data[:4] + b"\x01" + bytes((data[5] & 0x1F,)) + data[6:-1]
        self.assertEqual(ConnectionSnapshot.from_bytes(v1), snap)
        spoke_unset = data[:4] + b"\x01" + bytes((data[5] & 0x1F | 32,)) + data[6:-1]
        self.assertEqual(ConnectionSnapshot.from_bytes(spoke_unset), snap)

    def test_bad_pings_refused(self) -> None:
        """An unknown ping owner or more than 32 waiting pings is a
        SnapshotError."""
        data = self.snapshot(pings=((PingOwner.PROXY, 5),)).to_bytes()
        with self.assertRaises(SnapshotError):
            ConnectionSnapshot.from_bytes(data[:-3] + b"\x02\x00\x05")
        with self.assertRaises(SnapshotError):
            ConnectionSnapshot.from_bytes(data[:-4] + b"\x21" + b"\x00\x00\x05" * 33)

    def test_repr_hides_keys(self) -> None:
        """The repr of a connection snapshot names the connection, not its
        keys."""
        snap = self.snapshot()
        text = repr(snap)
        self.assertIn(snap.conn_id, text)
        for secret in (snap.transport.sk, snap.transport.rk, snap.transport.sck):
            self.assertNotIn(secret.hex(), text)
            self.assertNotIn(repr(secret), text)

    def test_every_truncation_and_garbage_refused(self) -> None:
        """Every prefix, trailing bytes, a bad magic or version, and an
        unknown state raise SnapshotError, never another exception."""
        data = self.snapshot().to_bytes()
        for n in range(len(data)):
            with self.assertRaises(SnapshotError):
                ConnectionSnapshot.from_bytes(data[:n])
        bad = [data + b"\x00", b"XXXX" + data[4:], data[:4] + b"\x03" + data[5:]]
        at = data.index(b"open")
        bad.append(data[:at] + b"opex" + data[at + 4 :])
        for blob in bad:
            with self.assertRaises(SnapshotError):
                ConnectionSnapshot.from_bytes(blob)


class HubSnapshotTests(HubCase):
    """Hub.snapshot and Hub.adopt."""

    def test_rebuilt_connection_continues_both_streams(self) -> None:
        """An open connection captured after 600 messages each way (a key
        rotation) with a frame half received, encoded to bytes and adopted
        by a fresh hub on a new transport: the rest of the frame and later
        messages become the next events, in seq order, and what the client
        sends reaches the peer decryptable by its unchanged cipher."""
        self.make_hub(keepalive=1000)
        conn_id, link = self.open()
        for i in range(600):
            link.send(_msg(i))
            self.hub.send(NODE, conn_id, _msg(i))
        self.assertEqual(link.read(), [_msg(i) for i in range(600)])
        self.clock.advance(0)
        frame = link.frames(_msg(600, 300))
        link.proto.dataReceived(frame[:50])
        data = self.hub.snapshot(NODE, conn_id).to_bytes()
        snap = ConnectionSnapshot.from_bytes(data)
        self.assertEqual(snap.state, ConnState.OPEN)
        self.assertIsNotNone(snap.their_init)
        self.assertGreater(snap.transport.body_size, 0)
        seqs = [e["seq"] for e in self.events() if "type" in e]
        # The old process goes away after the hand-off (no stop, no closed
        # event); a second hub, as a new process would have, shares the store.
        hub2, proto, transport = self.adopt_in_new_hub(snap)
        self.assertEqual(transport.value(), b"", "no act 1 for a resumed one")
        proto.dataReceived(frame[50:] + link.frames(_msg(601)))
        hub2.flush()
        events = [e for e in self.events() if "type" in e]
        self.assertEqual(
            [(e["seq"], e["msg"]) for e in events[-2:]],
            [
                (seqs[-1] + 1, _msg(600, 300).hex()),
                (seqs[-1] + 2, _msg(601).hex()),
            ],
        )
        hub2.send(NODE, conn_id, _msg(7000))
        assert link.cipher is not None
        self.assertEqual(link.cipher.feed(transport.value()), [_msg(7000)])
        (row,) = [json.loads(json.dumps(c)) for c in hub2.list_connections(NODE)]
        self.assertEqual((row["conn"], row["state"]), (conn_id, "open"))

    def test_only_open_connections(self) -> None:
        """A connection in its handshake cannot be captured (code 6), an
        unknown one answers code 3, and a snapshot cannot be adopted twice."""
        self.make_hub()
        conn_id, _, _ = self.start_connect()
        with self.assertRaises(HubError) as cm:
            self.hub.snapshot(NODE, conn_id)
        self.assertEqual(cm.exception.code, 6)
        with self.assertRaises(HubError) as cm:
            self.hub.snapshot(NODE, "00" * 8)
        self.assertEqual(cm.exception.code, 3)
        open_id, _ = self.open()
        snap = self.hub.snapshot(NODE, open_id)
        with self.assertRaises(ValueError):
            self.hub.adopt(snap)


class HandshakeSnapshotTests(HubCase):
    """A connection waiting for ``finish`` crosses a hot restart too."""

    def test_encoding_round_trip_and_garbage(self) -> None:
        """Bytes in, the same value out; every truncation is refused."""
        snap = HandshakeSnapshot(
            "ab" * 8, NODE, "02" + "11" * 32, "127.0.0.1:9735", True, 1.5, 31.5, b"early",
        )
        data = snap.to_bytes()
        self.assertEqual(HandshakeSnapshot.from_bytes(data), snap)
        for n in range(len(data)):
            with self.assertRaises(SnapshotError):
                HandshakeSnapshot.from_bytes(data[:n])
        with self.assertRaises(SnapshotError):
            HandshakeSnapshot.from_bytes(data + b"x")

    def test_finish_in_the_new_hub(self) -> None:
        """Captured after act 2 with early bytes of the peer, adopted by a
        second hub on a new transport: nothing is written again, ``finish``
        there writes act 3 and the early message becomes an event; the
        handshake deadline still holds."""
        self.make_hub(keepalive=1000)
        conn_id, link, init = self.start_connect(persist=True)
        snap = HandshakeSnapshot.from_bytes(
            self.hub.connections[conn_id].handshake_snapshot().to_bytes()
        )
        self.assertEqual(snap.conn_id, conn_id)
        self.hub.keepalive.stop()
        self.hub.running = False
        hub2 = Hub(
            self.store, self.clock, self.connect_peer, Policy(), Limits(keepalive=1000)
        )
        proto = hub2.adopt_handshake(snap)
        transport = Transport()
        proto.makeConnection(transport)
        self.assertEqual(transport.value(), b"")
        act3, tk = init.act3()
        hub2.finish(NODE, conn_id, act3, tk.sk, tk.rk, tk.ck)
        self.assertEqual(transport.value(), act3)
        self.assertEqual(proto.state, ConnState.OPEN)

    def test_handshake_deadline_survives(self) -> None:
        """An adopted handshake nobody finishes is closed at its deadline."""
        self.make_hub(keepalive=1000)
        conn_id, _, _ = self.start_connect()
        snap = self.hub.connections[conn_id].handshake_snapshot()
        self.hub.keepalive.stop()
        self.hub.running = False
        hub2 = Hub(
            self.store, self.clock, self.connect_peer, Policy(), Limits(keepalive=1000)
        )
        proto = hub2.adopt_handshake(snap)
        proto.makeConnection(Transport())
        self.clock.advance(snap.deadline - self.clock.seconds() + 0.1)
        self.assertIn(proto.state, (ConnState.CLOSING, ConnState.CLOSED))


class HandedOverTests(HubCase):
    """A connection released to another process records nothing."""

    def test_no_closed_event(self) -> None:
        """``connectionLost(HandedOver)`` is silent; the hub forgets the
        connection with :meth:`Hub.handed_over` and later stops without a
        ``proxy stopped`` close for it."""
        self.make_hub()
        conn_id, link = self.open()
        before = len(self.events())
        link.proto.connectionLost(Failure(HandedOver()))
        self.assertTrue(link.proto.handed_over)
        self.hub.handed_over([conn_id])
        self.hub.stopService()
        self.assertEqual(len(self.events()), before)
        self.assertEqual(self.closed_reasons(), [])
