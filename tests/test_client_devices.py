"""The client library with several devices of one node, against the real
proxy: the lease and persistent peers, the peer list in the vault, and a
device restored from an account (docs/client.md, "Several devices")."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

from lnproxy import keys, wire
from lnproxy.client import Client, Event
from lnproxy.client.devices import PEERS_ENTRY
from lnproxy.client.errors import LimitExceeded, LoginFailed, ProxyError
from lnproxy.protocol import LEASE_HELD

from .test_client_support import ClientTestCase, fast_retry
from .test_service_devices import CapturedLogs

PASSWORD = "correct horse battery staple"


class Events:
    """An on_event callback that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        """Keep it."""
        self.events.append(event)

    def of(self, kind: str) -> list[Event]:
        """The events of one kind."""
        return [e for e in self.events if e.kind == kind]


def count_opens(peer: Any) -> list[Any]:
    """A list that receives every connection the local peer completes."""
    opens: list[Any] = []
    original = peer._opened

    def opened(p: Any) -> None:
        opens.append(p)
        original(p)

    peer._opened = opened
    return opens


class DevicesClientTestCase(ClientTestCase):
    """Log capture, and a secret scan of the data dir and logs."""

    def setUp(self) -> None:
        """Capture every log event."""
        super().setUp()
        self.logs = CapturedLogs()
        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)

    def assert_no_secrets(self, *secrets: bytes) -> None:
        """No file of the data dir and no log line holds any of ``secrets``
        (raw, or hex in either case)."""
        needles: list[bytes] = []
        for s in secrets:
            needles += [s, s.hex().encode(), s.hex().upper().encode()]
        for root, _dirs, files in os.walk(self.data_dir):
            for name in files:
                if not os.path.isfile(os.path.join(root, name)):
                    continue  # takeover.sock, a Unix socket (hot restart)
                with open(os.path.join(root, name), "rb") as f:
                    data = f.read()
                for needle in needles:
                    self.assertNotIn(needle, data, f"a secret in {name}")
        text = "\n".join(self.logs.lines).encode("utf-8", "backslashreplace")
        for needle in needles:
            self.assertNotIn(needle, text, "a secret in the logs")


class LeaseClientTests(DevicesClientTestCase):
    """Client.acquire_lease, the lease notification, re-handshakes."""

    @defer.inlineCallbacks
    def test_only_the_holder_rehandshakes(self) -> Any:
        """Two devices that use the lease: the first holds it, the second is
        refused.  A persistent peer drops: both get the closed event, only
        the holder re-handshakes.  When the holder is gone, the second
        takes the lease and is the one that re-handshakes the next drop."""
        self.start_proxy()
        secret = os.urandom(32)
        peer, port = self.local_peer()
        opens = count_opens(peer)
        ev_a, ev_b = Events(), Events()
        a = self.make_client(secret, on_event=ev_a, lease=True)
        yield self.wait_for(lambda: a.writer is True, what="a's lease")
        b = self.make_client(secret, on_event=ev_b, lease=True)
        yield b.when_logged_in()
        yield self.wait_for(lambda: b.writer is False, what="b refused")
        links_a: list[Any] = []
        links_b: list[Any] = []
        a.on_link.append(links_a.append)
        b.on_link.append(links_b.append)

        # B cannot open connections; A can.
        try:
            yield b.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        except ProxyError as e:
            self.assertEqual(e.code, LEASE_HELD)
        else:
            self.fail("a non-holder opened a connection")
        opened = peer.wait_open()
        yield a.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}", persist=True)
        first = yield opened
        self.assertEqual(len(peer.connections), 1)

        reopened = peer.wait_open()
        first.transport.abortConnection()
        yield reopened
        yield self.wait_for(lambda: bool(links_a), what="a's re-handshake")
        yield self.wait_for(lambda: bool(ev_b.of("closed")), what="b's closed event")
        self.assertTrue(ev_b.of("closed")[0].reconnect)
        yield self.sleep(0.3)
        self.assertEqual(links_b, [])
        self.assertEqual(len(opens), 2)

        # A leaves; its lease ends with its session.  B takes it.
        yield a.stopService()
        yield b.acquire_lease()
        self.assertTrue(b.writer)
        second = list(peer.connections)
        self.assertEqual(len(second), 1)
        reopened = peer.wait_open()
        second[0].transport.abortConnection()
        yield reopened
        yield self.wait_for(lambda: bool(links_b), what="b's re-handshake")
        self.assertEqual(len(links_a), 1)
        self.assertEqual(len(opens), 3)

    @defer.inlineCallbacks
    def test_forced_move_notifies(self) -> Any:
        """A forced acquire moves the lease; the former holder's writer is
        False and its on_lease hook says so; its writes answer code 11."""
        self.start_proxy()
        secret = os.urandom(32)
        a = self.make_client(secret, lease=True)
        yield self.wait_for(lambda: a.writer is True, what="a's lease")
        told: list[bool] = []
        a.on_lease.append(told.append)
        b = self.make_client(secret)
        yield b.when_logged_in()
        self.assertIsNone(b.writer)
        yield b.acquire_lease(force=True)
        self.assertTrue(b.writer)
        yield self.wait_for(lambda: a.writer is False, what="the notification")
        self.assertEqual(told, [False])
        peer, port = self.local_peer()
        try:
            yield a.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        except ProxyError as e:
            self.assertEqual(e.code, LEASE_HELD)
        else:
            self.fail("the former holder opened a connection")
        yield b.release_lease()
        self.assertIsNone(b.writer)
        link = yield a.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        self.assertTrue(link.conn)

    @defer.inlineCallbacks
    def test_new_holder_picks_up_vault_peers(self) -> Any:
        """The holder lists its persistent peer in the vault (encrypted).  It
        loses the link and goes away without re-handshaking; another device
        that takes the lease finds the peer in the vault and reconnects."""
        self.start_proxy()
        secret = os.urandom(32)
        peer, port = self.local_peer()
        a = self.make_client(secret, on_event=Events(), lease=True)
        yield self.wait_for(lambda: a.writer is True, what="a's lease")
        opened = peer.wait_open()
        yield a.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}", persist=True)
        first = yield opened
        yield self.wait_for(
            lambda: bool(self.proxy.hub.store.vault_get(a.node_id.hex(), PEERS_ENTRY)),
            what="the peer list",
        )
        _, blob = self.proxy.hub.store.vault_get(a.node_id.hex(), PEERS_ENTRY)
        self.assertNotIn(peer.node_id.hex().encode(), blob)
        self.assertNotIn(peer.node_id, blob)
        # A acknowledges the drop but never re-handshakes, then is gone.
        a._peers._start_rehandshake = lambda node: None  # type: ignore[method-assign]
        first.transport.abortConnection()
        yield self.wait_for(lambda: self.pending(a) == 0, what="a's ack")
        yield a.stopService()

        b = self.make_client(secret)
        relinked: list[Any] = []
        b.on_link.append(relinked.append)
        yield b.when_logged_in()
        reopened = peer.wait_open()
        yield b.acquire_lease()
        p2 = yield reopened
        self.assertEqual(p2.remote_node_id, b.node_id)
        yield self.wait_for(lambda: bool(relinked), what="b's re-handshake")
        self.assertEqual(relinked[0].peer, peer.node_id.hex())

    @defer.inlineCallbacks
    def test_without_lease_nothing_changes(self) -> Any:
        """Clients that never ask for the lease behave as before: a drop is
        re-handshaken (by whichever gets there first), nothing refused."""
        self.start_proxy()
        secret = os.urandom(32)
        peer, port = self.local_peer()
        a = self.make_client(secret, on_event=Events())
        yield a.when_logged_in()
        links: list[Any] = []
        a.on_link.append(links.append)
        opened = peer.wait_open()
        yield a.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}", persist=True)
        first = yield opened
        reopened = peer.wait_open()
        first.transport.abortConnection()
        yield reopened
        yield self.wait_for(lambda: bool(links), what="the re-handshake")
        self.assertIsNone(a.writer)


