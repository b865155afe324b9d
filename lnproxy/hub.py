"""The hub: nodes, their peer connections, their sessions and their inbox.

This is the middle layer.  Below it sit the pure BOLT 8 / BOLT 1 code and the
Twisted peer protocol (:mod:`lnproxy.peer`); above it the WebSocket API
(:mod:`lnproxy.api`) and the webhook notifier, which talk to it through
intention-named methods and observe it through callback lists
(:attr:`Hub.on_event_stored`, :attr:`Hub.on_login`, ...).

The hub is the registry of nodes, connections and sessions and the facade
the API calls; three units beside it do the rest (docs/architecture.md):

- :mod:`lnproxy.journal` numbers, batches and commits events, and offers
  them only once committed (durability, below);
- :mod:`lnproxy.keepalive` pings silent peers and closes dead ones;
- :mod:`lnproxy.answer` decides what the proxy answers by itself; the hub
  only carries the decision out (hub -> answer -> peer): it sends the reply,
  delivers a pong that answers the client's ping, keeps a peer's
  ``peer_storage`` blob (with the journal's next batch) and hands it back in
  ``peer_storage_retrieval`` right behind the client's next ``init`` to that
  peer.  The per-connection facts the answer needs (the pings waiting for a
  pong, whether the client asked for gossip) live on the :class:`Connection`.

Every connection's state is one :class:`~lnproxy.lifecycle.Lifecycle`,
shared with its peer protocol.  A :class:`Connection` reports to the hub
through :class:`ConnectionOwner`, never through the hub's private methods.

Durability: every event gets its per-node ``seq`` when it happens, is put in
a batch, and the batch is committed to SQLite at the end of the reactor turn
(one transaction for everything that arrived in that turn).  Only after the
commit is an event offered to sessions and observers, so a client never sees
an event that a crash could lose.  A connection row is committed when act
2 is relayed (before the client learns the conn id, so a crash of the
process still yields its ``closed`` event), without an fsync of its own: it
sits on every set-up's critical path, and only a power cut in the
milliseconds before the next event's fsync'd commit (normally the peer's
``init``) could lose it, costing that connection its ``closed`` event.  Its
later changes (``open``, the peer's ``init``) only matter while the process
lives, so they ride along with the next batch.

Several processes (PostgreSQL, docs/protocol.md, "Running several processes
(scale-out)"): with a database executor the hub never calls the store on the
reactor thread.  The journal commits on the executor's writer thread; login
claims the node through the lease keeper (code 9 with the owner's URL when
another live process serves it) and reads through the executor; a session
replays its backlog from a reader thread; a connection row is committed
before act 2 is relayed by waiting for the journal.  Nodes taken over from a
dead process come in through :meth:`Hub.adopt_claim` (their ``closed``
events, reason ``proxy failed``); nodes this process lost go out through
:meth:`Hub.drop_nodes` (sessions and peer links closed at once, nothing
written for them).

Memory: a node's unacknowledged events live on disk, not in memory.  A
session that cannot keep up (its WebSocket transport paused us) reads its
backlog from the store when it drains.  When a node's inbox reaches its cap,
the proxy stops reading that node's peers until the client acknowledges.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lnproxy import noise, wire
from lnproxy.answer import (
    AnswerBudget,
    AnswerContext,
    PingLedger,
    PingOwner,
    answer,
    asks_for_gossip,
)
from lnproxy.journal import Journal, event_text, message_head
from lnproxy.keepalive import KeepaliveSweep
from lnproxy.lifecycle import (
    ANNOUNCED,
    PENDING,
    VISIBLE,
    ConnState,
    Lifecycle,
)
from lnproxy.peer import IPeerListener, PeerFactory, PeerProtocol
from lnproxy.policy import MessageClass, Policy
from lnproxy.protocol import (
    HANDSHAKE_FAILED,
    INTERNAL_ERROR,
    LIMIT_EXCEEDED,
    NOT_LOGGED_IN,
    NOT_OPEN,
    PEER_UNREACHABLE,
    SERVED_ELSEWHERE,
    UNKNOWN_CONNECTION,
    format_address,
)
from lnproxy.snapshot import ConnectionSnapshot, HandshakeSnapshot
from lnproxy.store import ConnectionRow, EventRow, IStore, NodeLost, StoreError

if TYPE_CHECKING:
    from lnproxy.leases import LeaseKeeper
    from lnproxy.store.executor import DatabaseExecutor
    from lnproxy.store.postgres import Claim

__all__ = [
    "Limits",
    "HubError",
    "Hub",
    "Node",
    "Connection",
    "ConnectionOwner",
    "Session",
    "EventSink",
    "ConnectPeer",
]

#: How many stored events a catching-up session reads per reactor turn.
REPLAY_CHUNK = 256

_CONNECTING = ConnState.CONNECTING
_HANDSHAKE = ConnState.HANDSHAKE
_OPEN = ConnState.OPEN
_CLOSING = ConnState.CLOSING
_CLOSED = ConnState.CLOSED
_ABANDONED = ConnState.ABANDONED


class HubError(Exception):
    """A refusal with a protocol error code; the API turns it into a reply."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: The error's ``data`` member (e.g. ``{"url": ...}`` with code 9).
        self.data = data


#: errno values that mean "this process (or the system) has no descriptor
#: left": a limit of the proxy, not a fault of the peer.
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)


def _unreachable(err: BaseException) -> HubError:
    """The error a failed TCP connect gives the client.

    Out of file descriptors is code 7 (a limit), and says so: Twisted
    reports it as ``ConnectBindError`` ("Couldn't bind"), which would send
    an operator looking at the peer instead of at ``LimitNOFILE``.
    """
    code = getattr(err, "osError", None)
    if code is None:
        code = getattr(err, "errno", None)
    if code in _NO_DESCRIPTORS:
        return HubError(
            LIMIT_EXCEEDED, f"proxy is out of file descriptors ({os.strerror(code)})"
        )
    return HubError(PEER_UNREACHABLE, f"peer unreachable: {err}")
@dataclass(frozen=True)
class Limits:
    """Operator limits; each one is answered with code 7 when exceeded.

    Defaults are sized for a phone wallet: a handful of devices, tens of
    channels, and an inbox that can hold days of gossip-free traffic.
    """

    connections_per_node: int = 200
    pending_handshakes_per_node: int = 16
    pending_handshakes_total: int = 1024
    sessions_per_node: int = 8
    events_per_node: int = 10000
    webhooks_per_node: int = 10
    max_message: int = noise.MAX_MESSAGE_SIZE
    handshake_timeout: float = 30.0
    keepalive: float = 60.0
    connect_timeout: float = 30.0
    #: Once a length header arrived, its body must follow within this time.
    body_timeout: float = 30.0

    def as_hello(self) -> dict[str, Any]:
        """The ``limits`` object of the ``hello`` notification."""
        return {
            "max_message": self.max_message,
            "connections_per_node": self.connections_per_node,
            "sessions_per_node": self.sessions_per_node,
            "events_per_node": self.events_per_node,
            "webhooks_per_node": self.webhooks_per_node,
            "handshake_timeout": self.handshake_timeout,
            "keepalive": self.keepalive,
            "pending_handshakes_per_node": self.pending_handshakes_per_node,
        }


class ConnectPeer(TypingProtocol):
    """Opens TCP to a peer: ``(host, port, factory, timeout) -> Deferred``.

    The Deferred fires with the protocol once TCP is up, or fails.  The
    service passes one built on ``HostnameEndpoint``; tests may pass another.
    """

    def __call__(
        self, host: str, port: int, factory: PeerFactory, timeout: float
    ) -> defer.Deferred[Any]: ...


