"""The peer side: one Twisted protocol per TCP connection to a Lightning peer.

The proxy never runs a BOLT 8 handshake of its own.  It writes the act 1 the
client computed, reads exactly 50 bytes of act 2 and hands them up, waits
(for as long as the client takes) for act 3 and the transport keys, then owns
the connection: it decrypts what the peer sends and encrypts what the client
sends, through the sans-IO :class:`lnproxy.noise.Transport`.

This module knows nothing of nodes, sessions or storage.  It reports to an
:class:`IPeerListener` (the hub's connection object) and takes orders from it
(:meth:`PeerProtocol.finish`, :meth:`PeerProtocol.send_message`,
:meth:`PeerProtocol.close`).  Its state is the connection's one
:class:`~lnproxy.lifecycle.Lifecycle`, shared with the listener: the protocol
moves it through the handshake, to ``closing``/``aborting`` and, when TCP is
gone, to ``closed`` (announced) or ``abandoned`` (never announced).

A connection captured with :meth:`PeerProtocol.transport_snapshot` is
rebuilt on a new TCP transport with :meth:`PeerProtocol.resume`
(docs/architecture.md, "Snapshots").
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error as ierror
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from lnproxy import noise
from lnproxy.handover.detach import HandedOver
from lnproxy.lifecycle import ANNOUNCED, ConnState, Lifecycle

__all__ = [
    "IPeerListener",
    "PeerProtocol",
    "PeerFactory",
    "MAX_PAUSED_WRITE_BYTES",
]

#: Bytes we accept to queue for a peer that has stopped reading.  Twisted
#: pauses us (``pauseProducing``) once its own buffer passes 64 KiB; beyond
#: this many more bytes written while paused the peer is aborted.
MAX_PAUSED_WRITE_BYTES = 1024 * 1024

#: Bytes a peer may send between act 2 and our act 3.  A well-behaved
#: responder sends nothing before it has act 3; a little slack costs nothing.
MAX_EARLY_BYTES = 4096


_CONNECTION_DONE = Failure(ierror.ConnectionDone())


_CONNECTING = ConnState.CONNECTING
_ACT1_SENT = ConnState.ACT1_SENT
_HANDSHAKE = ConnState.HANDSHAKE
_OPEN = ConnState.OPEN
_CLOSING = ConnState.CLOSING
_ABORTING = ConnState.ABORTING
_CLOSED = ConnState.CLOSED
_ABANDONED = ConnState.ABANDONED
#: States in which a close order has nothing left to do.
_ENDING = frozenset(
    {_CLOSING, _ABORTING, _CLOSED, ConnState.ACKNOWLEDGED, _ABANDONED}
)


class IPeerListener(Interface):
    """What a :class:`PeerProtocol` reports to (implemented by the hub)."""

    def peer_connected(protocol: PeerProtocol) -> None:
        """TCP is up and act 1 has been written."""

    def act2_received(act2: bytes) -> None:
        """Act 2 arrived (50 bytes; version and key shape checked)."""

    def handshake_failed(reason: str) -> None:
        """Act 2 did not arrive or was malformed; the connection is closing."""

    def messages_received(messages: list[bytes]) -> None:
        """Whole decrypted Lightning messages, in order."""

    def peer_closed(reason: str) -> None:
        """The TCP connection is gone (called exactly once); the lifecycle
        is already ``closed`` (it had been announced) or ``abandoned``."""


@implementer(IPushProducer)
class PeerProtocol(Protocol):
    """One BOLT 8 connection, relayed.

    :param listener: receives the events of this connection.
    :param act1: the 50 bytes the client computed.
    :param clock: for the act 2 timeout.
    :param act2_timeout: seconds to wait for act 2 once act 1 is written.
    :param lifecycle: the connection's state, shared with the listener (a
        new one, ``connecting``, by default).
    """

    _log = Logger()

    def __init__(
        self,
        listener: IPeerListener,
        act1: bytes,
        clock: IReactorTime,
        act2_timeout: float,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.listener = listener
        self.life = lifecycle if lifecycle is not None else Lifecycle()
        self._act1 = act1
        self._clock = clock
        self._act2_timeout = act2_timeout
        self._timer: IDelayedCall | None = None
        self._early = b""
        self._transport: noise.Transport | None = None
        self._decrypt: Any = None
        self._close_reason: str | None = None
        self._write_paused = False
        self._paused_bytes = 0
        self.read_paused = False
        #: Set when the connection was handed over to another process.
        self.handed_over = False

    @classmethod
    def resume(
        cls,
        listener: IPeerListener,
        clock: IReactorTime,
        lifecycle: Lifecycle,
        transport: noise.Transport,
    ) -> PeerProtocol:
        """An open connection rebuilt from a snapshot, for a new TCP transport.

        ``makeConnection`` it with the transport the connection now lives
        on: it writes no act 1 and goes on decrypting where ``transport``
        (built with :meth:`noise.Transport.from_snapshot`) stands.

        :raise ValueError: when ``lifecycle`` is not ``open``.
        """
        if lifecycle.state is not _OPEN:
            raise ValueError(f"cannot resume a connection that is {lifecycle.state.value}")
        p = cls(listener, b"", clock, 0.0, lifecycle)
        p._transport = transport
        p._decrypt = transport.decryptor.feed
        return p

    @classmethod
    def resume_handshake(
        cls,
        listener: IPeerListener,
        clock: IReactorTime,
        lifecycle: Lifecycle,
        early: bytes = b"",
    ) -> PeerProtocol:
        """A connection whose act 2 was relayed, rebuilt for a new TCP
        transport: it writes nothing and waits for :meth:`finish`.

        :raise ValueError: when ``lifecycle`` is not ``handshake``.
        """
        if lifecycle.state is not _HANDSHAKE:
            raise ValueError(
                f"cannot resume a handshake that is {lifecycle.state.value}"
            )
        p = cls(listener, b"", clock, 0.0, lifecycle)
        p._early = early
        return p

    @property
    def early_bytes(self) -> bytes:
        """Bytes the peer sent after act 2, before ``finish``."""
        return self._early

    @property
    def state(self) -> ConnState:
        """The connection's lifecycle state."""
        return self.life.state

    # -- Twisted protocol -------------------------------------------------

    def connectionMade(self) -> None:
        """Write act 1 and start waiting for act 2 (or, for a resumed
        connection, just start relaying)."""
        # A TCP transport (ITCPTransport and IConsumer); typed loosely since
        # zope interfaces do not compose for mypy.
        transport: Any = self.transport
        try:
            transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        # Streaming producer: Twisted tells us when the peer stops reading.
        transport.registerProducer(self, True)
        if self.life.state is _OPEN or self.life.state is _HANDSHAKE:
            # Resumed after a hot restart: nothing to write again.
            self.listener.peer_connected(self)
            return
        self.life.advance(_ACT1_SENT)
        self.transport.write(self._act1)  # type: ignore[union-attr]
        self._timer = self._clock.callLater(self._act2_timeout, self._act2_timed_out)
        self.listener.peer_connected(self)

    def dataReceived(self, data: bytes) -> None:
        """Route bytes by state: act 2, early bytes, or transport frames."""
        if self._decrypt is not None:
            try:
                messages = self._decrypt(data)
            except noise.TransportError as e:
                # Authentic messages that came before the bad frame first.
                if e.messages:
                    self.listener.messages_received(e.messages)
                self._fail(f"decryption failure ({e.code})")
                return
            if messages:
                self.listener.messages_received(messages)
            return
        state = self.life.state
        if state is _ACT1_SENT:
            self._early += data
            if len(self._early) < noise.ACT2_SIZE:
                return
            act2, self._early = (
                self._early[: noise.ACT2_SIZE],
                self._early[noise.ACT2_SIZE :],
            )
            self._cancel_timer()
            try:
                noise.check_act_shape(act2, 2)
            except noise.HandshakeError as e:
                self._fail_handshake(f"malformed act 2 ({e.code})")
                return
            self.life.advance(_HANDSHAKE)
            self.listener.act2_received(act2)
        elif state is _HANDSHAKE:
            self._early += data
        if len(self._early) > MAX_EARLY_BYTES:
            self._fail("peer sent data before the handshake finished")

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        """Report the end once, with the most useful reason we have.

        A connection handed over to another process (``HandedOver``) did
        not end: nothing is reported.
        """
        self._cancel_timer()
        if reason.check(HandedOver):
            self.handed_over = True
            self._decrypt = None
            self._transport = None
            return
        life = self.life
        was = life.state
        if was in ANNOUNCED:
            life.advance(_CLOSED)
        elif was is not _CLOSED and was is not ConnState.ABANDONED:
            life.advance(_ABANDONED)
        self._decrypt = None
        self._transport = None
        if self._close_reason is None:
            if reason.check(ierror.ConnectionDone):
                self._close_reason = "peer closed"
            else:
                self._close_reason = f"connection lost: {reason.getErrorMessage()}"
        if was is _ACT1_SENT:
            self.listener.handshake_failed(self._close_reason)
        self.listener.peer_closed(self._close_reason)

    # -- IPushProducer: the peer's read side of our writes -----------------

    def pauseProducing(self) -> None:
        """The peer is not reading fast enough: count what we queue."""
        self._write_paused = True
        self._paused_bytes = 0

    def resumeProducing(self) -> None:
        """The peer caught up."""
        self._write_paused = False
        self._paused_bytes = 0

    def stopProducing(self) -> None:
        """The transport is going away; nothing to release."""

    # -- orders from the hub ----------------------------------------------

    def finish(self, act3: bytes, sk: bytes, rk: bytes, ck: bytes) -> list[bytes]:
        """Write act 3 and take over the connection with the client's keys.

        :return: messages already received from the peer (normally none).
        :raise ValueError: when the connection is not waiting for act 3.
        """
        if self.life.state is not _HANDSHAKE:
            raise ValueError(f"connection is {self.life.state.value}")
        self.transport.write(act3)  # type: ignore[union-attr]
        self._transport = noise.Transport(sk, rk, ck)
        self._decrypt = self._transport.decryptor.feed
        self.life.advance(_OPEN)
        early, self._early = self._early, b""
        if early:
            return self._decrypt(early)
        return []

    def send_message(self, msg: bytes) -> None:
        """Encrypt and write one Lightning message.

        :raise ValueError: when the connection is not open.
        :raise noise.MessageTooLargeError: when ``msg`` exceeds 65535 bytes.
        """
        if self._transport is None or self.life.state is not _OPEN:
            raise ValueError("connection is not open")
        frame = self._transport.encryptor.encrypt(msg)
        if self._write_paused:
            self._paused_bytes += len(frame)
            if self._paused_bytes > MAX_PAUSED_WRITE_BYTES:
                self.close("peer stopped reading (write buffer full)", abort=True)
                return
        self.transport.write(frame)  # type: ignore[union-attr]

    def transport_snapshot(self) -> noise.TransportSnapshot:
        """The cipher state of an open connection (see :meth:`resume`).

        :raise ValueError: when the connection is not open.
        """
        if self._transport is None or self.life.state is not _OPEN:
            raise ValueError("connection is not open")
        return self._transport.snapshot()

    @property
    def awaiting_body(self) -> bool:
        """A length header arrived and its body has not (for the sweep)."""
        t = self._transport
        return t is not None and t.decryptor.awaiting_body

    def pause_reading(self) -> None:
        """Stop reading from the peer (the node's inbox is full)."""
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        """Read again."""
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def close(self, reason: str, abort: bool = False) -> None:
        """Close the connection; ``reason`` is what :meth:`peer_closed` says."""
        life = self.life
        if life.state in _ENDING:
            return
        if self._close_reason is None:
            self._close_reason = reason
        life.advance(_CLOSING if life.state in ANNOUNCED else _ABORTING)
        self._cancel_timer()
        if self.transport is None:
            return
        if abort:
            self.transport.abortConnection()  # type: ignore[attr-defined]
        else:
            self.transport.loseConnection()

    # -- internals ----------------------------------------------------------

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _act2_timed_out(self) -> None:
        self._timer = None
        self._fail_handshake("no act 2 within the handshake timeout")

    def _fail_handshake(self, reason: str) -> None:
        # Report the handshake failure first so the pending ``connect`` gets
        # its code 5; connectionLost will then not report it again.
        self.life.advance(_ABORTING)
        self._close_reason = reason
        self.listener.handshake_failed(reason)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _fail(self, reason: str) -> None:
        self._log.info("closing peer connection: {reason}", reason=reason)
        self.close(reason, abort=True)


class PeerFactory(ClientFactory):
    """Builds the one :class:`PeerProtocol` of one outbound connection."""

    #: One factory per connection: Twisted's "Starting factory" / "Stopping
    #: factory" lines would be two log events per peer connection.
    noisy = False

    def __init__(
        self,
        listener: IPeerListener,
        act1: bytes,
        clock: IReactorTime,
        act2_timeout: float,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self._args = (listener, act1, clock, act2_timeout, lifecycle)

    def buildProtocol(self, addr: Any) -> PeerProtocol:
        """Return the protocol for this connection."""
        p = PeerProtocol(*self._args)
        p.factory = self
        return p
