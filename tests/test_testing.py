"""Tests of :mod:`lnproxy.testing`, the shipped test fakes.

Each fault mode of the responder peer is observed from a real BOLT 8
initiator (:class:`lnproxy.noise.Initiator`) over 127.0.0.1 TCP; the
JSON-RPC client logs in to a real in-process proxy and runs the split
handshake; ``free_port`` and the twistd helpers start real processes.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import keys, noise, wire
from lnproxy.protocol import LOGIN_FAILED, PROTOCOL_VERSION, SUBPROTOCOL
from lnproxy.testing import (
    GARBAGE_BYTES,
    STARTED_LINE,
    Mode,
    ProxyProcess,
    RpcClient,
    RpcFailed,
    TwistdProcess,
    connect_rpc,
    free_port,
    spawn_twistd,
    static_resolver,
    twistd_command,
)

from .harness import ProxyTestCase, eventually

#: How long "nothing happens" is watched for.
QUIET = 0.3


class RawInitiator(Protocol):
    """The initiator side of BOLT 8 written by hand: sends act 1 at once,
    keeps every byte it receives, and can finish the handshake."""

    def __init__(self, remote: bytes) -> None:
        self.secret = os.urandom(32)
        self.node_id = keys.public_key(self.secret)
        self.noise = noise.Initiator(self.secret, remote)
        self.buf = b""
        self.cipher: noise.Transport | None = None
        self.lost: defer.Deferred[None] = defer.Deferred()
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    def connectionMade(self) -> None:
        """Write act 1."""
        self.transport.write(self.noise.act1())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        """Keep the bytes; wake who waits for enough of them."""
        self.buf += data
        keep = []
        for size, d in self._waiters:
            if len(self.buf) >= size:
                d.callback(None)
            else:
                keep.append((size, d))
        self._waiters = keep

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fire :attr:`lost`."""
        self.lost.callback(None)

    def wait_bytes(self, size: int) -> defer.Deferred[None]:
        """Fires once ``size`` bytes have arrived in all."""
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.buf) >= size:
            d.callback(None)
        else:
            self._waiters.append((size, d))
        return d.addTimeout(5, reactor)

    @defer.inlineCallbacks
    def handshake(self) -> Any:
        """Read act 2, write act 3; the rest of the bytes are transport."""
        yield self.wait_bytes(noise.ACT2_SIZE)
        act2, self.buf = self.buf[: noise.ACT2_SIZE], self.buf[noise.ACT2_SIZE :]
        self.noise.read_act2(act2)
        act3, tk = self.noise.act3()
        self.transport.write(act3)  # type: ignore[union-attr]
        self.cipher = noise.Transport.from_keys(tk)

    def send(self, msg: bytes) -> None:
        """Encrypt and send one message."""
        assert self.cipher is not None
        self.transport.write(self.cipher.encrypt(msg))  # type: ignore[union-attr]

    @defer.inlineCallbacks
    def next_message(self) -> Any:
        """Decrypt the next whole message (waits for it)."""
        assert self.cipher is not None
        while True:
            messages = self.cipher.feed(self.buf)
            self.buf = b""
            if messages:
                self.pending = messages[1:]
                return messages[0]
            yield self.wait_bytes(1)