class EventSink(TypingProtocol):
    """What a session writes events to (the WebSocket protocol)."""

    def send_event(self, text: str) -> None:
        """Send one notification (JSON text) to the client."""

    def close_session(self, reason: str) -> defer.Deferred[None]:
        """The proxy is stopping: close the client's connection after what
        was already sent; fire when it is closed."""



class ConnectionOwner(TypingProtocol):
    """What a :class:`Connection` reports to (the hub).

    Intention-named: the connection says what happened, the owner decides
    what that means for the registry, the journal and the metrics.
    """

    def connection_announced(self, conn: Connection) -> None:
        """Act 2 is being relayed: the client will have the conn id."""

    def handshake_ended(self, conn: Connection) -> None:
        """The connection left the handshake (opened, closing or gone)."""

    def connection_opened(self, conn: Connection) -> None:
        """``finish`` installed the keys."""

    def connection_changed(self, conn: Connection) -> None:
        """A persisted field changed (the peer's ``init``)."""

    def messages_received(self, conn: Connection, messages: list[bytes]) -> None:
        """Authenticated messages from the peer (the hot path)."""

    def connection_lost(self, conn: Connection, reason: str) -> None:
        """TCP is gone; the lifecycle is ``closed`` or ``abandoned``."""


class Session:
    """One logged-in client connection of a node, as the hub sees it.

    It delivers events in ``seq`` order: new events directly while it keeps
    up, its backlog from the store otherwise (after login, after an ack by
    another session skipped ahead, or after its transport paused).
    """

    _log = Logger()

    def __init__(self, hub: Hub, node: Node, sink: EventSink) -> None:
        self.hub = hub
        self.node = node
        self.sink = sink
        self.last_sent = 0
        self.paused = False
        self.closed = False
        self._catching_up = True
        self._replay_call: IDelayedCall | None = None
        #: A replay read on the executor is in flight (PostgreSQL).
        self._reading = False
        #: The highest seq offered while catching up (PostgreSQL: an event
        #: committed after a replay read was taken must be read again).
        self._offered = 0

    def start(self) -> None:
        """Begin the replay of every unacknowledged event."""
        self._replay()

    def offer(self, seq: int, text: str) -> None:
        """A new event was committed: send it now if we are in step."""
        if self._catching_up or self.closed:
            if seq > self._offered:
                self._offered = seq
            return
        if self.paused or seq != self.last_sent + 1:
            self._catching_up = True
            if not self.paused:
                self._schedule_replay()
            return
        self.last_sent = seq
        self.sink.send_event(text)
        self.hub.count("event_delivered")

    def pause(self) -> None:
        """The client is not reading: stop sending; events wait on disk."""
        self.paused = True

    def resume(self) -> None:
        """The client drained its buffer: send what it missed."""
        self.paused = False
        if self._catching_up:
            self._schedule_replay()

    def close(self) -> None:
        """The session ended."""
        self.closed = True
        if self._replay_call is not None and self._replay_call.active():
            self._replay_call.cancel()
        self._replay_call = None

    def _schedule_replay(self) -> None:
        if self._replay_call is None or not self._replay_call.active():
            self._replay_call = self.hub.clock.callLater(0, self._replay)

    def _replay(self) -> None:
        self._replay_call = None
        if self.hub.executor is not None:
            self._replay_async(self.hub.executor)
            return
        while not self.closed and not self.paused:
            rows = self.hub.store.events_after(
                self.node.node_id, self.last_sent, REPLAY_CHUNK
            )
            for row in rows:
                self.last_sent = row.seq
                self.sink.send_event(event_text(row))
                self.hub.count("event_delivered")
                if self.paused or self.closed:
                    return
            if len(rows) < REPLAY_CHUNK:
                self._catching_up = False
                return
            # Yield to the reactor between chunks; a large backlog must not
            # starve everyone else.
            self._schedule_replay()
            return

    def _replay_async(self, executor: DatabaseExecutor[Any]) -> None:
        """One chunk of the backlog, read on a reader thread (PostgreSQL)."""
        if self._reading or self.closed or self.paused:
            return
        self._reading = True
        node_id = self.node.node_id
        after = self.last_sent

        def got(rows: list[EventRow]) -> None:
            self._reading = False
            for row in rows:
                if self.closed:
                    return
                if row.seq <= self.last_sent:
                    continue
                self.last_sent = row.seq
                self.sink.send_event(event_text(row))
                self.hub.count("event_delivered")
                if self.paused:
                    return
            if self.closed or self.paused:
                return
            if len(rows) < REPLAY_CHUNK and self._offered <= self.last_sent:
                self._catching_up = False
                return
            self._schedule_replay()

        def failed(f: Failure) -> None:
            self._reading = False
            self._log.warn(
                "could not read the backlog of {node}: {error}; retrying",
                node=node_id,
                error=f.getErrorMessage(),
            )
            if not self.closed and (
                self._replay_call is None or not self._replay_call.active()
            ):
                self._replay_call = self.hub.clock.callLater(1.0, self._replay)

        executor.read(
            lambda store: store.events_after(node_id, after, REPLAY_CHUNK)
        ).addCallbacks(got, failed)


