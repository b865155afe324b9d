"""The client library against the real proxy service and a local peer.

Everything here runs on the real reactor over 127.0.0.1: a proxy built by
``build_service``, :class:`lnproxy.localpeer.LocalPeerFactory` peers, and
:class:`lnproxy.client.Client` instances.  Crashes are simulated with
:meth:`Client.abort` at chosen points of the event pipeline.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet import defer, reactor

from lnproxy import keys, wire
from lnproxy.client import (
    Client,
    ClientState,
    Event,
    FileState,
    ServerMismatch,
    StateError,
)

from .test_client_support import ClientTestCase, CrashingState, free_port


def htlc(n: int) -> bytes:
    """A fake update_add_htlc (type 128) numbered ``n``."""
    return b"\x00\x80" + n.to_bytes(4, "big") + b"payload"


class Recorder:
    """An on_event callback that records what it was given.

    :param fail_times: fail this many calls first (then succeed).
    :param delay: return a Deferred that fires after this many seconds.
    """

    def __init__(self, fail_times: int = 0, delay: float = 0.0) -> None:
        self.events: list[Event] = []
        self.fail_times = fail_times
        self.delay = delay
        self.calls = 0
        self.active = 0
        self.max_active = 0

    def __call__(self, event: Event) -> Any:
        self.calls += 1
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("application failure")
        if not self.delay:
            self.events.append(event)
            return None
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        d: defer.Deferred[None] = defer.Deferred()

        def done() -> None:
            self.active -= 1
            self.events.append(event)
            d.callback(None)

        reactor.callLater(self.delay, done)
        return d

    @property
    def seqs(self) -> list[int]:
        """Seqs of the recorded events, in delivery order."""
        return [e.seq for e in self.events]

    def types(self) -> list[int | None]:
        """Message types of the recorded message events."""
        return [e.type for e in self.events if e.kind == "message"]


class OpenPeerTests(ClientTestCase):
    """The split handshake as the library runs it."""

    @defer.inlineCallbacks
    def test_open_peer_handshake_init_and_messages(self) -> Any:
        """open_peer completes BOLT 8 with the peer (which authenticates our
        node id), sends our init with the given features, and messages flow
        both ways; the peer's messages arrive as events, acknowledged after
        the callback, with the handled seq recorded in the state file."""
        self.start_proxy()
        peer, port = self.local_peer(features=b"\x02\x00")
        rec = Recorder()
        state_path = self.mktemp()
        client = self.make_client(on_event=rec, state=state_path)
        steps: list[str] = []
        client.on_handshake.append(lambda step, detail: steps.append(step))
        yield client.when_logged_in()
        opened = peer.wait_open()
        got_init = peer.wait_message(lambda m: m[:2] == b"\x00\x10")
        link = yield client.open_peer(
            f"{peer.node_id.hex()}@127.0.0.1:{port}", features=b"\x01\x00"
        )
        p = yield opened
        self.assertEqual(p.remote_node_id, client.node_id)
        init = yield got_init
        self.assertEqual(wire.Init.decode(init).features, b"\x01\x00")
        self.assertEqual(steps, ["act1", "act2", "act3", "init"])
        self.assertEqual(link.peer, peer.node_id.hex())
        self.assertEqual(link.address, f"127.0.0.1:{port}")
        self.assertFalse(link.persist)

        got = peer.wait_message(lambda m: m[:2] == b"\x00\x84")
        yield link.send(b"\x00\x84sig")
        self.assertEqual((yield got), b"\x00\x84sig")

        p.send(htlc(1))
        yield self.wait_for(lambda: 128 in rec.types(), what="the htlc event")
        self.assertEqual(rec.types(), [16, 128])
        their_init = rec.events[0]
        self.assertEqual(wire.Init.decode(their_init.msg or b"").features, b"\x02\x00")
        ev = rec.events[1]
        self.assertEqual(
            (ev.conn, ev.peer, ev.msg, ev.summon), (link.conn, link.peer, htlc(1), True)
        )
        yield self.wait_for(lambda: self.pending(client) == 0, what="the acks")
        with open(state_path) as f:
            saved = json.load(f)
        self.assertEqual(saved["last_seq"], ev.seq)
        self.assertEqual(saved["node_id"], client.node_id.hex())
        self.assertEqual(saved["server_id"], self.proxy.server_id.hex())
        conns = yield client.connections()
        self.assertEqual(
            [(c["conn"], c["state"]) for c in conns], [(link.conn, "open")]
        )

    @defer.inlineCallbacks
    def test_nagle_off_on_the_client_socket(self) -> Any:
        """The client library's socket to the proxy has TCP_NODELAY set
        (Autobahn's own option never takes effect), so back-to-back requests
        do not wait for delayed ACKs."""
        self.start_proxy()
        client = self.make_client()
        yield client.when_logged_in()
        sock = client.transport.getHandle()
        self.assertEqual(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    @defer.inlineCallbacks
    def test_wss(self) -> Any:
        """The client speaks wss:// (TLS with a pinned CA) to a proxy
        listening with Twisted's ssl: endpoint."""
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        cert_path, key_path = make_self_signed(self.mktemp())
        self.start_proxy(
            "--listen",
            f"ssl:0:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}",
        )
        tls_port = self.proxy.listeners[1]._waitingForPort.result.getHost().port
        with open(cert_path, "rb") as f:
            ca = Certificate.loadPEM(f.read())
        client = self.make_client(
            url=f"wss://localhost:{tls_port}/",
            tls_options=optionsForClientTLS("localhost", trustRoot=ca),
        )
        info = yield client.when_logged_in(fail_fast=True)
        self.assertEqual(info.server_id, self.proxy.server_id.hex())


def make_self_signed(directory: str) -> tuple[str, str]:
    """A self-signed certificate for ``localhost``; returns (cert, key) paths."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


class DeliveryTests(ClientTestCase):
    """Events reach the callback in seq order, once, acked after success."""

    @defer.inlineCallbacks
    def open_link(self, client: Client, **kw: Any) -> Any:
        """Open a link to a fresh local peer; return (peer protocol, link)."""
        peer, port = self.local_peer()
        opened = peer.wait_open()
        link = yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}", **kw)
        p = yield opened
        return p, link

    @defer.inlineCallbacks
    def test_in_order_one_at_a_time_with_deferreds(self) -> Any:
        """A callback returning Deferreds gets events strictly one at a time
        and in seq order; each is acknowledged only after its Deferred."""
        self.start_proxy()
        rec = Recorder(delay=0.02)
        client = self.make_client(on_event=rec)
        p, _ = yield self.open_link(client)
        for i in range(10):
            p.send(htlc(i))
        yield self.wait_for(lambda: len(rec.events) == 11, what="11 events")
        self.assertEqual(rec.seqs, list(range(rec.seqs[0], rec.seqs[0] + 11)))
        self.assertEqual([e.msg for e in rec.events[1:]], [htlc(i) for i in range(10)])
        self.assertEqual(rec.max_active, 1)
        yield self.wait_for(lambda: self.pending(client) == 0, what="the acks")

    @defer.inlineCallbacks
    def test_failing_callback_is_retried_and_not_acked(self) -> Any:
        """A callback that raises is called again for the same event (with
        backoff); nothing is acknowledged or recorded until it succeeds, and
        later events wait behind it."""
        self.start_proxy()
        rec = Recorder()
        client = self.make_client(on_event=rec)
        p, _ = yield self.open_link(client)
        yield self.wait_for(lambda: len(rec.events) == 1, what="the init event")
        init_seq = rec.seqs[0]
        rec.fail_times = 3
        p.send(htlc(1))
        p.send(htlc(2))
        yield self.wait_for(lambda: rec.calls >= 3, what="failed calls")
        self.assertEqual(self.pending(client), 2)
        self.assertEqual(client.state.last_seq, init_seq)
        yield self.wait_for(lambda: len(rec.events) == 3, what="the retried events")
        self.assertEqual(rec.seqs, [init_seq, init_seq + 1, init_seq + 2])
        self.assertEqual(rec.calls, 6)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        yield self.wait_for(lambda: self.pending(client) == 0, what="the acks")


class ExactlyOnceTests(ClientTestCase):
    """Crashes, restarts and several devices never make an event handled
    twice or lost."""

    @defer.inlineCallbacks
    def setup_node(self, rec: Recorder, state: Any) -> Any:
        """A client with ``state`` and an open link; returns
        (client, peer protocol, link) once the peer's init is handled."""
        client = self.make_client(on_event=rec, state=state)
        peer, port = self.local_peer()
        opened = peer.wait_open()
        link = yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        p = yield opened
        yield self.wait_for(lambda: len(rec.events) == 1, what="the init event")
        return client, p, link

    @defer.inlineCallbacks
    def test_crash_after_state_write_before_ack(self) -> Any:
        """Killed after the handled seq is written but before the ack: the
        proxy replays the event to the next run, which acknowledges it
        without calling the callback again."""
        self.start_proxy()
        path = self.mktemp()
        first = Recorder()
        # Seq 1 is the peer's init; the htlc is seq 2.
        crashing = CrashingState(path, seq=2, when="after")
        client, p, _ = yield self.setup_node(first, crashing)
        p.send(htlc(1))
        yield self.wait_for(lambda: crashing.crashed, what="the crash")
        self.assertEqual(first.seqs, [1, 2])
        self.assertEqual(FileState(path).load().last_seq, 2)
        self.assertEqual(self.pending(client), 1)  # never acknowledged

        second = Recorder()
        again = self.make_client(
            secret=client_secret(client), on_event=second, state=path
        )
        yield again.when_logged_in()
        yield self.wait_for(lambda: self.pending(again) == 0, what="the replayed ack")
        self.assertEqual(second.events, [])
        p.send(htlc(2))
        yield self.wait_for(lambda: len(second.events) == 1, what="a new event")
        self.assertEqual(second.seqs, [3])
        self.assertEqual(second.events[0].msg, htlc(2))

    @defer.inlineCallbacks
    def test_crash_before_state_write(self) -> Any:
        """Killed after the callback but before the seq is written: nothing
        is recorded or acknowledged, so the event is delivered again to the
        next run (never lost), which records and acknowledges it once."""
        self.start_proxy()
        path = self.mktemp()
        first = Recorder()
        crashing = CrashingState(path, seq=2, when="before")
        client, p, _ = yield self.setup_node(first, crashing)
        p.send(htlc(1))
        yield self.wait_for(lambda: crashing.crashed, what="the crash")
        self.assertEqual(first.seqs, [1, 2])
        self.assertEqual(FileState(path).load().last_seq, 1)
        self.assertEqual(self.pending(client), 1)

        second = Recorder()
        again = self.make_client(
            secret=client_secret(client), on_event=second, state=path
        )
        yield self.wait_for(lambda: len(second.events) == 1, what="the redelivery")
        self.assertEqual(second.seqs, [2])
        self.assertEqual(second.events[0].msg, htlc(1))
        yield self.wait_for(lambda: self.pending(again) == 0, what="the ack")
        self.assertEqual(FileState(path).load().last_seq, 2)

    @defer.inlineCallbacks
    def test_application_state_closes_the_last_window(self) -> Any:
        """With a StateStore that commits the seq in the same transaction as
        the application's own effects, a crash right after that commit (and
        before the ack) still gives each effect exactly once."""
        self.start_proxy()
        db: dict[str, Any] = {"effects": [], "state": ClientState()}
        uncommitted: list[bytes] = []

        class AppStore:
            """The application's database: effects and seq in one commit."""

            crash_client: Client | None = None

            def load(self) -> ClientState:
                return db["state"]  # type: ignore[no-any-return]

            def save(self, state: ClientState) -> None:
                db["effects"] = db["effects"] + uncommitted
                db["state"] = state
                uncommitted.clear()
                if state.last_seq == 2 and self.crash_client is not None:
                    client, self.crash_client = self.crash_client, None
                    client.abort()

        calls: list[int] = []

        def on_event(event: Event) -> None:
            calls.append(event.seq)
            uncommitted.append(event.msg or b"")

        # A passive client (no on_event) opens the link: events wait unacked.
        secret = os.urandom(32)
        opener = self.make_client(secret=secret)
        peer, port = self.local_peer()
        opened = peer.wait_open()
        yield opener.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        p = yield opened
        p.send(htlc(7))
        yield self.wait_for(lambda: self.pending(opener) == 2, what="two stored events")
        yield opener.stopService()

        store = AppStore()
        app = self.make_client(secret=secret, on_event=on_event, state=store)
        store.crash_client = app
        yield self.wait_for(lambda: store.crash_client is None, what="the crash")
        # Seq 2 was never acknowledged (nor, if the crash dropped it from
        # the socket buffer, the ack of seq 1).
        self.assertIn(self.pending(app), (1, 2))
        again = self.make_client(secret=secret, on_event=on_event, state=store)
        yield again.when_logged_in()
        yield self.wait_for(lambda: self.pending(again) == 0, what="the replayed ack")
        self.assertEqual(calls, [1, 2])
        self.assertEqual(db["effects"], [wire.Init(features=b"").encode(), htlc(7)])

    @defer.inlineCallbacks
    def test_proxy_restart(self) -> Any:
        """An event handled while the proxy is stopping (its ack cannot be
        sent) is replayed after the proxy restarts on the same data dir and
        is not delivered again; the ``proxy stopped`` closed event and
        messages stored before the stop are delivered exactly once."""
        port = free_port()
        data_dir = self.mktemp()
        self.start_fixed_proxy(port, data_dir)
        path = self.mktemp()
        holder: dict[str, Any] = {}

        def on_event(event: Event) -> Any:
            rec(event)
            if (
                event.kind == "message"
                and event.type == 128
                and "stopped" not in holder
            ):
                # The proxy stops while this callback runs.
                holder["stopped"] = True
                return self.proxy.stopService()
            return None

        rec = Recorder()
        client = self.make_client(on_event=on_event, state=path)
        peer, peer_port = self.local_peer()
        opened = peer.wait_open()
        yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{peer_port}")
        p = yield opened
        p.send(htlc(1))
        yield self.wait_for(lambda: not self.proxy.running, what="the proxy stop")
        yield self.wait_for(lambda: not client.logged_in, what="the disconnect")
        # The htlc (2) and the proxy's "proxy stopped" closed event (3), sent
        # before it closed the WebSocket, are handled but not acknowledged.
        self.assertEqual(client.state.last_seq, 3)
        self.assertEqual([e.kind for e in rec.events], ["message", "message", "closed"])
        logins: list[Any] = []
        client.on_login.append(logins.append)
        client.on_event = rec  # no more proxy stops
        self.start_fixed_proxy(port, data_dir)
        yield self.wait_for(lambda: bool(logins), what="the automatic re-login")
        self.assertEqual(logins[0].pending, 2)  # the htlc (replayed) + closed
        yield self.wait_for(lambda: self.pending(client) == 0, what="the acks")
        self.assertEqual([e.kind for e in rec.events], ["message", "message", "closed"])
        self.assertEqual(rec.seqs, [1, 2, 3])
        self.assertEqual(rec.events[2].reason, "proxy stopped")

    @defer.inlineCallbacks
    def test_two_instances_of_one_node(self) -> Any:
        """Two clients of one node, each with its own state file, both online
        and one much slower: each delivers every event exactly once, in
        order, though the fast one acknowledges ahead of the slow one; a
        restart of the slow one redelivers nothing."""
        self.start_proxy()
        secret = os.urandom(32)
        fast, slow = Recorder(), Recorder(delay=0.03)
        path_a, path_b = self.mktemp(), self.mktemp()
        a = self.make_client(secret=secret, on_event=fast, state=path_a)
        b = self.make_client(secret=secret, on_event=slow, state=path_b)
        yield a.when_logged_in()
        yield b.when_logged_in()
        peer, port = self.local_peer()
        opened = peer.wait_open()
        yield a.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        p = yield opened
        for i in range(8):
            p.send(htlc(i))
        yield self.wait_for(lambda: len(fast.events) == 9, what="instance A")
        yield self.wait_for(lambda: len(slow.events) == 9, what="instance B")
        self.assertEqual(fast.seqs, list(range(1, 10)))
        self.assertEqual(slow.seqs, list(range(1, 10)))
        yield self.wait_for(lambda: self.pending(a) == 0, what="the acks")
        yield b.stopService()
        again = Recorder()
        b2 = self.make_client(secret=secret, on_event=again, state=path_b)
        yield b2.when_logged_in()
        p.send(htlc(99))
        yield self.wait_for(lambda: len(again.events) == 1, what="a new event")
        self.assertEqual(again.seqs, [10])


def client_secret(client: Client) -> bytes:
    """The node secret a test client was made with."""
    return client._secret


class ReconnectTests(ClientTestCase):
    """Reconnection to the proxy, and re-handshakes of persistent peers."""

    @defer.inlineCallbacks
    def test_reconnects_to_proxy_and_logs_in_again(self) -> Any:
        """When the proxy goes away the client retries (backoff) until it is
        back, logs in again by itself, and a request made while it was away
        is sent once it is logged in."""
        port = free_port()
        data_dir = self.mktemp()
        self.start_fixed_proxy(port, data_dir)
        client = self.make_client(request_timeout=10.0)
        logins: list[Any] = []
        disconnects: list[None] = []
        client.on_login.append(logins.append)
        client.on_disconnect.append(lambda: disconnects.append(None))
        yield self.wait_for(lambda: len(logins) == 1, what="the first login")
        yield self.proxy.stopService()
        yield self.wait_for(lambda: bool(disconnects), what="the disconnect")
        pending = client.connections()
        yield self.sleep(0.3)  # several failed attempts
        self.assertNoResult(pending)
        self.start_fixed_proxy(port, data_dir)
        conns = yield pending
        self.assertEqual(conns, [])
        self.assertEqual(len(logins), 2)
        self.assertEqual(logins[0].server_id, logins[1].server_id)

    @defer.inlineCallbacks
    def test_persist_drop_rehandshakes(self) -> Any:
        """A persistent connection that the peer drops gives a closed event
        with reconnect true; the client records it, then runs a new
        handshake by itself: the peer sees a new connection authenticated
        by our node id, and on_link reports the new link."""
        self.start_proxy()
        peer, port = self.local_peer()
        rec = Recorder()
        client = self.make_client(on_event=rec, state=self.mktemp(), features=b"\x08")
        relinked: list[Any] = []
        client.on_link.append(relinked.append)
        opened = peer.wait_open()
        link = yield client.open_peer(
            f"{peer.node_id.hex()}@127.0.0.1:{port}", persist=True
        )
        p = yield opened
        reopened = peer.wait_open()
        init_again = peer.wait_message(lambda m: m[:2] == b"\x00\x10")
        p.transport.abortConnection()
        p2 = yield reopened
        self.assertIsNot(p2, p)
        self.assertEqual(p2.remote_node_id, client.node_id)
        init = yield init_again
        self.assertEqual(wire.Init.decode(init).features, b"\x08")
        yield self.wait_for(lambda: bool(relinked), what="on_link")
        new = relinked[0]
        self.assertNotEqual(new.conn, link.conn)
        self.assertTrue(new.persist)
        closed = [e for e in rec.events if e.kind == "closed"]
        self.assertEqual([(e.conn, e.reconnect) for e in closed], [(link.conn, True)])
        self.assertEqual(client.state.rehandshake, {})
        conns = yield client.connections()
        self.assertEqual([c["state"] for c in conns if c["conn"] == new.conn], ["open"])

    @defer.inlineCallbacks
    def test_rehandshake_retries_until_peer_is_back(self) -> Any:
        """While the peer is down every re-handshake fails (code 4) and is
        retried with backoff; when it listens again, the next attempt
        succeeds."""
        self.start_proxy()
        from lnproxy.localpeer import LocalPeerFactory

        peer = LocalPeerFactory()
        listening = reactor.listenTCP(0, peer, interface="127.0.0.1")
        port = listening.getHost().port
        client = self.make_client(on_event=Recorder())
        opened = peer.wait_open()
        yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}", persist=True)
        p = yield opened
        yield listening.stopListening()
        p.transport.abortConnection()
        yield self.wait_for(
            lambda: bool(client.state.rehandshake), what="the pending re-handshake"
        )
        yield self.sleep(0.3)  # a few failed attempts
        self.assertEqual(peer.connections, [])
        reopened = peer.wait_open()
        listening = reactor.listenTCP(port, peer, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.addCleanup(
            lambda: [c.transport.abortConnection() for c in peer.connections]
        )
        p2 = yield reopened
        self.assertEqual(p2.remote_node_id, client.node_id)
        yield self.wait_for(lambda: client.state.rehandshake == {}, what="the record")

    @defer.inlineCallbacks
    def test_pending_rehandshake_survives_a_crash(self) -> Any:
        """A crash right after the closed event is recorded (before the ack
        and before any new handshake) loses nothing: the next run finds the
        peer in its state and re-handshakes at login."""
        self.start_proxy()
        peer, port = self.local_peer()
        path = self.mktemp()
        crashing = CrashingState(path, seq=2, when="after")  # 1 init, 2 closed
        client = self.make_client(on_event=Recorder(), state=crashing)
        opened = peer.wait_open()
        yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}", persist=True)
        p = yield opened
        yield self.wait_for(lambda: client.state.last_seq == 1, what="the init event")
        p.transport.abortConnection()
        yield self.wait_for(lambda: crashing.crashed, what="the crash")
        self.assertEqual(list(FileState(path).load().rehandshake), [peer.node_id.hex()])
        self.assertEqual(peer.connections, [])
        reopened = peer.wait_open()
        again = self.make_client(
            secret=client_secret(client), on_event=Recorder(), state=path
        )
        p2 = yield reopened
        self.assertEqual(p2.remote_node_id, again.node_id)
        yield self.wait_for(lambda: again.state.rehandshake == {}, what="the record")
        yield self.wait_for(lambda: self.pending(again) == 0, what="the replayed ack")


