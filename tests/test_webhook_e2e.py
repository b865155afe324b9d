"""End-to-end webhook tests: a real proxy, real peers, and a real loopback
twisted.web server as the webhook receiver, which checks every signature
with coincurve against the ``server_id`` of ``hello``.

The timing logic (windows, retries, backoff) is proven with a Clock in
tests/test_webhook.py; here the point is that the pieces work together over
real sockets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import coincurve
from coincurve.ecdsa import cdata_to_der, deserialize_compact
from twisted.internet import defer, reactor, task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from lnproxy import keys
from lnproxy.service import ProxyService, build_service
from lnproxy.store import ConnectionRow, Store, WebhookRow
from lnproxy.testing import static_resolver

from .harness import ProxyTestCase, RpcFailed, WsClient, proxy_options

SUMMON_MSG = bytes.fromhex("0080") + b"channel stuff"


@dataclass
class Call:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]

    def verify(self, server_id: bytes) -> bool:
        """Check the signature with coincurve (not with lnproxy.keys)."""
        ts = self.headers["x-lnproxy-timestamp"].encode("ascii")
        sig = bytes.fromhex(self.headers["x-lnproxy-signature"])
        digest = hashlib.sha256(ts + b"." + self.body).digest()
        der = cdata_to_der(deserialize_compact(sig))
        return bool(coincurve.PublicKey(server_id).verify(der, digest, hasher=None))


class Receiver(Resource):
    """A webhook receiver.  Per path, a script of answers: ``"ok"`` (200),
    ``"500"``, ``"404"``, ``"redirect"`` (302 to ``/ok``) or ``"hang"``
    (never answer); the last entry repeats."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Call] = []
        self.scripts: dict[str, list[str]] = {}
        self.hanging: list[Request] = []
        self.server_id: bytes | None = None
        self.bad_signatures = 0

    def render_POST(self, request: Request) -> Any:
        path = request.path.decode()
        headers = {
            k.decode().lower(): v[0].decode()
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        call = Call(path, headers, request.content.read(), reactor.seconds())
        if self.server_id is not None and not call.verify(self.server_id):
            self.bad_signatures += 1
        self.calls.append(call)
        script = self.scripts.get(path, ["ok"])
        action = script.pop(0) if len(script) > 1 else script[0]
        if action == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        if action == "redirect":
            request.setResponseCode(302)
            request.setHeader(b"Location", b"/ok")
        elif action != "ok":
            request.setResponseCode(int(action))
        return b"thanks"

    def on(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]


@defer.inlineCallbacks
def until(predicate: Callable[[], bool], timeout: float = 5.0) -> Any:
    """Poll on the reactor until ``predicate()``; fail after ``timeout``."""
    start = reactor.seconds()
    while not predicate():
        if reactor.seconds() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        yield task.deferLater(reactor, 0.01, lambda: None)


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class WebhookCase(ProxyTestCase):
    """A proxy plus a receiver on 127.0.0.1."""

    def receiver(self) -> Receiver:
        r = Receiver()
        site = Site(r)
        site.log = lambda request: None  # type: ignore[method-assign]
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.receiver_port = port.getHost().port
        self.addCleanup(self._stop_receiver, r, port)
        return r

    def _stop_receiver(self, r: Receiver, port: Any) -> defer.Deferred[Any]:
        for request in r.hanging:
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.abortConnection()
        return defer.maybeDeferred(port.stopListening)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.receiver_port}{path}"

    def start(self, *extra: str, resolver: Any = None) -> ProxyService:
        """Like start_proxy, with an optional injected resolver."""
        self.data_dir = getattr(self, "data_dir", None) or self.mktemp()
        svc = build_service(
            reactor, proxy_options(self.data_dir, *extra), resolver=resolver
        )
        svc.startService()
        self.proxy = svc
        self.addCleanup(self._stop_proxy, svc)
        self.outcomes: list[str] = []
        assert svc.notifier is not None
        svc.notifier.on_count.append(self.outcomes.append)
        return svc

    @defer.inlineCallbacks
    def offline_node(
        self, hook_path: str | None, persist: bool = False, conns: int = 1
    ) -> Any:
        """A node with a webhook and ``conns`` open peer connections to one
        local peer, whose client then goes away.

        :return: ``(secret, [peer protocols], [conn ids], client)``.
        """
        secret = os.urandom(32)
        client: WsClient = yield self.logged_in(secret)
        if hook_path is not None:
            yield client.call("webhook.set", url=self.url(hook_path))
        peer, port = self.local_peer()
        protocols, conn_ids = [], []
        for _ in range(conns):
            opened = peer.wait_open()
            conn, _ = yield client.open_peer(peer, port, persist=persist)
            protocols.append((yield opened))
            conn_ids.append(conn)
        yield until(
            lambda: sum(e["params"].get("type") == 16 for e in client.events) >= conns
        )
        yield client.call("ack", seq=max(e["params"]["seq"] for e in client.events))
        yield self.go_offline(client)
        return secret, protocols, conn_ids, client

    @defer.inlineCallbacks
    def go_offline(self, client: WsClient) -> Any:
        client.sendClose()
        yield client.closed
        node = keys.public_key(client.node_secret).hex()  # type: ignore[arg-type]
        yield until(lambda: not self.proxy.hub.online(node))

    @defer.inlineCallbacks
    def server_id(self) -> Any:
        client = yield self.ws()
        hello = yield client.hello
        client.sendClose()
        yield client.closed
        return bytes.fromhex(hello["server_id"])


