"""Shared pieces of the end-to-end tests: a proxy on 127.0.0.1, a real
WebSocket client, and the client side of the split handshake."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort
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
        self._event_waiters: list[tuple[Any, defer.Deferred[Any]]] = []
        self.hello: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.node_secret: bytes | None = None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        obj = json.loads(payload)
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
            self.hello.callback(obj["params"])
            return
        self.events.append(obj)
        keep = []
        for match, d in self._event_waiters:
            if not d.called and match(obj):
                d.callback(obj)
            else:
                keep.append((match, d))
        self._event_waiters = keep

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
        self.sendMessage(text.encode() if isinstance(text, str) else text, isBinary=binary)

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
    def open_peer(
        self, peer: LocalPeerFactory | bytes, port: int, persist: bool = False,
        features: bytes = b"", host: str = "127.0.0.1",
    ) -> Any:
        """Run the client side of the split handshake and send init.

        :return: ``(conn_id, transport_keys)``.
        """
        assert self.node_secret is not None
        node_id = peer.node_id if isinstance(peer, LocalPeerFactory) else peer
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
            "finish", conn=r["conn"], act3=act3.hex(), sk=tk.sk.hex(),
            rk=tk.rk.hex(), ck=tk.ck.hex(),
        )
        yield self.call("send", conn=r["conn"], msg=wire.Init(features=features).encode().hex())
        return r["conn"], tk


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

    def _stop_proxy(self, svc: ProxyService) -> defer.Deferred[Any] | None:
        if svc.running:
            return svc.stopService()  # type: ignore[no-any-return]
        return None

    @property
    def proxy_port(self) -> int:
        port: IListeningPort = self.proxy.listeners[0]._waitingForPort.result  # type: ignore[attr-defined]
        return port.getHost().port  # type: ignore[no-any-return]

    @defer.inlineCallbacks
    def ws(self, protocols: list[str] | None = None) -> Any:
        """A connected WebSocket client (not yet logged in)."""
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{self.proxy_port}/",
            protocols=["lnproxy.v1"] if protocols is None else protocols,
        )
        factory.protocol = WsClient
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port)
        client = yield ep.connect(factory)
        self.addCleanup(self._close_ws, client)
        return client

    def _close_ws(self, client: WsClient) -> defer.Deferred[Any] | None:
        if client.closed.called:
            return None
        client.dropConnection(abort=True)
        return client.closed

    @defer.inlineCallbacks
    def logged_in(self, secret: bytes | None = None) -> Any:
        client = yield self.ws()
        yield client.login(secret or os.urandom(32))
        return client

    def local_peer(self, **kw: Any) -> tuple[LocalPeerFactory, int]:
        """A local BOLT 8 peer on a free loopback port."""
        factory = LocalPeerFactory(**kw)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self._stop_peer, factory, port)
        return factory, port.getHost().port

    def _stop_peer(self, factory: LocalPeerFactory, port: Any) -> defer.Deferred[Any]:
        for p in list(factory.connections):
            p.transport.abortConnection()
        return defer.maybeDeferred(port.stopListening)
