"""Hot restart mechanics (lnproxy.handover): real sockets, real processes.

In-process tests take a Twisted TCP connection off the reactor, hand its
socket to a second owner and check, from a plain-socket peer, that no EOF
is seen and every byte (including what sat in Twisted's write buffer)
arrives exactly once.  Process tests run ``tests/handover_relay.py``
holding connections to a peer this test controls, with lines flowing both
ways, and take it over: through the Unix socket channel, through the fake
service manager, and down every failure path.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lnproxy.handover import (
    Handover,
    TakeoverFailed,
    TakeoverListener,
    detach,
    manifest,
    request_takeover,
    session,
)
from lnproxy.handover import systemd as sd
from lnproxy.testing_systemd import FakeServiceManager

from .handover_support import REPO, Child, Peers, spawn
from .harness import eventually

R: Any = reactor


def _no_eof(skt: socket.socket) -> bool:
    """True if the socket has neither EOF nor an error pending."""
    skt.setblocking(False)
    try:
        data = skt.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    return data != b""


def _read_exactly(skt: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    skt.setblocking(True)
    skt.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        chunk = skt.recv(min(1 << 20, n - len(out)))
        if not chunk:
            raise AssertionError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


class Collector(protocol.Protocol):
    """Keeps what it reads; remembers connectionLost's reason."""

    def __init__(self) -> None:
        self.data = b""
        self.reason: Any = None
        self.made = 0

    def connectionMade(self) -> None:
        """Count (adoption calls it once)."""
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        """Keep it."""
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        """Remember why."""
        self.reason = reason


