"""Interop of :mod:`lnproxy.noise` with pyln-proto over real loopback TCP.

pyln-proto (Core Lightning's Python library) is an independent BOLT 8
implementation.  It is blocking and socket based, so it runs in a reactor
thread pool thread (``deferToThread``) while our side runs on the reactor as a
small Twisted :class:`Protocol` harness over the sans-IO classes, with real
TCP on 127.0.0.1.  Both directions are tested:

* our :class:`Initiator` on a Twisted client against pyln's
  ``LightningServerSocket`` responder;
* pyln's ``connect()`` initiator against our :class:`Responder` on a Twisted
  server.

Each side sends BOLT 1 ``init`` first, then 2,600 messages of varied sizes
(empty to 65535 bytes) each way: with ``init`` that is 2,601 messages per
direction, crossing the 500-message key rotation 5 times.  Everything is
compared byte for byte.  Our side builds its :class:`Transport` from the bare
``(sk, rk, ck)`` bytes, as the proxy will.

pyln-proto 26.6.9 has traps, each handled where noted:

(a) its handshake builds a ``ValueError`` for a bad act 1 / act 2 MAC but
    never raises it, so it accepts forged acts: it is only used here as a
    well-behaved peer, never to judge what is valid;
(b) ``read_message()`` reads the 18-byte header with a single ``recv(18)``
    and raises "Short read" when a TCP segment boundary falls inside it;
(c) it leaves Nagle on and writes length and body with separate ``send()``
    calls (write-write-read: delayed-ACK stalls);
(d) it depends on ``coincurve-cp314-fix``, which overwrites coincurve's files
    without pip noticing (``tests/test_environment.py`` checks coincurve);
(e) it writes with ``socket.send()`` and ignores the count it returns, so a
    partial write on a socket with a timeout would silently drop bytes;
(f) ``send_message`` and ``read_message`` take separate locks but both call
    ``_maybe_rotate_keys``, which rotates *both* directions: a sender thread
    and a reader thread can race on ``rn == 1000`` and rotate the receiving
    key twice.  Its sending and reading therefore run in one thread, one
    after the other; our reactor side never blocks, so this cannot deadlock.
"""

from __future__ import annotations

import random
import socket
import struct
from typing import Any

from pyln.proto import wire as pyln_wire
from twisted.internet import reactor
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lnproxy import keys as lnkeys
from lnproxy.noise import (
    ACT1_SIZE,
    ACT2_SIZE,
    ACT3_SIZE,
    Initiator,
    Responder,
    Transport,
    TransportKeys,
)
from lnproxy.testing import WholeSocket
from lnproxy.wire import Init

#: BOLT 1 ``init``: type 16, global features length 0, features length 0,
#: built by hand so that this test does not depend on our own encoder.
INIT = struct.pack(">HHH", 16, 0, 0)
#: Messages per direction after ``init``; 2,601 in all crosses 5 rotations.
MESSAGE_COUNT = 2600
#: Bound for every blocking step (socket reads, accept, thread joins).
STEP_TIMEOUT = 30.0
#: Bound for a whole exchange of messages (a few seconds in practice).
EXCHANGE_TIMEOUT = 90.0

OUR_SECRET = bytes.fromhex("21" * 32)
PYLN_SECRET = bytes.fromhex("42" * 32)
OUR_NODE_ID = lnkeys.public_key(OUR_SECRET)
PYLN_NODE_ID = lnkeys.public_key(PYLN_SECRET)


def make_messages(seed: int) -> list[bytes]:
    """Deterministic messages of varied sizes, including 0, 1 and 65535."""
    rng = random.Random(seed)
    special = [0, 1, 2, 17, 18, 65535]
    messages = []
    for i in range(MESSAGE_COUNT):
        if i % 100 < len(special):
            size = special[i % 100]
        else:
            size = rng.choice((rng.randint(2, 64), rng.randint(2, 2000)))
        messages.append(rng.randbytes(size))
    return messages


def tame_pyln_connection(lconn: Any) -> tuple[socket.socket, bytes, bytes]:
    """Make a handshaken pyln connection safe to stream on.

    :return: its socket, and its sending and receiving keys as they are now
        (pyln overwrites them when it rotates).

    The handshake itself ran on the bare socket: our side writes each act
    with one ``write()``, which loopback delivers in one piece, so pyln's
    single ``recv(50)`` / ``recv(66)`` gets whole acts.
    """
    sock: socket.socket = lconn.connection
    # Trap (c): length and body go out in separate send() calls.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(STEP_TIMEOUT)
    lconn.connection = WholeSocket(sock)
    return sock, lconn.sk, lconn.rk


def pyln_exchange(lconn: Any, outgoing: list[bytes], reads_first: bool) -> list[bytes]:
    """pyln's side of a session (runs in a thread): init both ways, then
    send ``outgoing`` and read as many messages, in the given order.

    Trap (f): sending and reading stay in this one thread.
    """
    lconn.send_message(INIT)
    their_init = lconn.read_message()
    if their_init != INIT:
        raise AssertionError(f"pyln got init {their_init.hex()}")
    received: list[bytes] = []
    if reads_first:
        received = [lconn.read_message() for _ in outgoing]
    for msg in outgoing:
        lconn.send_message(msg)
    if not reads_first:
        received = [lconn.read_message() for _ in outgoing]
    return received


