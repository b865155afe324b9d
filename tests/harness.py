"""Shared pieces of the end-to-end tests: a proxy on 127.0.0.1, a real
WebSocket client, and the client side of the split handshake."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lnproxy import keys, noise, wire
from lnproxy.localpeer import LocalPeerFactory
from lnproxy.service import ProxyService, build_service
from lnproxy.tap import Options


class RpcFailed(Exception):
    """An error reply; ``code`` and ``message`` as the server sent them."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = error.get("message")


class WsClient(WebSocketClientProtocol):
    """A plain JSON-RPC client over Autobahn, for tests."""

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 0
        self._calls: dict[Any, defer.Deferred[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        #: Every frame received, replies and notifications, in order.
        self.frames: list[dict[str, Any]] = []
        self._event_waiters: list[tuple[Any, defer.Deferred[Any]]] = []
        #: The ``hello`` params, once received.
        self.hello_params: dict[str, Any] | None = None
        self._hello_waiters: list[defer.Deferred[dict[str, Any]]] = []
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.node_secret: bytes | None = None
        self.login_result: dict[str, Any] | None = None

    def connectionMade(self) -> None:
        # Autobahn's own tcpNoDelay option never takes effect (see
        # lnproxy.api.ClientProtocol.connectionMade): turn Nagle off here.
        super().connectionMade()
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        obj = json.loads(payload)
        self.frames.append(obj)
        if "id" in obj:
            self.replies.append(obj)
            d = self._calls.pop(obj["id"], None)
            if d is not None:
                if "error" in obj:
                    d.errback(RpcFailed(obj["error"]))
                else:
                    d.callback(obj["result"])
            return
        if obj.get("method") == "hello":
            self.hello_params = obj["params"]
            waiters, self._hello_waiters = self._hello_waiters, []
            for d in waiters:
                d.callback(obj["params"])
            return
        self.events.append(obj)
        keep = []
        for match, d in self._event_waiters:
            if not d.called and match(obj):
                d.callback(obj)
            else:
                keep.append((match, d))
        self._event_waiters = keep

    @property
    def hello(self) -> defer.Deferred[dict[str, Any]]:
        """A new Deferred firing with the ``hello`` params (each access may
        be yielded on its own)."""
        if self.hello_params is not None:
            return defer.succeed(self.hello_params)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._hello_waiters.append(d)
        return d

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.closed.called:
            self.closed.callback((code, reason))

    def call(self, method: str, params: Any = None, **kw: Any) -> defer.Deferred[Any]:
        """Send a request; fires with its result or fails with RpcFailed."""
        self._next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None or kw:
            req["params"] = dict(params or {}, **kw)
        d: defer.Deferred[Any] = defer.Deferred()
        self._calls[self._next_id] = d
        self.sendMessage(json.dumps(req).encode())
        return d

    def send_raw(self, text: str | bytes, binary: bool = False) -> None:
        self.sendMessage(
            text.encode() if isinstance(text, str) else text, isBinary=binary
        )

    def next_reply(self) -> defer.Deferred[dict[str, Any]]:
        """Fires with the next reply whatever its id (for raw requests)."""
        count = len(self.replies)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()

        def poll() -> None:
            if len(self.replies) > count:
                d.callback(self.replies[count])
            else:
                reactor.callLater(0.005, poll)

        poll()
        return d

    def wait_event(self, match: Any = None) -> defer.Deferred[dict[str, Any]]:
        """Fires with the first event (already seen or future) matching."""
        match = match or (lambda e: True)
        for e in self.events:
            if match(e):
                return defer.succeed(e)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._event_waiters.append((match, d))
        return d

    @defer.inlineCallbacks
    def login(self, secret: bytes) -> Any:
        """Answer hello with a signature by ``secret``."""
        hello = yield self.hello
        self.node_secret = secret
        digest = keys.login_digest(
            bytes.fromhex(hello["server_id"]), bytes.fromhex(hello["challenge"])
        )
        result = yield self.call(
            "login",
            node_id=keys.public_key(secret).hex(),
            signature=keys.sign_digest(secret, digest).hex(),
        )
        return result

    @defer.inlineCallbacks
    def start_connect(
        self, peer: Any, port: int, persist: bool = False, host: str = "127.0.0.1"
    ) -> Any:
        """Call ``connect`` only (no finish).

        :return: ``(connect_result, initiator)``; the initiator has written
            act 1 and can read act 2.
        """
        assert self.node_secret is not None
        node_id = peer if isinstance(peer, bytes) else peer.node_id
        init = noise.Initiator(self.node_secret, node_id)
        r = yield self.call(
            "connect",
            peer=f"{node_id.hex()}@{host}:{port}",
            act1=init.act1().hex(),
            persist=persist,
        )
        return r, init

    @defer.inlineCallbacks
    def open_peer(
        self,
        peer: Any,
        port: int,
        persist: bool = False,
        features: bytes = b"",
        host: str = "127.0.0.1",
    ) -> Any:
        """Run the client side of the split handshake and send init.

        :return: ``(conn_id, transport_keys)``.
        """
        assert self.node_secret is not None
        node_id = peer if isinstance(peer, bytes) else peer.node_id
        init = noise.Initiator(self.node_secret, node_id)
        r = yield self.call(
            "connect",
            peer=f"{node_id.hex()}@{host}:{port}",
            act1=init.act1().hex(),
            persist=persist,
        )
        init.read_act2(bytes.fromhex(r["act2"]))
        act3, tk = init.act3()
        yield self.call(
            "finish",
            conn=r["conn"],
            act3=act3.hex(),
            sk=tk.sk.hex(),
            rk=tk.rk.hex(),
            ck=tk.ck.hex(),
        )
        yield self.call(
            "send", conn=r["conn"], msg=wire.Init(features=features).encode().hex()
        )
        return r["conn"], tk


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for subprocesses
    and for "connection refused")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # type: ignore[no-any-return]


@defer.inlineCallbacks
def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> Any:
    """Poll ``predicate`` on the reactor until it is true.

    :raise AssertionError: when it is still false after ``timeout`` seconds.
    """
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        yield task.deferLater(reactor, interval, lambda: None)
        waited += interval


class ScriptedPeerProtocol(Protocol):
    """A BOLT 8 responder that misbehaves on request (see
    :class:`ScriptedPeerFactory`)."""

    factory: ScriptedPeerFactory

    def __init__(self) -> None:
        self.buf = b""
        self.step = 1
        self.responder: noise.Responder | None = None
        self.cipher: noise.Transport | None = None
        self.received: list[bytes] = []

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[attr-defined]
        self.responder = noise.Responder(self.factory.secret)
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.cipher is not None:
            self.received.extend(self.cipher.feed(data))
            return
        self.buf += data
        assert self.responder is not None
        mode = self.factory.act2
        if self.step == 1 and len(self.buf) >= noise.ACT1_SIZE:
            act1, self.buf = self.buf[:50], self.buf[50:]
            if mode == "close":
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            if mode == "silent":
                self.step = 0
                return
            self.responder.read_act1(act1)
            act2 = self.responder.act2()
            if mode == "bad_version":
                act2 = b"\x01" + act2[1:]
            self.transport.write(act2)  # type: ignore[union-attr]
            self.step = 3
        if self.step == 3 and len(self.buf) >= noise.ACT3_SIZE:
            act3, self.buf = self.buf[:66], self.buf[66:]
            keys_ = self.responder.read_act3(act3)
            self.cipher = noise.Transport.from_keys(keys_)
            self.step = 4
            if self.factory.send_init:
                self.send(wire.Init(features=b"").encode())
            waiters, self.factory.open_waiters = self.factory.open_waiters, []
            for d in waiters:
                d.callback(self)

    def send(self, msg: bytes) -> None:
        """Encrypt and send one message."""
        assert self.cipher is not None
        self.transport.write(self.cipher.encrypt(msg))  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self in self.factory.connections:
            self.factory.connections.remove(self)


class ScriptedPeerFactory(Factory):
    """A peer for fault tests.

    :param act2: ``"ok"``, ``"close"`` (close on act 1), ``"silent"`` (never
        answer act 1) or ``"bad_version"`` (act 2 with version byte 1).
    :param send_init: send ``init`` once the handshake is done.
    """

    protocol = ScriptedPeerProtocol

    def __init__(self, act2: str = "ok", send_init: bool = True) -> None:
        self.secret = os.urandom(32)
        self.node_id = keys.public_key(self.secret)
        self.act2 = act2
        self.send_init = send_init
        self.connections: list[ScriptedPeerProtocol] = []
        self.open_waiters: list[defer.Deferred[ScriptedPeerProtocol]] = []

    def wait_open(self) -> defer.Deferred[ScriptedPeerProtocol]:
        """Fires with the next connection that finishes its handshake."""
        d: defer.Deferred[ScriptedPeerProtocol] = defer.Deferred()
        self.open_waiters.append(d)
        return d


def proxy_options(data_dir: str, *extra: str) -> Options:
    """Parsed options for a proxy on a free loopback port."""
    o = Options()
    o.parseOptions(
        ["--listen", "tcp:0:interface=127.0.0.1", "--data-dir", data_dir, *extra]
    )
    return o


class ProxyTestCase(TestCase):
    """Starts a proxy (real reactor, real TCP, real SQLite) per test."""

    timeout = 60

    def start_proxy(self, *extra: str, data_dir: str | None = None) -> ProxyService:
        self.data_dir = data_dir or getattr(self, "data_dir", None) or self.mktemp()
        svc = build_service(reactor, proxy_options(self.data_dir, *extra))
        svc.startService()
        self.proxy = svc
        self.addCleanup(self._stop_proxy, svc)
        return svc

    @defer.inlineCallbacks
    def expect_error(self, d: defer.Deferred[Any], code: int) -> Any:
        """Wait for ``d`` to fail with an error reply of ``code``.

        :return: the :class:`RpcFailed` (for its message).
        """
        err = yield self.assertFailure(d, RpcFailed)
        self.assertEqual(err.code, code, f"expected code {code}, got {err}")
        return err

    def _stop_proxy(self, svc: ProxyService) -> defer.Deferred[Any] | None:
        if svc.running:
            return svc.stopService()  # type: ignore[no-any-return]
        return None

    @property
    def proxy_port(self) -> int:
        listener = self.proxy.listeners[0]
        port: IListeningPort = listener._waitingForPort.result  # type: ignore

        return port.getHost().port  # type: ignore[no-any-return]

    @defer.inlineCallbacks
    def ws(self, protocols: list[str] | None = None, port: int | None = None) -> Any:
        """A connected WebSocket client (not yet logged in).

        :param protocols: subprotocols to offer (default ``["lnproxy.v1"]``).
        :param port: the proxy's port (default: the in-process proxy's).
        """
        port = port or self.proxy_port
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{port}/",
            protocols=["lnproxy.v1"] if protocols is None else protocols,
        )
        factory.protocol = WsClient
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = yield ep.connect(factory)
        self.addCleanup(self._close_ws, client)
        return client

    def _close_ws(self, client: WsClient) -> defer.Deferred[Any] | None:
        if client.closed.called:
            return None
        client.dropConnection(abort=True)
        return client.closed

    @defer.inlineCallbacks
    def logged_in(self, secret: bytes | None = None, port: int | None = None) -> Any:
        """A WebSocket client logged in as ``secret`` (random by default);
        ``client.login_result`` holds the login result."""
        client = yield self.ws(port=port)
        client.login_result = yield client.login(secret or os.urandom(32))
        return client

    def local_peer(self, **kw: Any) -> tuple[LocalPeerFactory, int]:
        """A local BOLT 8 peer on a free loopback port."""
        factory = LocalPeerFactory(**kw)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._stop_peer, factory, port)
        return factory, port.getHost().port

    def scripted_peer(self, **kw: Any) -> tuple[ScriptedPeerFactory, int]:
        """A misbehaving peer on a free loopback port (see
        :class:`ScriptedPeerFactory`)."""
        factory = ScriptedPeerFactory(**kw)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._stop_peer, factory, port)
        return factory, port.getHost().port

    def _stop_peer(self, factory: Any, port: Any) -> defer.Deferred[Any]:
        for p in list(factory.connections):
            p.transport.abortConnection()
        return defer.maybeDeferred(port.stopListening)