class HappyPathTests(WebhookCase):
    """Signed calls, coalescing and the reset on login over real sockets."""

    @defer.inlineCallbacks
    def test_signed_call_coalescing_and_reset(self) -> Any:
        """A summon while offline is POSTed within a second, signed by
        server_id; two more summons in the window become one call at the
        window's end with the newest seq; a login resets the window."""
        rx = self.receiver()
        self.start("--webhook-allow-private", "--webhook-window", "2")
        rx.server_id = yield self.server_id()
        secret, (p,), _, _ = yield self.offline_node("/ok")
        node = keys.public_key(secret).hex()

        sent = reactor.seconds()
        p.send(SUMMON_MSG)
        yield until(lambda: len(rx.calls) == 1)
        first = rx.calls[0]
        self.assertLess(first.at - sent, 1.0)
        self.assertEqual(first.headers["content-type"], "application/json")
        self.assertRegex(first.headers["x-lnproxy-timestamp"], r"\A[0-9]+\Z")
        self.assertRegex(first.headers["x-lnproxy-signature"], r"\A[0-9a-f]{128}\Z")
        self.assertTrue(first.verify(rx.server_id))
        body = first.json()
        self.assertEqual(sorted(body), ["at", "node_id", "pending", "reason", "seq"])
        self.assertEqual(
            (body["node_id"], body["reason"], body["pending"], body["seq"]),
            (node, "message", 1, 2),
        )
        self.assertIsInstance(body["at"], float)
        self.assertNotIn(SUMMON_MSG.hex().encode(), first.body)

        p.send(SUMMON_MSG)
        p.send(SUMMON_MSG)
        yield until(lambda: len(rx.calls) == 2)
        second = rx.calls[1]
        self.assertGreater(second.at - first.at, 1.9)
        self.assertEqual((second.json()["seq"], second.json()["pending"]), (4, 3))

        # A login resets the window: the next summon is called at once.
        client = yield self.logged_in(secret)
        yield self.go_offline(client)
        p.send(SUMMON_MSG)
        yield until(lambda: len(rx.calls) == 3)
        self.assertLess(rx.calls[2].at - second.at, 1.9)
        self.assertEqual(rx.calls[2].json()["seq"], 5)
        self.assertEqual(rx.bad_signatures, 0)
        # The receiver records a call before its response reaches the
        # notifier, which counts the outcome only then: wait for the count.
        yield until(lambda: len(self.outcomes) >= 3)
        self.assertEqual(self.outcomes, ["webhook_sent"] * 3)

    @defer.inlineCallbacks
    def test_no_call_when_online_or_queue_class(self) -> Any:
        """A summon for an online node, or a queue-class message for an
        offline one, calls nobody."""
        rx = self.receiver()
        self.start("--webhook-allow-private")
        secret = os.urandom(32)
        client = yield self.logged_in(secret)
        yield client.call("webhook.set", url=self.url("/ok"))
        peer, port = self.local_peer()
        opened = peer.wait_open()
        yield client.open_peer(peer, port)
        p = yield opened
        p.send(SUMMON_MSG)
        yield client.wait_event(lambda e: e["params"].get("type") == 0x80)
        yield self.go_offline(client)
        p.send(bytes.fromhex("0001") + b"warning")  # queue class
        yield sleep(0.3)
        self.assertEqual(rx.calls, [])


