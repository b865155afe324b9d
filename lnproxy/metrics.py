"""Prometheus metrics and the health check (``--metrics``).

:class:`Metrics` owns a dedicated ``CollectorRegistry`` (never the global
one, so that several services can live in one process, as in tests) and
subscribes to the observer hooks of the hub, the WebSocket factory and the
notifier.  Counters on the hot path are pre-bound label children, so one
relayed message costs a dict lookup and an increment.  Gauges (nodes,
sessions, connections by state) are computed at scrape time by a custom
collector that walks the hub, so nothing on the hot path maintains them.

No metric has a per-node label, and no key or node id appears anywhere.

:func:`metrics_site` serves ``/metrics`` (the text format of
``generate_latest``) and ``/healthz`` (200 when healthy, 503 otherwise) with
twisted.web.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from lnproxy.lifecycle import METRIC_STATES
from lnproxy.protocol import KNOWN_CODES

__all__ = ["Metrics", "HubCollector", "metrics_site", "MAX_SUMMONS_TRACKED"]

#: Nodes whose summon-to-login clock may run at once (memory bound).
MAX_SUMMONS_TRACKED = 100_000

_POLICY_CLASSES = ("handle", "drop", "queue", "summon")
_WEBHOOK_OUTCOMES = ("sent", "failed", "retried", "refused", "suppressed")


class HubCollector(Collector):
    """Gauges computed from the hub when scraped.

    :param hub: the :class:`~lnproxy.hub.Hub` (its ``nodes`` and
        ``connections``).
    :param in_flight: returns the number of webhook requests in flight.
    """

    def __init__(self, hub: Any, in_flight: Callable[[], int] | None = None) -> None:
        self.hub = hub
        self.in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the gauges."""
        nodes = list(self.hub.nodes.values())
        online = sum(1 for n in nodes if n.sessions)
        sessions = sum(len(n.sessions) for n in nodes)
        yield GaugeMetricFamily(
            "lnproxy_nodes",
            "Nodes known to this process (seen since start)",
            len(nodes),
        )
        yield GaugeMetricFamily(
            "lnproxy_nodes_online", "Nodes with at least one logged-in session", online
        )
        yield GaugeMetricFamily(
            "lnproxy_sessions", "Logged-in WebSocket sessions", sessions
        )
        by_state = dict.fromkeys(METRIC_STATES, 0)
        for conn in list(self.hub.connections.values()):
            name = conn.state.wire_name
            if name in by_state:
                by_state[name] += 1
        g = GaugeMetricFamily(
            "lnproxy_peer_connections", "Peer connections by state", labels=["state"]
        )
        for state, count in by_state.items():
            g.add_metric([state], count)
        yield g
        if self.in_flight is not None:
            yield GaugeMetricFamily(
                "lnproxy_webhook_requests_in_flight",
                "Webhook requests waiting for an answer",
                self.in_flight(),
            )


