"""Every error code of the protocol surfaces as its own exception class.

The mapping is checked as a table, then each code is provoked against the
real proxy (``build_service`` on 127.0.0.1) through the client library, as
are the failures that are not replies: a request timeout, a WebSocket lost
mid-request, an unreachable proxy, a stopped client.
"""

from __future__ import annotations

import json
import os
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import keys, protocol
from lnproxy.client import (
    Client,
    ClientStopped,
    ConnectionLost,
    HandshakeFailed,
    InternalError,
    InvalidParams,
    InvalidRequest,
    LeaseHeld,
    LimitExceeded,
    LoginFailed,
    MethodNotFound,
    NotAllowed,
    NotLoggedIn,
    NotOpen,
    ParseError,
    PeerUnreachable,
    ProxyError,
    ProxyUnreachable,
    RequestTimeout,
    ServedElsewhere,
    UnknownConnection,
    VersionConflict,
    error_for_code,
    parse_peer,
)
from lnproxy.client.connection import ProxyConnection, ProxyProtocol
from lnproxy.client.errors import ERROR_CLASSES

from .test_client_support import ClientTestCase, free_port

ALL = {
    -32700: ParseError,
    -32600: InvalidRequest,
    -32601: MethodNotFound,
    -32602: InvalidParams,
    -32603: InternalError,
    1: NotLoggedIn,
    2: LoginFailed,
    3: UnknownConnection,
    4: PeerUnreachable,
    5: HandshakeFailed,
    6: NotOpen,
    7: LimitExceeded,
    8: NotAllowed,
    9: ServedElsewhere,
    10: VersionConflict,
    11: LeaseHeld,
}


class MappingTests(SynchronousTestCase):
    """error_for_code and parse_peer, without a network."""

    def test_every_code_has_its_class(self) -> None:
        """Each protocol code gives its subclass of ProxyError, carrying the
        code, the message and the data."""
        for code, cls in ALL.items():
            err = error_for_code(code, "why", {"x": 1})
            self.assertIs(type(err), cls)
            self.assertIsInstance(err, ProxyError)
            self.assertEqual((err.code, err.message, err.data), (code, "why", {"x": 1}))
            self.assertEqual(str(err), f"error {code}: why")

    def test_every_protocol_code_mapped(self) -> None:
        """The library has a class for exactly the codes lnproxy.protocol
        defines, and each class's code is the protocol's constant."""
        self.assertEqual(set(ERROR_CLASSES), set(protocol.KNOWN_CODES))
        self.assertEqual(set(ALL), set(protocol.KNOWN_CODES))
        for code, cls in ERROR_CLASSES.items():
            self.assertEqual(cls.code_of_class, code)

    def test_data_of_the_new_codes(self) -> None:
        """Code 9 carries the owner's URL, code 10 the current version
        (None when the data lacks them or has the wrong type)."""
        err = error_for_code(9, "served elsewhere", {"url": "wss://b.example/"})
        assert isinstance(err, ServedElsewhere)
        self.assertEqual(err.url, "wss://b.example/")
        err = error_for_code(10, "version conflict", {"version": 4})
        assert isinstance(err, VersionConflict)
        self.assertEqual(err.version, 4)
        self.assertIsNone(ServedElsewhere(9, "x").url)
        self.assertIsNone(ServedElsewhere(9, "x", {"url": 3}).url)
        self.assertIsNone(VersionConflict(10, "x", {"version": True}).version)
        self.assertIsNone(VersionConflict(10, "x", ["4"]).version)
        self.assertIsInstance(error_for_code(11, "lease held"), LeaseHeld)

    def test_unknown_code(self) -> None:
        """A code this library does not know is a plain ProxyError."""
        err = error_for_code(42, "new")
        self.assertIs(type(err), ProxyError)
        self.assertEqual(err.code, 42)

    def test_parse_peer(self) -> None:
        """Peers parse to (node id, host:port) with port 9735 by default and
        bracketed IPv6; malformed ones raise InvalidParams locally."""
        node = keys.public_key(b"\x01" * 32).hex()
        self.assertEqual(parse_peer(f"{node}@example.org"), (node, "example.org:9735"))
        self.assertEqual(parse_peer(f"{node.upper()}@[::1]:9"), (node, "[::1]:9"))
        for bad in (
            f"{node}",
            f"{node}@h:0",
            "04" + "11" * 32 + "@h",
            f"{node}@h:99999",
        ):
            with self.assertRaises(InvalidParams) as cm:
                parse_peer(bad)
            self.assertTrue(cm.exception.local)
            self.assertEqual(cm.exception.code, -32602)