class _PeerSocket(TestCase):
    """A plain-socket peer and Twisted connections to it."""

    def setUp(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.addCleanup(self.server.close)

    @defer.inlineCallbacks
    def connect(self) -> Any:
        """A Twisted tcp.Client to our plain-socket peer; (protocol, peer)."""
        proto = Collector()
        yield protocol.ClientCreator(R, lambda: proto).connectTCP(
            "127.0.0.1", self.server.getsockname()[1]
        )
        peer, _ = self.server.accept()
        self.addCleanup(peer.close)
        return proto, peer


class DetachTests(_PeerSocket):
    """Freezing, releasing, thawing and adopting real TCP connections."""

    @defer.inlineCallbacks
    def test_release_then_adopt_keeps_every_byte(self) -> Any:
        """Bytes stuck in Twisted's buffer cross with the socket; no EOF.

        The peer does not read, so the kernel buffers fill and Twisted keeps
        the rest; the handover takes those pending bytes to the new owner,
        which writes them before its own.
        """
        proto, peer = yield self.connect()
        peer.sendall(b"before")
        yield eventually(lambda: proto.data == b"before")
        stream = os.urandom(8 << 20)
        proto.transport.write(stream)
        yield task.deferLater(R, 0.05, lambda: None)
        detach.freeze(proto.transport)
        pending = detach.pending_bytes(proto.transport)
        self.assertTrue(pending, "the test needs bytes left in Twisted's buffer")
        copy = os.dup(proto.transport.socket.fileno())  # the "other process"
        detach.release(proto.transport)
        self.assertTrue(proto.reason.check(detach.HandedOver))
        self.assertTrue(_no_eof(peer))
        peer.sendall(b"while away")
        new = Collector()
        transport = detach.adopt_connection(R, copy, socket.AF_INET, new, pending)
        os.close(copy)
        new.transport.write(b"new")
        self.assertEqual(new.made, 1)
        self.assertIs(new.transport, transport)
        received = yield _read_in_thread(peer, len(stream) + 3)
        self.assertEqual(received, stream + b"new")
        yield eventually(lambda: new.data == b"while away")
        self.assertTrue(_no_eof(peer))
        new.transport.loseConnection()

    @defer.inlineCallbacks
    def test_thaw_resumes_reading_and_flushes(self) -> Any:
        """A rolled-back freeze is invisible: writes made meanwhile go out,
        bytes the peer sent meanwhile are read."""
        proto, peer = yield self.connect()
        detach.freeze(proto.transport)
        proto.transport.write(b"queued while frozen")
        proto.transport.resumeProducing()  # must not restart reading
        peer.sendall(b"sent while frozen")
        yield task.deferLater(R, 0.1, lambda: None)
        self.assertEqual(proto.data, b"")
        self.assertTrue(_no_eof(peer))
        peer.setblocking(False)
        self.assertRaises(BlockingIOError, peer.recv, 100)
        detach.thaw(proto.transport)
        yield eventually(lambda: proto.data == b"sent while frozen")
        received = yield _read_in_thread(peer, len(b"queued while frozen"))
        self.assertEqual(received, b"queued while frozen")
        proto.transport.loseConnection()

    @defer.inlineCallbacks
    def test_thaw_keeps_a_paused_transport_paused(self) -> Any:
        """A transport paused by backpressure when frozen stays paused after
        a rollback: the application resumes it, not the handover."""
        proto, peer = yield self.connect()
        proto.transport.pauseProducing()
        detach.freeze(proto.transport)
        detach.thaw(proto.transport)
        peer.sendall(b"waits")
        yield task.deferLater(R, 0.1, lambda: None)
        self.assertEqual(proto.data, b"")
        proto.transport.resumeProducing()
        yield eventually(lambda: proto.data == b"waits")
        proto.transport.loseConnection()

    @defer.inlineCallbacks
    def test_release_without_notify_stays_silent(self) -> Any:
        """notify=False: no connectionLost, later writes and
        loseConnection do nothing, the socket stays open elsewhere."""
        proto, peer = yield self.connect()
        copy = os.dup(proto.transport.socket.fileno())
        self.addCleanup(os.close, copy)
        detach.freeze(proto.transport)
        detach.release(proto.transport, notify=False)
        proto.transport.write(b"never")
        proto.transport.loseConnection()
        yield task.deferLater(R, 0.05, lambda: None)
        self.assertIsNone(proto.reason)
        self.assertTrue(_no_eof(peer))
        os.write(copy, b"still here")
        self.assertEqual(_read_exactly(peer, 10), b"still here")

    def test_release_needs_freeze(self) -> None:
        """Releasing a live transport would race the reactor: refused."""
        proto = Collector()
        client = socket.socket()
        client.connect(self.server.getsockname())
        self.addCleanup(client.close)
        transport: Any = R.adoptStreamConnection(
            client.fileno(), socket.AF_INET, _Once(proto)
        )
        self.assertRaises(ValueError, detach.release, transport)
        self.assertRaises(ValueError, detach.pending_bytes, transport)
        transport.loseConnection()

    @defer.inlineCallbacks
    def test_listener_handover(self) -> Any:
        """A frozen listening port accepts nothing; released, it stays in
        LISTEN for the adopter, who accepts the connection that waited in
        the backlog."""
        first = Collector()
        port = R.listenTCP(0, _Once(first), interface="127.0.0.1")
        address = ("127.0.0.1", port.getHost().port)
        detach.freeze(port)
        waiting = socket.create_connection(address)
        self.addCleanup(waiting.close)
        yield task.deferLater(R, 0.05, lambda: None)
        self.assertEqual(first.made, 0)
        copy = os.dup(port.socket.fileno())
        detach.release(port)
        second = Collector()
        adopted = detach.adopt_listener(R, copy, socket.AF_INET, _Once(second))
        os.close(copy)
        yield eventually(lambda: second.made == 1)
        waiting.sendall(b"hi")
        yield eventually(lambda: second.data == b"hi")
        second.transport.loseConnection()
        yield adopted.stopListening()


class SessionTests(_PeerSocket):
    """Frozen and Received in one process (dup plays SCM_RIGHTS)."""

    @defer.inlineCallbacks
    def test_closing_connection_is_flushed_then_closed(self) -> Any:
        """A connection the old owner was closing crosses as "closing": the
        new side writes what was pending, then closes; no protocol needed."""
        proto, peer = yield self.connect()
        gone, _ = yield self.connect()
        gone.transport.loseConnection()
        yield eventually(lambda: gone.reason is not None)
        stream = os.urandom(4 << 20)
        proto.transport.write(stream)
        proto.transport.loseConnection()
        frozen = session.Frozen(
            session.Handover([(proto.transport, b"a"), (gone.transport, b"b")]), 0.0
        )
        self.assertEqual(frozen.skipped, 1)
        fds = [os.dup(fd) for fd in frozen.fds]
        frozen.commit(notify=False)
        received = session.match(frozen.manifest, fds)
        self.assertEqual(len(received.connections), 1)
        self.assertTrue(received.connections[0].closing)
        adopted = received.adopt(R, [None])
        self.assertEqual(adopted.transports, [None])
        data = yield _read_in_thread(peer, len(stream))
        self.assertEqual(data, stream)
        peer.settimeout(5)
        self.assertEqual(peer.recv(1), b"")  # then EOF, as asked

    @defer.inlineCallbacks
    def test_ipv6(self) -> Any:
        """An IPv6 connection crosses the same way (family kept)."""
        server = socket.socket(socket.AF_INET6)
        try:
            server.bind(("::1", 0))
        except OSError:
            raise SkipTest("no IPv6 loopback") from None
        server.listen(1)
        self.addCleanup(server.close)
        proto = Collector()
        yield protocol.ClientCreator(R, lambda: proto).connectTCP(
            "::1", server.getsockname()[1]
        )
        peer, _ = server.accept()
        self.addCleanup(peer.close)
        frozen = session.Frozen(session.Handover([(proto.transport, b"v6")]), 0.0)
        fds = [os.dup(fd) for fd in frozen.fds]
        frozen.commit()
        received = session.match(frozen.manifest, fds)
        self.assertEqual(received.connections[0].family, socket.AF_INET6)
        new = Collector()
        adopted = received.adopt(R, [new])
        self.assertEqual(adopted.transports[0].getPeer().host, "::1")
        peer.sendall(b"over v6")
        yield eventually(lambda: new.data == b"over v6")
        self.assertTrue(_no_eof(peer))
        new.transport.loseConnection()

    @defer.inlineCallbacks
    def test_rollback_is_invisible(self) -> Any:
        """Frozen then rolled back: the peer's bytes are read, ours sent."""
        proto, peer = yield self.connect()
        frozen = session.Frozen(session.Handover([(proto.transport, b"")]), 0.0)
        proto.transport.write(b"later")
        peer.sendall(b"meanwhile")
        yield task.deferLater(R, 0.05, lambda: None)
        self.assertEqual(proto.data, b"")
        frozen.rollback()
        yield eventually(lambda: proto.data == b"meanwhile")
        self.assertEqual((yield _read_in_thread(peer, 5)), b"later")
        proto.transport.loseConnection()


class ChannelConnectionTests(_PeerSocket):
    """The channel with real TCP connections: sockets sent before the
    freeze, connections written to while frozen."""

    @defer.inlineCallbacks
    def test_write_after_freeze_rolls_back(self) -> Any:
        """Bytes written to a frozen connection between the freeze and the
        new side's ready (a reply finishing late) are not in what crossed:
        the old side refuses to commit, rolls back, and sends them itself."""
        proto, peer = yield self.connect()
        directory = tempfile.mkdtemp(prefix="lnproxy-handover-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "takeover.sock")
        outcomes: list[Any] = []
        listener = TakeoverListener(
            R,
            path,
            lambda: Handover([(proto.transport, b"snapshot")]),
            outcomes.append,
            timeout=5,
        )
        listener.start()
        self.addCleanup(listener.stop)

        def new_side() -> str:
            from twisted.internet.threads import blockingCallFromThread

            t = request_takeover(path)
            blockingCallFromThread(R, proto.transport.write, b"late")
            try:
                t.confirm(timeout=5)
            except TakeoverFailed as e:
                return str(e)
            t.received.close()
            return "committed"

        result = yield deferToThread(new_side)
        self.assertIn("written to during the handover", result)
        yield eventually(lambda: len(outcomes) == 1)
        self.assertFalse(outcomes[0].committed)
        self.assertEqual((yield _read_in_thread(peer, 4)), b"late")
        peer.sendall(b"still mine")
        yield eventually(lambda: proto.data == b"still mine")
        proto.transport.loseConnection()

    @defer.inlineCallbacks
    def test_sockets_sent_before_the_freeze(self) -> Any:
        """Sockets sent early (before the freeze) are matched by inode: one
        that no longer crosses is only closed by the new side, one opened
        since crosses during the freeze; a rollback leaves all three
        connections working."""
        p1, s1 = yield self.connect()
        p2, s2 = yield self.connect()
        p3, s3 = yield self.connect()
        directory = tempfile.mkdtemp(prefix="lnproxy-handover-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "takeover.sock")
        outcomes: list[Any] = []
        listener = TakeoverListener(
            R,
            path,
            lambda: Handover([(p1.transport, b"one"), (p3.transport, b"three")]),
            outcomes.append,
            timeout=5,
            sockets=lambda: [p1.transport.socket, p2.transport.socket],
        )
        listener.start()
        self.addCleanup(listener.stop)

        def new_side() -> tuple[list[bytes], int]:
            t = request_takeover(path)
            got = [c.blob for c in t.received.connections if c.fd is not None]
            unmatched = t.received.unmatched
            t.abort("test")
            return got, unmatched

        got, unmatched = yield deferToThread(new_side)
        self.assertEqual(got, [b"one", b"three"])
        self.assertEqual(unmatched, 1)
        yield eventually(lambda: len(outcomes) == 1)
        self.assertFalse(outcomes[0].committed)
        for proto, peer in ((p1, s1), (p2, s2), (p3, s3)):
            peer.sendall(b"x")
            proto.transport.write(b"y")
            self.assertEqual((yield _read_in_thread(peer, 1)), b"y")
        yield eventually(lambda: [p1.data, p2.data, p3.data] == [b"x"] * 3)
        for proto in (p1, p2, p3):
            proto.transport.loseConnection()

    @defer.inlineCallbacks
    def test_abort_while_frozen_waits_for_thaw(self) -> Any:
        """``abortConnection`` on a frozen connection does not touch the
        shared socket (its SO_LINGER would reset it for the new owner too);
        it happens at the rollback."""
        proto, peer = yield self.connect()
        frozen = session.Frozen(session.Handover([(proto.transport, b"")]), 0.0)
        proto.transport.abortConnection()
        self.assertEqual(frozen.written(), 1)
        self.assertTrue(proto.transport.connected)
        frozen.rollback()
        yield eventually(lambda: not proto.transport.connected)


class _Once(protocol.Factory):
    """A factory handing out one given protocol."""

    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        """That protocol."""
        return self.proto


def _read_in_thread(skt: socket.socket, n: int) -> defer.Deferred[bytes]:
    from twisted.internet.threads import deferToThread

    return deferToThread(_read_exactly, skt, n)


class ManifestTests(SynchronousTestCase):
    """The manifest: round trip, and clear errors for bad input."""

    def test_round_trip(self) -> None:
        """Everything encoded comes back equal."""
        value = manifest.Manifest(
            (
                manifest.ConnectionRecord(7, socket.AF_INET, b"p" * 5, b"blob"),
                manifest.ConnectionRecord(8, socket.AF_INET6, b"", b""),
            ),
            (manifest.ListenerRecord(9, socket.AF_INET, "tcp:9736"),),
            b"state",
        )
        self.assertEqual(manifest.decode(manifest.encode(value)), value)

    def test_malformed(self) -> None:
        """Truncated, trailing, bad magic, bad family: ManifestError."""
        good = manifest.encode(
            manifest.Manifest(
                (manifest.ConnectionRecord(1, socket.AF_INET, b"x", b"y"),)
            )
        )
        for bad, why in [
            (good[:-1], "truncated"),
            (good + b"!", "trailing"),
            (b"NOTMAGIC" + good[8:], "bad magic"),
            (b"", "empty"),
        ]:
            with self.assertRaises(manifest.ManifestError, msg=why):
                manifest.decode(bad)
        family_at = 8 + 12 + 8
        bad_family = good[:family_at] + b"\x63" + good[family_at + 1 :]
        with self.assertRaises(manifest.ManifestError) as e:
            manifest.decode(bad_family)
        self.assertIn("family 99", str(e.exception))

    def test_match_by_inode(self) -> None:
        """Descriptors pair with records by inode whatever their order;
        unknown ones are closed and counted; missing ones are None."""
        a, b = socket.socketpair()  # AF_UNIX: not adoptable, counted
        tcp1 = socket.socket()
        tcp2 = socket.socket()
        records = (
            manifest.ConnectionRecord(
                manifest.inode_of(tcp1.fileno()), socket.AF_INET, b"", b"one"
            ),
            manifest.ConnectionRecord(
                manifest.inode_of(tcp2.fileno()), socket.AF_INET, b"", b"two"
            ),
            manifest.ConnectionRecord(123456789, socket.AF_INET, b"", b"gone"),
        )
        data = manifest.encode(manifest.Manifest(records))
        fds = [tcp2.detach(), a.detach(), tcp1.detach()]
        received = session.match(data, fds)
        self.assertEqual(
            [c.blob for c in received.connections], [b"one", b"two", b"gone"]
        )
        self.assertEqual(received.connections[0].fd, fds[2])
        self.assertEqual(received.connections[1].fd, fds[0])
        self.assertIsNone(received.connections[2].fd)
        self.assertEqual(received.unmatched, 1)
        self.assertRaises(OSError, os.fstat, fds[1])
        received.close()
        self.assertRaises(OSError, os.fstat, fds[0])
        b.close()


class SystemdTests(SynchronousTestCase):
    """sd_notify, the memfd and the fake service manager, in-process."""

    def setUp(self) -> None:
        self.manager = FakeServiceManager(store_max=3)
        self.addCleanup(self.manager.close)
        self.notifier = sd.Notifier(self.manager.notify_socket)

    def test_no_notify_socket(self) -> None:
        """Outside a service manager every call is a no-op returning False."""
        notifier = sd.Notifier("")
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.store("x", [0]))
        self.assertFalse(notifier.barrier())

    def test_store_remove_barrier(self) -> None:
        """FDSTORE keeps copies under a name up to the limit, FDSTOREREMOVE
        drops them, BARRIER returns once the manager processed them all."""
        pipes = [os.pipe() for _ in range(4)]
        self.assertTrue(self.notifier.store("a", [pipes[0][0], pipes[1][0]]))
        self.assertTrue(self.notifier.store("b", [pipes[2][0], pipes[3][0]]))
        self.assertTrue(self.notifier.barrier(timeout=5))
        self.assertEqual(self.manager.names(), ["a", "a", "b"])  # max 3
        self.notifier.remove("a")
        self.notifier.ready("up")
        self.assertTrue(self.notifier.barrier(timeout=5))
        self.assertEqual(self.manager.names(), ["b"])
        self.assertTrue(self.manager.seen("READY"))
        self.assertTrue(self.manager.seen("STATUS", "up"))
        for r, w in pipes:
            os.close(r)
            os.close(w)

    def test_barrier_times_out(self) -> None:
        """A manager that never answers: TimeoutError, not a hang."""
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        silent.bind(b"\0lnproxy-silent-%d" % os.getpid())
        self.addCleanup(silent.close)
        notifier = sd.Notifier(f"@lnproxy-silent-{os.getpid()}")
        self.assertRaises(TimeoutError, notifier.barrier, 0.2)

    def test_memfd_sealed(self) -> None:
        """The state memfd reads back and refuses writes (sealed)."""
        fd = sd.state_memfd(b"secret state")
        self.addCleanup(os.close, fd)
        self.assertEqual(sd.read_memfd(fd), b"secret state")
        self.assertRaises(PermissionError, os.write, fd, b"x")
        self.assertEqual(os.readlink(f"/proc/self/fd/{fd}")[:6], "/memfd")

    def test_capture_before_endpoints(self) -> None:
        """In a child started like systemd starts a service, capturing at
        import time sees the descriptors; importing endpoints deletes
        LISTEN_FDS, and a capture after that still finds them (from
        Twisted's systemd endpoint parser)."""
        probe = (
            "import os, sys\n"
            "if sys.argv[1] == 'late':\n"
            "    import twisted.internet.endpoints\n"
            "from lnproxy.handover import systemd\n"
            "had = 'LISTEN_FDS' in os.environ\n"
            "got = systemd.capture_listen_fds()\n"
            "import twisted.internet.endpoints\n"
            "print(had, 'LISTEN_FDS' in os.environ)\n"
            "print(';'.join(f'{fd}={n}' for fd, n in got.fds))\n"
            "print(os.fstat(got.fds[0][0]).st_size if got.fds else -1)\n"
        )
        r, w = os.pipe()
        memfd = sd.state_memfd(b"12345")
        self.addCleanup(os.close, memfd)
        for fd in (r, w):
            os.close(fd)
        self.notifier.store("state", [memfd])
        self.notifier.barrier()
        for when, expected in [
            ("early", "True False\n3=state\n5\n"),  # Twisted deletes them
            ("late", "False False\n3=state\n5\n"),  # recovered from Twisted
        ]:
            args, env, fds = self.manager.command([sys.executable, "-c", probe, when])
            env["PYTHONPATH"] = REPO
            out = subprocess.run(
                args, env=env, pass_fds=fds, capture_output=True, check=True, timeout=60
            )
            self.assertEqual(out.stdout.decode(), expected, out.stderr.decode())


class ChannelTests(TestCase):
    """The old side of the channel in this reactor, the new side elsewhere."""

    def listen(self, collect: Any) -> tuple[str, list[Any]]:
        """A TakeoverListener in a fresh directory others may traverse (trial's
        own temporary directories are 0700); (path, outcomes)."""
        directory = tempfile.mkdtemp(prefix="lnproxy-handover-")
        self.addCleanup(shutil.rmtree, directory)
        os.chmod(directory, 0o711)
        path = os.path.join(directory, "takeover.sock")
        outcomes: list[Any] = []
        listener = TakeoverListener(R, path, collect, outcomes.append, timeout=5)
        listener.start()
        self.addCleanup(listener.stop)
        return path, outcomes

    def test_stop_removes_only_its_own_file(self) -> None:
        """stop() unlinks the socket file it bound, not a successor's."""
        directory = tempfile.mkdtemp(prefix="lnproxy-handover-")
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, "takeover.sock")
        first = TakeoverListener(R, path, lambda: Handover([]), lambda o: None)
        second = TakeoverListener(R, path, lambda: Handover([]), lambda o: None)
        first.start()
        second.start()  # a successor replaces the file
        first.stop()
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        second.stop()
        self.assertFalse(os.path.exists(path))

    @defer.inlineCallbacks
    def test_collect_fails(self) -> Any:
        """An error while collecting the handover refuses the request with
        its reason; the old side goes on."""

        def collect() -> Any:
            raise RuntimeError("store busy")

        path, outcomes = self.listen(collect)
        error = yield self.assertFailure(
            deferToThread(request_takeover, path), TakeoverFailed
        )
        self.assertIn("store busy", str(error))
        yield eventually(lambda: len(outcomes) == 1)
        self.assertFalse(outcomes[0].committed)
        self.assertIn("store busy", outcomes[0].reason)

    @defer.inlineCallbacks
    def test_other_user_refused(self) -> Any:
        """A process of another user cannot take over even when it can reach
        the socket (mode widened here on purpose): both ends check
        SO_PEERCRED."""
        if os.geteuid() != 0:
            raise SkipTest("needs root to run a process as another user")
        path, outcomes = self.listen(lambda: Handover([]))
        os.chmod(path, 0o666)
        probe = (
            "import os, sys\n"
            "from lnproxy.handover import request_takeover, TakeoverFailed\n"
            "os.setgid(65534); os.setuid(65534)  # after imports: /root is 0700\n"
            "try:\n"
            "    request_takeover(sys.argv[1])\n"
            "except TakeoverFailed as e:\n"
            "    print('refused:', e)\n"
        )
        child = spawn([sys.executable, "-c", probe, path], full_argv=True)
        status = yield child.ended
        self.assertEqual(status, 0, child.err.decode())
        self.assertEqual(
            child.lines[0],
            f"refused: the takeover peer (pid {os.getpid()}) runs as uid 0, not 65534",
        )
        yield eventually(lambda: len(outcomes) == 1)
        self.assertFalse(outcomes[0].committed)
        self.assertIn("runs as uid 65534", outcomes[0].reason)


class ProcessTests(TestCase):
    """Real relay processes, a real peer, real handovers."""

    timeout = 120
    N = 20

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir, mode=0o700)
        self.peers = Peers()
        self.peer_port = self.peers.listen()
        self.children: list[Child] = []
        self.sender = task.LoopingCall(self.peers.send_all)
        self.addCleanup(self._cleanup)
        yield None

    @defer.inlineCallbacks
    def _cleanup(self) -> Any:
        if self.sender.running:
            self.sender.stop()
        for child in self.children:
            child.kill()
        for child in self.children:
            if child.status is None:
                yield child.ended
        yield self.peers.close()

    def start(self, *args: str, env: dict[str, str] | None = None) -> Child:
        """A relay child with our data dir."""
        child = spawn(["--dir", self.dir, *args], env=env)
        self.children.append(child)
        return child

    @defer.inlineCallbacks
    def start_old(self, *args: str, env: dict[str, str] | None = None) -> Any:
        """The serving process with N peer connections, one more accepted
        on its listener, and lines flowing from the peer every 5 ms."""
        old = self.start(
            "--peer-port", str(self.peer_port), "--count", str(self.N), *args, env=env
        )
        yield eventually(lambda: old.line("serving") is not None, timeout=30)
        yield eventually(lambda: len(self.peers.connections) == self.N)
        listening = old.line("listening")
        assert listening is not None
        self.listen_port = int(listening.split()[1])
        yield protocol.ClientCreator(R, self.peers.buildProtocol, None).connectTCP(
            "127.0.0.1", self.listen_port
        )
        yield eventually(lambda: len(self.peers.connections) == self.N + 1)
        self.sender.start(0.005)
        yield task.deferLater(R, 0.2, lambda: None)
        return old

    @defer.inlineCallbacks
    def check_all_answered(self, *pids: int) -> Any:
        """Stop sending; every line echoed once and in order, no EOF, ticks
        consecutive, and every connection answered by each of ``pids``
        (those opened later: by the last one)."""
        yield task.deferLater(R, 0.3, lambda: None)
        self.sender.stop()
        yield eventually(self.peers.all_answered, timeout=20)
        self.assertEqual(self.peers.problems(), [])
        for i, c in enumerate(self.peers.connections):
            seen = set(c.echo_pids)
            if i <= self.N:
                self.assertEqual(seen, set(pids), f"connection #{i}")
            else:  # opened later: answered by the last one at least
                self.assertIn(pids[-1], seen, f"connection #{i}")
                self.assertLessEqual(seen, set(pids), f"connection #{i}")
            self.assertGreater(c.sent, 10)

    @defer.inlineCallbacks
    def late_client(self) -> Any:
        """A fresh client on the (handed-over) listener, sending too."""
        n = len(self.peers.connections)
        yield protocol.ClientCreator(R, self.peers.buildProtocol, None).connectTCP(
            "127.0.0.1", self.listen_port
        )
        yield eventually(lambda: len(self.peers.connections) == n + 1)
        yield task.deferLater(R, 0.2, lambda: None)

    @defer.inlineCallbacks
    def test_takeover(self) -> Any:
        """--takeover: the new process gets every connection and the
        listener; the peer sees the same connections, no EOF, every line
        answered exactly once in order; the old process exits 0."""
        old = yield self.start_old()
        new = self.start("--takeover")
        status = yield old.ended
        self.assertEqual(status, 0, old.err.decode())
        self.assertIsNotNone(old.line("committed"), old.lines)
        yield eventually(lambda: new.line("serving") is not None)
        # The old socket file went before the commit; this one is the new
        # process's own (mode 0600 again).
        mode = os.stat(os.path.join(self.dir, "takeover.sock")).st_mode
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        yield eventually(lambda: new.line("serving") is not None)
        self.assertEqual(new.line("adopted"), f"adopted {self.N + 1} 1")
        yield self.late_client()
        yield self.check_all_answered(old.pid, new.pid)
        # The new process serves the channel in turn: a second takeover.
        newer = self.start("--takeover")
        status = yield new.ended
        self.assertEqual(status, 0, new.err.decode())
        yield eventually(lambda: newer.line("serving") is not None)
        self.assertEqual(self.peers.problems(), [])

    @defer.inlineCallbacks
    def test_unsent_bytes_cross(self) -> Any:
        """A peer that stops reading leaves megabytes in the old process's
        Twisted buffer; they cross with the socket, unsent, and arrive
        whole and in order once the peer reads again."""
        old = yield self.start_old()
        slow = self.peers.connections[0]
        slow.transport.write(b"flood 16000000\n")
        slow.transport.pauseProducing()
        yield task.deferLater(R, 1.0, lambda: None)
        new = self.start("--takeover")
        status = yield old.ended
        self.assertEqual(status, 0, old.err.decode())
        committed = old.line("committed")
        assert committed is not None
        self.assertGreater(int(committed.split()[3]), 1_000_000, committed)
        yield eventually(lambda: new.line("serving") is not None)
        slow.transport.resumeProducing()
        yield self.check_all_answered(old.pid, new.pid)
        self.assertEqual(slow.floods, [16_000_000])

    @defer.inlineCallbacks
    def test_nothing_to_take_over(self) -> Any:
        """--takeover with no process serving the data dir starts fresh."""
        child = self.start("--takeover", "--peer-port", str(self.peer_port))
        yield eventually(lambda: child.line("serving") is not None, timeout=30)
        self.assertIsNotNone(child.line("nothing-to-take-over"))

    def test_channel_socket_mode(self) -> Any:
        """The takeover socket is 0600 and a socket."""
        return self._mode()

    @defer.inlineCallbacks
    def _mode(self) -> Any:
        yield self.start_old()
        mode = os.stat(os.path.join(self.dir, "takeover.sock")).st_mode
        self.assertTrue(stat.S_ISSOCK(mode))
        self.assertEqual(stat.S_IMODE(mode), 0o600)
        yield self.check_all_answered(self.children[0].pid)

    @defer.inlineCallbacks
    def _failed_takeover(self, old: Child, new: Child, reason: str) -> Any:
        """The old process rolled back for ``reason`` and serves on."""
        yield eventually(lambda: old.line("rolledback") is not None, timeout=30)
        self.assertIn(reason, old.line("rolledback"))
        self.assertIsNone(old.status)
        new.kill()
        yield new.ended
        yield self.late_client()
        yield self.check_all_answered(old.pid)
        self.assertIsNone(old.status)

    @defer.inlineCallbacks
    def test_new_process_gives_up(self) -> Any:
        """The new process fails to adopt and says so: it exits non-zero,
        the old one takes everything back at once."""
        old = yield self.start_old()
        new = self.start("--takeover", "--fail", "abort")
        status = yield new.ended
        self.assertEqual(status, 3)
        yield self._failed_takeover(old, new, "cannot adopt (test)")

    @defer.inlineCallbacks
    def test_new_process_killed(self) -> Any:
        """The new process dies holding the sockets, before confirming:
        the old one sees the channel close and goes on (well before its
        timeout)."""
        old = yield self.start_old("--timeout", "30")
        new = self.start("--takeover", "--fail", "hang")
        yield eventually(lambda: new.line("received") is not None, timeout=30)
        new.kill()
        yield self._failed_takeover(old, new, "closed the takeover channel")

    @defer.inlineCallbacks
    def test_new_process_never_confirms(self) -> Any:
        """No confirmation within the timeout: rolled back; a later
        takeover still works."""
        old = yield self.start_old("--timeout", "1")
        new = self.start("--takeover", "--fail", "hang")
        yield self._failed_takeover(old, new, "did not confirm in time")
        self.sender.start(0.005)
        newer = self.start("--takeover")
        status = yield old.ended
        self.assertEqual(status, 0, old.err.decode())
        yield eventually(lambda: newer.line("serving") is not None)
        yield self.check_all_answered(old.pid, newer.pid)

    @defer.inlineCallbacks
    def test_systemd_restart(self) -> Any:
        """The fake service manager restarts the service: SIGTERM, the old
        process stores its sockets and state and exits 0, the new one gets
        them from LISTEN_FDS, resumes, empties the store, says READY=1."""
        manager = FakeServiceManager()
        self.addCleanup(manager.close)
        old = yield self.start_managed(manager)
        yield eventually(lambda: manager.seen("READY", pid=old.pid))
        yield self.late_client()
        old.kill("TERM")
        status = yield old.ended
        self.assertEqual(status, 0, old.err.decode())
        self.assertEqual(old.line("stored"), f"stored {self.N + 1}")
        names = manager.names()
        self.assertEqual(names.count(sd.PEER), self.N + 1)
        self.assertEqual(names.count(sd.LISTENER), 1)
        self.assertEqual(names.count(sd.STATE), 1)
        self.assertTrue(manager.seen("STOPPING", pid=old.pid))
        new = yield self.start_managed(manager, fresh=False)
        yield eventually(lambda: manager.seen("READY", pid=new.pid), timeout=30)
        self.assertEqual(new.line("adopted"), f"adopted {self.N + 1} 1")
        yield eventually(lambda: manager.names() == [])
        yield task.deferLater(R, 0.3, lambda: None)
        self.sender.stop()
        yield eventually(self.peers.all_answered, timeout=20)
        self.assertEqual(self.peers.problems(), [])
        for c in self.peers.connections:
            self.assertEqual(set(c.echo_pids), {old.pid, new.pid})

    @defer.inlineCallbacks
    def start_managed(self, manager: FakeServiceManager, fresh: bool = True) -> Any:
        """A relay started by the fake manager (with its store)."""
        from .handover_support import RELAY

        args, env, fds = manager.command(
            [
                sys.executable,
                RELAY,
                "--dir",
                self.dir,
                "--peer-port",
                str(self.peer_port),
                "--count",
                str(self.N),
            ]
        )
        child = spawn(args, env=env, fds=fds, full_argv=True)
        manager.main_pid = child.pid
        self.children.append(child)
        if fresh:
            yield eventually(lambda: child.line("serving") is not None, timeout=30)
            yield eventually(lambda: len(self.peers.connections) == self.N)
            listening = child.line("listening")
            assert listening is not None
            self.listen_port = int(listening.split()[1])
            self.sender.start(0.005)
            yield task.deferLater(R, 0.2, lambda: None)
        return child
