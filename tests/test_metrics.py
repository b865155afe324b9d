"""Metrics and health: scraped over HTTP from a real proxy and parsed with
prometheus-client's own text parser; ``/healthz`` 200 and 503."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from lnproxy import keys, wire
from lnproxy.service import build_service

from .harness import RpcFailed, proxy_options
from .test_webhook_e2e import SUMMON_MSG, WebhookCase, until


class Scrape:
    """One parsed scrape: ``value(name, **labels)``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, tuple(sorted(labels.items())))]


class MetricsCase(WebhookCase):
    """A proxy with ``--metrics`` on a free loopback port."""

    def start_metrics(self, *extra: str) -> Any:
        svc = self.start("--metrics", "tcp:0:interface=127.0.0.1", *extra)
        assert svc.metrics_listener is not None
        port = svc.metrics_listener._waitingForPort.result  # type: ignore[attr-defined]
        self.metrics_port = port.getHost().port
        return svc

    @defer.inlineCallbacks
    def get(self, path: str) -> Any:
        """``(status, body)`` of a GET on the metrics listener."""
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        response = yield agent.request(
            b"GET", f"http://127.0.0.1:{self.metrics_port}{path}".encode()
        )
        body = yield readBody(response)
        return response.code, body

    @defer.inlineCallbacks
    def scrape(self) -> Any:
        code, body = yield self.get("/metrics")
        self.assertEqual(code, 200)
        return Scrape(body.decode())


class CounterTests(MetricsCase):
    """The counters, gauges and histograms move as the scenario says."""

    @defer.inlineCallbacks
    def test_scenario(self) -> Any:
        """Login, a peer connection, a ping, gossip, a summon, client sends,
        an error, an ack, a webhook and a login after it, each visible in
        the scrape; no node id or key appears in it."""
        rx = self.receiver()
        svc = self.start_metrics("--webhook-allow-private")
        m = yield self.scrape()
        self.assertEqual(m.value("lnproxy_sessions"), 0)
        self.assertEqual(m.value("lnproxy_events_stored_total"), 0)
        self.assertEqual(m.value("lnproxy_peer_connections", state="open"), 0)

        secret = os.urandom(32)
        node = keys.public_key(secret).hex()
        client = yield self.logged_in(secret)
        yield client.call("webhook.set", url=self.url("/ok"))
        peer, port = self.local_peer()
        opened = peer.wait_open()
        conn, _ = yield client.open_peer(peer, port)  # sends init: 1 out
        p = yield opened
        yield client.wait_event(lambda e: e["params"].get("type") == 16)  # queue
        pong = peer.wait_message(lambda msg: wire.message_type(msg) == wire.PONG)
        p.send(wire.Ping(num_pong_bytes=4).encode())  # handle, pong out
        yield pong
        p.send(bytes.fromhex("0102") + b"\x00" * 20)  # channel_update: drop
        p.send(SUMMON_MSG)  # summon
        last = yield client.wait_event(lambda e: e["params"].get("type") == 0x80)
        got = peer.wait_message(lambda msg: msg[:2] == b"\x00\x85")
        yield client.call("send", conn=conn, msg="0085")  # 2nd out
        yield got
        yield self.assertFailure(
            client.call("send", conn="nope", msg="0085"), RpcFailed
        )
        yield client.call("ack", seq=last["params"]["seq"])

        m = yield self.scrape()
        self.assertEqual(m.value("lnproxy_sessions"), 1)
        self.assertEqual(m.value("lnproxy_nodes_online"), 1)
        self.assertEqual(m.value("lnproxy_peer_connections", state="open"), 1)
        self.assertEqual(m.value("lnproxy_handshake_relay_seconds_count"), 1)
        self.assertEqual(
            m.value("lnproxy_peer_messages_in_total", **{"class": "queue"}), 1
        )
        self.assertEqual(
            m.value("lnproxy_peer_messages_in_total", **{"class": "summon"}), 1
        )
        self.assertEqual(
            m.value("lnproxy_peer_messages_in_total", **{"class": "handle"}), 1
        )
        self.assertEqual(
            m.value("lnproxy_peer_messages_in_total", **{"class": "drop"}), 1
        )
        self.assertEqual(m.value("lnproxy_peer_messages_out_total", origin="client"), 2)
        self.assertEqual(m.value("lnproxy_peer_messages_out_total", origin="proxy"), 1)
        self.assertEqual(m.value("lnproxy_pongs_sent_total"), 1)
        self.assertEqual(m.value("lnproxy_errors_total", code="3"), 1)
        self.assertEqual(m.value("lnproxy_errors_total", code="2"), 0)
        self.assertEqual(m.value("lnproxy_events_stored_total"), 2)
        self.assertEqual(m.value("lnproxy_events_delivered_total"), 2)
        self.assertEqual(m.value("lnproxy_events_acked_total"), 2)
        self.assertEqual(m.value("lnproxy_webhooks_total", outcome="sent"), 0)

        # Offline: a summon calls the webhook; the next login stops the
        # summon-to-login clock.
        yield self.go_offline(client)
        p.send(SUMMON_MSG)
        yield until(lambda: len(rx.calls) == 1)
        yield until(lambda: self.outcomes == ["webhook_sent"])
        client = yield self.logged_in(secret)
        m = yield self.scrape()
        self.assertEqual(m.value("lnproxy_webhooks_total", outcome="sent"), 1)
        self.assertEqual(m.value("lnproxy_webhooks_total", outcome="failed"), 0)
        self.assertEqual(m.value("lnproxy_webhook_latency_seconds_count"), 1)
        self.assertEqual(m.value("lnproxy_summon_to_login_seconds_count"), 1)
        self.assertGreater(m.value("lnproxy_summon_to_login_seconds_sum"), 0)
        self.assertLess(m.value("lnproxy_summon_to_login_seconds_sum"), 10)
        self.assertEqual(m.value("lnproxy_events_stored_total"), 3)
        # No node id, peer id or key anywhere in the exposition.
        for secret_or_id in (
            node,
            peer.node_id.hex(),
            svc.server_id.hex(),
            svc.store.server_secret.hex(),
            secret.hex(),
        ):
            self.assertNotIn(secret_or_id, m.text)

    @defer.inlineCallbacks
    def test_refused_and_retried_webhooks(self) -> Any:
        """A refused URL and a retried-then-failed call are counted."""
        rx = self.receiver()
        svc = self.start_metrics("--webhook-allow-private")
        assert svc.notifier is not None
        svc.notifier.retry_delays = (0.05,)
        rx.scripts["/down"] = ["500"]
        client = yield self.logged_in()
        yield self.assertFailure(client.call("webhook.set", url="ftp://x/"), RpcFailed)
        _, (p,), _, _ = yield self.offline_node("/down")
        p.send(SUMMON_MSG)
        yield until(lambda: "webhook_failed" in self.outcomes)
        m = yield self.scrape()
        self.assertEqual(m.value("lnproxy_webhooks_total", outcome="refused"), 1)
        self.assertEqual(m.value("lnproxy_webhooks_total", outcome="retried"), 1)
        self.assertEqual(m.value("lnproxy_webhooks_total", outcome="failed"), 1)
        self.assertEqual(m.value("lnproxy_webhook_latency_seconds_count"), 2)
        self.assertEqual(m.value("lnproxy_errors_total", code="8"), 1)

    @defer.inlineCallbacks
    def test_keepalive_close(self) -> Any:
        """A peer that stops answering pings is closed and counted."""
        self.start_metrics("--keepalive", "0.3")
        client = yield self.logged_in()
        peer, port = self.local_peer(answer_pings=False)
        yield client.open_peer(peer, port)
        yield client.wait_event(lambda e: e["method"] == "closed")
        m = yield self.scrape()
        self.assertEqual(m.value("lnproxy_keepalive_closes_total"), 1)
        self.assertEqual(m.value("lnproxy_keepalive_pings_sent_total"), 1)
        self.assertEqual(m.value("lnproxy_peer_connections_closed_total"), 1)
        self.assertEqual(m.value("lnproxy_peer_connections", state="closed"), 1)