class NoLoginConnection(ProxyConnection):
    """Connects but never logs in (to provoke code 1)."""

    greeted: defer.Deferred[dict[str, Any]]
    raw: ProxyProtocol

    def _hello(self, proto: ProxyProtocol, params: dict[str, Any]) -> None:
        self.raw = proto
        self.greeted.callback(params)


class BadSignatureClient(Client):
    """Signs the login with the wrong digest (to provoke code 2)."""

    def _sign_login(self, digest: bytes) -> bytes:
        return super()._sign_login(bytes(32))


class SilentServer(WebSocketServerProtocol):
    """Says hello, accepts any login, then answers nothing; or drops the
    connection on request ``drop``."""

    def onOpen(self) -> None:
        self.sendMessage(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "hello",
                    "params": {
                        "protocol": "lnproxy/1",
                        "server_id": keys.public_key(b"\x02" * 32).hex(),
                        "challenge": "00" * 32,
                        "limits": {},
                    },
                }
            ).encode()
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        req = json.loads(payload)
        if req["method"] == "login":
            inbox = {"next_seq": 1, "pending": 0}
            result = {
                "node_id": req["params"]["node_id"],
                "inbox": inbox,
                "connections": [],
            }
            self.sendMessage(
                json.dumps(
                    {"jsonrpc": "2.0", "id": req["id"], "result": result}
                ).encode()
            )
        elif req["method"] == "drop":
            self.dropConnection(abort=True)