class RetryTests(WebhookCase):
    """Retries over real sockets (the delays are shortened for the test)."""

    @defer.inlineCallbacks
    def test_retry_after_500_and_timeout(self) -> Any:
        """A 500 is retried, a request that hangs past the timeout is
        retried, and both end in a delivered call."""
        rx = self.receiver()
        svc = self.start("--webhook-allow-private", "--webhook-timeout", "0.5")
        assert svc.notifier is not None
        svc.notifier.retry_delays = (0.2, 0.2, 0.2, 0.2)
        rx.scripts["/flaky"] = ["500", "hang", "ok"]
        _, (p,), _, _ = yield self.offline_node("/flaky")
        p.send(SUMMON_MSG)
        yield until(lambda: len(rx.calls) == 3)
        a, b, c = (x.at for x in rx.calls)
        self.assertGreaterEqual(b - a, 0.2)
        self.assertGreaterEqual(c - b, 0.6)  # 0.5 timeout + 0.2 delay
        self.assertEqual(len({x.body for x in rx.calls}), 1)
        yield until(lambda: "webhook_sent" in self.outcomes)
        self.assertEqual(
            self.outcomes, ["webhook_retried", "webhook_retried", "webhook_sent"]
        )

    @defer.inlineCallbacks
    def test_redirect_not_followed(self) -> Any:
        """A 302 is a failure: the Location is never requested and the
        call is not retried."""
        rx = self.receiver()
        svc = self.start("--webhook-allow-private")
        assert svc.notifier is not None
        svc.notifier.retry_delays = (0.1, 0.1, 0.1, 0.1)
        rx.scripts["/redirect"] = ["redirect"]
        _, (p,), _, _ = yield self.offline_node("/redirect")
        p.send(SUMMON_MSG)
        yield until(lambda: "webhook_failed" in self.outcomes)
        yield sleep(0.4)
        self.assertEqual([c.path for c in rx.calls], ["/redirect"])
        self.assertEqual(self.outcomes, ["webhook_failed"])

    @defer.inlineCallbacks
    def test_404_not_retried(self) -> Any:
        """A 4xx is final."""
        rx = self.receiver()
        svc = self.start("--webhook-allow-private")
        assert svc.notifier is not None
        svc.notifier.retry_delays = (0.1, 0.1, 0.1, 0.1)
        rx.scripts["/gone"] = ["404"]
        _, (p,), _, _ = yield self.offline_node("/gone")
        p.send(SUMMON_MSG)
        yield until(lambda: "webhook_failed" in self.outcomes)
        yield sleep(0.4)
        self.assertEqual(len(rx.calls), 1)


class IsolationTests(WebhookCase):
    """A hanging webhook delays nobody."""

    @defer.inlineCallbacks
    def test_hanging_webhook_delays_nobody(self) -> Any:
        """While node A's receiver hangs, node B's webhook is called at once
        and node C's peer traffic flows both ways."""
        rx = self.receiver()
        self.start("--webhook-allow-private")
        rx.scripts["/hang"] = ["hang"]
        _, (pa,), _, _ = yield self.offline_node("/hang")
        _, (pb,), _, _ = yield self.offline_node("/ok")
        # Node C stays online with its own peer.
        c = yield self.logged_in()
        peer_c, port_c = self.local_peer()
        opened = peer_c.wait_open()
        conn_c, _ = yield c.open_peer(peer_c, port_c)
        pc = yield opened

        pa.send(SUMMON_MSG)
        yield until(lambda: len(rx.on("/hang")) == 1)
        t0 = reactor.seconds()
        pb.send(SUMMON_MSG)
        pc.send(bytes.fromhex("0080") + b"for c")
        yield until(lambda: len(rx.on("/ok")) == 1)
        yield c.wait_event(lambda e: e["params"].get("msg") == (b"\x00\x80for c").hex())
        got = peer_c.wait_message(lambda m: m == bytes.fromhex("0085beef"))
        yield c.call("send", conn=conn_c, msg="0085beef")
        yield got
        self.assertLess(reactor.seconds() - t0, 3.0)  # A times out only after 5 s
        self.assertEqual(len(rx.hanging), 1)  # A's request is still open


