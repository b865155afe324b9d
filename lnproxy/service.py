"""Composition: the service tree of one lnproxy process.

:func:`build_service` takes the reactor and the parsed options and returns a
:class:`ProxyService` (a ``MultiService``).  It is pure wiring: every piece
is built by its own module; observers (metrics, webhooks) are attached here.

Shutdown order matters and ``MultiService`` does not wait between children,
so :class:`ProxyService` sequences it: stop accepting clients, let the hub
record ``proxy stopped`` for every peer connection and close them, then
close the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, serverFromString
from twisted.logger import Logger

from lnproxy import keys
from lnproxy.api import ClientFactory
from lnproxy.hub import ConnectPeer, Hub, Limits
from lnproxy.peer import PeerFactory
from lnproxy.policy import Policy
from lnproxy.store import Store, StoreError

__all__ = ["ProxyService", "build_service", "tcp_connector", "limits_from_config"]


def tcp_connector(reactor: Any) -> ConnectPeer:
    """Open peer connections with ``HostnameEndpoint`` (DNS, IPv4 and IPv6)."""

    def connect(
        host: str, port: int, factory: PeerFactory, timeout: float
    ) -> defer.Deferred[Any]:
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


class ProxyService(service.MultiService):
    """The root service: listeners, hub and store, stopped in order.

    :ivar hub: the :class:`~lnproxy.hub.Hub`.
    :ivar store: the open :class:`~lnproxy.store.Store`.
    :ivar factory: the WebSocket :class:`~lnproxy.api.ClientFactory`.
    :ivar listeners: the ``StreamServerEndpointService`` of each ``--listen``.
    """

    _log = Logger()

    def __init__(self, store: Store, hub: Hub, factory: ClientFactory) -> None:
        super().__init__()
        self.store = store
        self.hub = hub
        self.factory = factory
        self.listeners: list[StreamServerEndpointService] = []
        self.server_id = factory.server_id

    def startService(self) -> None:
        """Start the hub before any listener accepts a client."""
        self.hub.startService()
        super().startService()
        self._log.info(
            "lnproxy started; server_id {server_id}", server_id=self.server_id.hex()
        )

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """Stop listeners, then the hub (records closed events), then the store."""
        yield defer.maybeDeferred(super().stopService)
        try:
            yield self.hub.stopService()
        finally:
            self.store.close()
        self._log.info("lnproxy stopped; every stored event is kept")


def build_service(reactor: Any, config: Mapping[str, Any]) -> ProxyService:
    """Build the whole service from parsed :class:`lnproxy.tap.Options`.

    :raise SystemExit: with a clear message when the data dir cannot be used
        (locked by another process, unreadable key, unknown schema).
    """
    try:
        store = Store.open(config["data-dir"])
    except StoreError as e:
        raise SystemExit(f"lnproxy: {e}") from None
    limits = limits_from_config(config)
    hub = Hub(
        store,
        reactor,
        tcp_connector(reactor),
        policy=Policy(config["policy"]),
        limits=limits,
    )
    server_id = keys.public_key(store.server_secret)
    factory = ClientFactory(hub, server_id, reactor, login_timeout=config["login-timeout"])
    root = ProxyService(store, hub, factory)
    for description in config["listen"]:
        endpoint = serverFromString(reactor, description)
        listener = StreamServerEndpointService(endpoint, factory)
        # Fail loudly at startup when the port cannot be bound.
        listener._raiseSynchronously = True
        listener.setServiceParent(root)
        root.listeners.append(listener)
    return root
