"""The Python client follows redirects (code 9) to the node's owner.

docs/protocol.md, "Running several processes (scale-out)": a ``login`` at a
process that does not serve the node answers code 9 with ``data.url``.
These tests run small in-process WebSocket servers on 127.0.0.1 that play
the processes of one deployment (a shared ``server_id``, a login that
redirects or succeeds and then sends stored events), and a real
:class:`~lnproxy.client.Client` against them: it follows the redirect with
the same key, ``server_id`` and state, refuses another ``server_id``, a URL
that is not ``ws://``/``wss://`` and endless chains, falls back to its
configured URL when the owner goes away, carries its TLS options over to
the owner's host, and ``lnproxy-client`` follows too.
"""

from __future__ import annotations

import json
import os
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, reactor

from lnproxy import keys, protocol
from lnproxy.client import (
    Client,
    Event,
    FileState,
    ProxyUnreachable,
    RedirectRefused,
    ServerMismatch,
)
from lnproxy.client.cli import build_parser, run
from lnproxy.client.connection import MAX_REDIRECTS, check_proxy_url

from .test_cli import _exit_status
from .test_client import make_self_signed
from .test_client_support import ClientTestCase

#: The deployment's server key (every fake process presents its id).
SERVER_SECRET = b"\x33" * 32