class SsrfTests(WebhookCase):
    """URL refusals through the API (no --webhook-allow-private)."""

    @defer.inlineCallbacks
    def refused(self, client: WsClient, url: str, code: int = 8) -> Any:
        err = yield self.assertFailure(client.call("webhook.set", url=url), RpcFailed)
        self.assertEqual(err.code, code, f"{url}: {err}")
        return err.message

    @defer.inlineCallbacks
    def test_refusals(self) -> Any:
        """http, loopback, private and link-local literals, and a name that
        resolves to a private address are code 8 and say why; the 11th
        webhook is code 7."""
        table = {"intranet.example": ["192.168.1.10"], "hooks.example": ["8.8.8.8"]}
        self.start(resolver=static_resolver(table))
        client = yield self.logged_in()
        msg = yield self.refused(client, "http://hooks.example/x")
        self.assertEqual(msg, "webhook URL refused: plain http; use https")
        msg = yield self.refused(client, "https://127.0.0.1/x")
        self.assertEqual(msg, "webhook URL refused: 127.0.0.1 is a loopback address")
        msg = yield self.refused(client, "https://10.0.0.1/x")
        self.assertEqual(msg, "webhook URL refused: 10.0.0.1 is a private address")
        msg = yield self.refused(client, "https://169.254.169.254/latest/meta-data")
        self.assertEqual(
            msg, "webhook URL refused: 169.254.169.254 is a link-local address"
        )
        msg = yield self.refused(client, "https://intranet.example/x")
        self.assertEqual(
            msg,
            "webhook URL refused: intranet.example resolves to 192.168.1.10, "
            "a private address",
        )
        ids = []
        for i in range(10):
            r = yield client.call("webhook.set", url=f"https://hooks.example/{i}")
            ids.append(r["id"])
        yield self.refused(client, "https://hooks.example/10", code=7)
        listed = yield client.call("webhook.list")
        self.assertEqual([w["id"] for w in listed["webhooks"]], ids)
        # Another node cannot see or remove them.
        other = yield self.logged_in()
        listed = yield other.call("webhook.list")
        self.assertEqual(listed, {"webhooks": []})
        err = yield self.assertFailure(
            other.call("webhook.remove", id=ids[0]), RpcFailed
        )
        self.assertEqual(err.code, 3)
        yield client.call("webhook.remove", id=ids[0])
        listed = yield client.call("webhook.list")
        self.assertEqual(len(listed["webhooks"]), 9)

    @defer.inlineCallbacks
    def test_dns_rebinding_refused_at_connect(self) -> Any:
        """A name that resolved to a public address at webhook.set but
        resolves to loopback when the call is made is refused at connect
        time: the receiver on 127.0.0.1 never sees a request."""
        rx = self.receiver()
        answers = [["8.8.8.8"]]

        def resolver(host: str, port: int) -> defer.Deferred[list[str]]:
            return defer.succeed(answers[0])

        self.start(resolver=resolver)
        secret = os.urandom(32)
        client = yield self.logged_in(secret)
        yield client.call(
            "webhook.set", url=f"https://rebind.example:{self.receiver_port}/x"
        )
        answers[0] = ["127.0.0.1"]
        peer, port = self.local_peer()
        opened = peer.wait_open()
        yield client.open_peer(peer, port)
        p = yield opened
        yield until(lambda: len(client.events) >= 1)
        yield self.go_offline(client)
        p.send(SUMMON_MSG)
        yield until(lambda: "webhook_refused" in self.outcomes)
        self.assertEqual(rx.calls, [])
        self.assertEqual(self.outcomes, ["webhook_refused"])


