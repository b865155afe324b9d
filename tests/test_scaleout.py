"""Several lnproxy processes on one PostgreSQL database (docs/protocol.md,
"Running several processes (scale-out)").

Real ``twistd -n lnproxy`` children on one throwaway database (see
tests/pg.py), a WebSocket client, a local Lightning peer and a loopback
webhook receiver in the test process: redirects (code 9) and both devices
of a node at the owner, events replayed at another process once ownership
moved, ``kill -9`` of an owner (closed events ``proxy failed`` and a signed
webhook within the lease timeout plus a few seconds, no event missing or
duplicated), SIGTERM handing nodes over at once, the Python client
following a redirect and coming back through its configured URL after the
owner died, and bad start-ups (the database down, a wrong URL, a newer
schema). Lease timeouts are 2 s.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import psycopg
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SkipTest
from twisted.web.server import Site

from lnproxy import keys, wire
from lnproxy.client import Client, Event, FileState, account
from lnproxy.electrum_demo import ElectrumNode, electrum_available, resume_args
from lnproxy.store import KEY_FILE
from lnproxy.testing import TwistdProcess as Twistd
from lnproxy.testing import spawn_twistd
from lnproxy.testing_postgres import PostgresUnavailable, TemporaryPostgres

from . import test_service_devices as devices_tests
from . import test_service_inbox as inbox_tests
from . import test_service_relay as relay_tests
from . import test_service_smoke as smoke_tests
from . import test_webhook_e2e as webhook_tests
from .harness import (
    ProxyTestCase,
    RpcFailed,
    build_service,
    eventually,
    free_port,
    proxy_options,
)
from .pg import new_database, shared_postgres
from .test_webhook_e2e import Receiver

#: Lease timeout of the children (seconds).
LEASE = 2.0
#: Seconds allowed for a child to start or to stop.
CHILD_TIMEOUT = 20.0


def closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Child:
    """One ``twistd`` child of the deployment."""

    def __init__(self, proto: Twistd, transport: Any, port: int) -> None:
        self.proto = proto
        self.transport = transport
        self.port = port

    @property
    def url(self) -> str:
        """Its ``--public-url``."""
        return f"ws://127.0.0.1:{self.port}"


class ScaleOutCase(ProxyTestCase):
    """A database, a shared server key, and twistd children on it."""

    timeout = 120

    def setUp(self) -> None:
        self.db = new_database()
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        self.work = work
        self.key_path = os.path.join(work, KEY_FILE)

    def spawn(self, *extra: str, database: str | None = None) -> Child:
        """Start ``twistd -n lnproxy`` on the database with its own data
        dir, the shared key and a 2 s lease."""
        port = free_port()
        data_dir = os.path.join(self.work, f"data-{port}")
        proto = spawn_twistd(
            reactor,
            port,
            data_dir,
            "--database",
            database or self.db,
            "--public-url",
            f"ws://127.0.0.1:{port}",
            "--lease-timeout",
            str(LEASE),
            "--server-key",
            self.key_path,
            "--webhook-allow-private",
            *extra,
            cwd=self.work,
        )
        transport = proto.transport
        self.addCleanup(self._reap, proto, transport)
        return Child(proto, transport, port)

    def _reap(self, proto: Twistd, transport: Any) -> defer.Deferred[Any] | None:
        if proto.ended.called:
            return None
        transport.signalProcess("KILL")
        return proto.ended

    @defer.inlineCallbacks
    def started(self, *children: Child) -> Any:
        """Wait until every child serves."""
        for child in children:
            proto = child.proto
            yield eventually(
                lambda p=proto: "lnproxy started" in p.text or p.ended.called,
                timeout=CHILD_TIMEOUT,
                interval=0.05,
            )
            self.assertIn("lnproxy started", proto.text, proto.text)

    @defer.inlineCallbacks
    def ended(self, child: Child) -> Any:
        """Wait for a child to exit."""
        yield child.proto.ended.addTimeout(CHILD_TIMEOUT, reactor)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        """One statement on the deployment's database."""
        with psycopg.connect(self.db, autocommit=True) as conn:
            cur = conn.execute(query, args or None)
            return cur.fetchall() if cur.description else []

    def receiver(self) -> tuple[Receiver, int]:
        """A loopback webhook receiver."""
        rx = Receiver()
        port = reactor.listenTCP(0, Site(rx), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return rx, port.getHost().port


class RedirectTests(ScaleOutCase):
    """Login at the owner or elsewhere."""

    @defer.inlineCallbacks
    def test_redirect_and_devices_at_the_owner(self) -> Any:
        """Both processes present the same server_id and announce
        ``redirect``. The first login claims the node; a second device
        logging in at the other process gets code 9 with the owner's URL,
        its session stays open but not logged in; logged in at the owner,
        both devices get the same events."""
        p1, p2 = self.spawn(), self.spawn()
        yield self.started(p1, p2)
        secret = os.urandom(32)
        first = yield self.logged_in(secret, port=p1.port)
        self.assertIn("redirect", first.hello_params["features"])
        other = yield self.ws(port=p2.port)
        hello = yield other.hello
        self.assertEqual(hello["server_id"], first.hello_params["server_id"])
        with open(self.key_path) as f:
            shared = keys.public_key(bytes.fromhex(f.read().strip()))
        self.assertEqual(hello["server_id"], shared.hex())
        err = yield self.expect_error(other.login(secret), 9)
        self.assertIsInstance(err, RpcFailed)
        reply = [f for f in other.frames if "error" in f][-1]
        self.assertEqual(reply["error"]["data"], {"url": p1.url})
        not_logged = yield self.expect_error(other.call("connections"), 1)
        self.assertIn("not logged in", not_logged.message)
        second = yield self.logged_in(secret, port=p1.port)
        peer, peer_port = self.local_peer()
        conn, _ = yield first.open_peer(peer, peer_port)
        yield eventually(lambda: len(first.events) == 1 and len(second.events) == 1)
        self.assertEqual(first.events, second.events)
        self.assertEqual(first.events[0]["params"]["seq"], 1)
        listed = yield second.call("connections")
        self.assertEqual([c["conn"] for c in listed["connections"]], [conn])


class ClientRedirectTests(ScaleOutCase):
    """The Python client (:class:`lnproxy.client.Client`) follows code 9."""

    @defer.inlineCallbacks
    def test_client_follows_to_owner_and_back_after_kill9(self) -> Any:
        """The node is served by p1; a Client configured with p2's URL
        logs in at p1 (``target``), opens a peer connection there and gets
        its events.  After kill -9 of p1 the client reconnects through its
        configured URL (a redirect to the dead p1 at first, until p2 takes
        the node over) and, logged in at p2, gets the ``closed`` (``proxy
        failed``) event: every event exactly once, seqs 1..4, the state
        file's seq continuing."""
        p1, p2 = self.spawn(), self.spawn()
        yield self.started(p1, p2)
        secret = os.urandom(32)
        claim = yield self.logged_in(secret, port=p1.port)  # p1 owns the node
        got: list[Event] = []
        state = os.path.join(self.work, "client.state")
        client = Client(
            reactor,
            p2.url,
            secret,
            on_event=got.append,
            state=state,
            server_id=bytes.fromhex(claim.hello_params["server_id"]),
            request_timeout=10.0,
            retry_policy=lambda attempt: 0.2,
        )
        client.startService()
        self.addCleanup(client.stopService)
        yield client.when_logged_in(fail_fast=True).addTimeout(10, reactor)
        self.assertEqual((client.url, client.target), (p2.url, p1.url))
        peer, peer_port = self.local_peer()
        link = yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{peer_port}")
        yield eventually(lambda: len(peer.connections) == 1)
        for text in (b"one", b"two"):
            peer.connections[0].send(bytes.fromhex("0080") + text)
        yield eventually(lambda: len(got) == 3 and client.state.last_seq == 3)
        self.assertEqual([e.seq for e in got], [1, 2, 3])
        self.assertEqual(got[2].msg, bytes.fromhex("0080") + b"two")
        claim.dropConnection(abort=True)
        yield claim.closed

        os.kill(p1.transport.pid, signal.SIGKILL)
        killed = time.monotonic()
        yield self.ended(p1)
        yield eventually(
            lambda: len(got) == 4 and client.logged_in,
            timeout=LEASE + 15,
            interval=0.05,
        )
        print(f"client back at p2 {time.monotonic() - killed:.2f} s after kill -9")
        self.assertEqual(client.target, p2.url)
        self.assertEqual([e.seq for e in got], [1, 2, 3, 4])
        closed = got[3]
        self.assertEqual(
            (closed.kind, closed.conn, closed.params["reason"]),
            ("closed", link.conn, "proxy failed"),
        )
        yield eventually(lambda: FileState(state).load().last_seq == 4)
        # Nothing is replayed twice after a while; the closed connection,
        # acknowledged, is no longer listed.
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(len(got), 4)
        listed = yield client.connections()
        self.assertEqual(listed, [])


class ElectrumRedirectTests(ScaleOutCase):
    """The Electrum adapter (an Electrum node under Electrum's Python, see
    tests/test_electrum.py) follows code 9 from a real process."""

    @defer.inlineCallbacks
    def test_adapter_follows_to_owner_and_resumes(self) -> Any:
        """p1 serves the node and keeps a persist connection for it; an
        Electrum client configured with p2's URL logs in at p1 (its
        ``ProxySession.current_url``), sees the connection open and
        resumes it."""
        missing = electrum_available()
        if missing and not os.environ.get("CI"):  # CI must run it
            raise SkipTest(f"Electrum is not available ({missing})")
        p1, p2 = self.spawn(), self.spawn()
        yield self.started(p1, p2)
        secret = os.urandom(32)
        claim = yield self.logged_in(secret, port=p1.port)
        peer, peer_port = self.local_peer()
        conn, _ = yield claim.open_peer(peer, peer_port, persist=True)
        yield eventually(lambda: len(claim.events) == 1)
        claim.dropConnection(abort=True)
        yield claim.closed
        user_dir = os.path.join(self.work, "electrum")
        os.makedirs(user_dir)
        node = ElectrumNode.spawn(
            reactor,
            "client",
            "client",
            *resume_args(p2.url),
            key=secret,
            user_dir=user_dir,
        )
        self.addCleanup(node.stop)
        logged = yield node.wait("logged_in", 60)
        self.assertEqual(logged["url"], p1.url)
        self.assertEqual(
            [(c["conn"], c["state"]) for c in logged["connections"]],
            [(conn, "open")],
        )
        resumed = yield node.wait("resumed", 30)
        self.assertEqual(resumed["conn"], conn)


class HandOverTests(ScaleOutCase):
    """Ownership moves: SIGTERM at once, kill -9 within the lease."""

    @defer.inlineCallbacks
    def test_sigterm_hands_over_at_once(self) -> Any:
        """SIGTERM: the owner writes ``proxy stopped`` for its connections
        and ends its lease; a login at the other process succeeds at once
        (no redirect, no waiting for the lease) and replays every event
        stored through the first one, seqs 1.. without a gap."""
        p1, p2 = self.spawn(), self.spawn()
        yield self.started(p1, p2)
        secret = os.urandom(32)
        client = yield self.logged_in(secret, port=p1.port)
        peer, peer_port = self.local_peer()
        conn, _ = yield client.open_peer(peer, peer_port, persist=True)
        yield eventually(lambda: len(client.events) == 1)
        os.kill(p1.transport.pid, signal.SIGTERM)
        yield self.ended(p1)
        stopped = time.monotonic()
        again = yield self.logged_in(secret, port=p2.port)
        self.assertLess(time.monotonic() - stopped, LEASE)
        self.assertEqual(again.login_result["inbox"], {"next_seq": 3, "pending": 2})
        yield eventually(lambda: len(again.events) == 2)
        self.assertEqual([e["params"]["seq"] for e in again.events], [1, 2])
        closed = again.events[1]["params"]
        self.assertEqual(
            (closed["conn"], closed["reason"], closed["reconnect"]),
            (conn, "proxy stopped", True),
        )

    @defer.inlineCallbacks
    def test_peer_storage_moves_with_the_node(self) -> Any:
        """A peer's ``peer_storage`` blob kept by one process is handed
        back by the next owner, behind the client's ``init`` on the next
        link to that peer."""
        p1, p2 = self.spawn(), self.spawn()
        yield self.started(p1, p2)
        secret = os.urandom(32)
        client = yield self.logged_in(secret, port=p1.port)
        peer, peer_port = self.local_peer()
        yield client.open_peer(peer, peer_port)
        yield eventually(lambda: len(peer.connections) == 1)
        blob = os.urandom(120)
        peer.connections[0].send(wire.PeerStorage(blob).encode())
        yield eventually(
            lambda: self.sql("SELECT blob FROM peer_storage") == [(blob,)],
            timeout=10,
            interval=0.1,
        )
        os.kill(p1.transport.pid, signal.SIGTERM)
        yield self.ended(p1)
        again = yield self.logged_in(secret, port=p2.port)
        yield again.open_peer(peer, peer_port)
        retrieval = wire.PeerStorage(blob, retrieval=True).encode()
        yield eventually(lambda: any(retrieval in p.received for p in peer.connections))
        (link,) = [p for p in peer.connections if retrieval in p.received]
        self.assertEqual(link.received[0][:2], b"\x00\x10")  # the client's init
        self.assertEqual(link.received[1], retrieval)

    @defer.inlineCallbacks
    def test_vault_and_account_move_with_the_node(self) -> Any:
        """Vault entries and the account written through one process are
        there at the next owner: vault.get answers the same version and
        blob, account.login (before any login) the same node and blob."""
        p1, p2 = self.spawn(), self.spawn()
        yield self.started(p1, p2)
        secret = os.urandom(32)
        client = yield self.logged_in(secret, port=p1.port)
        put = yield client.call("vault.put", name="channels", blob="8f3a", version=0)
        self.assertEqual(put, {"version": 1})
        server_id = bytes.fromhex(client.hello_params["server_id"])
        derived = account.derive("correct horse", server_id, "alice")
        blob = account.seal_node_key(derived.enc, "alice", secret)
        yield client.call(
            "account.set", user="alice", auth=derived.auth.hex(), blob=blob.hex()
        )
        os.kill(p1.transport.pid, signal.SIGTERM)
        yield self.ended(p1)
        fresh = yield self.ws(port=p2.port)
        yield fresh.hello
        found = yield fresh.call("account.login", user="alice", auth=derived.auth.hex())
        self.assertEqual(found["node_id"], keys.public_key(secret).hex())
        self.assertEqual(found["blob"], blob.hex())
        again = yield self.logged_in(secret, port=p2.port)
        got = yield again.call("vault.get", name="channels")
        self.assertEqual(got, {"version": 1, "blob": "8f3a"})

    @defer.inlineCallbacks
    def test_kill9_failover(self) -> Any:
        """kill -9 of the owner: within the lease timeout plus a few
        seconds the survivor writes ``closed`` (``proxy failed``,
        reconnect = persist) for every connection the dead one held and
        calls the node's webhook once, signed with the deployment's
        server_id; the client logs in there, gets every committed event
        exactly once (seqs 1..n), re-handshakes its persist peer."""
        p1, p2 = self.spawn(), self.spawn()
        yield self.started(p1, p2)
        rx, rx_port = self.receiver()
        secret = os.urandom(32)
        client = yield self.logged_in(secret, port=p1.port)
        rx.server_id = bytes.fromhex(client.hello_params["server_id"])
        yield client.call("webhook.set", url=f"http://127.0.0.1:{rx_port}/hook")
        peer, peer_port = self.local_peer()
        keep, _ = yield client.open_peer(peer, peer_port, persist=True)
        plain, _ = yield client.open_peer(peer, peer_port)
        yield eventually(lambda: len(client.events) == 2)
        for p in list(peer.connections):
            p.send(bytes.fromhex("0080") + b"channel update")
        yield eventually(lambda: len(client.events) == 4)
        client.dropConnection(abort=True)
        yield client.closed
        os.kill(p1.transport.pid, signal.SIGKILL)
        killed = time.monotonic()
        yield self.ended(p1)
        yield eventually(lambda: len(rx.calls) >= 1, timeout=LEASE + 8)
        took = time.monotonic() - killed
        self.assertLess(took, LEASE + 5)
        print(f"failover: webhook {took:.2f} s after kill -9 (lease {LEASE} s)")
        call = rx.calls[0]
        self.assertEqual(rx.bad_signatures, 0)
        self.assertEqual(call.json()["reason"], "reconnect")
        again = yield self.logged_in(secret, port=p2.port)
        self.assertEqual(again.login_result["inbox"]["next_seq"], 7)
        yield eventually(lambda: len(again.events) == 6)
        seqs = [e["params"]["seq"] for e in again.events]
        self.assertEqual(seqs, [1, 2, 3, 4, 5, 6])
        closed = {
            e["params"]["conn"]: (e["params"]["reason"], e["params"]["reconnect"])
            for e in again.events
            if e["method"] == "closed"
        }
        self.assertEqual(
            closed, {keep: ("proxy failed", True), plain: ("proxy failed", False)}
        )
        # Only one process took the node over: one webhook call, also after
        # another lease period of the survivor's take-over checks.
        yield task.deferLater(reactor, LEASE, lambda: None)
        self.assertEqual(len(rx.calls), 1)
        again_conn, _ = yield again.open_peer(peer, peer_port, persist=True)
        self.assertNotIn(again_conn, closed)


    @defer.inlineCallbacks
    def test_two_survivors_wake_each_node_once(self) -> Any:
        """kill -9 of the owner of three nodes with two survivors checking
        for expired leases at the same time: every node's webhook is called
        exactly once across the deployment (also after two more lease
        periods), and each node's closed event is written once."""
        p1, p2, p3 = self.spawn(), self.spawn(), self.spawn()
        yield self.started(p1, p2, p3)
        rx, rx_port = self.receiver()
        peer, peer_port = self.local_peer()
        secrets = [os.urandom(32) for _ in range(3)]
        for i, secret in enumerate(secrets):
            client = yield self.logged_in(secret, port=p1.port)
            yield client.call(
                "webhook.set", url=f"http://127.0.0.1:{rx_port}/hook{i}"
            )
            yield client.open_peer(peer, peer_port, persist=True)
            yield eventually(lambda c=client: len(c.events) == 1)
            client.dropConnection(abort=True)
            yield client.closed
        os.kill(p1.transport.pid, signal.SIGKILL)
        yield self.ended(p1)
        for i in range(3):
            yield eventually(
                lambda i=i: len(rx.on(f"/hook{i}")) >= 1, timeout=LEASE + 8
            )
        yield task.deferLater(reactor, LEASE * 2, lambda: None)
        self.assertEqual([len(rx.on(f"/hook{i}")) for i in range(3)], [1, 1, 1])
        self.assertEqual(
            self.sql(
                "SELECT node_id, count(*) FROM events WHERE kind = 'closed'"
                " GROUP BY node_id HAVING count(*) <> 1"
            ),
            [],
        )
        self.assertEqual(
            self.sql("SELECT count(*) FROM events WHERE kind = 'closed'"), [(3,)]
        )

    @defer.inlineCallbacks
    def test_paused_past_its_lease_then_resumed_writes_nothing(self) -> Any:
        """SIGSTOP of the owner for longer than its lease: the other process
        takes the node over (``proxy failed``). On SIGCONT the paused one
        reads a peer message that waited in its socket: it writes nothing
        (the epoch fencing refuses it), takes no seq, and stops serving the
        node (its peer link and the client's session close)."""
        p1, p2 = self.spawn(), self.spawn()
        yield self.started(p1, p2)
        secret = os.urandom(32)
        client = yield self.logged_in(secret, port=p1.port)
        peer, peer_port = self.local_peer()
        conn, _ = yield client.open_peer(peer, peer_port)
        yield eventually(lambda: len(client.events) == 1)
        (link,) = list(peer.connections)
        link.send(bytes.fromhex("0080") + b"before the pause")
        yield eventually(lambda: len(client.events) == 2)
        os.kill(p1.transport.pid, signal.SIGSTOP)
        self.addCleanup(self._cont, p1)
        node_id = keys.public_key(secret).hex()
        yield eventually(
            lambda: self.sql(
                "SELECT count(*) FROM events WHERE node_id = %s AND kind = 'closed'",
                node_id,
            )
            == [(1,)],
            timeout=LEASE * 3 + 5,
        )
        self.assertEqual(
            self.sql("SELECT next_seq FROM nodes WHERE node_id = %s", node_id), [(4,)]
        )
        kinds = self.sql("SELECT seq, kind FROM events WHERE seq = 1")
        link.send(bytes.fromhex("0080") + b"after the take-over")
        yield task.deferLater(reactor, 0.3, lambda: None)
        os.kill(p1.transport.pid, signal.SIGCONT)
        yield eventually(lambda: not peer.connections, timeout=LEASE * 2 + 3)
        yield client.closed.addTimeout(LEASE * 2 + 3, reactor)
        yield task.deferLater(reactor, LEASE, lambda: None)
        self.assertEqual(
            self.sql(
                "SELECT seq, kind FROM events WHERE node_id = %s ORDER BY seq",
                node_id,
            ),
            [(1, kinds[0][1]), (2, "message"), (3, "closed")],
        )
        self.assertEqual(
            self.sql("SELECT next_seq FROM nodes WHERE node_id = %s", node_id), [(4,)]
        )
        again = yield self.logged_in(secret, port=p2.port)
        yield eventually(lambda: len(again.events) == 3)
        self.assertEqual([e["params"]["seq"] for e in again.events], [1, 2, 3])

    def _cont(self, child: Child) -> None:
        """Let a stopped child run again (so that cleanup can end it)."""
        if not child.proto.ended.called:
            os.kill(child.transport.pid, signal.SIGCONT)

class BadStartTests(ScaleOutCase):
    """A process that cannot use its database refuses to start."""

    @defer.inlineCallbacks
    def check_refused(self, database: str, message: str) -> Any:
        """twistd exits non-zero at once, saying ``message``, never the
        password."""
        child = self.spawn(database=database)
        yield self.ended(child)
        self.assertNotEqual(child.proto.reason.value.exitCode, 0, child.proto.text)
        self.assertIn(message, child.proto.text)
        self.assertNotIn("sekrit", child.proto.text)
        self.assertNotIn("Traceback", child.proto.text)
        print(child.proto.text.strip().splitlines()[-1])

    def test_database_down(self) -> Any:
        """Nothing listens at the database's address."""
        return self.check_refused(
            f"postgresql://u:sekrit@127.0.0.1:{closed_port()}/lnproxy",
            "cannot connect to the database",
        )

    def test_wrong_url(self) -> Any:
        """A database that does not exist on the server."""
        return self.check_refused(
            self.db.rsplit("/", 1)[0] + "/no_such_database", "no_such_database"
        )

    def test_newer_schema(self) -> Any:
        """A database whose schema is newer than this code."""
        from lnproxy.store.postgres import PostgresStore

        PostgresStore.open(self.db, key_path=self.key_path).close()
        self.sql("UPDATE version SET version = 99")
        return self.check_refused(self.db, "schema version 99")


class DatabaseOutageTests(ProxyTestCase):
    """The database goes away under a running process (its own throwaway
    server, which this test stops and starts again)."""

    timeout = 120

    def setUp(self) -> None:
        # fsync on: an immediate stop is a crash, and what was committed
        # must still be there after it.
        self.pg = TemporaryPostgres(fsync=True)
        try:
            self.pg.start()
        except PostgresUnavailable as e:
            shared_postgres()  # skips (or fails under CI) the same way
            raise AssertionError(str(e)) from e
        self.addCleanup(self.pg.stop)
        if self.pg._external:
            raise SkipTest("needs a private server it can stop (not an external one)")
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        self.work = work

    @defer.inlineCallbacks
    def test_outage_shorter_then_longer_than_the_lease(self) -> Any:
        """Down for less than the lease: health goes red, a peer's message
        is not offered while its commit fails, and is delivered (next seq)
        once the database is back. Down for longer than the lease: the
        process stops serving the node at once (session and peer link
        closed); when the database is back the client logs in again and
        gets every event, the connection's ``closed`` (``proxy failed``)
        last."""
        url = self.pg.create_database()
        svc = self.start_proxy(
            "--database",
            url,
            "--public-url",
            "ws://127.0.0.1:1",
            "--lease-timeout",
            "8",
            "--server-key",
            os.path.join(self.work, KEY_FILE),
            data_dir=os.path.join(self.work, "data"),
        )
        yield eventually(lambda: svc.health()[0], timeout=10)
        secret = os.urandom(32)
        client = yield self.logged_in(secret)
        peer, peer_port = self.local_peer()
        conn, _ = yield client.open_peer(peer, peer_port)
        yield eventually(lambda: len(client.events) == 1)
        (link,) = list(peer.connections)

        self.pg.halt()
        link.send(bytes.fromhex("0080") + b"during the outage")
        yield eventually(lambda: not svc.health()[0], timeout=5)
        yield task.deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(len(client.events), 1, "offered before it was committed")
        self.pg.restart()
        yield eventually(lambda: len(client.events) == 2, timeout=10)
        self.assertEqual(client.events[1]["params"]["seq"], 2)
        yield eventually(lambda: svc.health()[0], timeout=10)

        self.pg.halt()
        # The local deadline passes: the node is given up at once.
        yield client.closed.addTimeout(20, reactor)
        yield eventually(lambda: not peer.connections, timeout=5)
        self.pg.restart()
        yield eventually(lambda: svc.health()[0], timeout=15)
        again = yield self.logged_in(secret)
        yield eventually(lambda: len(again.events) == 3, timeout=10)
        self.assertEqual([e["params"]["seq"] for e in again.events], [1, 2, 3])
        closed = again.events[2]["params"]
        self.assertEqual(
            (again.events[2]["method"], closed["conn"], closed["reason"]),
            ("closed", conn, "proxy failed"),
        )


    @defer.inlineCallbacks
    def test_stop_with_the_database_down(self) -> Any:
        """SIGTERM's stop while the database is down, with a peer's message
        and the ``closed`` events queued: the stop ends within a bounded
        time (nothing hangs on the database), and once it is back another
        process gives the client every committed event once, the
        connection's ``closed`` (``proxy failed``) after them."""
        url = self.pg.create_database()
        key = os.path.join(self.work, KEY_FILE)
        svc = self.start_proxy(
            "--database",
            url,
            "--public-url",
            "ws://127.0.0.1:1",
            "--lease-timeout",
            "4",
            "--server-key",
            key,
            data_dir=os.path.join(self.work, "data"),
        )
        yield eventually(lambda: svc.health()[0], timeout=10)
        secret = os.urandom(32)
        client = yield self.logged_in(secret)
        peer, peer_port = self.local_peer()
        conn, _ = yield client.open_peer(peer, peer_port)
        yield eventually(lambda: len(client.events) == 1)
        (link,) = list(peer.connections)
        self.pg.halt()
        link.send(bytes.fromhex("0080") + b"during the outage")
        yield task.deferLater(reactor, 0.5, lambda: None)
        started = time.monotonic()
        yield defer.maybeDeferred(svc.stopService).addTimeout(60, reactor)
        took = time.monotonic() - started
        print(f"stop with the database down: {took:.1f} s")
        self.assertLess(took, 30)
        self.pg.restart()
        other = build_service(
            reactor,
            proxy_options(
                os.path.join(self.work, "data2"),
                "--database",
                url,
                "--public-url",
                "ws://127.0.0.1:2",
                "--lease-timeout",
                "4",
                "--server-key",
                key,
            ),
        )
        other.startService()
        self.addCleanup(other.stopService)
        port = other.listeners[0]._waitingForPort.result.getHost().port
        yield eventually(lambda: other.health()[0], timeout=15)
        again = yield eventually_logged_in(self, secret, port)
        yield eventually(lambda: len(again.events) >= 2, timeout=15)
        seqs = [e["params"]["seq"] for e in again.events]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        last = again.events[-1]
        self.assertEqual(
            (last["method"], last["params"]["conn"]), ("closed", conn)
        )
        self.assertIn(last["params"]["reason"], ("proxy failed", "proxy stopped"))


    def freeze(self) -> list[int]:
        """SIGSTOP the private server and its backends (a database that
        hangs instead of refusing: frozen, its disk stuck); SIGCONT at
        cleanup (or by :meth:`thaw`)."""
        assert self.pg._dir is not None
        with open(os.path.join(self.pg._dir, "data", "postmaster.pid")) as f:
            postmaster = int(f.readline())
        pids = [postmaster]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry))
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self.addCleanup(self.thaw, pids)
        return pids

    def thaw(self, pids: list[int]) -> None:
        """SIGCONT what :meth:`freeze` stopped."""
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    @defer.inlineCallbacks
    def test_stop_with_the_database_frozen(self) -> Any:
        """SIGTERM's stop while the database hangs (its processes stopped)
        with a commit in flight: the stop ends within a bounded time
        instead of waiting for the database forever."""
        url = self.pg.create_database()
        svc = self.start_proxy(
            "--database",
            url,
            "--public-url",
            "ws://127.0.0.1:1",
            "--lease-timeout",
            "30",
            "--server-key",
            os.path.join(self.work, KEY_FILE),
            data_dir=os.path.join(self.work, "data"),
        )
        yield eventually(lambda: svc.health()[0], timeout=10)
        client = yield self.logged_in(os.urandom(32))
        peer, peer_port = self.local_peer()
        yield client.open_peer(peer, peer_port)
        yield eventually(lambda: len(client.events) == 1)
        (link,) = list(peer.connections)
        pids = self.freeze()
        link.send(bytes.fromhex("0080") + b"while the database hangs")
        yield task.deferLater(reactor, 0.5, lambda: None)
        started = time.monotonic()
        yield defer.maybeDeferred(svc.stopService).addTimeout(60, reactor)
        took = time.monotonic() - started
        print(f"stop with the database frozen: {took:.1f} s")
        self.assertLess(took, 30)
        self.thaw(pids)
        executor = svc.deployment.executor
        # The stuck threads finish once the database runs again.
        yield eventually(lambda: executor._alive == 0, timeout=30)