class Metrics:
    """Every lnproxy metric, in its own registry.

    :param clock: for the summon-to-login time.
    :param registry: the registry to fill (a new one by default).
    """

    def __init__(
        self, clock: IReactorTime, registry: CollectorRegistry | None = None
    ) -> None:
        self.clock = clock
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.messages_in = Counter(
            "lnproxy_peer_messages_in",
            "Lightning messages received from peers, by policy class",
            ["class"],
            registry=r,
        )
        self.messages_out = Counter(
            "lnproxy_peer_messages_out",
            "Lightning messages sent to peers: from clients, or by the proxy "
            "itself (pongs, keepalive pings)",
            ["origin"],
            registry=r,
        )
        self.pongs_sent = Counter(
            "lnproxy_pongs_sent", "Pongs the proxy sent for peers' pings", registry=r
        )
        self.pings_sent = Counter(
            "lnproxy_keepalive_pings_sent", "Keepalive pings the proxy sent", registry=r
        )
        self.keepalive_closes = Counter(
            "lnproxy_keepalive_closes",
            "Peer connections closed because the peer stopped answering",
            registry=r,
        )
        self.connections_closed = Counter(
            "lnproxy_peer_connections_closed",
            "Peer connections that ended (any reason)",
            registry=r,
        )
        self.events_stored = Counter(
            "lnproxy_events_stored", "Events committed to the store", registry=r
        )
        self.events_delivered = Counter(
            "lnproxy_events_delivered",
            "Event notifications sent to sessions (replays included)",
            registry=r,
        )
        self.events_acked = Counter(
            "lnproxy_events_acked", "Events acknowledged by clients", registry=r
        )
        self.webhooks = Counter(
            "lnproxy_webhooks",
            "Webhook calls by outcome: sent (2xx), failed (given up), retried, "
            "refused (SSRF guard, at webhook.set or connect time), suppressed "
            "(reconnect summons held back for a flapping peer)",
            ["outcome"],
            registry=r,
        )
        self.errors = Counter(
            "lnproxy_errors", "Error replies to clients, by code", ["code"], registry=r
        )
        self.handshake_relay = Histogram(
            "lnproxy_handshake_relay_seconds",
            "From connect to act 2 relayed (TCP connect + one round trip)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.handover_connections = Gauge(
            "lnproxy_handover_connections",
            "Peer connections handed over in the last hot restart: taken over by"
            " this process at its start, or handed over by it",
            registry=r,
        )
        self.handover_seconds = Gauge(
            "lnproxy_handover_seconds",
            "The last hot restart's duration: from the takeover request to every"
            " socket adopted (this process's start), or freeze to commit/rollback",
            registry=r,
        )
        self.handover_unread_seconds = Gauge(
            "lnproxy_handover_peers_unread_seconds",
            "How long peers were not read in the last handover this process"
            " served (freeze to commit or rollback)",
            registry=r,
        )
        self.handovers = Counter(
            "lnproxy_handovers",
            "Hot restart requests this process served, by outcome",
            ["outcome"],
            registry=r,
        )
        self.webhook_latency = Histogram(
            "lnproxy_webhook_latency_seconds",
            "From a webhook request to its response",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.summon_to_login = Histogram(
            "lnproxy_summon_to_login_seconds",
            "From the first summon-class event of an offline node whose "
            "webhooks were called to the node's next login",
            buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300, 900, 3600),
            registry=r,
        )
        self.answers_throttled = Counter(
            "lnproxy_answers_throttled",
            "Answers the proxy did not send because the peer asked for more "
            "than its pace (big pongs, many gossip queries)",
            registry=r,
        )
        self.peer_storage_kept = Counter(
            "lnproxy_peer_storage_kept",
            "peer_storage blobs kept for peers",
            registry=r,
        )
        # Pre-bound children: the hot path never calls .labels().
        self._in = {c: self.messages_in.labels(c) for c in _POLICY_CLASSES}
        self._out_client = self.messages_out.labels("client")
        self._out_proxy = self.messages_out.labels("proxy")
        self._webhook = {o: self.webhooks.labels(o) for o in _WEBHOOK_OUTCOMES}
        # Every code pre-created, so that each shows as 0 before the first.
        self._errors = {code: self.errors.labels(str(code)) for code in KNOWN_CODES}
        self._in_handle = self._in["handle"].inc
        self._in_drop = self._in["drop"].inc
        self._in_queue = self._in["queue"].inc
        self._in_summon = self._in["summon"].inc
        self._stored = self.events_stored.inc
        self._hub_counts: dict[str, Callable[[], None]] = {
            "handled": self._in_handle,
            "dropped": self._in_drop,
            "pong_sent": self._pong,
            "ping_sent": self._ping,
            "keepalive_closed": self.keepalive_closes.inc,
            "answer_throttled": self.answers_throttled.inc,
            "peer_storage_kept": self.peer_storage_kept.inc,
            "closed": self.connections_closed.inc,
            "message_out": self._out_client.inc,
            "event_delivered": self.events_delivered.inc,
        }
        self._notifier_counts: dict[str, Callable[[], None]] = {
            f"webhook_{o}": child.inc for o, child in self._webhook.items()
        }
        #: node id -> time of its first summon while offline (never exported).
        self._summoned: dict[str, float] = {}

    # -- wiring --------------------------------------------------------------------

    def observe_hub(self, hub: Any) -> None:
        """Subscribe to the hub's hooks and export its gauges."""
        hub.on_count.append(self.hub_count)
        hub.on_event_stored.append(self.event_stored)
        hub.on_login.append(self.logged_in)
        hub.on_acked.append(self.acked)
        hub.on_handshake_relayed.append(self.handshake_relay.observe)
        self._collector = HubCollector(hub)
        self.registry.register(self._collector)

    def observe_factory(self, factory: Any) -> None:
        """Count the WebSocket API's error replies by code."""
        factory.on_error.append(self.error)

    def observe_notifier(self, notifier: Any) -> None:
        """Count webhook outcomes and time them."""
        notifier.on_count.append(self.notifier_count)
        notifier.on_latency.append(self.webhook_latency.observe)
        notifier.on_summon.append(self.summoned)
        if getattr(self, "_collector", None) is not None:
            self._collector.in_flight = lambda: notifier.in_flight

    def observe_hot_restart(self, old_side: Any, incoming: Any) -> None:
        """Export what this process took over (``incoming``, set once it
        adopted) and the handovers it serves (``old_side``)."""
        if incoming is not None:
            self.handover_connections.set_function(lambda: incoming.adopted)
            self.handover_seconds.set_function(lambda: incoming.seconds)
        if old_side is not None:
            old_side.on_outcome.append(self.handover_outcome)

    def handover_outcome(self, outcome: Any) -> None:
        """A handover this process served ended (committed or rolled back)."""
        self.handovers.labels("committed" if outcome.committed else "rolled_back").inc()
        self.handover_unread_seconds.set(outcome.seconds)
        if outcome.committed:
            self.handover_connections.set(outcome.connections)
            self.handover_seconds.set(outcome.seconds)

    # -- hooks -----------------------------------------------------------------------

    def hub_count(self, name: str) -> None:
        """A countable happening in the hub (see ``Hub.on_count``)."""
        fn = self._hub_counts.get(name)
        if fn is not None:
            fn()

    def notifier_count(self, name: str) -> None:
        """A webhook outcome (see ``Notifier.on_count``)."""
        fn = self._notifier_counts.get(name)
        if fn is not None:
            fn()

    def _pong(self) -> None:
        self.pongs_sent.inc()
        self._out_proxy.inc()

    def _ping(self) -> None:
        self.pings_sent.inc()
        self._out_proxy.inc()

    def event_stored(self, row: Any, online: bool) -> None:
        """A committed event: count it, and count messages by class."""
        self._stored()
        if row.kind == "message":
            if row.summon:
                self._in_summon()
            else:
                self._in_queue()

    def acked(self, node_id: str, count: int) -> None:
        """``count`` events of a node were acknowledged."""
        if count > 0:
            self.events_acked.inc(count)

    def error(self, code: int) -> None:
        """An error reply with ``code``."""
        child = self._errors.get(code)
        if child is None:
            # Only codes the server itself produces reach here; the set is
            # small and fixed, so the label stays bounded.
            child = self._errors[code] = self.errors.labels(str(code))
        child.inc()

    def summoned(self, node_id: str, at: float) -> None:
        """An offline node's webhooks were called for a summon at ``at``."""
        if node_id not in self._summoned and len(self._summoned) < MAX_SUMMONS_TRACKED:
            self._summoned[node_id] = at

    def logged_in(self, node_id: str) -> None:
        """A node logged in: stop its summon-to-login clock."""
        at = self._summoned.pop(node_id, None)
        if at is not None:
            self.summon_to_login.observe(max(0.0, self.clock.seconds() - at))

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)


class _MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.metrics.render()


class _HealthResource(Resource):
    isLeaf = True

    def __init__(self, healthy: Callable[[], tuple[bool, str]]) -> None:
        super().__init__()
        self.healthy = healthy

    def render_GET(self, request: Request) -> bytes:
        ok, why = self.healthy()
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        if not ok:
            request.setResponseCode(503)
            return f"unhealthy: {why}\n".encode()
        return b"ok\n"


def metrics_site(metrics: Metrics, healthy: Callable[[], tuple[bool, str]]) -> Site:
    """A twisted.web site serving ``/metrics`` and ``/healthz``.

    :param metrics: what ``/metrics`` exposes.
    :param healthy: returns ``(ok, reason)``; ``/healthz`` answers 200 when
        ok, 503 with the reason otherwise.
    """
    root = Resource()
    root.putChild(b"metrics", _MetricsResource(metrics))
    root.putChild(b"healthz", _HealthResource(healthy))
    site = Site(root)
    site.displayTracebacks = False
    # Scrapes are not worth an access log line each.
    site.log = lambda request: None  # type: ignore[method-assign]
    return site