class ReconnectTests(WebhookCase):
    """Reconnect summons of persist connections."""

    @defer.inlineCallbacks
    def test_peer_closes_persist_connection(self) -> Any:
        """When the peer closes a persist connection of an offline node,
        the webhook says reason "reconnect" with the closed event's seq."""
        rx = self.receiver()
        self.start("--webhook-allow-private")
        secret, (p,), (conn,), _ = yield self.offline_node("/ok", persist=True)
        p.transport.loseConnection()
        yield until(lambda: len(rx.calls) == 1)
        body = rx.calls[0].json()
        self.assertEqual(
            (body["reason"], body["seq"], body["pending"]), ("reconnect", 2, 1)
        )
        client = yield self.logged_in(secret)
        ev = yield client.wait_event(lambda e: e["method"] == "closed")
        self.assertEqual(
            (ev["params"]["conn"], ev["params"]["reconnect"], ev["params"]["seq"]),
            (conn, True, 2),
        )

    @defer.inlineCallbacks
    def test_proxy_restart_after_crash(self) -> Any:
        """A persist connection left open by a crash is recorded as closed
        (proxy restarted, reconnect) at the next start, and the node's
        webhook is called with reason "reconnect"."""
        rx = self.receiver()
        self.data_dir = self.mktemp()
        secret = os.urandom(32)
        node = keys.public_key(secret).hex()
        peer = keys.public_key(os.urandom(32)).hex()
        # What a crashed proxy leaves behind: an open persist connection.
        with Store.open(self.data_dir) as store:
            store.add_webhook(WebhookRow(node, "w1", self.url("/ok"), 1.0))
            store.put_connection(
                ConnectionRow("c1", node, peer, "127.0.0.1:9", True, 1.0, "open")
            )
        self.start("--webhook-allow-private")
        yield until(lambda: len(rx.calls) == 1)
        body = rx.calls[0].json()
        self.assertEqual(
            (body["node_id"], body["reason"], body["seq"], body["pending"]),
            (node, "reconnect", 1, 1),
        )
        client = yield self.logged_in(secret)
        ev = yield client.wait_event(lambda e: e["method"] == "closed")
        self.assertEqual(
            (ev["params"]["reason"], ev["params"]["reconnect"], ev["params"]["peer"]),
            ("proxy restarted", True, peer),
        )

    @defer.inlineCallbacks
    def test_proxy_restart_after_clean_stop(self) -> Any:
        """A clean stop records "proxy stopped" reconnect summons while the
        node is offline; the next start calls the node's webhook for them."""
        rx = self.receiver()
        self.data_dir = self.mktemp()
        svc = self.start("--webhook-allow-private")
        secret, _, (conn,), _ = yield self.offline_node("/ok", persist=True)
        yield svc.stopService()
        self.assertEqual(rx.calls, [])
        self.start("--webhook-allow-private")
        yield until(lambda: len(rx.calls) == 1)
        body = rx.calls[0].json()
        self.assertEqual((body["reason"], body["seq"]), ("reconnect", 2))
        client = yield self.logged_in(secret)
        ev = yield client.wait_event(lambda e: e["method"] == "closed")
        self.assertEqual(
            (ev["params"]["conn"], ev["params"]["reason"], ev["params"]["reconnect"]),
            (conn, "proxy stopped", True),
        )

    @defer.inlineCallbacks
    def test_flapping_peer_backoff(self) -> Any:
        """A second drop of the same peer soon after the first does not call
        the webhook again, even after the window: it is held back."""
        rx = self.receiver()
        self.start("--webhook-allow-private", "--webhook-window", "0.2")
        _, (p1, p2), _, _ = yield self.offline_node("/ok", persist=True, conns=2)
        p1.transport.loseConnection()
        yield until(lambda: len(rx.calls) == 1)
        yield sleep(0.3)  # past the window
        p2.transport.loseConnection()
        yield until(lambda: "webhook_suppressed" in self.outcomes)
        yield sleep(0.3)
        self.assertEqual(len(rx.calls), 1)
        self.assertEqual(self.outcomes, ["webhook_sent", "webhook_suppressed"])