class StateTieTests(ClientTestCase):
    """The state file belongs to one node and one proxy."""

    def test_state_of_another_node_refused(self) -> None:
        """A state file written for another node id is refused at once."""
        path = self.mktemp()
        FileState(path).save(ClientState(node_id=keys.public_key(os.urandom(32)).hex()))
        with self.assertRaises(StateError) as cm:
            Client(reactor, "ws://127.0.0.1:1/", os.urandom(32), state=path)
        self.assertIn("belongs to node", str(cm.exception))

    @defer.inlineCallbacks
    def test_another_proxy_resets_the_seq(self) -> Any:
        """A state recorded against another server_id starts over at seq 0,
        so the new proxy's events (seq 1, 2...) are not mistaken for replays."""
        self.start_proxy()
        path = self.mktemp()
        secret = os.urandom(32)
        other = keys.public_key(os.urandom(32)).hex()
        FileState(path).save(
            ClientState(
                node_id=keys.public_key(secret).hex(), server_id=other, last_seq=50
            )
        )
        rec = Recorder()
        client = self.make_client(secret=secret, on_event=rec, state=path)
        yield client.when_logged_in()
        self.assertEqual(FileState(path).load().last_seq, 0)
        self.assertEqual(FileState(path).load().server_id, self.proxy.server_id.hex())
        peer, port = self.local_peer()
        yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        yield self.wait_for(lambda: rec.seqs == [1], what="the init event")

    @defer.inlineCallbacks
    def test_server_id_pin(self) -> Any:
        """A client told to expect another server_id refuses the proxy for
        good: ServerMismatch, and it stops retrying."""
        self.start_proxy()
        wrong = keys.public_key(os.urandom(32))
        client = self.make_client(server_id=wrong)
        with self.assertRaises(ServerMismatch) as cm:
            yield client.when_logged_in()
        self.assertEqual(cm.exception.got, self.proxy.server_id.hex())
        self.assertFalse(client.running)
        self.assertIs(client.failure, cm.exception)