@implementer(IPeerListener)
class Connection:
    """One peer connection of one node, from ``connect`` to its ack'd close.

    Its state is :attr:`life` (shared with its :class:`PeerProtocol`); it
    reports to its :class:`ConnectionOwner`.

    :param owner: the hub.
    :param clock: for the handshake and init timers.
    :param handshake_timeout: seconds for act 3 after act 2, and for the
        peer's ``init`` after ``finish``.
    """

    _log = Logger()

    def __init__(
        self,
        owner: ConnectionOwner,
        node: Node,
        conn_id: str,
        peer: str,
        address: str,
        persist: bool,
        since: float,
        clock: IReactorTime,
        handshake_timeout: float,
        state: ConnState = _CONNECTING,
    ) -> None:
        self.owner = owner
        self.node = node
        self.conn_id = conn_id
        self.peer = peer
        self.address = address
        self.persist = persist
        self.since = since
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.life = Lifecycle(state, self._state_changed)
        self.their_init: bytes | None = None
        self.protocol: PeerProtocol | None = None
        self.act2: defer.Deferred[bytes] = defer.Deferred()
        self.deadline = since + handshake_timeout
        self.last_rx = since
        self.ping_sent_at: float | None = None
        self.body_since: float | None = None
        #: Pings (the proxy's and the client's) waiting for their pong.
        self.pings = PingLedger()
        #: Paces what the proxy answers by itself on this connection.
        self.answers = AnswerBudget(since)
        #: The client sent a gossip query: the peer's gossip reaches it.
        self.gossip_asked = False
        #: The client has sent its first message (its ``init``).
        self.client_spoke = False
        #: When the peer's init must have come (while waiting for it).
        self.init_deadline: float | None = None
        #: The seq of its ``closed`` event, once recorded.
        self.closed_seq: int | None = None
        self._timer: IDelayedCall | None = None
        #: Fires when TCP is gone, once the hub asked to be told (shutdown).
        self.gone: defer.Deferred[None] | None = None
        self._close_reason: str | None = None
        self._client_requested = False

    @property
    def state(self) -> ConnState:
        """Where the connection is in its life."""
        return self.life.state

    @property
    def announced(self) -> bool:
        """True while the client has a conn id for it and it is not closed."""
        return self.life.state in ANNOUNCED

    def _state_changed(self, old: ConnState, new: ConnState) -> None:
        if old in PENDING and new not in PENDING:
            self.owner.handshake_ended(self)

    def row(self, closed_seq: int | None = None) -> ConnectionRow:
        """This connection as a store row."""
        return ConnectionRow(
            conn_id=self.conn_id,
            node_id=self.node.node_id,
            peer=self.peer,
            address=self.address,
            persist=self.persist,
            since=self.since,
            state=self.life.state.wire_name,
            their_init=self.their_init.hex() if self.their_init else None,
            closed_seq=closed_seq,
        )

    # -- IPeerListener ------------------------------------------------------

    def peer_connected(self, protocol: PeerProtocol) -> None:
        """TCP is up and act 1 is written (or a resumed connection is on
        its new transport)."""
        self.protocol = protocol
        if self.life.state is _OPEN and self.node.reading_paused:
            protocol.pause_reading()

    def act2_received(self, act2: bytes) -> None:
        """Relay act 2: the connection now exists for the client."""
        self.owner.connection_announced(self)
        self._set_timer(self.deadline, self._handshake_timed_out)
        self.act2.callback(act2)

    def handshake_failed(self, reason: str) -> None:
        """Act 2 never came or was malformed: ``connect`` fails (code 5)."""
        if not self.act2.called:
            self.act2.errback(HubError(HANDSHAKE_FAILED, f"handshake failed: {reason}"))

    def messages_received(self, messages: list[bytes]) -> None:
        """Authenticated messages from the peer."""
        self.owner.messages_received(self, messages)

    def peer_closed(self, reason: str) -> None:
        """TCP is gone."""
        self._cancel_timer()
        if self._close_reason is not None:
            reason = self._close_reason
        if not self.act2.called:
            self.act2.errback(HubError(HANDSHAKE_FAILED, f"handshake failed: {reason}"))
        self.owner.connection_lost(self, reason)

    # -- orders -------------------------------------------------------------

    def finish(self, act3: bytes, sk: bytes, rk: bytes, ck: bytes) -> None:
        """Write act 3 and install the transport; start waiting for init.

        :raise HubError: code 6 unless the connection is in its handshake
            (a connection closing after a handshake timeout included).
        """
        state = self.life.state
        if state is not _HANDSHAKE or self.protocol is None:
            raise HubError(NOT_OPEN, f"connection is {state.value}, not in handshake")
        early = self.protocol.finish(act3, sk, rk, ck)
        now = self.clock.seconds()
        self.last_rx = now
        self.owner.connection_opened(self)
        self._await_init(now + self.handshake_timeout)
        if early:
            self.messages_received(early)

    def send(self, msg: bytes) -> None:
        """Encrypt and send one message to the peer.

        :raise HubError: code 6 when the connection is not open, including
            while it is closing (``disconnect`` was answered but TCP is not
            gone yet) and when this very frame hit the write buffer cap.
        """
        protocol = self.protocol
        life = self.life
        if life.state is not _OPEN or protocol is None:
            raise HubError(NOT_OPEN, f"connection is {life.state.value}, not open")
        protocol.send_message(msg)
        if life.state is not _OPEN:
            # The peer stopped reading and this frame crossed the write
            # buffer cap: it was not handed to TCP, the connection is aborted.
            raise HubError(NOT_OPEN, "connection closed: the peer stopped reading")

    def send_own(self, msg: bytes) -> bool:
        """Send a message of the proxy's own (a pong, a reply, a ping).

        A ping is recorded in :attr:`pings` as the proxy's.

        :return: False when the connection can no longer take it (closing,
            or this frame hit the write buffer cap): there is no one left
            to answer.
        """
        try:
            self.send(msg)
        except (HubError, ValueError):
            return False
        if msg[:2] == _PING_TYPE:
            self.pings.sent(PingOwner.PROXY, msg)
        return True

    def send_client(self, msg: bytes) -> bool:
        """Send a message of the client's (``send``) and note what it means
        for this connection: a ping waits for its pong as the client's, a
        gossip query opens the connection to the peer's gossip (the stop
        filter closes it again).

        :return: whether this was the client's first message on the
            connection.
        :raise HubError: as :meth:`send`.
        """
        self.send(msg)
        first = not self.client_spoke
        self.client_spoke = True
        if len(msg) >= 2:
            msg_type = (msg[0] << 8) | msg[1]
            if msg_type == wire.PING:
                self.pings.sent(PingOwner.CLIENT, msg)
            else:
                asked = asks_for_gossip(msg_type, msg)
                if asked is not None:
                    self.gossip_asked = asked
        return first

    def close(self, reason: str, client_requested: bool = False) -> None:
        """Close the TCP connection; the closed event says ``reason``."""
        if self._close_reason is None:
            self._close_reason = reason
            self._client_requested = client_requested
        self._cancel_timer()
        if self.protocol is not None:
            self.protocol.close(reason)

    @property
    def reconnect(self) -> bool:
        """Whether the closed event asks the client to re-handshake."""
        return self.persist and not self._client_requested

    @property
    def reading_paused(self) -> bool:
        """The proxy is not reading this peer (or has no protocol)."""
        p = self.protocol
        return p is None or p.read_paused

    @property
    def awaiting_body(self) -> bool:
        """A length header arrived and its body has not (for the sweep)."""
        p = self.protocol
        return p is not None and p.awaiting_body

    def pause_reading(self) -> None:
        """Stop reading the peer (its node's inbox is full), if open."""
        if self.protocol is not None and self.life.state is _OPEN:
            self.protocol.pause_reading()

    def resume_reading(self) -> None:
        """Read the peer again, if open (a closing transport may refuse)."""
        if self.protocol is not None and self.life.state is _OPEN:
            self.protocol.resume_reading()

    def init_received(self, msg: bytes) -> None:
        """The peer's init: keep it for ``connections``; stop the init timer."""
        self.their_init = msg
        self.init_deadline = None
        self._cancel_timer()
        self.owner.connection_changed(self)

    # -- snapshots ------------------------------------------------------------

    @classmethod
    def from_snapshot(
        cls,
        owner: ConnectionOwner,
        node: Node,
        snap: ConnectionSnapshot,
        clock: IReactorTime,
        handshake_timeout: float,
    ) -> Connection:
        """Rebuild an open connection; its :attr:`protocol` is ready to be
        attached to the TCP transport it lives on now.

        :raise ValueError: when ``snap`` is not of an open connection.
        """
        conn = cls(
            owner,
            node,
            snap.conn_id,
            snap.peer,
            snap.address,
            snap.persist,
            snap.since,
            clock,
            handshake_timeout,
            state=snap.state,
        )
        conn.act2.callback(b"")  # the handshake is long over
        conn.their_init = snap.their_init
        conn.last_rx = snap.last_rx
        conn.ping_sent_at = snap.ping_sent_at
        conn.body_since = snap.body_since
        conn.pings = PingLedger(snap.pings)
        conn.gossip_asked = snap.gossip_asked
        conn.client_spoke = snap.client_spoke
        conn.protocol = PeerProtocol.resume(
            conn, clock, conn.life, noise.Transport.from_snapshot(snap.transport)
        )
        if snap.init_deadline is not None and snap.their_init is None:
            conn._await_init(snap.init_deadline)
        return conn

    def snapshot(self) -> ConnectionSnapshot:
        """The complete state of this open connection, as a value.

        :raise HubError: code 6 when the connection is not open.
        """
        if self.life.state is not _OPEN or self.protocol is None:
            raise HubError(NOT_OPEN, f"connection is {self.life.state.value}, not open")
        return ConnectionSnapshot(
            conn_id=self.conn_id,
            node_id=self.node.node_id,
            peer=self.peer,
            address=self.address,
            persist=self.persist,
            state=self.life.state,
            since=self.since,
            transport=self.protocol.transport_snapshot(),
            their_init=self.their_init,
            last_rx=self.last_rx,
            ping_sent_at=self.ping_sent_at,
            body_since=self.body_since,
            init_deadline=self.init_deadline,
            pings=self.pings.waiting,
            gossip_asked=self.gossip_asked,
            client_spoke=self.client_spoke,
        )

    @classmethod
    def from_handshake_snapshot(
        cls,
        owner: ConnectionOwner,
        node: Node,
        snap: HandshakeSnapshot,
        clock: IReactorTime,
        handshake_timeout: float,
    ) -> Connection:
        """Rebuild a connection whose act 2 was relayed; its :attr:`protocol`
        waits for ``finish`` on the TCP transport it lives on now."""
        conn = cls(
            owner,
            node,
            snap.conn_id,
            snap.peer,
            snap.address,
            snap.persist,
            snap.since,
            clock,
            handshake_timeout,
            state=_HANDSHAKE,
        )
        conn.act2.callback(b"")  # relayed by the previous process
        conn.deadline = snap.deadline
        conn.protocol = PeerProtocol.resume_handshake(
            conn, clock, conn.life, snap.early
        )
        conn._set_timer(snap.deadline, conn._handshake_timed_out)
        return conn

    def handshake_snapshot(self) -> HandshakeSnapshot:
        """This connection, waiting for ``finish``, as a value.

        :raise HubError: code 6 when it is not in its handshake.
        """
        if self.life.state is not _HANDSHAKE or self.protocol is None:
            raise HubError(
                NOT_OPEN, f"connection is {self.life.state.value}, not in handshake"
            )
        return HandshakeSnapshot(
            conn_id=self.conn_id,
            node_id=self.node.node_id,
            peer=self.peer,
            address=self.address,
            persist=self.persist,
            since=self.since,
            deadline=self.deadline,
            early=self.protocol.early_bytes,
        )

    def pause_timer(self) -> None:
        """Stop the handshake/init timer (a hot restart freezes us)."""
        self._cancel_timer()

    def restart_timer(self) -> None:
        """Set again the timer :meth:`pause_timer` stopped, if any."""
        state = self.life.state
        if state is _HANDSHAKE:
            self._set_timer(self.deadline, self._handshake_timed_out)
        elif state is _OPEN and self.init_deadline is not None:
            self._set_timer(self.init_deadline, self._init_timed_out)

    # -- timers (one-shot; they fire only when a peer misbehaves) -----------

    def _await_init(self, deadline: float) -> None:
        self.init_deadline = deadline
        self._set_timer(deadline, self._init_timed_out)

    def _set_timer(self, at: float, fn: Callable[[], None]) -> None:
        self._cancel_timer()
        delay = max(0.0, at - self.clock.seconds())
        self._timer = self.clock.callLater(delay, fn)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _handshake_timed_out(self) -> None:
        self._timer = None
        self.close("handshake timeout")

    def _init_timed_out(self) -> None:
        self._timer = None
        if self.their_init is not None:
            return
        if self.protocol is not None and self.protocol.read_paused:
            # We are not reading this peer (its node's inbox is full): its
            # init may be waiting in the socket.  Like keepalive, the clock
            # only runs while we read.
            self._await_init(self.clock.seconds() + self.handshake_timeout)
            return
        self.close("init timeout")


