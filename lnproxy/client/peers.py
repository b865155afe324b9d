"""The client's peer connections: the split handshake, and new handshakes
for persistent peers (docs/protocol.md, "Outbound connection (the split
handshake)", "Events").

:class:`Peers` runs the BOLT 8 initiator itself
(:class:`lnproxy.noise.Initiator`): act 1 goes to the proxy in ``connect``,
act 2 comes back, act 3 and the transport keys go out in ``finish``, then
it sends our own ``init``.  The node key never leaves this process.

A ``closed`` event with ``reconnect: true`` is recorded together with its
seq (as an :class:`~lnproxy.client.events.EventFollowUp` of the event
pipeline), then a new handshake to that peer runs, with backoff, until one
is open.  The pending re-handshakes are in the state, so a crash does not
forget them.

Requests go through a :class:`PeerRequests` (the
:class:`~lnproxy.client.Client`), so this module sends nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lnproxy import noise, protocol, wire
from lnproxy.client.errors import ClientError, HandshakeFailed, InvalidParams
from lnproxy.client.events import Event
from lnproxy.client.state import ClientState, SavedState, StateChange

__all__ = ["PeerLink", "PeerRequests", "Peers", "parse_peer", "peer_address"]


def peer_address(peer: str) -> protocol.PeerAddress:
    """Parse ``node_id@host[:port]`` with :func:`lnproxy.protocol.parse_peer`.

    :raise InvalidParams: (raised locally, ``local`` is True) when ``peer``
        is malformed, with the protocol's message.
    """
    try:
        return protocol.parse_peer(peer)
    except protocol.BadPeer as e:
        raise InvalidParams(protocol.INVALID_PARAMS, str(e), local=True) from None


def parse_peer(peer: str) -> tuple[str, str]:
    """Split ``node_id@host[:port]`` (IPv6 hosts in brackets).

    :return: ``(node_id hex lowercase, "host:port")``, the port defaulting
        to 9735 as in the protocol.
    :raise InvalidParams: (raised locally, ``local`` is True) when ``peer``
        is malformed.
    """
    parsed = peer_address(peer)
    return parsed.node_id, parsed.address


class PeerRequests(TypingProtocol):
    """The requests :class:`Peers` and :class:`PeerLink` make."""

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> defer.Deferred[Any]:
        """Send one request once logged in; fires with its ``result``."""

    def send(self, conn: str, msg: bytes) -> defer.Deferred[None]:
        """Send one Lightning message on a connection."""

    def disconnect(self, conn: str) -> defer.Deferred[None]:
        """Close a connection."""

    def connections(self) -> defer.Deferred[list[dict[str, Any]]]:
        """The node's connection objects."""


@dataclass
class PeerLink:
    """A peer connection this client opened through the proxy.

    :ivar conn: the proxy's connection id.
    :ivar peer: the peer's node id (hex).
    :ivar address: ``host:port`` of the peer.
    :ivar persist: whether the proxy summons us to re-handshake on a drop.
    :ivar features: the features of our ``init``.
    """

    client: PeerRequests = field(repr=False)
    conn: str
    peer: str
    address: str
    persist: bool
    features: bytes = b""

    def send(self, msg: bytes) -> defer.Deferred[None]:
        """Send one Lightning message (type included) to the peer."""
        return self.client.send(self.conn, msg)

    def disconnect(self) -> defer.Deferred[None]:
        """Ask the proxy to close the connection (no re-handshake follows)."""
        return self.client.disconnect(self.conn)