class Junk(Protocol):
    """Writes 50 zero bytes as act 1 (an invalid public key)."""

    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        """Write the junk act 1."""
        self.transport.write(b"\x00" * noise.ACT1_SIZE)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Fire :attr:`lost`."""
        self.lost.callback(None)


def sleep(seconds: float) -> defer.Deferred[None]:
    """A real-time pause."""
    return task.deferLater(reactor, seconds, lambda: None)


class ResponderModeTests(ProxyTestCase):
    """Each :class:`Mode`, seen from a real initiator over 127.0.0.1."""

    @defer.inlineCallbacks
    def dial(self, **kw: Any) -> Any:
        """A responder peer (``kw``) and a raw initiator connected to it."""
        factory, port = self.local_peer(**kw)
        raw = RawInitiator(factory.node_id)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield endpoint.connect(ClientFactory.forProtocol(lambda: raw))
        self.addCleanup(self._drop, raw)
        return factory, raw

    def _drop(self, raw: RawInitiator) -> defer.Deferred[None] | None:
        if raw.lost.called:
            return None
        raw.transport.abortConnection()  # type: ignore[union-attr]
        return raw.lost

    @defer.inlineCallbacks
    def test_normal(self) -> Any:
        """Normal mode: act 2, then its init as the first message; it
        records the initiator's init, answers a ping with a pong of the
        asked length, reports the open connection and its messages to
        waiters, and can send a message of its own."""
        factory, raw = yield self.dial(features=b"\x02")
        opened = factory.wait_open()
        got_init = factory.wait_message(lambda m: m[:2] == b"\x00\x10")
        yield raw.handshake()
        peer = yield opened
        self.assertEqual(peer.remote_node_id, raw.node_id)
        self.assertEqual(factory.connections, [peer])
        first = yield raw.next_message()
        self.assertEqual(first, wire.Init(features=b"\x02").encode())
        raw.send(wire.Init(features=b"").encode())
        self.assertEqual((yield got_init), wire.Init(features=b"").encode())
        self.assertEqual(peer.their_init, wire.Init(features=b"").encode())
        raw.send(wire.Ping(num_pong_bytes=5).encode())
        pong = yield raw.next_message()
        self.assertEqual(wire.message_type(pong), wire.PONG)
        self.assertEqual(pong, wire.Pong(ignored=bytes(5)).encode())
        peer.send(bytes.fromhex("8001beef"))
        self.assertEqual((yield raw.next_message()), bytes.fromhex("8001beef"))
        self.assertEqual(
            [wire.message_type(m) for m in peer.received], [wire.INIT, wire.PING]
        )

    @defer.inlineCallbacks
    def test_no_pong_when_asked(self) -> Any:
        """``answer_pings=False``: a ping is recorded, never answered."""
        factory, raw = yield self.dial(answer_pings=False)
        pinged = factory.wait_message(lambda m: wire.message_type(m) == wire.PING)
        yield raw.handshake()
        yield raw.next_message()  # its init
        raw.send(wire.Ping(num_pong_bytes=5).encode())
        yield pinged
        yield sleep(QUIET)
        assert raw.cipher is not None
        self.assertEqual(raw.cipher.feed(raw.buf), [])

    @defer.inlineCallbacks
    def test_hooks_without_recording(self) -> Any:
        """``record=False`` keeps no message (but still their init and the
        waiters); on_open, on_message and on_close see the connection."""
        factory, raw = yield self.dial(record=False)
        seen: list[tuple[str, Any]] = []
        factory.on_open.append(lambda p: seen.append(("open", p)))
        factory.on_message.append(lambda p, m: seen.append(("msg", m)))
        factory.on_close.append(lambda p: seen.append(("close", p)))
        got = factory.wait_message(lambda m: m[:2] == b"\x80\x01")
        yield raw.handshake()
        yield raw.next_message()  # its init
        raw.send(wire.Init(features=b"").encode())
        raw.send(bytes.fromhex("8001"))
        yield got
        peer = seen[0][1]
        self.assertEqual(peer.received, [])
        self.assertEqual(peer.their_init, wire.Init(features=b"").encode())
        raw.transport.loseConnection()  # type: ignore[union-attr]
        yield eventually(lambda: factory.closed_count == 1)
        self.assertEqual(
            seen,
            [("open", peer), ("msg", wire.Init(features=b"").encode()),
             ("msg", bytes.fromhex("8001")), ("close", peer)],
        )  # fmt: skip
        self.assertEqual(factory.closed_count, 1)

    @defer.inlineCallbacks
    def test_close_after_act1(self) -> Any:
        """Mode CLOSE_AFTER_ACT1: the connection closes, no byte sent."""
        _, raw = yield self.dial(mode=Mode.CLOSE_AFTER_ACT1)
        yield raw.lost.addTimeout(5, reactor)
        self.assertEqual(raw.buf, b"")

    @defer.inlineCallbacks
    def test_silent(self) -> Any:
        """Mode SILENT: act 1 is taken, nothing comes back, the connection
        stays up."""
        factory, raw = yield self.dial(mode="silent")
        yield sleep(QUIET)
        self.assertEqual(raw.buf, b"")
        self.assertFalse(raw.lost.called)
        self.assertEqual(len(factory.all_connections), 1)
        self.assertEqual(factory.connections, [])

    @defer.inlineCallbacks
    def test_bad_version(self) -> Any:
        """Mode BAD_VERSION: a 50-byte act 2 with version 1, which the
        initiator refuses."""
        _, raw = yield self.dial(mode=Mode.BAD_VERSION)
        yield raw.wait_bytes(noise.ACT2_SIZE)
        self.assertEqual((len(raw.buf), raw.buf[0]), (noise.ACT2_SIZE, 1))
        self.assertRaises(noise.BadVersionError, raw.noise.read_act2, raw.buf)

    @defer.inlineCallbacks
    def test_no_init(self) -> Any:
        """Mode NO_INIT: the handshake completes and the peer records what
        it gets, but sends nothing, not even init."""
        factory, raw = yield self.dial(mode=Mode.NO_INIT)
        opened = factory.wait_open()
        yield raw.handshake()
        peer = yield opened
        got = factory.wait_message()
        raw.send(wire.Init(features=b"").encode())
        yield got
        yield sleep(QUIET)
        self.assertEqual(raw.buf, b"")
        self.assertEqual(peer.their_init, wire.Init(features=b"").encode())

    @defer.inlineCallbacks
    def test_garbage(self) -> Any:
        """Mode GARBAGE: after the handshake, bytes whose length MAC fails."""
        _, raw = yield self.dial(mode=Mode.GARBAGE)
        yield raw.handshake()
        yield raw.wait_bytes(len(GARBAGE_BYTES))
        assert raw.cipher is not None
        self.assertRaises(noise.TransportError, raw.cipher.feed, raw.buf)

    @defer.inlineCallbacks
    def test_bad_act1_closes(self) -> Any:
        """A malformed act 1 (any mode that reads it) closes the connection
        and keeps the error."""
        factory, port = self.local_peer()
        seen: list[Any] = []
        factory.on_message.append(lambda p, m: seen.append(m))
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)

        junk = Junk()
        built: list[Any] = []
        build = factory.buildProtocol
        factory.buildProtocol = (  # type: ignore[method-assign]
            lambda addr: built.append(build(addr)) or built[-1]
        )
        yield endpoint.connect(ClientFactory.forProtocol(lambda: junk))
        yield junk.lost.addTimeout(5, reactor)
        self.assertIsInstance(built[0].error, noise.HandshakeError)
        self.assertEqual((seen, factory.closed_count), ([], 1))

    def test_mode_values(self) -> None:
        """The string values are the ones the fault tests pass."""
        self.assertEqual(
            [m.value for m in Mode],
            ["ok", "close", "silent", "bad_version", "no_init", "garbage"],
        )
        self.assertRaises(ValueError, Mode, "rude")


class RpcClientTests(ProxyTestCase):
    """:class:`RpcClient` against a real in-process proxy."""

    @defer.inlineCallbacks
    def test_hello_login_split_handshake(self) -> Any:
        """hello is parsed; login signs the documented digest; the split
        handshake opens a connection whose peer sees the client's node id;
        notifications come through the queue in order; a message sent on the
        connection reaches the peer."""
        self.start_proxy()
        client = yield connect_rpc(reactor, self.proxy_port)
        self.addCleanup(self._close_ws, client)
        self.assertIsInstance(client, RpcClient)
        hello = yield client.hello
        self.assertEqual(client.websocket_protocol_in_use, SUBPROTOCOL)
        self.assertEqual(hello["protocol"], PROTOCOL_VERSION)
        self.assertEqual(len(bytes.fromhex(hello["server_id"])), 33)
        secret = os.urandom(32)
        result = yield client.login(secret)
        self.assertEqual(result["node_id"], keys.public_key(secret).hex())
        self.assertIs(client.login_result, result)

        peer, port = self.local_peer()
        opened = peer.wait_open()
        conn, tk = yield client.open_peer(peer, port)
        p = yield opened
        self.assertEqual(p.remote_node_id, keys.public_key(secret))
        self.assertEqual(len(tk.sk), 32)
        first = yield client.next_event()
        self.assertEqual(
            (first["method"], first["params"]["conn"], first["params"]["type"]),
            ("message", conn, wire.INIT),
        )
        p.send(bytes.fromhex("8001aa"))
        p.send(bytes.fromhex("8003bb"))
        second = yield client.next_event()
        third = yield client.next_event()
        self.assertEqual(
            [second["params"]["msg"], third["params"]["msg"]], ["8001aa", "8003bb"]
        )
        got = peer.wait_message(lambda m: m[:2] == b"\x80\x05")
        yield client.call("send", conn=conn, msg="8005cc")
        self.assertEqual((yield got), bytes.fromhex("8005cc"))

    @defer.inlineCallbacks
    def test_wrong_signature_and_raw_frames(self) -> Any:
        """A login signed over the wrong challenge fails with RpcFailed code
        2; a raw frame's reply is caught by next_reply."""
        self.start_proxy()
        client = yield self.ws()
        hello = yield client.hello
        secret = os.urandom(32)
        digest = keys.login_digest(bytes.fromhex(hello["server_id"]), bytes(32))
        err = yield self.assertFailure(
            client.call(
                "login",
                node_id=keys.public_key(secret).hex(),
                signature=keys.sign_digest(secret, digest).hex(),
            ),
            RpcFailed,
        )
        self.assertEqual(err.code, LOGIN_FAILED)
        nxt = client.next_reply()
        client.send_raw('{"jsonrpc": "2.0", "id": "x", "method": "nope"}')
        reply = yield nxt
        self.assertEqual(reply["id"], "x")
        self.assertIn("error", reply)

    @defer.inlineCallbacks
    def test_start_connect_then_finish(self) -> Any:
        """start_connect returns act 2 and an initiator; finish returns the
        initiator's transport keys, and the connection is listed open."""
        self.start_proxy()
        client = yield self.logged_in()
        peer, port = self.local_peer()
        r, init = yield client.start_connect(peer, port)
        self.assertEqual(len(bytes.fromhex(r["act2"])), noise.ACT2_SIZE)
        tk = yield client.finish(r, init)
        self.assertIsInstance(tk, noise.TransportKeys)
        listed = yield client.call("connections")
        self.assertEqual(
            [(c["conn"], c["state"]) for c in listed["connections"]],
            [(r["conn"], "open")],
        )


