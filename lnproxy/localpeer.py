"""A small Lightning peer on Twisted: a BOLT 8 responder over the sans-IO core.

It is not a Lightning node.  It accepts connections, runs the responder side
of the handshake, sends its ``init``, answers pings, and records what it
receives, which is all the demo, the benchmarks and many tests need from a
peer.  Tests that must not trust our own BOLT 8 code use pyln-proto instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lnproxy import keys, noise, wire

__all__ = ["LocalPeerProtocol", "LocalPeerFactory"]


class LocalPeerProtocol(Protocol):
    """One inbound connection to the local peer."""

    _log = Logger()
    factory: LocalPeerFactory

    def __init__(self) -> None:
        self._responder: noise.Responder | None = None
        self._buf = b""
        self._step = 1
        self.transport_cipher: noise.Transport | None = None
        self.remote_node_id: bytes | None = None
        self.received: list[bytes] = []
        self.their_init: bytes | None = None
        self.error: Exception | None = None

    def connectionMade(self) -> None:
        """Start the responder handshake."""
        transport: Any = self.transport
        try:
            transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        self._responder = noise.Responder(self.factory.secret)

    def dataReceived(self, data: bytes) -> None:
        """Acts 1 and 3, then transport frames."""
        if self.transport_cipher is not None:
            try:
                messages = self.transport_cipher.feed(data)
            except noise.TransportError as e:
                self._fail(e)
                return
            for msg in messages:
                self._message(msg)
            return
        self._buf += data
        assert self._responder is not None
        try:
            if self._step == 1 and len(self._buf) >= noise.ACT1_SIZE:
                act1, self._buf = self._buf[:50], self._buf[50:]
                self._responder.read_act1(act1)
                self.transport.write(self._responder.act2())  # type: ignore[union-attr]
                self._step = 3
            if self._step == 3 and len(self._buf) >= noise.ACT3_SIZE:
                act3, rest = self._buf[:66], self._buf[66:]
                self._buf = b""
                result = self._responder.read_act3(act3)
                self.remote_node_id = result.remote_static
                self.transport_cipher = noise.Transport.from_keys(result)
                self.send(wire.Init(features=self.factory.features).encode())
                self.factory.connections.append(self)
                self.factory._opened(self)
                if rest:
                    self.dataReceived(rest)
        except noise.HandshakeError as e:
            self._fail(e)

    def _message(self, msg: bytes) -> None:
        self.received.append(msg)
        msg_type = wire.message_type(msg)
        if msg_type == wire.INIT and self.their_init is None:
            self.their_init = msg
        elif msg_type == wire.PING and self.factory.answer_pings:
            pong = wire.pong_for(wire.Ping.decode(msg))
            if pong is not None:
                self.send(pong.encode())
        self.factory._received(self, msg)

    def send(self, msg: bytes) -> None:
        """Encrypt and send one message."""
        assert self.transport_cipher is not None
        self.transport.write(self.transport_cipher.encrypt(msg))  # type: ignore[union-attr]

    def _fail(self, e: Exception) -> None:
        self.error = e
        self._log.info("local peer closing a connection: {err}", err=str(e))
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        """Forget the connection."""
        if self in self.factory.connections:
            self.factory.connections.remove(self)
        self.factory._closed(self)


class LocalPeerFactory(Factory):
    """Accepts connections as a node with the given secret.

    :param secret: 32-byte node secret; random when omitted.
    :param features: the init features to send.
    :param answer_pings: answer pings with pongs (BOLT 1 behaviour).
    """

    protocol = LocalPeerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        secret: bytes | None = None,
        features: bytes = b"",
        answer_pings: bool = True,
    ) -> None:
        self.secret = secret or os.urandom(32)
        self.node_id = keys.public_key(self.secret)
        self.features = features
        self.answer_pings = answer_pings
        self.connections: list[LocalPeerProtocol] = []
        self.on_message: list[Callable[[LocalPeerProtocol, bytes], None]] = []
        self._open_waiters: list[defer.Deferred[LocalPeerProtocol]] = []
        self._message_waiters: list[tuple[Callable[[bytes], bool], defer.Deferred[Any]]] = []
        self.closed_count = 0

    def wait_open(self) -> defer.Deferred[LocalPeerProtocol]:
        """Fires with the next connection that finishes its handshake."""
        d: defer.Deferred[LocalPeerProtocol] = defer.Deferred()
        self._open_waiters.append(d)
        return d

    def wait_message(self, match: Callable[[bytes], bool]) -> defer.Deferred[bytes]:
        """Fires with the next received message for which ``match`` is true."""
        d: defer.Deferred[bytes] = defer.Deferred()
        self._message_waiters.append((match, d))
        return d

    def _opened(self, p: LocalPeerProtocol) -> None:
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(p)

    def _received(self, p: LocalPeerProtocol, msg: bytes) -> None:
        for fn in self.on_message:
            fn(p, msg)
        keep = []
        for match, d in self._message_waiters:
            if not d.called and match(msg):
                d.callback(msg)
            else:
                keep.append((match, d))
        self._message_waiters = keep

    def _closed(self, p: LocalPeerProtocol) -> None:
        self.closed_count += 1