class FakeProcess(WebSocketServerProtocol):
    """One session with a fake lnproxy process (see :class:`FakeDeployment`)."""

    factory: FakeDeployment

    def onOpen(self) -> None:
        """Say hello with a fresh challenge."""
        self.challenge = os.urandom(32)
        self.factory.sessions.append(self)
        self.send(
            method="hello",
            params={
                "protocol": protocol.PROTOCOL_VERSION,
                "server_id": self.factory.server_id.hex(),
                "challenge": self.challenge.hex(),
                "limits": {},
                "features": ["redirect"],
            },
        )

    def send(self, **obj: Any) -> None:
        """One JSON-RPC object."""
        self.sendMessage(json.dumps({"jsonrpc": "2.0", **obj}).encode())

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """login: redirect, or check the signature, log in and replay;
        ack: remember; anything else: an empty result."""
        req = json.loads(payload)
        f = self.factory
        if req["method"] != "login":
            if req["method"] == "ack":
                f.acked = max(f.acked, req["params"]["seq"])
            self.send(id=req["id"], result={})
            return
        f.logins.append(req["params"]["node_id"])
        if f.redirect is not None:
            self.send(
                id=req["id"],
                error={
                    "code": protocol.SERVED_ELSEWHERE,
                    "message": "node served by another process",
                    "data": f.redirect,
                },
            )
            return
        digest = keys.login_digest(f.server_id, self.challenge)
        node_id = bytes.fromhex(req["params"]["node_id"])
        signature = bytes.fromhex(req["params"]["signature"])
        if not keys.verify_digest(node_id, digest, signature):
            self.send(id=req["id"], error={"code": 2, "message": "bad signature"})
            return
        pending = [e for e in f.deployment_events() if e["seq"] > f.shared_acked()]
        self.send(
            id=req["id"],
            result={
                "node_id": node_id.hex(),
                "inbox": {"next_seq": len(f.events) + 1, "pending": len(pending)},
                "connections": [],
            },
        )
        self.logged_in = True
        for params in pending:
            self.send(method="message", params=params)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Forget the session."""
        if self in self.factory.sessions:
            self.factory.sessions.remove(self)


class FakeDeployment(WebSocketServerFactory):
    """One fake process of a deployment: its ``redirect`` (the ``data`` of
    its code 9 answers) or its logins; the events live in ``events``
    (shared between the processes of one test)."""

    protocol = FakeProcess

    def __init__(self, events: list[dict[str, Any]], server_id: bytes) -> None:
        super().__init__()
        self.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        self.events = events
        self.server_id = server_id
        self.redirect: Any = None
        self.logins: list[str] = []
        self.sessions: list[FakeProcess] = []
        self.acked = 0
        self.peers: list[FakeDeployment] = []
        self.url = ""
        self.port: Any = None

    def deployment_events(self) -> list[dict[str, Any]]:
        """Every stored event."""
        return list(self.events)

    def shared_acked(self) -> int:
        """The highest seq any process of the deployment saw acknowledged."""
        return max([self.acked, *(p.acked for p in self.peers)])

    def store(self, text: str) -> None:
        """Store an event and send it to the logged-in sessions."""
        params = {
            "seq": len(self.events) + 1,
            "conn": "00" * 8,
            "peer": keys.public_key(b"\x44" * 32).hex(),
            "type": 128,
            "msg": (b"\x00\x80" + text.encode()).hex(),
            "at": 0.0,
        }
        self.events.append(params)
        for s in self.sessions:
            if getattr(s, "logged_in", False):
                s.send(method="message", params=params)


class RedirectCase(ClientTestCase):
    """Fake processes on 127.0.0.1 and clients against them."""

    def deployment(
        self, n: int, server_id: bytes | None = None
    ) -> list[FakeDeployment]:
        """``n`` fake processes sharing one event list and server_id."""
        events: list[dict[str, Any]] = []
        sid = server_id or keys.public_key(SERVER_SECRET)
        procs = [FakeDeployment(events, sid) for _ in range(n)]
        for p in procs:
            p.peers = [q for q in procs if q is not p]
            self.listen(p)
        return procs

    def listen(self, proc: FakeDeployment, tls: Any = None) -> None:
        """Listen on a free loopback port (TLS if given context options)."""
        if tls is None:
            port = reactor.listenTCP(0, proc, interface="127.0.0.1")
            proc.url = f"ws://127.0.0.1:{port.getHost().port}/"
        else:
            port = reactor.listenSSL(0, proc, tls, interface="127.0.0.1")
            proc.url = f"wss://localhost:{port.getHost().port}/"
        proc.port = port
        self.addCleanup(self.shut, proc)

    @defer.inlineCallbacks
    def shut(self, proc: FakeDeployment) -> Any:
        """Stop listening and drop every session (a dead process)."""
        for s in list(proc.sessions):
            if s.transport is not None:
                s.transport.abortConnection()
        if proc.port is not None:
            port, proc.port = proc.port, None
            yield port.stopListening()


class FollowTests(RedirectCase):
    """Code 9 is followed to the owner."""

    @defer.inlineCallbacks
    def test_logs_in_at_the_owner_and_gets_its_events(self) -> Any:
        """Configured with a process that does not own the node, the client
        closes that WebSocket after the code 9, logs in at ``data.url``
        with the same key (a fail-fast waiter is not failed by the
        redirect) and gets the owner's events; ``url`` stays the
        configured one, ``target`` is the owner's."""
        other, owner = self.deployment(2)
        other.redirect = {"url": owner.url}
        owner.store("first")
        got: list[Event] = []
        client = self.make_client(url=other.url, on_event=got.append)
        info = yield client.when_logged_in(fail_fast=True)
        self.assertEqual(info.server_id, owner.server_id.hex())
        self.assertEqual((client.url, client.target), (other.url, owner.url))
        self.assertEqual(other.logins, [client.node_id.hex()])
        self.assertEqual(owner.logins, [client.node_id.hex()])
        yield self.wait_for(lambda: not other.sessions, what="the redirect closed")
        owner.store("second")
        yield self.wait_for(lambda: len(got) == 2 and owner.acked == 2)
        self.assertEqual([e.seq for e in got], [1, 2])
        self.assertEqual(got[1].msg, b"\x00\x80second")

    @defer.inlineCallbacks
    def test_chain_of_redirects_within_the_bound(self) -> Any:
        """Up to MAX_REDIRECTS redirects in a row are followed."""
        procs = self.deployment(MAX_REDIRECTS + 1)
        for here, there in zip(procs, procs[1:], strict=False):
            here.redirect = {"url": there.url}
        client = self.make_client(url=procs[0].url)
        yield client.when_logged_in(fail_fast=True)
        self.assertEqual(client.target, procs[-1].url)
        self.assertEqual([len(p.logins) for p in procs], [1] * len(procs))

    @defer.inlineCallbacks
    def test_state_file_continues_across_processes(self) -> Any:
        """The same state file serves the whole deployment: events seen at
        one process are not delivered again by the owner."""
        other, owner = self.deployment(2)
        path = os.path.join(self.mktemp())
        owner.store("one")
        got: list[Event] = []
        secret = os.urandom(32)
        first = self.make_client(secret, url=owner.url, on_event=got.append, state=path)
        yield first.when_logged_in()
        yield self.wait_for(lambda: FileState(path).load().last_seq == 1)
        yield first.stopService()
        # The client comes back configured with the other process.
        other.redirect = {"url": owner.url}
        owner.store("two")
        owner.acked = 0  # the proxy replays what it did not see acknowledged
        second = self.make_client(
            secret, url=other.url, on_event=got.append, state=path
        )
        yield second.when_logged_in()
        yield self.wait_for(lambda: len(got) == 2 and owner.acked == 2)
        self.assertEqual([e.seq for e in got], [1, 2])