class CodeTests(ClientTestCase):
    """Each code provoked against the real proxy."""

    @defer.inlineCallbacks
    def logged_in(self, secret: bytes | None = None, **kw: Any) -> Any:  # type: ignore[override]
        client = self.make_client(secret=secret, **kw)
        yield client.when_logged_in(fail_fast=True)
        return client

    @defer.inlineCallbacks
    def test_1_not_logged_in(self) -> Any:
        """A request before login fails with NotLoggedIn."""
        self.start_proxy()
        secret = os.urandom(32)
        connection = NoLoginConnection(
            reactor,
            reactor,
            self.proxy_url,
            keys.public_key(secret),
            owner=Client(reactor, self.proxy_url, secret),
            expected_server_id=None,
            request_timeout=5.0,
            retry_policy=lambda attempt: 0.05,
        )
        connection.greeted = defer.Deferred()
        connection.start()
        self.addCleanup(connection.stop)
        yield connection.greeted
        with self.assertRaises(NotLoggedIn) as cm:
            yield connection.raw.request("connections", {})
        self.assertEqual(cm.exception.code, 1)

    @defer.inlineCallbacks
    def test_2_login_failed(self) -> Any:
        """A refused signature fails with LoginFailed, for every waiter; the
        client stops for good and calls fail with the same error."""
        self.start_proxy()
        client = BadSignatureClient(reactor, self.proxy_url, os.urandom(32))
        client.startService()
        self.addCleanup(client.stopService)
        patient = client.when_logged_in()
        with self.assertRaises(LoginFailed) as cm:
            yield patient
        self.assertEqual(cm.exception.code, 2)
        self.assertFalse(client.running)
        with self.assertRaises(LoginFailed):
            yield client.connections()

    @defer.inlineCallbacks
    def test_3_unknown_connection(self) -> Any:
        """send on a connection id that does not exist: UnknownConnection."""
        self.start_proxy()
        client = yield self.logged_in()
        with self.assertRaises(UnknownConnection) as cm:
            yield client.send("0011223344556677", b"\x00\x10")
        self.assertEqual(cm.exception.code, 3)

    @defer.inlineCallbacks
    def test_4_peer_unreachable(self) -> Any:
        """open_peer to a closed port: PeerUnreachable."""
        self.start_proxy()
        client = yield self.logged_in()
        node = keys.public_key(os.urandom(32)).hex()
        with self.assertRaises(PeerUnreachable) as cm:
            yield client.open_peer(f"{node}@127.0.0.1:{free_port()}")
        self.assertEqual(cm.exception.code, 4)

    @defer.inlineCallbacks
    def test_5_handshake_failed_peer_closes(self) -> Any:
        """A peer that closes without act 2 (here: it is not the node we
        asked for, so act 1 does not authenticate): HandshakeFailed from
        the proxy."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        impostor = keys.public_key(os.urandom(32)).hex()
        with self.assertRaises(HandshakeFailed) as cm:
            yield client.open_peer(f"{impostor}@127.0.0.1:{port}")
        self.assertEqual(cm.exception.code, 5)
        self.assertFalse(cm.exception.local)

    @defer.inlineCallbacks
    def test_5_handshake_failed_bad_act2(self) -> Any:
        """An act 2 that is well formed but does not authenticate passes the
        proxy and is caught by the client: HandshakeFailed, local; the
        client also asks the proxy to drop the connection."""
        self.start_proxy()

        class Forger(Protocol):
            def dataReceived(self, data: bytes) -> None:
                # Version 0, a valid point, a MAC that cannot verify.
                self.transport.write(
                    b"\x00" + keys.public_key(b"\x03" * 32) + b"\x00" * 16
                )

        port = reactor.listenTCP(0, Factory.forProtocol(Forger), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = yield self.logged_in()
        node = keys.public_key(os.urandom(32)).hex()
        with self.assertRaises(HandshakeFailed) as cm:
            yield client.open_peer(f"{node}@127.0.0.1:{port.getHost().port}")
        self.assertEqual(cm.exception.code, 5)
        self.assertTrue(cm.exception.local)
        yield self.wait_for(
            lambda: all(
                c.state == "closed" for c in self.proxy.hub.connections.values()
            ),
            what="the forged connection to close",
        )

    @defer.inlineCallbacks
    def test_6_not_open(self) -> Any:
        """send on a connection the client disconnected: NotOpen."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        link = yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        yield link.disconnect()
        with self.assertRaises(NotOpen) as cm:
            yield link.send(b"\x00\x84")
        self.assertEqual(cm.exception.code, 6)

    @defer.inlineCallbacks
    def test_7_limit_exceeded(self) -> Any:
        """A message over 65535 bytes: LimitExceeded."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        link = yield client.open_peer(f"{peer.node_id.hex()}@127.0.0.1:{port}")
        with self.assertRaises(LimitExceeded) as cm:
            yield link.send(b"\x00\x84" + bytes(65534))
        self.assertEqual(cm.exception.code, 7)

    @defer.inlineCallbacks
    def test_7_session_limit_at_login(self) -> Any:
        """A login beyond the node's session limit fails the fail-fast
        waiter with LimitExceeded (and the client keeps retrying)."""
        self.start_proxy("--max-sessions-per-node", "1")
        secret = os.urandom(32)
        yield self.logged_in(secret)
        second = self.make_client(secret=secret)
        with self.assertRaises(LimitExceeded) as cm:
            yield second.when_logged_in(fail_fast=True)
        self.assertEqual(cm.exception.code, 7)
        self.assertTrue(second.running)

    @defer.inlineCallbacks
    def test_8_not_allowed(self) -> Any:
        """A plain-http loopback webhook URL on a proxy that does not allow
        private webhooks: NotAllowed."""
        self.start_proxy()
        client = yield self.logged_in()
        with self.assertRaises(NotAllowed) as cm:
            yield client.webhook_set("http://127.0.0.1:8080/hook")
        self.assertEqual(cm.exception.code, 8)

    @defer.inlineCallbacks
    def test_jsonrpc_codes(self) -> Any:
        """-32601 for an unknown method, -32602 for an ack beyond the newest
        event, -32600 for a second login on one session."""
        self.start_proxy()
        client = yield self.logged_in()
        with self.assertRaises(MethodNotFound) as cm1:
            yield client.call("no.such.method")
        self.assertEqual(cm1.exception.code, -32601)
        with self.assertRaises(InvalidParams) as cm2:
            yield client.call("ack", {"seq": 10})
        self.assertEqual(cm2.exception.code, -32602)
        with self.assertRaises(InvalidRequest) as cm3:
            yield client.call(
                "login", {"node_id": client.node_id.hex(), "signature": "00" * 64}
            )
        self.assertEqual(cm3.exception.code, -32600)

    @defer.inlineCallbacks
    def test_webhook_remove_unknown(self) -> Any:
        """Removing a webhook that does not exist: UnknownConnection (3)."""
        self.start_proxy("--webhook-allow-private")
        client = yield self.logged_in()
        hook = yield client.webhook_set("http://127.0.0.1:9/hook")
        self.assertEqual(
            (yield client.webhook_list()),
            [{"id": hook, "url": "http://127.0.0.1:9/hook"}],
        )
        yield client.webhook_remove(hook)
        with self.assertRaises(UnknownConnection):
            yield client.webhook_remove(hook)


class TransportFailureTests(ClientTestCase):
    """Failures that are not error replies."""

    def silent_server(self) -> int:
        factory = WebSocketServerFactory()
        factory.protocol = SilentServer
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @defer.inlineCallbacks
    def test_request_timeout(self) -> Any:
        """A request without a reply fails with RequestTimeout after the
        request timeout; the timeout names the method."""
        port = self.silent_server()
        client = self.make_client(url=f"ws://127.0.0.1:{port}/", request_timeout=0.2)
        yield client.when_logged_in()
        with self.assertRaises(RequestTimeout) as cm:
            yield client.connections()
        self.assertEqual(
            (cm.exception.method, cm.exception.timeout), ("connections", 0.2)
        )

    @defer.inlineCallbacks
    def test_connection_lost(self) -> Any:
        """A WebSocket that drops while a request waits: ConnectionLost."""
        port = self.silent_server()
        client = self.make_client(url=f"ws://127.0.0.1:{port}/")
        yield client.when_logged_in()
        with self.assertRaises(ConnectionLost) as cm:
            yield client.call("drop")
        self.assertEqual(cm.exception.method, "drop")

    @defer.inlineCallbacks
    def test_proxy_unreachable(self) -> Any:
        """Nothing listening: the fail-fast waiter gets ProxyUnreachable,
        with the URL in its message."""
        url = f"ws://127.0.0.1:{free_port()}/"
        client = self.make_client(url=url)
        with self.assertRaises(ProxyUnreachable) as cm:
            yield client.when_logged_in(fail_fast=True)
        self.assertEqual(cm.exception.url, url)
        self.assertIn("refused", cm.exception.reason.lower())

    @defer.inlineCallbacks
    def test_not_a_websocket(self) -> Any:
        """A TCP server that is not a proxy (closes at once): the fail-fast
        waiter gets ProxyUnreachable ("closed before login")."""

        class Hangup(Protocol):
            def connectionMade(self) -> None:
                self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(Hangup), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = self.make_client(url=f"ws://127.0.0.1:{port.getHost().port}/")
        with self.assertRaises(ProxyUnreachable) as cm:
            yield client.when_logged_in(fail_fast=True)
        self.assertIn("closed before login", str(cm.exception))

    def test_stopped_client(self) -> None:
        """Calls on a client that is not running fail at once with
        ClientStopped."""
        client = Client(reactor, "ws://127.0.0.1:1/", os.urandom(32))
        self.failureResultOf(client.connections(), ClientStopped)
        self.failureResultOf(client.when_logged_in(), ClientStopped)