@defer.inlineCallbacks
def eventually_logged_in(case: ProxyTestCase, secret: bytes, port: int) -> Any:
    """Log in at ``port``, again while the node's old owner still holds it
    (code 9 until its lease runs out)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            client = yield case.logged_in(secret, port=port)
        except RpcFailed:
            if time.monotonic() > deadline:
                raise
            yield task.deferLater(reactor, 0.5, lambda: None)
            continue
        return client

class ServerKeyOptionTests(ProxyTestCase):
    """``--server-key`` (with SQLite too)."""

    @defer.inlineCallbacks
    def test_server_key_file_used_and_created(self) -> Any:
        """A proxy given ``--server-key`` creates the file there (mode 0600)
        and presents its public key as server_id; a second proxy with
        another data dir and the same file presents the same server_id."""
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        key = os.path.join(work, "shared.key")
        self.start_proxy("--server-key", key, data_dir=os.path.join(work, "a"))
        client = yield self.logged_in()
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        self.assertFalse(os.path.exists(os.path.join(work, "a", KEY_FILE)))
        with open(key) as f:
            expected = keys.public_key(bytes.fromhex(f.read().strip())).hex()
        self.assertEqual(client.hello_params["server_id"], expected)
        self.start_proxy("--server-key", key, data_dir=os.path.join(work, "b"))
        other = yield self.ws()
        hello = yield other.hello
        self.assertEqual(hello["server_id"], expected)


class _OnPostgres:
    """Mixin: run a ProxyTestCase's proxies on a fresh PostgreSQL database
    (one process, fencing on) instead of SQLite."""

    def start_proxy(self, *extra: str, data_dir: str | None = None) -> Any:
        """Start the in-process proxy with ``--database postgresql://...``."""
        url = new_database()
        work = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(work)
        return super().start_proxy(  # type: ignore[misc]
            *extra,
            "--database",
            url,
            "--public-url",
            "ws://127.0.0.1:1",
            "--server-key",
            os.path.join(work, KEY_FILE),
            data_dir=data_dir,
        )