class PortAndProcessTests(ProxyTestCase):
    """free_port, twistd_command and the two process helpers."""

    timeout = 60

    @defer.inlineCallbacks
    def test_free_port(self) -> Any:
        """free_port is on 127.0.0.1, nobody listens there (connecting is
        refused) and it can be bound."""
        port = free_port()
        self.assertTrue(1024 <= port <= 65535)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        yield self.assertFailure(
            endpoint.connect(ClientFactory.forProtocol(Protocol)),
            ConnectionRefusedError,
        )
        listening = reactor.listenTCP(port, ClientFactory(), interface="127.0.0.1")
        yield listening.stopListening()

    def test_twistd_command(self) -> None:
        """The child runs this interpreter, foreground, no pid file, on
        127.0.0.1, and imports this lnproxy first."""
        argv, env = twistd_command(
            4321, "/data", "--keepalive", "5", env={"PYTHONPATH": "/x"}
        )
        self.assertEqual(argv[0], sys.executable)
        self.assertEqual(
            argv[3:],
            ["-n", "--pidfile=", "lnproxy", "--listen",
             "tcp:4321:interface=127.0.0.1", "--data-dir", "/data",
             "--keepalive", "5"],
        )  # fmt: skip
        import lnproxy

        root = os.path.dirname(os.path.dirname(os.path.abspath(lnproxy.__file__)))
        self.assertEqual(env["PYTHONPATH"], os.pathsep.join([root, "/x"]))
        argv, _ = twistd_command(1, "/d", foreground=False, pidfile="/p")
        self.assertNotIn("-n", argv)
        self.assertIn("--pidfile=/p", argv)

    @defer.inlineCallbacks
    def test_twistd_process(self) -> Any:
        """spawn_twistd starts a real proxy an RpcClient logs in to; stop()
        ends it with SIGTERM, cleanly."""
        data_dir = os.path.abspath(self.mktemp())
        port = free_port()
        child = spawn_twistd(reactor, port, data_dir)
        self.addCleanup(child.stop, "KILL")
        yield child.wait_started().addTimeout(30, reactor)
        self.assertIn(STARTED_LINE, child.text)
        client = yield self.logged_in(port=port)
        self.assertEqual(client.login_result["inbox"]["pending"], 0)
        yield child.stop().addTimeout(30, reactor)
        assert child.reason is not None
        status = (child.reason.value.exitCode, child.reason.value.signal)
        self.assertIn(status, [(0, None), (None, signal.SIGTERM)], child.text)
        self.assertTrue(child.wait_started().called)

    @defer.inlineCallbacks
    def test_twistd_process_fails_to_start(self) -> Any:
        """A child that ends before it serves fails wait_started with its
        output (a bare Python child stands in for a twistd that cannot
        start: no twistd start-up cost)."""
        child = TwistdProcess()
        script = "import sys; sys.stderr.write('no-such-option'); sys.exit(1)"
        reactor.spawnProcess(
            child, sys.executable, [sys.executable, "-S", "-c", script]
        )
        self.addCleanup(child.stop, "KILL")
        err = yield self.assertFailure(
            child.wait_started().addTimeout(30, reactor), RuntimeError
        )
        self.assertIn("no-such-option", str(err))
        yield child.ended
        self.failureResultOf(child.wait_started(), RuntimeError)

    def test_proxy_process(self) -> None:
        """ProxyProcess (blocking): waits for the port, logs to a file, and
        stops with SIGTERM; an early exit is an error with the log."""
        port = free_port()
        argv, env = twistd_command(port, os.path.abspath(self.mktemp()))
        log = os.path.abspath(self.mktemp())
        child = ProxyProcess(argv, env, log, port)
        self.addCleanup(child.stop, signal.SIGKILL, 5)
        child.wait_listening(30)
        self.assertTrue(child.listening())
        status = child.stop()
        self.assertIn(status, [0, -signal.SIGTERM], child.log_tail())
        with open(log) as f:
            # (Not STARTED_LINE: the port may accept before that is logged.)
            self.assertIn(f"starting on {port}", f.read())

        # An early exit (a bare Python child: no twistd start-up cost).
        script = "import sys; sys.stderr.write('no-such-option'); sys.exit(1)"
        argv = [sys.executable, "-S", "-c", script]
        bad = ProxyProcess(argv, env, log + ".2", port)
        self.addCleanup(bad.stop, signal.SIGKILL, 5)
        with self.assertRaises(RuntimeError) as cm:
            bad.wait_listening(30)
        self.assertIn("no-such-option", str(cm.exception))


class StaticResolverTests(SynchronousTestCase):
    """static_resolver answers from its table, like getaddrinfo would."""

    def test_known_and_unknown(self) -> None:
        """A known name gives a fresh list of its addresses; an unknown one
        fails with OSError naming it."""
        resolve = static_resolver({"hooks.example": ["93.184.216.34", "::1"]})
        got = self.successResultOf(resolve("hooks.example", 443))
        self.assertEqual(got, ["93.184.216.34", "::1"])
        got.append("10.0.0.1")
        again = self.successResultOf(resolve("hooks.example", 443))
        self.assertEqual(again, ["93.184.216.34", "::1"])
        f = self.failureResultOf(resolve("other.example", 443), OSError)
        self.assertIn("other.example", str(f.value))