class AccountClientTests(DevicesClientTestCase):
    """Client.account_set and Client.from_account."""

    @defer.inlineCallbacks
    def test_restore_on_a_new_device(self) -> Any:
        """Device 1 (with the key) makes an account; device 2 (no key) is
        built from it, is pinned to the proxy, logs in as the node and
        receives the node's events.  Nothing secret reaches the data dir
        or the logs."""
        self.start_proxy()
        secret = os.urandom(32)
        peer, port = self.local_peer()
        one = self.make_client(secret)
        yield one.when_logged_in()
        yield one.account_set("alice", PASSWORD)
        opened = peer.wait_open()
        yield one.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        p = yield opened

        got = Events()
        two: Client = yield Client.from_account(
            reactor,
            self.proxy_url,
            "alice",
            PASSWORD,
            on_event=got,
            retry_policy=fast_retry,
        )
        self.addCleanup(two.stopService)
        self.assertEqual(two.node_id, one.node_id)
        self.assertEqual(two.expected_server_id, one.server_id)
        two.startService()
        yield two.when_logged_in()
        p.send(wire.Ping(num_pong_bytes=4, ignored=b"").encode())
        p.send(bytes.fromhex("0080") + b"\x01" * 40)  # an update_add_htlc-ish
        yield self.wait_for(
            lambda: any(e.type == 128 for e in got.of("message")), what="the event"
        )
        # The key derivation's enc, for the scan: recomputed here.
        from lnproxy.client import account

        derived = account.derive(PASSWORD, one.server_id or b"", "alice")
        self.assert_no_secrets(secret, derived.enc, PASSWORD.encode())

    @defer.inlineCallbacks
    def test_wrong_password(self) -> Any:
        """A wrong password: LoginFailed, five times; then LimitExceeded."""
        self.start_proxy()
        one = self.make_client(os.urandom(32))
        yield one.when_logged_in()
        yield one.account_set("bob", PASSWORD)
        for _ in range(5):
            yield self.assertFailure(
                Client.from_account(reactor, self.proxy_url, "bob", "wrong password!"),
                LoginFailed,
            )
        yield self.assertFailure(
            Client.from_account(reactor, self.proxy_url, "bob", PASSWORD),
            LimitExceeded,
        )
        yield self.assertFailure(
            Client.from_account(reactor, self.proxy_url, "nobody", PASSWORD),
            LoginFailed,
        )
        self.assertEqual(keys.public_key(one._secret), one.node_id)

    @defer.inlineCallbacks
    def test_restore_refusals(self) -> Any:
        """restore_account refuses a proxy with another server_id, one that
        does not offer accounts, and a proxy that is not there; each time
        its connection is closed before it answers."""
        from lnproxy.client import MethodNotFound, ServerMismatch, restore_account
        from lnproxy.client.errors import ProxyUnreachable

        from .test_client_support import free_port

        self.start_proxy()
        yield self.assertFailure(
            restore_account(
                reactor, self.proxy_url, "alice", PASSWORD, server_id=b"\x02" * 33
            ),
            ServerMismatch,
        )
        self.proxy.factory.features = frozenset()
        yield self.assertFailure(
            restore_account(reactor, self.proxy_url, "alice", PASSWORD),
            MethodNotFound,
        )
        yield self.assertFailure(
            restore_account(
                reactor, f"ws://127.0.0.1:{free_port()}/", "alice", PASSWORD
            ),
            ProxyUnreachable,
        )