class HealthTests(MetricsCase):
    """``/healthz``."""

    @defer.inlineCallbacks
    def test_ok_then_store_closed(self) -> Any:
        """200 while the store is writable; 503 once it is closed."""
        svc = self.start_metrics()
        code, body = yield self.get("/healthz")
        self.assertEqual((code, body), (200, b"ok\n"))
        svc.store.close()
        code, body = yield self.get("/healthz")
        self.assertEqual((code, body), (503, b"unhealthy: store is not writable\n"))

    @defer.inlineCallbacks
    def test_listener_down(self) -> Any:
        """503 when a client listener is not listening."""
        svc = self.start_metrics()
        listener = svc.listeners[0]
        yield listener.stopService()
        listener.disownServiceParent()
        code, body = yield self.get("/healthz")
        self.assertEqual(
            (code, body), (503, b"unhealthy: 1 client listener(s) not listening\n")
        )

    @defer.inlineCallbacks
    def test_unknown_path(self) -> Any:
        """Other paths are 404."""
        self.start_metrics()
        code, _ = yield self.get("/admin")
        self.assertEqual(code, 404)


class BuildTests(SynchronousTestCase):
    """build_service wiring on a fake reactor."""

    def test_metrics_listener_and_separate_registries(self) -> None:
        """With --metrics a second listener is added; two services in one
        process have separate registries; without it there is none."""
        reactor_ = MemoryReactorClock()
        a = build_service(
            reactor_, proxy_options(self.mktemp(), "--metrics", "tcp:9999")
        )
        b = build_service(
            reactor_, proxy_options(self.mktemp(), "--metrics", "tcp:9998")
        )
        c = build_service(reactor_, proxy_options(self.mktemp()))
        for svc in (a, b, c):
            svc.startService()
        assert a.metrics is not None and b.metrics is not None
        self.assertIsNot(a.metrics.registry, b.metrics.registry)
        self.assertEqual(
            sorted(p[0] for p in reactor_.tcpServers), [0, 0, 0, 9998, 9999]
        )
        self.assertIsNone(c.metrics)
        self.assertIsNone(c.metrics_listener)
        self.assertIsNotNone(c.notifier)
        self.assertEqual(a.health(), (True, "ok"))
        for svc in (a, b, c):
            svc.stopService()
        self.assertEqual(a.health(), (False, "stopping"))
