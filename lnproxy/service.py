"""Composition: the service tree of one lnproxy process.

:func:`build_service` takes the reactor and the parsed options and returns a
:class:`ProxyService` (a ``MultiService``).  It is pure wiring: every piece
is built by its own module; observers (metrics, webhooks) are attached here.

The webhook :class:`~lnproxy.webhook.Notifier` is a child service that
observes the hub; with ``--metrics`` a second listener serves ``/metrics``
and ``/healthz`` (:mod:`lnproxy.metrics`).

Shutdown order matters and ``MultiService`` does not wait between children,
so :class:`ProxyService` sequences it: stop accepting clients, let the hub
record ``proxy stopped`` for every peer connection and close them, then
close the store.

With ``--database postgresql://...`` (docs/protocol.md, "Running several
processes (scale-out)") the store is a
:class:`~lnproxy.store.postgres.PostgresStore` behind a
:class:`~lnproxy.scaleout.Deployment` (database threads, lease keeper,
health probe); the hub and the notifier see a
:class:`~lnproxy.scaleout.ReactorStore` and never wait on the network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, task, tcp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from lnproxy import hotrestart, keys, protocol, wire
from lnproxy.api import ClientFactory, ClientProtocol
from lnproxy.devices import DeviceLimits, Devices, thread_runner
from lnproxy.handover import systemd
from lnproxy.hub import ConnectPeer, Hub, Limits
from lnproxy.metrics import Metrics, metrics_site
from lnproxy.peer import PeerFactory
from lnproxy.policy import MessageClass, Policy
from lnproxy.protocol import (
    FEATURE_ACCOUNT,
    FEATURE_LEASE,
    FEATURE_PEER_STORAGE,
    FEATURE_TAKEOVER,
    FEATURE_VAULT,
)
from lnproxy.ssrf import Resolver, build_http_client, thread_resolver
from lnproxy.store import IStore, Store, StoreError, datadir
from lnproxy.webhook import Notifier

if TYPE_CHECKING:
    # The PostgreSQL stack (psycopg and its C library, ~11 MiB) is imported
    # only when --database names PostgreSQL: a SQLite proxy never loads it.
    from lnproxy.scaleout import Deployment

__all__ = [
    "ProxyService",
    "build_service",
    "tcp_connector",
    "limits_from_config",
    "listening",
]


def tcp_connector(reactor: Any) -> ConnectPeer:
    """Open peer connections: IP literals directly, names with
    ``HostnameEndpoint`` (DNS, IPv4 and IPv6)."""

    def connect(
        host: str, port: int, factory: PeerFactory, timeout: float
    ) -> defer.Deferred[Any]:
        endpoint: IStreamClientEndpoint
        # HostnameEndpoint would hand even an IP literal to getaddrinfo in
        # the thread pool and build its resolution machinery per call: about
        # a third of the proxy's CPU per set-up (bench/scale.py).
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        else:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        return endpoint.connect(factory)

    return connect


def limits_from_config(config: Mapping[str, Any]) -> Limits:
    """The hub's :class:`Limits` from parsed options."""
    return Limits(
        connections_per_node=config["max-connections-per-node"],
        pending_handshakes_per_node=config["max-handshakes-per-node"],
        pending_handshakes_total=config["max-handshakes"],
        sessions_per_node=config["max-sessions-per-node"],
        events_per_node=config["max-events-per-node"],
        handshake_timeout=config["handshake-timeout"],
        keepalive=config["keepalive"],
    )


def listening(listener: StreamServerEndpointService) -> bool:
    """Whether a listener service is running and its port is bound."""
    # StreamServerEndpointService keeps the listen() Deferred here; it has
    # fired with the port once the socket is bound.
    waiting = getattr(listener, "_waitingForPort", None)
    return bool(
        listener.running
        and waiting is not None
        and waiting.called
        and IListeningPort.providedBy(waiting.result)
    )