class Peers:
    """The node's peer connections through the proxy (see the module
    docstring).

    :param requests: sends the requests (the client).
    :param clock: timers for the re-handshake backoff.
    :param node_secret: the node key (for the initiator's handshake).
    :param saved: the state (its ``rehandshake`` map).
    :param features: the ``init`` features by default.
    :param retry_policy: ``attempt -> seconds`` between re-handshakes.
    :param narrate: ``fn(step, detail)`` as a handshake progresses.
    :param linked: ``fn(link)`` after each successful re-handshake.
    :param may_rehandshake: ``fn()``: whether re-handshakes may start now
        (not while another device holds the writer lease).
    :param refused: ``fn(error, peer)``: True when a failed re-handshake
        must stop without a retry (the writer lease, code 11); the peer
        stays on record.
    """

    _log = Logger()

    def __init__(
        self,
        requests: PeerRequests,
        clock: IReactorTime,
        node_secret: bytes,
        saved: SavedState,
        features: bytes,
        retry_policy: Callable[[int], float],
        narrate: Callable[[str, str], None],
        linked: Callable[[PeerLink], None],
        may_rehandshake: Callable[[], bool] = lambda: True,
        refused: Callable[[ClientError, str], bool] = lambda e, node: False,
    ) -> None:
        self._requests = requests
        self.clock = clock
        self._secret = node_secret
        self.saved = saved
        self.features = features
        self.retry_policy = retry_policy
        self._narrate = narrate
        self._linked = linked
        self._may_rehandshake = may_rehandshake
        self._refused = refused
        self._running = False
        #: Our links, by connection id, until their ``closed`` is recorded.
        self._links: dict[str, PeerLink] = {}
        #: ``host:port`` of connections, by id (from our handshakes and the
        #: proxy's connection objects), until their ``closed`` is recorded.
        self._addresses: dict[str, str] = {}
        self._rehandshakes: dict[str, defer.Deferred[None]] = {}

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Allow re-handshakes (again)."""
        self._running = True

    def halt(self) -> None:
        """Stop every re-handshake in progress (the state keeps them)."""
        self._running = False
        for d in list(self._rehandshakes.values()):
            d.cancel()
        self._rehandshakes.clear()

    def resume(self) -> None:
        """Start the re-handshakes the state lists (after a login)."""
        for node in list(self.saved.current.rehandshake):
            self._start_rehandshake(node)

    # -- addresses ---------------------------------------------------------------

    def remember(self, connection: Any) -> None:
        """Note a connection object's address (from ``login`` or
        ``connections``), for a later re-handshake."""
        c = connection
        if isinstance(c, dict) and isinstance(c.get("conn"), str):
            if isinstance(c.get("address"), str):
                self._addresses[c["conn"]] = c["address"]

    def link(self, conn: str) -> PeerLink | None:
        """The link this client opened as ``conn``, if it is still known."""
        return self._links.get(conn)

    def known(self, conn: str) -> bool:
        """Whether an address is remembered for connection ``conn``."""
        return conn in self._addresses

    # -- the split handshake ----------------------------------------------------

    @defer.inlineCallbacks
    def open(
        self, peer: str, persist: bool = False, features: bytes | None = None
    ) -> Any:
        """Open a peer connection (see :meth:`lnproxy.client.Client.open_peer`).

        :return: a Deferred firing with a :class:`PeerLink`.
        """
        parsed = peer_address(peer)
        node, address = parsed.node_id, parsed.address
        features = self.features if features is None else features
        init = noise.Initiator(self._secret, bytes.fromhex(node))
        act1 = init.act1()
        self._narrate(
            "act1",
            f"act 1 ({len(act1)} bytes) to the proxy, which writes it to {address}",
        )
        r = yield self._requests.call(
            "connect", {"peer": str(parsed), "act1": act1.hex(), "persist": persist}
        )
        conn = r["conn"]
        self._addresses[conn] = address
        try:
            init.read_act2(bytes.fromhex(r["act2"]))
        except (noise.HandshakeError, ValueError) as e:
            self._requests.disconnect(conn).addErrback(lambda _: None)
            raise HandshakeFailed(
                protocol.HANDSHAKE_FAILED,
                f"act 2 from the peer was rejected: {e}",
                local=True,
            ) from None
        self._narrate(
            "act2", f"act 2 from the peer, relayed by the proxy, verified ({conn})"
        )
        act3, transport_keys = init.act3()
        finish = {
            "conn": conn,
            "act3": act3.hex(),
            "sk": transport_keys.sk.hex(),
            "rk": transport_keys.rk.hex(),
            "ck": transport_keys.ck.hex(),
        }
        # The keys belong to the proxy from now on; keep no copy here.
        del transport_keys, init
        yield self._requests.call("finish", finish)
        del finish
        self._narrate(
            "act3", f"act 3 ({len(act3)} bytes) and sk, rk, ck handed to the proxy"
        )
        init_msg = wire.Init(features=features).encode()
        yield self._requests.send(conn, init_msg)
        self._narrate("init", f"our init ({len(init_msg)} bytes) sent on {conn}")
        link = PeerLink(self._requests, conn, node, address, persist, features)
        self._links[conn] = link
        return link

    # -- EventFollowUp: closed connections ----------------------------------------

    @defer.inlineCallbacks
    def change_for(self, event: Event) -> Any:
        """For a ``closed`` event asking for a new handshake: the change that
        lists its peer for a re-handshake (None for any other event)."""
        node, conn = event.peer, event.conn
        if not (event.kind == "closed" and event.reconnect and node and conn):
            return None
        address = self._addresses.get(conn)
        if address is None and self._running:
            try:
                yield self._requests.connections()
            except ClientError as e:
                self._log.warn(
                    "cannot look up connection {conn}: {e}", conn=conn, e=str(e)
                )
            address = self._addresses.get(conn)
        if address is None:
            self._log.error(
                "cannot re-handshake with {peer}: address of {conn} unknown",
                peer=node,
                conn=conn,
            )
            return None
        link = self._links.get(conn)
        features = link.features if link is not None else self.features
        entry = {"address": address, "features": features.hex()}

        def wanted(st: ClientState) -> ClientState:
            return st.evolve(rehandshake={**st.rehandshake, node: entry})

        change: StateChange = wanted
        return change

    def recorded(self, event: Event) -> None:
        """A handled event is saved: forget a closed connection, and start
        the re-handshake its ``closed`` asked for."""
        if event.kind != "closed":
            return
        if event.conn is not None:
            self._links.pop(event.conn, None)
            self._addresses.pop(event.conn, None)
        if event.reconnect and event.peer:
            self._start_rehandshake(event.peer)

    # -- persistent peers -----------------------------------------------------

    def _start_rehandshake(self, node: str) -> None:
        if node in self._rehandshakes or not self._running:
            return
        if not self._may_rehandshake():
            return  # another device holds the writer lease
        d = self._rehandshake(node)
        if d.called:
            return
        self._rehandshakes[node] = d

        def done(result: Any) -> None:
            if self._rehandshakes.get(node) is d:
                del self._rehandshakes[node]
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                self._log.failure("re-handshake with {peer} stopped", result, peer=node)

        d.addBoth(done)

    @defer.inlineCallbacks
    def _rehandshake(self, node: str) -> Any:
        """Open a new connection to a persistent peer; retry with backoff."""
        attempt = 0
        while self._running and node in self.saved.current.rehandshake:
            entry = self.saved.current.rehandshake[node]
            link: PeerLink | None = None
            try:
                conns = yield self._requests.connections()
                # Another device of this node may have done it already.
                if not any(
                    c.get("peer") == node and c.get("state") == "open" for c in conns
                ):
                    link = yield self.open(
                        f"{node}@{entry['address']}",
                        persist=True,
                        features=bytes.fromhex(entry.get("features", "")),
                    )
            except ClientError as e:
                if self._refused(e, node):
                    return  # kept on record until we hold the lease
                attempt += 1
                delay = self.retry_policy(attempt)
                self._log.info(
                    "re-handshake with {peer} failed ({e}); retrying in {delay:.1f} s",
                    peer=node,
                    e=str(e),
                    delay=delay,
                )
                yield task.deferLater(self.clock, delay, lambda: None)
                continue

            def done(st: ClientState) -> ClientState:
                wanted = dict(st.rehandshake)
                wanted.pop(node, None)
                return st.evolve(rehandshake=wanted)

            try:
                self.saved.update(done)
            except Exception:
                # Harmless: the next attempt finds the open connection.
                self._log.failure("cannot save the client state")
            if link is not None:
                self._log.info(
                    "re-handshake with {peer} done: {conn}", peer=node, conn=link.conn
                )
                self._linked(link)
            return