class Node:
    """Everything the hub holds for one node id."""

    def __init__(self, node_id: str, next_seq: int, pending: int) -> None:
        self.node_id = node_id
        self.next_seq = next_seq
        #: Unacknowledged events, committed or in the current batch.
        self.pending = pending
        self.sessions: list[Session] = []
        self.connections: dict[str, Connection] = {}
        self.reading_paused = False

    def live_connections(self) -> int:
        """Connections that count against the per-node cap."""
        return sum(1 for c in self.connections.values() if c.life.state is not _CLOSED)

    def handshakes(self) -> int:
        """Connections still between ``connect`` and ``finish``."""
        return sum(1 for c in self.connections.values() if c.life.state in PENDING)


#: What :meth:`Hub.login` gives: the session and the login result.
LoginResult = tuple["Session", dict[str, Any]]


def _connection_object(row: ConnectionRow) -> dict[str, Any]:
    """The protocol's connection object of a stored row."""
    return {
        "conn": row.conn_id,
        "peer": row.peer,
        "address": row.address,
        "state": row.state,
        "persist": row.persist,
        "since": row.since,
        "their_init": row.their_init,
    }


class Hub(service.Service):
    """Nodes, connections, sessions and inboxes of one proxy process.

    :param store: the durable store (opened by the caller).
    :param clock: the reactor's time interface.
    :param connect_peer: opens TCP to a peer (see :class:`ConnectPeer`).
    :param policy: the message policy.
    :param limits: operator limits and timeouts.
    """

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        connect_peer: ConnectPeer,
        policy: Policy | None = None,
        limits: Limits | None = None,
        executor: DatabaseExecutor[Any] | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        #: The lease keeper (PostgreSQL): claims nodes at login.
        self.leases: LeaseKeeper | None = None
        self.clock = clock
        self.connect_peer = connect_peer
        self.policy = policy or Policy()
        self.limits = limits or Limits()
        self.nodes: dict[str, Node] = {}
        self.connections: dict[str, Connection] = {}
        self._open: dict[str, Connection] = {}
        self._handshakes = 0
        self.journal = Journal(
            store, clock, self._offer, executor=executor, on_lost=self._lost
        )
        self.keepalive = KeepaliveSweep(
            clock,
            self._open,
            self.limits.keepalive,
            self.limits.body_timeout,
            self.count,
        )
        self._stopping = False
        #: Set once a hot restart handed everything over (the store is
        #: another process's from then on).
        self._released = False
        #: Called as ``fn(row, online)`` after an event is committed (the
        #: journal's observers).
        self.on_event_stored: list[Callable[[EventRow, bool], None]] = (
            self.journal.observers
        )
        #: Called as ``fn(node_id)`` after a session of a node logs in.
        self.on_login: list[Callable[[str], None]] = []
        #: Called as ``fn(name)`` for countable happenings (metrics).
        self.on_count: list[Callable[[str], None]] = []
        #: Called as ``fn(node_id, count)`` after ``count`` events were acked.
        self.on_acked: list[Callable[[str, int], None]] = []
        #: Called as ``fn(seconds)`` from ``connect`` to act 2 relayed.
        self.on_handshake_relayed: list[Callable[[float], None]] = []
        #: Called as ``fn(claim)`` when this process starts serving a node
        #: (PostgreSQL: at a login or a take-over).
        self.on_claimed: list[Callable[[Claim], None]] = []
        #: Called as ``fn(node_ids)`` when it stopped serving nodes that
        #: another process took over.
        self.on_dropped: list[Callable[[Sequence[str]], None]] = []
        #: Called as ``fn(row)`` to wake a taken-over node's client with its
        #: newest summon-class event (committed earlier, by another process).
        self.on_wake: list[Callable[[EventRow], None]] = []
        self._table = self.policy.table
        self._gossip_table = self.policy.gossip_table

    # -- service ------------------------------------------------------------

    def startService(self) -> None:
        """Close, durably, the connections a crash left open; start the sweep."""
        super().startService()
        if self.executor is None:
            # With PostgreSQL the connections a dead process left open are
            # closed by whoever takes its nodes over (adopt_claim).
            self._recover()
        self.keepalive.start()

    def stopService(self) -> defer.Deferred[None]:
        """Record ``proxy stopped`` for every connection, then close them
        and the logged-in clients' sessions.

        The events are committed before any socket is closed, so an operator's
        SIGTERM loses nothing even if the peers take long to go away.  The
        Deferred fires once peers and sessions are gone (peers are aborted
        after 3 s; a client that ignores the close is dropped by the
        WebSocket close handshake timeout).
        """
        super().stopService()
        self._stopping = True
        self.keepalive.stop()
        waits = []
        if self._released:
            # Handed over: the remaining connections (handshakes not yet
            # relayed) go without events, the store is not ours any more.
            for conn in list(self.connections.values()):
                if conn.protocol is not None and conn.protocol.transport is not None:
                    conn.protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return defer.succeed(None)
        for conn in list(self.connections.values()):
            if conn.life.state is _CLOSED:
                continue
            if conn.protocol is not None and conn.protocol.transport is not None:
                conn.gone = defer.Deferred()
                waits.append(conn.gone)
            conn.close("proxy stopped")
            if conn.announced:
                # Closing, TCP not gone yet: record the close now.
                self._record_closed(conn, "proxy stopped")
        self.flush()
        if self.executor is not None:
            # The commit runs on the database thread: offer the closed
            # events (wait for it, 10 s at most: if the database is away
            # they stay unwritten and whoever takes the nodes over writes
            # "proxy failed" for the rows instead) before closing sessions.
            committed = self.journal.idle()
            committed.addTimeout(10.0, self.clock)
            done = committed.addBoth(lambda _: self._close_sessions(waits))
        else:
            done = self._close_sessions(waits)
        return done.addBoth(self._journal_closed)

    def _journal_closed(self, result: Any) -> Any:
        """The last step of a stop: the journal schedules nothing more."""
        self.journal.close()
        return result

    def _close_sessions(self, waits: list[defer.Deferred[Any]]) -> defer.Deferred[None]:
        """The end of :meth:`stopService`: close every session, wait."""
        # Close the clients' WebSockets politely (after the closed events
        # just offered to them): the reactor's shutdown would otherwise drop
        # them with those events still in their write buffers.
        for node in self.nodes.values():
            for session in list(node.sessions):
                try:
                    waits.append(session.sink.close_session("proxy stopping"))
                except Exception:
                    # Never let one client stop the shutdown.
                    self._log.failure(
                        "could not close a session of {node}", node=node.node_id
                    )
        if not waits:
            return defer.succeed(None)
        dl = defer.DeferredList(waits)
        # Peers get a few seconds to take the FIN; then we go anyway.
        timeout = self.clock.callLater(3.0, self._abort_all)
        dl.addBoth(lambda _: timeout.cancel() if timeout.active() else None)
        return dl.addCallback(lambda _: None)

    def _abort_all(self) -> None:
        for conn in list(self.connections.values()):
            p = conn.protocol
            if p is not None and p.transport is not None:
                p.transport.abortConnection()  # type: ignore[attr-defined]

    def _recover(self) -> None:
        # Connections adopted from a previous process (hot restart) are
        # open here: not left open by a crash.
        rows = [
            row
            for row in self.store.unclosed_connections()
            if row.conn_id not in self.connections
        ]
        for row in rows:
            node = self._node(row.node_id)
            params = {
                "conn": row.conn_id,
                "peer": row.peer,
                "reason": "proxy restarted",
                "reconnect": row.persist,
            }
            seq = self._emit(node, "closed", params, summon=row.persist)
            self.journal.record_close(row.conn_id, seq)
        if rows:
            self._log.info(
                "recorded {count} connections left open by an unclean stop",
                count=len(rows),
            )
        self.flush()

    # -- nodes and sessions ---------------------------------------------------

    def _node(self, node_id: str) -> Node:
        node = self.nodes.get(node_id)
        if node is None and self.executor is not None:
            # Only a claim creates a node here (PostgreSQL); it was dropped
            # (taken over) while this session was still open.
            raise HubError(
                NOT_LOGGED_IN,
                "this session has ended: its node is now served by another "
                "process; log in again",
            )
        if node is None:
            node = Node(
                node_id,
                self.store.next_seq(node_id),
                self.store.pending_count(node_id),
            )
            self.nodes[node_id] = node
        return node

    def login(
        self, node_id: str, sink: EventSink
    ) -> LoginResult | defer.Deferred[LoginResult]:
        """Attach a session to a node.

        With PostgreSQL, a Deferred: the node is claimed first (it fails
        with code 9 and ``data`` ``{"url": ...}`` when another live process
        serves the node) and the connections are read on the executor.

        :return: the session and the login result (``inbox``,
            ``connections``).  The caller sends the result, then calls
            :meth:`Session.start` to replay the inbox.
        :raise HubError: code 7 when the node has its maximum of sessions.
        """
        if self.executor is not None:
            return self._login_shared(node_id, sink)
        node = self._node(node_id)
        if len(node.sessions) >= self.limits.sessions_per_node:
            raise HubError(
                LIMIT_EXCEEDED,
                f"node already has {len(node.sessions)} sessions "
                f"(limit {self.limits.sessions_per_node})",
            )
        self.flush()
        session = Session(self, node, sink)
        node.sessions.append(session)
        result = {
            "node_id": node_id,
            "inbox": {"next_seq": node.next_seq, "pending": node.pending},
            "connections": self.list_connections(node_id),
        }
        for fn in self.on_login:
            fn(node_id)
        return session, result

    @defer.inlineCallbacks
    def _login_shared(self, node_id: str, sink: EventSink) -> Any:
        """``login`` on PostgreSQL: claim, attach, read the connections."""
        if node_id not in self.nodes:
            yield self._claim(node_id)
        node = self._node(node_id)
        if len(node.sessions) >= self.limits.sessions_per_node:
            raise HubError(
                LIMIT_EXCEEDED,
                f"node already has {len(node.sessions)} sessions "
                f"(limit {self.limits.sessions_per_node})",
            )
        # Attached (catching up: offers only mark what it must read) before
        # the reads, so no event committed meanwhile is missed.
        session = Session(self, node, sink)
        node.sessions.append(session)
        try:
            connections = yield self._connections_shared(node_id)
        except BaseException:
            self.logout(session)
            raise
        if self.nodes.get(node_id) is not node or session.closed:
            self.logout(session)
            raise HubError(
                NOT_LOGGED_IN, "the node moved to another process; log in again"
            )
        result = {
            "node_id": node_id,
            "inbox": {"next_seq": node.next_seq, "pending": node.pending},
            "connections": connections,
        }
        for fn in self.on_login:
            fn(node_id)
        return session, result

    def _claim(self, node_id: str) -> defer.Deferred[None]:
        """Become the node's owner, or fail with code 9 naming the owner."""
        from lnproxy.leases import LeaseLapsed

        leases = self.leases
        if leases is None:
            return defer.fail(HubError(INTERNAL_ERROR, "no lease keeper"))

        def claimed(claim: Claim) -> None:
            if not claim.owned:
                raise HubError(
                    SERVED_ELSEWHERE,
                    "node is served by another process",
                    {"url": claim.url},
                )
            self.adopt_claim(claim)

        def unavailable(f: Failure) -> None:
            f.trap(LeaseLapsed, StoreError)
            raise HubError(
                INTERNAL_ERROR,
                "the proxy cannot reach its database; try again shortly",
            )

        return leases.claim(node_id).addCallbacks(claimed, unavailable)

    def adopt_claim(self, claim: Claim) -> None:
        """Start serving a node this process just became the owner of.

        The connections a previous owner left open get their ``closed``
        event (reason ``proxy failed``, ``reconnect`` for persist ones,
        summon-class then, which wakes the client through the webhooks);
        a node with nothing to close but a summon-class event waiting is
        woken with that one (:attr:`on_wake`).
        """
        if claim.node_id in self.nodes:
            return
        node = Node(claim.node_id, claim.next_seq, claim.pending)
        self.nodes[claim.node_id] = node
        for fn in self.on_claimed:
            fn(claim)
        for row in claim.unclosed:
            params = {
                "conn": row.conn_id,
                "peer": row.peer,
                "reason": "proxy failed",
                "reconnect": row.persist,
            }
            seq = self._emit(node, "closed", params, summon=row.persist)
            self.journal.record_close(row.conn_id, seq, row.node_id)
        if claim.unclosed:
            self._log.info(
                "now serving node {node} (previous owner: {owner}): {count} "
                "connections it left open closed ('proxy failed')",
                node=claim.node_id,
                owner=claim.failed_owner or "this process, before its lease lapsed",
                count=len(claim.unclosed),
            )
            self.flush()
        elif claim.newest_summon is not None and claim.failed_owner is not None:
            for wake in self.on_wake:
                wake(claim.newest_summon)

    def adopt_claims(self, claims: Sequence[Claim]) -> None:
        """:meth:`adopt_claim` for each node of a take-over."""
        for claim in claims:
            self.adopt_claim(claim)

    def drop_nodes(self, node_ids: Sequence[str]) -> None:
        """Stop serving nodes another process took over, at once: close
        their sessions and peer links and drop what is not committed.
        Nothing is written for them (the new owner writes their closed
        events from the connection rows it finds)."""
        dropped = [n for n in node_ids if n in self.nodes]
        if not dropped:
            return
        self.journal.discard(dropped)
        for node_id in dropped:
            node = self.nodes.pop(node_id)
            for session in list(node.sessions):
                session.close()
                try:
                    session.sink.close_session("node moved to another process")
                except Exception:
                    self._log.failure(
                        "could not close a session of {node}", node=node_id
                    )
            node.sessions.clear()
            for conn in list(node.connections.values()):
                self.connections.pop(conn.conn_id, None)
                self._open.pop(conn.conn_id, None)
                protocol = conn.protocol
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.abortConnection()  # type: ignore[attr-defined]
        self._log.warn(
            "stopped serving {count} nodes (lease lapsed, or another process "
            "took them over)",
            count=len(dropped),
        )
        for fn in self.on_dropped:
            fn(dropped)

    def _lost(self, node_ids: Sequence[str]) -> None:
        """A write was refused with NodeLost: stop serving those nodes."""
        if self.leases is not None:
            self.leases.lost(node_ids)
        self.drop_nodes(node_ids)

    def logout(self, session: Session) -> None:
        """Detach a session (its WebSocket closed)."""
        session.close()
        node = session.node
        if session in node.sessions:
            node.sessions.remove(session)

    def online(self, node_id: str) -> bool:
        """Whether any session of the node is logged in."""
        node = self.nodes.get(node_id)
        return bool(node and node.sessions)

    # -- client requests -------------------------------------------------------

    def connect(
        self,
        node_id: str,
        peer: str,
        host: str,
        port: int,
        act1: bytes,
        persist: bool,
    ) -> defer.Deferred[tuple[str, bytes]]:
        """Open TCP to a peer, write act 1, wait for act 2.

        :return: a Deferred firing with ``(conn_id, act2)``, or failing with
            :class:`HubError` code 4 (unreachable) or 5 (handshake failed).
        :raise HubError: code 7 when a cap is reached: connections or
            unfinished handshakes of the node, handshakes in all, or the
            node's inbox (``events_per_node`` unacknowledged events).
        """
        node = self._node(node_id)
        limits = self.limits
        if self._stopping:
            raise HubError(PEER_UNREACHABLE, "proxy is stopping")
        if node.live_connections() >= limits.connections_per_node:
            raise HubError(
                LIMIT_EXCEEDED,
                f"node has {limits.connections_per_node} connections (the limit)",
            )
        if node.handshakes() >= limits.pending_handshakes_per_node:
            raise HubError(
                LIMIT_EXCEEDED,
                f"node has {limits.pending_handshakes_per_node} unfinished "
                "handshakes (the limit)",
            )
        if self._handshakes >= limits.pending_handshakes_total:
            raise HubError(LIMIT_EXCEEDED, "proxy has too many unfinished handshakes")
        if node.pending >= limits.events_per_node:
            # The node's peers are not being read; a new one would be paused
            # at once.  The client is online: it should acknowledge first.
            raise HubError(
                LIMIT_EXCEEDED,
                f"inbox is full ({node.pending} unacknowledged events, the "
                "limit): acknowledge events first",
            )
        now = self.clock.seconds()
        conn = Connection(
            self,
            node,
            secrets.token_hex(8),
            peer,
            format_address(host, port),
            persist,
            now,
            self.clock,
            limits.handshake_timeout,
        )
        self._register(conn)
        self._handshakes += 1
        factory = PeerFactory(
            conn, act1, self.clock, limits.handshake_timeout, conn.life
        )

        def tcp_failed(f: Failure) -> Failure:
            if not conn.act2.called:
                conn.act2.errback(self._connect_error(f.value or Exception()))
                self._forget(conn)
            return f

        try:
            tcp = self.connect_peer(host, port, factory, limits.connect_timeout)
        except Exception as e:
            self._forget(conn)
            raise self._connect_error(e) from e
        tcp.addErrback(tcp_failed).addErrback(lambda _: None)

        def handed(act2: bytes) -> Any:
            if self.executor is not None:
                # The row must be committed before the client learns the
                # conn id (see connection_announced).
                return self.journal.idle().addCallback(
                    lambda _: (conn.conn_id, act2)
                )
            return conn.conn_id, act2

        return conn.act2.addCallback(handed)

    def _connect_error(self, err: BaseException) -> HubError:
        refusal = _unreachable(err)
        if refusal.code == LIMIT_EXCEEDED:
            # The operator's problem, not the client's: say what to raise.
            self._log.warn(
                "{message}: refused a peer connection; raise the process's "
                "RLIMIT_NOFILE (LimitNOFILE= under systemd)",
                message=refusal.message,
            )
        return refusal

    def connection(self, node_id: str, conn_id: str) -> Connection:
        """A connection of this node, or code 3 exactly as if it did not exist."""
        conn = self.connections.get(conn_id)
        if (
            conn is None
            or conn.node.node_id != node_id
            or conn.life.state not in VISIBLE
        ):
            raise HubError(UNKNOWN_CONNECTION, "unknown connection")
        return conn

    def finish(
        self, node_id: str, conn_id: str, act3: bytes, sk: bytes, rk: bytes, ck: bytes
    ) -> None:
        """Hand the connection over to the proxy (see :meth:`Connection.finish`)."""
        conn = self.connection(node_id, conn_id)
        conn.finish(act3, sk, rk, ck)

    def send(self, node_id: str, conn_id: str, msg: bytes) -> None:
        """Send a client's message to its peer.

        When it is the client's first message on the connection and an
        ``init``, the blob the peer gave the proxy to keep goes out right
        behind it in a ``peer_storage_retrieval``, in the same call, so
        before anything else the client sends (docs/protocol.md, "Peer
        storage").
        """
        conn = self.connection(node_id, conn_id)
        first = conn.send_client(msg)
        self.count("message_out")
        if first and msg[:2] == _INIT_TYPE:
            blob = self.journal.peer_storage(node_id, conn.peer)
            if blob is not None:
                retrieval = wire.PeerStorage(blob, retrieval=True).encode()
                if conn.send_own(retrieval):
                    self.count("peer_storage_retrieval_sent")

    def disconnect(self, node_id: str, conn_id: str) -> None:
        """Close a connection at the client's request."""
        conn = self.connection(node_id, conn_id)
        if not conn.announced:
            raise HubError(NOT_OPEN, "connection is closed")
        conn.close("client request", client_requested=True)

    def list_connections(
        self, node_id: str
    ) -> list[dict[str, Any]] | defer.Deferred[list[dict[str, Any]]]:
        """Connection objects of a node, closed-but-unacknowledged included
        (a Deferred with PostgreSQL)."""
        if self.executor is not None:
            self._node(node_id)
            return self._connections_shared(node_id)
        self.flush()
        return [_connection_object(row) for row in self.store.connections(node_id)]

    def _connections_shared(self, node_id: str) -> defer.Deferred[list[dict[str, Any]]]:
        """Read the connection rows once the journal committed what it has."""
        executor = self.executor
        assert executor is not None

        def read(_: object) -> defer.Deferred[list[ConnectionRow]]:
            return executor.read(lambda store: store.connections(node_id))

        d = self.journal.idle().addCallback(read)
        return d.addCallback(lambda rows: [_connection_object(r) for r in rows])

    def ack(self, node_id: str, seq: int) -> defer.Deferred[None] | None:
        """Acknowledge every event of the node up to ``seq``.

        :raise HubError: never; a seq beyond the newest is checked by the
            caller with :meth:`newest_seq`.
        :return: None, or with PostgreSQL a Deferred that fires once the
            ack is committed.
        """
        if self.executor is not None:
            return self._ack_shared(self.executor, node_id, seq)
        self.flush()
        node = self._node(node_id)
        # An ack lost to a power cut only means redelivery (clients dedup by
        # seq), so it does not pay an fsync of its own.
        gone = self.store.ack(node_id, seq, fsync=False)
        before = node.pending
        self._acked(node, gone, before - self.store.pending_count(node_id))
        return None

    def _ack_shared(
        self, executor: DatabaseExecutor[Any], node_id: str, seq: int
    ) -> defer.Deferred[None]:
        """``ack`` on PostgreSQL: after the journal's commits, on the writer."""
        node = self._node(node_id)

        def write(store: IStore) -> tuple[list[str], int]:
            before = store.pending_count(node_id)
            gone = store.ack(node_id, seq, fsync=False)
            return gone, before - store.pending_count(node_id)

        def done(result: tuple[list[str], int]) -> None:
            if self.nodes.get(node_id) is node:
                self._acked(node, *result)

        def lost(f: Failure) -> None:
            if isinstance(f.value, NodeLost):
                self._lost(f.value.node_ids)
                raise HubError(
                    NOT_LOGGED_IN,
                    "this session has ended: its node is now served by "
                    "another process; log in again",
                )
            f.raiseException()

        d = self.journal.idle().addCallback(lambda _: executor.write(write))
        return d.addCallbacks(done, lost)

    def _acked(self, node: Node, gone: list[str], count: int) -> None:
        """Apply a committed ack: forget acknowledged closed connections,
        lower the inbox count, resume reading below the cap."""
        for conn_id in gone:
            conn = node.connections.pop(conn_id, None)
            if conn is not None:
                self.connections.pop(conn_id, None)
                if conn.life.state is _CLOSED:
                    conn.life.advance(ConnState.ACKNOWLEDGED)
        if count > 0:
            node.pending = max(0, node.pending - count)
            for fn in self.on_acked:
                fn(node.node_id, count)
        if node.reading_paused and node.pending < self.limits.events_per_node:
            node.reading_paused = False
            for conn in node.connections.values():
                conn.resume_reading()

    def newest_seq(self, node_id: str) -> int:
        """The seq of the newest event of the node (0 when none yet)."""
        return self._node(node_id).next_seq - 1

    def flush(self) -> None:
        """Commit the pending batch, then offer it (see :mod:`lnproxy.journal`)."""
        self.journal.flush()

    def count(self, name: str) -> None:
        """Report a countable happening to ``on_count`` observers (metrics)."""
        for fn in self.on_count:
            fn(name)

    # -- snapshots (hot restart) --------------------------------------------------

    def snapshot(self, node_id: str, conn_id: str) -> ConnectionSnapshot:
        """Capture an open connection (see :mod:`lnproxy.snapshot`).

        The connection goes on here; a hot restart stops reading it first.

        :raise HubError: code 3 when unknown, 6 when not open.
        """
        self.flush()
        return self.connection(node_id, conn_id).snapshot()

    def adopt(self, snap: ConnectionSnapshot, restart: bool = False) -> PeerProtocol:
        """Rebuild a captured open connection in this hub.

        :param restart: a hot restart on the same store: the connection
            exists already (its row is stored; no ``connections_per_node``
            check, which would count a node's connections for each of them).
        :return: its protocol; ``makeConnection`` it with the TCP transport
            the connection lives on now.
        :raise HubError: code 7 when the node has its maximum of connections.
        :raise ValueError: when ``snap`` is not of an open connection or its
            conn id is already known here.
        """
        if snap.state is not _OPEN:
            raise ValueError(f"cannot adopt a connection that is {snap.state.value}")
        if snap.conn_id in self.connections:
            raise ValueError(f"connection {snap.conn_id} is already here")
        node = self._node(snap.node_id)
        if not restart and node.live_connections() >= self.limits.connections_per_node:
            raise HubError(
                LIMIT_EXCEEDED,
                f"node has {self.limits.connections_per_node} connections "
                "(the limit)",
            )
        conn = Connection.from_snapshot(
            self, node, snap, self.clock, self.limits.handshake_timeout
        )
        protocol = conn.protocol
        assert protocol is not None
        self._register(conn)
        self._open[conn.conn_id] = conn
        if not restart:
            self.journal.stage_connection(conn.row())
        return protocol

    def adopt_handshake(self, snap: HandshakeSnapshot) -> PeerProtocol:
        """Rebuild a captured connection waiting for ``finish``.

        :return: its protocol (``makeConnection`` it; it writes nothing).
        :raise ValueError: when its conn id is already known here.
        """
        if snap.conn_id in self.connections:
            raise ValueError(f"connection {snap.conn_id} is already here")
        node = self._node(snap.node_id)
        conn = Connection.from_handshake_snapshot(
            self, node, snap, self.clock, self.limits.handshake_timeout
        )
        protocol = conn.protocol
        assert protocol is not None
        self._register(conn)
        self._handshakes += 1
        return protocol

    def pause_timers(self) -> None:
        """Hot restart: stop the keepalive sweep and every connection's
        timer, so nothing writes to or closes a frozen connection."""
        self.keepalive.stop()
        for conn in self.connections.values():
            conn.pause_timer()

    def resume_timers(self) -> None:
        """Undo :meth:`pause_timers` (the handover was rolled back)."""
        for conn in list(self.connections.values()):
            conn.restart_timer()
        if self.running and not self._stopping:
            self.keepalive.start()

    def handed_over(self, conn_ids: list[str]) -> None:
        """These connections now live in another process: forget them
        without any event, and record ``closed`` (``proxy restarted``) for
        every other announced connection, which did not cross.  Commits."""
        for conn_id in conn_ids:
            conn = self.connections.pop(conn_id, None)
            if conn is None:
                continue
            conn.node.connections.pop(conn_id, None)
            self._open.pop(conn_id, None)
            if conn.life.state is _HANDSHAKE:
                self._handshakes -= 1
        for conn in list(self.connections.values()):
            if conn.announced and conn.closed_seq is None:
                self._record_closed(conn, "proxy restarted")
        self._stopping = True
        self._released = True
        self.flush()

    # -- ConnectionOwner: what connections report ------------------------------------

    def connection_announced(self, conn: Connection) -> None:
        """Act 2 relayed: commit the row now (module docstring), time it."""
        if self.executor is not None:
            # Committed by the journal; connect's reply waits for it.
            self.journal.stage_connection(conn.row())
        else:
            self.store.put_connection(conn.row(), fsync=False)
        relay = self.clock.seconds() - conn.since
        for fn in self.on_handshake_relayed:
            fn(relay)

    def handshake_ended(self, conn: Connection) -> None:
        """A handshake slot is free again."""
        self._handshakes -= 1

    def connection_opened(self, conn: Connection) -> None:
        """``finish`` done: sweep it, persist it, pause it if its inbox is full."""
        self._open[conn.conn_id] = conn
        self.connection_changed(conn)
        if conn.node.reading_paused:
            conn.pause_reading()

    def connection_changed(self, conn: Connection) -> None:
        """Write the row with the next batch (see the module docstring).

        Every reader of connection rows (``list_connections``, ``ack``)
        flushes first.  No flush is scheduled for it: the finish reply must
        not wait for an fsync that nothing needs.
        """
        self.journal.stage_connection(conn.row())

    def connection_lost(self, conn: Connection, reason: str) -> None:
        """TCP is gone: forget it, or record its ``closed`` event."""
        gone = conn.gone
        self._open.pop(conn.conn_id, None)
        if self.nodes.get(conn.node.node_id) is not conn.node:
            # Its node was taken over (drop_nodes): the new owner writes
            # the closed event.
            self.connections.pop(conn.conn_id, None)
        elif conn.life.state is _ABANDONED:
            self._forget(conn)
        elif conn.closed_seq is None:
            self._record_closed(conn, reason)
        if gone is not None and not gone.called:
            gone.callback(None)

    def messages_received(self, conn: Connection, messages: list[bytes]) -> None:
        """The relay's hot path: store, answer or drop each message."""
        now = self.clock.seconds()
        conn.last_rx = now
        conn.ping_sent_at = None
        conn.body_since = None
        table = self._gossip_table if conn.gossip_asked else self._table
        life = conn.life
        node = conn.node
        emit = self.journal.emit_message
        cap = self.limits.events_per_node
        head = message_head(now, conn.conn_id, conn.peer)
        for msg in messages:
            state = life.state
            if state is not _OPEN and state is not _CLOSING:
                return
            if len(msg) < 2:
                conn.close("malformed message (shorter than its type)")
                return
            msg_type = (msg[0] << 8) | msg[1]
            cls = table[msg_type]
            if msg_type == wire.INIT and conn.their_init is None:
                conn.init_received(msg)
            if cls >= _QUEUE:
                emit(node, msg_type, msg, cls is _SUMMON, now, head)
                node.pending += 1
                if node.pending >= cap and not node.reading_paused:
                    self._inbox_full(node)
            elif cls is _HANDLE:
                if self._answer(conn, msg_type, msg, now):
                    # A pong to the client's ping: queue class.
                    emit(node, msg_type, msg, False, now, head)
                    node.pending += 1
                    if node.pending >= cap and not node.reading_paused:
                        self._inbox_full(node)
            else:
                self.count("dropped")

    # -- internals ---------------------------------------------------------------

    def _register(self, conn: Connection) -> None:
        conn.node.connections[conn.conn_id] = conn
        self.connections[conn.conn_id] = conn

    def _forget(self, conn: Connection) -> None:
        if conn.life.state is not _ABANDONED:
            conn.life.advance(_ABANDONED)
        conn.node.connections.pop(conn.conn_id, None)
        self.connections.pop(conn.conn_id, None)
        self._open.pop(conn.conn_id, None)

    def _record_closed(self, conn: Connection, reason: str) -> None:
        if conn.life.state is not _CLOSED:
            conn.life.advance(_CLOSED)
        self._open.pop(conn.conn_id, None)
        reconnect = conn.reconnect
        params = {
            "conn": conn.conn_id,
            "peer": conn.peer,
            "reason": reason,
            "reconnect": reconnect,
        }
        seq = self._emit(conn.node, "closed", params, summon=reconnect)
        conn.closed_seq = seq
        self.journal.record_close(conn.conn_id, seq, conn.node.node_id)
        self.count("closed")
        self._log.info(
            "peer connection {conn} closed: {reason}", conn=conn.conn_id, reason=reason
        )

    def _answer(self, conn: Connection, msg_type: int, msg: bytes, now: float) -> bool:
        """Answer what needs no key: hub -> answer -> peer.

        :return: True when the message goes to the client after all (a pong
            to the client's ping): the caller stores it, queue class.
        """
        try:
            context = _NO_CONTEXT
            if msg_type == wire.PONG:
                pong = wire.Pong.decode(msg)
                context = AnswerContext(conn.pings.match(len(pong.ignored)))
            decision = answer(msg_type, msg, context)
        except wire.WireError as e:
            self._log.info(
                "ignoring malformed message type {type} on {conn}: {err}",
                type=msg_type,
                conn=conn.conn_id,
                err=str(e),
            )
            return False
        if decision.deliver:
            return True
        if decision.refused is not None:
            self._log.info(
                "ignoring message type {type} from {peer} on {conn}: {why}",
                type=msg_type,
                peer=conn.peer,
                conn=conn.conn_id,
                why=decision.refused,
            )
            return False
        if decision.keep is not None:
            self.journal.keep_peer_storage(
                conn.node.node_id, conn.peer, decision.keep, now
            )
            self.count("peer_storage_kept")
        if decision.reply is not None:
            if not conn.answers.spend(len(decision.reply), now):
                # The peer asks for more than it may (a flood of pings
                # asking for big pongs): ignored, as BOLT 1 allows.
                self.count("answer_throttled")
                self.count("handled")
                return False
            if not conn.send_own(decision.reply):
                # The connection is closing (or our answer hit the write
                # buffer cap and aborted it): there is no one left to answer.
                return False
            if decision.pong:
                self.count("pong_sent")
        self.count("handled")
        return False

    def _emit(self, node: Node, kind: str, fields: dict[str, Any], summon: bool) -> int:
        seq = self.journal.emit(node, kind, fields, summon)
        node.pending += 1
        if node.pending >= self.limits.events_per_node and not node.reading_paused:
            self._inbox_full(node)
        return seq

    def _inbox_full(self, node: Node) -> None:
        node.reading_paused = True
        self._log.warn(
            "inbox of node {node} is full ({n} events): pausing its peers",
            node=node.node_id,
            n=node.pending,
        )
        for conn in node.connections.values():
            conn.pause_reading()

    def _offer(self, row: EventRow) -> bool:
        """The journal committed ``row``: offer it to the node's sessions."""
        node = self.nodes.get(row.node_id)
        if node is None:
            # Dropped meanwhile (taken over): nobody here to offer it to.
            return False
        sessions = node.sessions
        if sessions:
            text = event_text(row)
            for session in sessions:
                session.offer(row.seq, text)
            return True
        return False


_PING_TYPE = wire.PING.to_bytes(2, "big")
_INIT_TYPE = wire.INIT.to_bytes(2, "big")
_NO_CONTEXT = AnswerContext()

#: Policy classes as plain module constants for the per-message loop.
_HANDLE = MessageClass.HANDLE
_QUEUE = MessageClass.QUEUE
_SUMMON = MessageClass.SUMMON