class ProxyService(service.MultiService):
    """The root service: listeners, hub and store, stopped in order.

    :ivar hub: the :class:`~lnproxy.hub.Hub`.
    :ivar store: the open :class:`~lnproxy.store.Store`.
    :ivar factory: the WebSocket :class:`~lnproxy.api.ClientFactory`.
    :ivar listeners: the ``StreamServerEndpointService`` of each ``--listen``.
    :ivar notifier: the webhook :class:`~lnproxy.webhook.Notifier` (or None).
    :ivar metrics: the :class:`~lnproxy.metrics.Metrics` (None without
        ``--metrics``).
    :ivar metrics_listener: the ``--metrics`` listener service, or None.
    """

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        hub: Hub,
        factory: ClientFactory,
        deployment: Deployment | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        #: The PostgreSQL side (None with SQLite).
        self.deployment = deployment
        self.hub = hub
        self.factory = factory
        self.listeners: list[StreamServerEndpointService] = []
        self.server_id = factory.server_id
        self.notifier: Notifier | None = None
        self.metrics: Metrics | None = None
        self.metrics_listener: StreamServerEndpointService | None = None
        #: The name each listener crosses a hot restart under, aligned with
        #: ``listeners`` then ``metrics_listener``.
        self.listener_names: list[str] = []
        #: The reactor (hot restart adopts sockets into it).
        self.reactor: Any = None
        #: What this process took over at its start (hot restart), if any.
        self.incoming: hotrestart.Incoming | None = None
        #: Serves takeover requests; hands everything over.
        self.old_side: hotrestart.OldSide | None = None
        #: Upload everything to systemd's fd store on SIGTERM.
        self.fd_store = False

    def health(self) -> tuple[bool, str]:
        """``/healthz``: the store takes writes and every listener is up.

        :return: ``(ok, reason)``.
        """
        if not self.running:
            return False, "stopping"
        if self.deployment is not None:
            if not self.deployment.probe.ok:
                return False, "database is unreachable or not writable"
            if not self.deployment.keeper.valid:
                return False, "lease lapsed: this process serves no nodes"
            if self.hub.journal.failures:
                return False, "commits are failing (retrying)"
        elif not self.store.writable():
            return False, "store is not writable"
        down = sum(1 for listener in self.listeners if not listening(listener))
        if down:
            return False, f"{down} client listener(s) not listening"
        return True, "ok"

    def startService(self) -> None:
        """Reopen the database, then start the hub before any listener
        accepts a client."""
        if self.deployment is not None:
            # After twistd's daemonizing fork, if any.
            try:
                self.deployment.prepare()
            except StoreError as e:
                raise SystemExit(f"lnproxy: {e}") from None
            self.deployment.startService()
        else:
            self._adopt()
        self.hub.startService()
        super().startService()
        if self.incoming is not None and self.incoming.via == "takeover":
            # Held since the ready (a SIGTERM meanwhile stops us now).
            self.reactor.callWhenRunning(hotrestart.release_signals)
        if self.old_side is not None:
            try:
                self.old_side.start()
            except Exception as e:
                self._log.warn("no takeover channel (no hot restart): {error}", error=e)
        notifier = systemd.Notifier()
        if notifier.address is not None:
            try:
                if self.incoming is not None and self.incoming.via == "systemd":
                    for name in (systemd.PEER, systemd.LISTENER, systemd.STATE):
                        notifier.remove(name)
            except OSError as e:
                self._log.warn("cannot notify the service manager: {error}", error=e)
            # READY=1 only once the reactor runs: twistd installs its SIGTERM
            # handler there, and a SIGTERM before it would kill the process
            # without storing anything.
            self.reactor.callWhenRunning(self._ready, notifier)
        self._log.info(
            "lnproxy started; server_id {server_id}", server_id=self.server_id.hex()
        )

    def _ready(self, notifier: systemd.Notifier) -> None:
        try:
            notifier.ready()
        except OSError as e:
            self._log.warn("cannot notify the service manager: {error}", error=e)

    def privilegedStartService(self) -> None:
        """Adopt what a hot restart handed over before the listeners bind
        (they bind here)."""
        self._adopt()
        super().privilegedStartService()

    def _adopt(self) -> None:
        if self.deployment is not None:
            return  # PostgreSQL: no hot restart
        # After twistd's daemonizing fork, if any: see Store.suspend.
        self.store.resume()
        incoming = self.incoming
        if incoming is not None and not incoming.done:
            # Before the hub's recovery, which would close their rows.
            incoming.adopt(self.reactor, self.hub, self._factories())

    def _factories(self) -> dict[str, Any]:
        """The factory of each listener, by the name it crosses under."""
        out: dict[str, Any] = {}
        services = [*self.listeners, self.metrics_listener]
        for name, listener in zip(self.listener_names, services, strict=False):
            if listener is not None:
                out[name] = listener.factory
        return out

    def listening_ports(self) -> list[tuple[Any, str]]:
        """Each bound TCP listening port with the name it crosses under."""
        out = []
        services = [*self.listeners, self.metrics_listener]
        for name, listener in zip(self.listener_names, services, strict=False):
            if listener is None or not listening(listener):
                continue
            port = getattr(listener, "_waitingForPort").result  # noqa: B009
            if isinstance(port, tcp.Port):
                out.append((port, name))
        return out

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop listeners, then the hub (records closed events), then the store.

        Under systemd with the fd store, everything is first uploaded there
        (hot restart); after a hot restart nothing is closed but the clients'
        WebSockets (1012).
        """
        old = self.old_side
        if old is not None:
            # A takeover in progress rolls back first (or has committed).
            yield old.stop_serving()
        if old is not None and not old.handed_over and self.fd_store:
            notifier = systemd.Notifier()
            if notifier.address is not None:
                old.store_on_stop(notifier)
        if old is not None and old.handed_over:
            # Let the 1012 close frames reach the clients.
            deadline = self.reactor.seconds() + 2.0
            while self.factory.clients and self.reactor.seconds() < deadline:
                yield task.deferLater(self.reactor, 0.01, lambda: None)
        yield defer.maybeDeferred(super().stopService)
        try:
            yield self.hub.stopService()
        finally:
            if self.deployment is not None:
                yield self.deployment.shutdown()
            else:
                self.store.close()
        self._log.info("lnproxy stopped; every stored event is kept")


def _features(policy: Policy) -> list[str]:
    """The optional features of ``hello.features`` this server offers.

    ``peer_storage`` only while the proxy keeps type 7 itself: an operator
    ``--policy 7=...`` hands peer storage to the client instead.  ``lease``,
    ``vault`` and ``account`` always (:class:`lnproxy.devices.Devices`).
    ``takeover`` is added by :func:`build_service` with the SQLite store
    (:mod:`lnproxy.hotrestart`).
    """
    features = [FEATURE_LEASE, FEATURE_VAULT, FEATURE_ACCOUNT]
    if policy.classify(wire.PEER_STORAGE) is MessageClass.HANDLE:
        features.append(FEATURE_PEER_STORAGE)
    return features


def build_service(
    reactor: Any,
    config: Mapping[str, Any],
    *,
    resolver: Resolver | None = None,
) -> ProxyService:
    """Build the whole service from parsed :class:`lnproxy.tap.Options`.

    :param reactor: the reactor (a fake one works: nothing runs until
        ``startService``).
    :param config: the parsed options.
    :param resolver: name resolution for webhook hosts (default: the
        system's ``getaddrinfo`` in the reactor's thread pool).

    :raise SystemExit: with a clear message when the data dir cannot be used
        (locked by another process, unreadable key, unknown schema).
    """
    database = config.get("database") or "sqlite"
    key_path = config.get("server-key")
    deployment: Deployment | None = None
    store: IStore
    # The policy table takes tens of ms to build: before a takeover freezes
    # the old process's peers, not while they wait.
    policy = Policy(config["policy"])
    incoming: hotrestart.Incoming | None = None
    if database == "sqlite":
        incoming = hotrestart.prepare(config, systemd.captured_listen_fds())
    elif config.get("takeover") or config.get("systemd-fd-store"):
        raise SystemExit(
            "lnproxy: --takeover and --systemd-fd-store work with the SQLite"
            " store only; with --database postgresql://... restart the"
            " processes one at a time (docs/operations.md, \"Upgrading without"
            " dropping peers\")"
        )
    try:
        if database == "sqlite":
            if incoming is not None and incoming.lock_fd is not None:
                # The lock crossed with the sockets: it was never free.
                store = Store.open(
                    config["data-dir"], key_path=key_path, lock_fd=incoming.lock_fd
                )
            elif incoming is not None:
                store = hotrestart.wait_for_lock(
                    lambda: Store.open(config["data-dir"], key_path=key_path)
                )
            else:
                store = Store.open(config["data-dir"], key_path=key_path)
        else:
            from lnproxy.store.postgres import PostgresStore

            data_dir = config["data-dir"]
            pg = PostgresStore.open(
                database,
                key_path=key_path or datadir.default_key_path(
                    os.path.abspath(data_dir)
                ),
                data_dir=data_dir,
            )
    except StoreError as e:
        if incoming is not None:
            incoming.received.close()
        raise SystemExit(f"lnproxy: {e}") from None
    limits = limits_from_config(config)
    if database != "sqlite":
        from lnproxy.scaleout import Deployment, ReactorStore

        deployment = Deployment(
            reactor, pg, config["public-url"], config.get("lease-timeout", 15.0)
        )
        hub_ref: list[Hub] = []

        def pending(node_id: str) -> int:
            node = hub_ref[0].nodes.get(node_id)
            return 0 if node is None else node.pending

        def healthy() -> bool:
            assert deployment is not None
            return deployment.healthy

        reactor_store = ReactorStore(
            deployment.executor,
            pg.server_secret,
            pending,
            healthy,
            lambda ids: hub_ref[0]._lost(ids),
        )
        # Only what the reactor thread may ask (see ReactorStore).
        store = cast(IStore, reactor_store)
    hub = Hub(
        store,
        reactor,
        tcp_connector(reactor),
        policy=policy,
        limits=limits,
        executor=deployment.executor if deployment is not None else None,
    )
    features: list[str] = []
    if deployment is not None:
        hub_ref.append(hub)
        hub.leases = deployment.keeper
        deployment.on_lost = hub.drop_nodes
        deployment.on_taken = hub.adopt_claims
        hub.on_claimed.append(reactor_store.load)
        hub.on_dropped.append(reactor_store.forget)
        features.append(protocol.FEATURE_REDIRECT)
    else:
        features.append(FEATURE_TAKEOVER)
    server_id = keys.public_key(store.server_secret)
    notifier = _build_notifier(reactor, config, hub, store, resolver)
    if deployment is not None:
        hub.on_wake.append(lambda row: notifier.event_stored(row, online=False))
    devices: Devices[ClientProtocol] = Devices(
        store,
        reactor,
        thread_runner(reactor),
        DeviceLimits(
            vault_entries_per_node=config.get("max-vault-entries-per-node", 64),
        ),
        database=deployment.executor if deployment is not None else None,
    )
    factory = ClientFactory(
        hub,
        server_id,
        reactor,
        webhooks=notifier,
        login_timeout=config["login-timeout"],
        request_rate=config.get("max-requests-per-second", 5000.0),
        request_burst=2 * config.get("max-requests-per-second", 5000.0),
        features=[*_features(hub.policy), *features],
        devices=devices,
    )
    root = ProxyService(store, hub, factory, deployment)
    root.reactor = reactor
    root.incoming = incoming
    if deployment is None:
        # Hot restart: the SQLite store only (one process per data dir).
        root.old_side = hotrestart.OldSide(
            root, reactor, timeout=float(config.get("takeover-timeout", 5.0))
        )
        root.fd_store = bool(config.get("systemd-fd-store")) or _fdstore_env()
    root.notifier = notifier
    notifier.setServiceParent(root)
    for description in config["listen"]:
        endpoint = _endpoint(reactor, description, "listen", incoming)
        root.listener_names.append(hotrestart.listener_name("listen", description))
        listener = StreamServerEndpointService(endpoint, factory)
        # Fail loudly at startup when the port cannot be bound.
        listener._raiseSynchronously = True
        listener.setServiceParent(root)
        root.listeners.append(listener)
    if config.get("metrics"):
        metrics = Metrics(reactor)
        metrics.observe_hub(hub)
        metrics.observe_factory(factory)
        metrics.observe_notifier(notifier)
        root.metrics = metrics
        endpoint = _endpoint(reactor, config["metrics"], "metrics", incoming)
        root.listener_names.append(hotrestart.listener_name("metrics", config["metrics"]))
        metrics.observe_hot_restart(root.old_side, incoming)
        site = metrics_site(metrics, root.health)
        root.metrics_listener = StreamServerEndpointService(endpoint, site)
        root.metrics_listener._raiseSynchronously = True
        root.metrics_listener.setServiceParent(root)
    # The database was checked (and upgraded) by Store.open; it is reopened
    # in startService, in the process that runs (twistd may fork between).
    if deployment is not None:
        deployment.store.suspend()
    else:
        store.suspend()
    return root


def _fdstore_env() -> bool:
    """systemd 254 and later tell the service its FileDescriptorStoreMax."""
    try:
        return int(os.environ.get("FDSTORE", "0")) > 0
    except ValueError:
        return False


def _endpoint(
    reactor: Any, description: str, kind: str, incoming: hotrestart.Incoming | None
) -> Any:
    """The server endpoint of a listener; its handed-over port if any."""
    endpoint = serverFromString(reactor, description)
    name = hotrestart.listener_name(kind, description)
    if incoming is None or name not in incoming.listener_names():
        return endpoint
    adopted = hotrestart.AdoptedEndpoint(endpoint, name)
    adopted.incoming = incoming
    return adopted


def _build_notifier(
    reactor: Any,
    config: Mapping[str, Any],
    hub: Hub,
    store: IStore,
    resolver: Resolver | None,
) -> Notifier:
    """The webhook notifier with its own pooled, SSRF-guarded HTTP client."""
    allow_private = bool(config.get("webhook-allow-private"))
    timeout = float(config.get("webhook-timeout", 5.0))
    resolver = resolver or thread_resolver(reactor)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 4
    pool.cachedConnectionTimeout = 60
    pool.retryAutomatically = False
    http = build_http_client(
        reactor, resolver, allow_private, pool=pool, connect_timeout=timeout
    )
    notifier = Notifier(
        hub,
        reactor,
        store.server_secret,
        http,
        resolver,
        allow_private=allow_private,
        window=config["webhook-window"],
        timeout=timeout,
        pool=pool,
    )
    notifier.attach()
    return notifier