class RefusalTests(RedirectCase):
    """What the client does not follow."""

    @defer.inlineCallbacks
    def test_other_server_id_is_refused(self) -> Any:
        """A redirect to a process with another server_id stops the client
        with ServerMismatch, pinned or not (the state file would otherwise
        start over)."""
        for pinned in (None, keys.public_key(SERVER_SECRET)):
            (other,) = self.deployment(1)
            (stranger,) = self.deployment(1, server_id=keys.public_key(b"\x55" * 32))
            other.redirect = {"url": stranger.url}
            client = self.make_client(url=other.url, server_id=pinned)
            with self.assertRaises(ServerMismatch) as cm:
                yield client.when_logged_in()
            self.assertEqual(cm.exception.expected, other.server_id.hex())
            self.assertEqual(cm.exception.got, stranger.server_id.hex())
            self.assertEqual(stranger.logins, [])
            self.assertFalse(client.running)

    @defer.inlineCallbacks
    def test_not_a_websocket_url(self) -> Any:
        """``data.url`` that is not ws:// or wss:// (or missing) is refused
        with RedirectRefused, nothing is connected there, and the client
        keeps trying its configured URL."""
        (other,) = self.deployment(1)
        for data in (
            {"url": "http://127.0.0.1:1/"},
            {"url": "javascript:alert(1)"},
            {"url": 7},
            {},
        ):
            other.redirect = data
            other.logins.clear()
            client = self.make_client(url=other.url)
            with self.assertRaises(RedirectRefused) as cm:
                yield client.when_logged_in(fail_fast=True)
            self.assertEqual(cm.exception.url, other.url)
            self.assertIn("not following the redirect", str(cm.exception))
            self.assertTrue(client.running)
            self.assertEqual(client.target, other.url)
            yield self.wait_for(lambda: len(other.logins) >= 2, what="a retry")
            yield client.stopService()

    @defer.inlineCallbacks
    def test_endless_chain_is_cut(self) -> Any:
        """Two processes that send the client to each other: after
        MAX_REDIRECTS redirects the next one is refused (RedirectRefused
        names the chain) and the client starts over at its configured URL,
        after its backoff."""
        a, b = self.deployment(2)
        a.redirect, b.redirect = {"url": b.url}, {"url": a.url}
        client = self.make_client(url=a.url, retry_policy=lambda attempt: 0.3)
        with self.assertRaises(RedirectRefused) as cm:
            yield client.when_logged_in(fail_fast=True)
        err = cm.exception
        self.assertEqual(len(err.hops), MAX_REDIRECTS)
        self.assertIn(f"more than {MAX_REDIRECTS} redirects", err.reason)
        self.assertEqual(len(a.logins) + len(b.logins), MAX_REDIRECTS + 1)
        self.assertEqual(client.target, a.url)
        # Then the deployment settles: the client logs in at a.
        a.redirect = None
        info = yield client.when_logged_in(fail_fast=True)
        self.assertEqual(info.node_id, client.node_id.hex())
        self.assertEqual(client.target, a.url)


class FallbackTests(RedirectCase):
    """The owner goes away: back to the configured URL."""

    @defer.inlineCallbacks
    def test_owner_dies_client_comes_back_through_configured_url(self) -> Any:
        """Logged in at the owner, which then dies: the reconnect to it
        fails, the next attempt goes to the configured URL, which now
        serves the node (it took it over); every event is delivered exactly
        once, seqs continuing."""
        other, owner = self.deployment(2)
        other.redirect = {"url": owner.url}
        got: list[Event] = []
        client = self.make_client(url=other.url, on_event=got.append)
        yield client.when_logged_in()
        owner.store("before")
        yield self.wait_for(lambda: owner.acked == 1)
        yield self.shut(owner)
        other.redirect = None  # the survivor took the node over
        other.store("after")
        yield self.wait_for(
            lambda: client.logged_in and len(got) == 2, what="the survivor"
        )
        self.assertEqual(client.target, other.url)
        self.assertEqual([e.seq for e in got], [1, 2])
        yield self.wait_for(lambda: other.acked == 2)

    @defer.inlineCallbacks
    def test_stale_redirect_to_a_dead_owner(self) -> Any:
        """The configured process still names a dead owner (its lease has
        not run out): the failed attempt there sends the client back to
        the configured URL (fail-fast waiters see ProxyUnreachable for the
        owner's URL), with the backoff, until the survivor serves the
        node."""
        other, owner = self.deployment(2)
        dead = owner.url
        yield self.shut(owner)
        other.redirect = {"url": dead}
        client = self.make_client(url=other.url, retry_policy=lambda a: 0.1)
        with self.assertRaises(ProxyUnreachable) as cm:
            yield client.when_logged_in(fail_fast=True)
        self.assertEqual(cm.exception.url, dead)
        yield self.wait_for(lambda: len(other.logins) >= 3, what="more attempts")
        other.redirect = None
        yield client.when_logged_in()
        self.assertEqual(client.target, other.url)

    @defer.inlineCallbacks
    def test_owner_blip_retries_the_owner_first(self) -> Any:
        """A lost session at the owner retries the owner first (a network
        blip or a hot restart on the same address): no redirect needed."""
        other, owner = self.deployment(2)
        other.redirect = {"url": owner.url}
        client = self.make_client(url=other.url)
        yield client.when_logged_in()
        for s in list(owner.sessions):
            s.transport.abortConnection()
        yield self.wait_for(lambda: len(owner.logins) == 2 and client.logged_in)
        self.assertEqual(len(other.logins), 1)
        self.assertEqual(client.target, owner.url)