class PostgresLeaseTests(_OnPostgres, devices_tests.LeaseTests):
    """The lease tests of tests/test_service_devices.py on PostgreSQL."""


class PostgresVaultTests(_OnPostgres, devices_tests.VaultTests):
    """The vault tests of tests/test_service_devices.py on PostgreSQL: the
    store calls run on the database threads."""


class PostgresAccountTests(_OnPostgres, devices_tests.AccountTests):
    """The account tests of tests/test_service_devices.py on PostgreSQL."""


class _WebhooksOnPostgres:
    """Mixin: the webhook end-to-end tests' proxy on PostgreSQL."""

    def start(self, *extra: str, resolver: Any = None) -> Any:
        """Start the proxy with ``--database postgresql://...``."""
        url = new_database()
        work = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(work)
        return super().start(  # type: ignore[misc]
            *extra,
            "--database",
            url,
            "--public-url",
            "ws://127.0.0.1:1",
            "--server-key",
            os.path.join(work, KEY_FILE),
            resolver=resolver,
        )


class PostgresWebhookHappyPathTests(
    _WebhooksOnPostgres, webhook_tests.HappyPathTests
):
    """The webhook happy path (signed call, coalescing, reset at login, no
    call when online) with the notifier reading the owner's memory."""


class PostgresWebhookRetryTests(_WebhooksOnPostgres, webhook_tests.RetryTests):
    """Webhook retries on PostgreSQL."""


class PostgresReplayAndAckTests(_OnPostgres, inbox_tests.ReplayAndAckTests):
    """Replay, ack, the inbox cap and several sessions of
    tests/test_service_inbox.py on PostgreSQL (backlogs read on reader
    threads, acks on the writer)."""


class PostgresRelayTests(_OnPostgres, relay_tests.PylnRelayTests):
    """The relay through pyln-proto peers on PostgreSQL."""


class PostgresAnswersTests(_OnPostgres, relay_tests.ProxyAnswersTests):
    """What the proxy answers by itself, on PostgreSQL."""


class PostgresSmokeTests(_OnPostgres, smoke_tests.HappyPathTests):
    """The service smoke test on PostgreSQL."""