def close_socket(sock: socket.socket) -> None:
    """Shut a socket down (waking any thread blocked on it) and close it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected
    sock.close()


class Bolt8Harness(Protocol):
    """Our side: the sans-IO handshake and transport over a Twisted TCP
    transport.

    Acts are buffered until whole; once the handshake ends, a
    :class:`Transport` is built from the bare key bytes, ``init`` is sent, and
    after the peer's ``init`` every message of ``outgoing`` is written at
    once (so frames straddle TCP segments at arbitrary points).

    :ivar done: fires with the messages received after ``init`` once
        ``expected`` of them arrived; errbacks on any failure.
    :ivar lost: fires when the connection is closed.
    """

    def __init__(
        self, handshake: Initiator | Responder, outgoing: list[bytes], expected: int
    ) -> None:
        self.handshake = handshake
        self.outgoing = outgoing
        self.expected = expected
        self.buffer = b""
        self.act1_read = False
        self.cipher: Transport | None = None
        self.keys: TransportKeys | None = None
        self.their_init: bytes | None = None
        self.received: list[bytes] = []
        self.done: Deferred[list[bytes]] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if isinstance(self.handshake, Initiator):
            self.transport.write(self.handshake.act1())

    def dataReceived(self, data: bytes) -> None:
        try:
            self.receive(data)
        except Exception:
            self.fail(Failure())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.errback(reason)
        self.lost.callback(None)

    def fail(self, failure: Failure) -> None:
        """Report ``failure`` and drop the connection."""
        if not self.done.called:
            self.done.errback(failure)
        self.transport.abortConnection()

    def receive(self, data: bytes) -> None:
        """Advance the handshake, or decrypt, with newly received bytes."""
        if self.cipher is not None:
            self.deliver(self.cipher.feed(data))
            return
        self.buffer += data
        hs = self.handshake
        if isinstance(hs, Initiator):
            if len(self.buffer) < ACT2_SIZE:
                return
            hs.read_act2(self.buffer[:ACT2_SIZE])
            act3, keys = hs.act3()
            self.transport.write(act3)
            self.start_transport(keys, self.buffer[ACT2_SIZE:])
            return
        if not self.act1_read:
            if len(self.buffer) < ACT1_SIZE:
                return
            hs.read_act1(self.buffer[:ACT1_SIZE])
            self.act1_read = True
            self.buffer = self.buffer[ACT1_SIZE:]
            self.transport.write(hs.act2())
        if len(self.buffer) >= ACT3_SIZE:
            keys = hs.read_act3(self.buffer[:ACT3_SIZE])
            self.start_transport(keys, self.buffer[ACT3_SIZE:])

    def start_transport(self, keys: TransportKeys, rest: bytes) -> None:
        """Install the transport cipher the way the proxy does: from bare
        ``(sk, rk, ck)`` bytes, not from the handshake object."""
        self.keys = keys
        self.buffer = b""
        self.cipher = Transport(bytes(keys.sk), bytes(keys.rk), bytes(keys.ck))
        self.transport.write(self.cipher.encrypt(INIT))
        if rest:
            self.deliver(self.cipher.feed(rest))

    def deliver(self, messages: list[bytes]) -> None:
        """Handle decrypted messages: first ``init``, then the payload."""
        assert self.cipher is not None
        for msg in messages:
            if self.their_init is None:
                if msg != INIT:
                    raise AssertionError(f"expected init, got {msg[:8].hex()}")
                self.their_init = msg
                self.transport.write(
                    b"".join(self.cipher.encrypt(m) for m in self.outgoing)
                )
                continue
            self.received.append(msg)
            if len(self.received) > self.expected:
                raise AssertionError("more messages than were sent")
            if len(self.received) == self.expected:
                self.done.callback(self.received)


class HarnessFactory(ClientFactory):
    """Hands out one prepared :class:`Bolt8Harness` (one connection)."""

    def __init__(self, harness: Bolt8Harness) -> None:
        self.harness = harness
        self.used = False

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        if self.used:
            return None  # refuse any second connection
        self.used = True
        self.harness.factory = self
        return self.harness

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.harness.done.called:
            self.harness.done.errback(reason)


class PylnInteropTests(TestCase):
    """Handshake and 2,600 messages each way against pyln-proto."""

    timeout = 120

    def setUp(self) -> None:
        self.threads: list[Deferred[Any]] = []
        self.addCleanup(self.join_threads)

    def run_in_thread(self, func: Any, *args: Any) -> Deferred[Any]:
        """deferToThread, remembered so cleanup can wait for it."""
        d = deferToThread(func, *args)
        self.threads.append(d)
        return d

    def join_threads(self) -> Deferred[Any]:
        """Wait (bounded) for every pyln thread; by now its sockets are
        closed or shut down, so a blocked call returns at once."""
        joined = DeferredList(self.threads, consumeErrors=True)
        return joined.addTimeout(STEP_TIMEOUT, reactor)

    def drop_harness(self, harness: Bolt8Harness) -> Deferred[None]:
        """Close our side if still open and wait until it is closed."""
        if harness.transport is None:
            return succeed(None)  # never connected
        if harness.transport.connected:
            harness.transport.abortConnection()
        return harness.lost.addTimeout(STEP_TIMEOUT, reactor)

    @inlineCallbacks
    def exchange(
        self,
        harness: Bolt8Harness,
        lconn: Any,
        ours: list[bytes],
        theirs: list[bytes],
        reads_first: bool,
    ) -> Any:
        """Run pyln's side in a thread and ours on the reactor; check that
        each side got exactly what the other sent.  Whichever side fails
        first ends the wait."""
        pyln_side = self.run_in_thread(pyln_exchange, lconn, theirs, reads_first)
        both = gatherResults([harness.done, pyln_side], consumeErrors=True)
        our_received, pyln_received = yield both.addTimeout(EXCHANGE_TIMEOUT, reactor)
        self.assertEqual(harness.their_init, INIT)
        assert harness.their_init is not None
        self.assertEqual(Init.decode(harness.their_init), Init(features=b""))
        self.assertEqual(len(our_received), len(theirs))
        # Not assertEqual: a diff of megabytes helps nobody.
        self.assertTrue(our_received == theirs, "our side got other bytes")
        self.assertEqual(len(pyln_received), len(ours))
        self.assertTrue(pyln_received == ours, "pyln got other bytes")
        # Both directions of both sides rotated 5 times (init + 2,600
        # messages = 5,202 nonces) and sit at the same nonce.
        assert harness.cipher is not None
        nonce = 2 * (1 + MESSAGE_COUNT) % 1000
        self.assertEqual(nonce, 202)
        self.assertEqual(harness.cipher.encryptor.nonce, nonce)
        self.assertEqual(harness.cipher.decryptor.nonce, nonce)
        self.assertEqual((lconn.sn, lconn.rn), (nonce, nonce))

    def check_keys(self, harness: Bolt8Harness, pyln_sk: bytes, pyln_rk: bytes) -> None:
        """Both ends derived mirrored keys, and ours knows pyln's node id."""
        assert harness.keys is not None
        self.assertEqual(harness.keys.sk, pyln_rk)
        self.assertEqual(harness.keys.rk, pyln_sk)
        self.assertEqual(harness.keys.remote_static, PYLN_NODE_ID)

    @inlineCallbacks
    def test_our_initiator_to_pyln_responder(self) -> Any:
        """Our Initiator (Twisted client) completes the handshake with pyln's
        LightningServerSocket, and 2,600 messages of varied sizes each way,
        after init, arrive intact across 5 key rotations."""
        ours, theirs = make_messages(1), make_messages(2)
        server = pyln_wire.LightningServerSocket(pyln_wire.PrivateKey(PYLN_SECRET))
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.settimeout(STEP_TIMEOUT)  # bounds accept()
        accepted = self.run_in_thread(server.accept)

        harness = Bolt8Harness(Initiator(OUR_SECRET, PYLN_NODE_ID), ours, len(theirs))
        connector = reactor.connectTCP(
            "127.0.0.1",
            server.getsockname()[1],
            HarnessFactory(harness),
            timeout=STEP_TIMEOUT,
        )
        self.addCleanup(connector.disconnect)
        self.addCleanup(self.drop_harness, harness)

        lconn, _ = yield accepted.addTimeout(STEP_TIMEOUT, reactor)
        sock, pyln_sk, pyln_rk = tame_pyln_connection(lconn)
        self.addCleanup(close_socket, sock)
        # pyln learnt our node id from act 3.
        self.assertEqual(lconn.remote_pubkey.serializeCompressed(), OUR_NODE_ID)
        yield self.exchange(harness, lconn, ours, theirs, reads_first=False)
        self.check_keys(harness, pyln_sk, pyln_rk)

    @inlineCallbacks
    def test_pyln_initiator_to_our_responder(self) -> Any:
        """pyln's connect() completes the handshake with our Responder
        (Twisted server), and 2,600 messages of varied sizes each way, after
        init, arrive intact across 5 key rotations."""
        ours, theirs = make_messages(3), make_messages(4)
        harness = Bolt8Harness(Responder(OUR_SECRET), ours, len(theirs))

        port = reactor.listenTCP(0, HarnessFactory(harness), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(self.drop_harness, harness)

        connected = self.run_in_thread(
            pyln_wire.connect,
            pyln_wire.PrivateKey(PYLN_SECRET),
            OUR_NODE_ID,
            "127.0.0.1",
            port.getHost().port,
        )
        lconn = yield connected.addTimeout(STEP_TIMEOUT, reactor)
        sock, pyln_sk, pyln_rk = tame_pyln_connection(lconn)
        self.addCleanup(close_socket, sock)
        # connect() returns once act 3 is sent, maybe before our reactor has
        # read it: compare keys only after the exchange.
        yield self.exchange(harness, lconn, ours, theirs, reads_first=True)
        self.check_keys(harness, pyln_sk, pyln_rk)