class TlsAndCliTests(RedirectCase):
    """TLS options and the command line."""

    @defer.inlineCallbacks
    def test_wss_owner_with_per_host_tls_options(self) -> Any:
        """A redirect to a wss:// owner uses the client's TLS options for
        the owner's host name (a callable ``host -> options`` with the
        pinned CA), and the login succeeds there."""
        from twisted.internet.ssl import (
            Certificate,
            PrivateCertificate,
            optionsForClientTLS,
        )

        cert_path, key_path = make_self_signed(self.mktemp())
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
        (other,) = self.deployment(1)
        owner = FakeDeployment(other.events, other.server_id)
        other.peers, owner.peers = [owner], [other]
        server_tls = PrivateCertificate.loadPEM(cert_pem + key_pem).options()
        self.listen(owner, tls=server_tls)
        other.redirect = {"url": owner.url}
        ca = Certificate.loadPEM(cert_pem)
        hosts: list[str] = []

        def tls_for(host: str) -> Any:
            hosts.append(host)
            return optionsForClientTLS(host, trustRoot=ca)

        client = self.make_client(url=other.url, tls_options=tls_for)
        info = yield client.when_logged_in(fail_fast=True)
        self.assertEqual(info.server_id, owner.server_id.hex())
        self.assertEqual(hosts, ["localhost"])
        self.assertTrue(client.target.startswith("wss://localhost:"))

    def test_check_proxy_url(self) -> None:
        """ws:// and wss:// URLs parse to (secure, host, port) with the
        default ports; anything else is a ValueError."""
        self.assertEqual(check_proxy_url("ws://h:1/"), (False, "h", 1))
        self.assertEqual(
            check_proxy_url("wss://p2.example/"), (True, "p2.example", 443)
        )
        self.assertEqual(check_proxy_url("ws://[::1]:5"), (False, "::1", 5))
        for bad in ("http://h/", "ws:///x", "ws://h:99999/", "ws://h/#f", "h:1", ""):
            with self.assertRaises(ValueError):
                check_proxy_url(bad)

    @defer.inlineCallbacks
    def test_cli_follows(self) -> Any:
        """``lnproxy-client connections`` configured with a process that
        redirects logs in at the owner and answers."""
        import io
        import sys

        other, owner = self.deployment(2)
        other.redirect = {"url": owner.url}
        key = os.path.join(os.path.abspath(self.mktemp()))
        with open(key, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(key, 0o600)
        args = build_parser().parse_args(
            ["connections", "--proxy", other.url, "--key", key, "--timeout", "5"]
        )
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stderr
        sys.stderr = err
        try:
            try:
                yield run(reactor, args, out)
                code = 0
            except SystemExit as e:
                code = _exit_status(e)
        finally:
            sys.stderr = saved
        self.assertEqual(code, 0, err.getvalue())
        self.assertEqual(len(owner.logins), 1)
        self.assertEqual(len(other.logins), 1)

    @defer.inlineCallbacks
    def test_cli_reports_a_refused_redirect(self) -> Any:
        """A redirect the CLI does not follow exits 1 with a one-line error
        naming it."""
        import io
        import sys

        (other,) = self.deployment(1)
        other.redirect = {"url": "ftp://example.org/"}
        key = os.path.join(os.path.abspath(self.mktemp()))
        with open(key, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(key, 0o600)
        args = build_parser().parse_args(
            ["connections", "--proxy", other.url, "--key", key, "--timeout", "5"]
        )
        err = io.StringIO()
        saved = sys.stderr
        sys.stderr = err
        try:
            with self.assertRaises(SystemExit):
                yield run(reactor, args, io.StringIO())
        finally:
            sys.stderr = saved
        self.assertIn("not following the redirect", err.getvalue())
        self.assertIn("ftp://example.org/", err.getvalue())


class UnitClientTests(RedirectCase):
    """Client attributes."""

    def test_target_is_the_url_before_start(self) -> None:
        """A client not started aims at its configured URL."""
        client = Client(reactor, "ws://127.0.0.1:1/", os.urandom(32))
        self.assertEqual(client.target, "ws://127.0.0.1:1/")
