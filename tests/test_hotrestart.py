"""Hot restart of a real ``twistd -n lnproxy`` (docs/operations.md,
"Upgrading without dropping peers").

Each test runs the proxy as a child process with BOLT 8 peers in this
process (the shipped responder, :class:`lnproxy.testing.ResponderFactory`)
and a logged-in client (:class:`lnproxy.testing.RpcClient`).  Messages flow
both ways the whole time, past the key rotation (every 500 messages) after
the restart.  The client resends a request that got no reply (the proxy
stops reading clients before it hands over: a request without a reply was
not executed) and counts each event once by its ``seq``.

Checked: the peers' TCP connections are the same ones (none closed), every
message arrives exactly once and in order on both sides, pings are answered
before and after, the client is closed with 1012 and gets its events after
logging in again, and the old process exits 0.  Then the failure paths:
the new side gives up, never confirms, or is killed mid-handover; the old
process goes on as if nothing happened.  Last, no transport key handed over
is in any file of the data dir, the working directory or the logs.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.request import urlopen

from pyln.proto import wire as pyln_wire
from twisted.internet import defer, reactor, task
from twisted.internet.error import ProcessDone
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lnproxy import hotrestart, noise, tap, wire
from lnproxy import keys as lnkeys
from lnproxy.handover import (
    Handover,
    TakeoverFailed,
    TakeoverListener,
    request_takeover,
)
from lnproxy.service import build_service
from lnproxy.store import DataDirLocked, Store, datadir
from lnproxy.testing import (
    ResponderFactory,
    ResponderPeer,
    RpcClient,
    TwistdProcess,
    connect_rpc,
    free_port,
    twistd_command,
)
from lnproxy.testing_systemd import FakeServiceManager

from .harness import eventually
from .test_interop import tame_pyln_connection

R: Any = reactor

#: An odd unknown type: the proxy queues it for the client.
MSG_TYPE = 32769
#: Messages per direction per connection: the restart comes after about a
#: third of them, and the keys rotate every 500.
COUNT = 1200
WINDOW = 16


def body(i: int) -> bytes:
    """The ``i``-th test message."""
    return struct.pack(">HI", MSG_TYPE, i) + b"\x5a" * 24


def counter(msg: bytes) -> int | None:
    """The number in a test message (None for any other message)."""
    if len(msg) >= 6 and wire.message_type(msg) == MSG_TYPE:
        return int(struct.unpack(">I", msg[2:6])[0])
    return None


class Client:
    """One node's client across reconnects: sends ``COUNT`` messages on each
    connection (resending what got no reply), keeps every event once."""

    def __init__(self, port: int, secret: bytes) -> None:
        self.port = port
        self.secret = secret
        self.rpc: RpcClient | None = None
        self.next_out: dict[str, int] = {}
        self.replied: dict[str, int] = {}
        self.received: dict[str, list[int]] = {}
        self.seen: set[int] = set()
        self.last_seq = 0
        self.duplicates = 0
        self.close_codes: list[int | None] = []
        self.closed_events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.logins = 0
        self.stopping = False
        self._pump = task.LoopingCall(self.pump)

    @defer.inlineCallbacks
    def connect(self) -> Any:
        """Connect and log in (again)."""
        rpc = yield connect_rpc(R, self.port)
        rpc.on_event = self.event
        yield rpc.login(self.secret)
        self.logins += 1
        rpc.closed.addCallback(self._closed)
        self.rpc = rpc
        return rpc

    def start(self) -> None:
        """Start sending."""
        self._pump.start(0.002)

    def stop(self) -> None:
        """Stop sending and reconnecting."""
        self.stopping = True
        if self._pump.running:
            self._pump.stop()

    def add(self, conn: str) -> None:
        """Send on ``conn`` too."""
        self.next_out[conn] = self.replied[conn] = 0
        self.received.setdefault(conn, [])

    def event(self, obj: dict[str, Any]) -> None:
        """Keep each event once (a re-login replays unacknowledged ones)."""
        params = obj["params"]
        seq = params["seq"]
        if seq in self.seen:
            self.duplicates += 1
            return
        if seq <= self.last_seq:
            self.errors.append(f"event {seq} after {self.last_seq}")
        self.seen.add(seq)
        self.last_seq = seq
        if obj["method"] == "closed":
            self.closed_events.append(params)
        elif obj["method"] == "message":
            n = counter(bytes.fromhex(params["msg"]))
            if n is not None:
                self.received.setdefault(params["conn"], []).append(n)
        if seq % 200 == 0 and self.rpc is not None:
            self.rpc.call("ack", seq=seq).addErrback(lambda _: None)

    def pump(self) -> None:
        """Keep ``WINDOW`` sends in flight per connection."""
        rpc = self.rpc
        if rpc is None:
            return
        for conn in self.next_out:
            while (
                self.next_out[conn] < COUNT
                and self.next_out[conn] - self.replied[conn] < WINDOW
            ):
                i = self.next_out[conn]
                self.next_out[conn] = i + 1
                d = rpc.call("send", conn=conn, msg=body(i).hex())
                d.addCallbacks(self._replied(conn, i), self._failed)

    def _replied(self, conn: str, i: int) -> Any:
        def replied(_: Any) -> None:
            if i != self.replied[conn]:
                self.errors.append(f"reply {i} on {conn} after {self.replied[conn]}")
            self.replied[conn] = i + 1

        return replied

    def _failed(self, f: Any) -> None:
        self.errors.append(f"send failed: {f.getErrorMessage()}")

    def _closed(self, result: tuple[int | None, str | None]) -> None:
        self.close_codes.append(result[0])
        self.rpc = None
        # A request without a reply was not executed: send it again.
        for conn in self.next_out:
            self.next_out[conn] = self.replied[conn]
        if not self.stopping:
            R.callLater(0.02, self._reconnect)

    @defer.inlineCallbacks
    def _reconnect(self) -> Any:
        for _ in range(200):
            try:
                yield self.connect()
                return
            except Exception:
                yield task.deferLater(R, 0.05, lambda: None)
        self.errors.append("could not log in again")

    def done(self) -> bool:
        """Everything sent and replied, everything received."""
        return all(self.replied[c] == COUNT for c in self.replied) and all(
            len(self.received.get(c, [])) >= COUNT for c in self.next_out
        )


class Peers:
    """BOLT 8 responders in this process, each sending ``COUNT`` messages on
    each connection and recording everything (ping/pong included)."""

    def __init__(self, count: int) -> None:
        self.factories = [ResponderFactory() for _ in range(count)]
        self.ports = [R.listenTCP(0, f, interface="127.0.0.1") for f in self.factories]
        self.sent: dict[int, int] = {}
        self.opened: list[ResponderPeer] = []
        for f in self.factories:
            f.on_open.append(self.opened.append)
        self._pump = task.LoopingCall(self.pump)

    def start(self) -> None:
        """Start sending."""
        self._pump.start(0.004)

    def stop(self) -> None:
        """Stop sending; close everything."""
        if self._pump.running:
            self._pump.stop()
        for f, p in zip(self.factories, self.ports, strict=True):
            f.abort_all()
            p.stopListening()

    def pump(self) -> None:
        """A few messages per connection per tick."""
        for peer in self.opened:
            n = self.sent.get(id(peer), 0)
            for i in range(n, min(COUNT, n + 4)):
                peer.send(body(i))
            self.sent[id(peer)] = min(COUNT, n + 4)

    def counters(self, peer: ResponderPeer) -> list[int]:
        """The test messages a peer received, in order."""
        return [n for n in map(counter, peer.received) if n is not None]

    def closed(self) -> int:
        """Connections the peers saw closed."""
        return sum(f.closed_count for f in self.factories)

    @defer.inlineCallbacks
    def ping(self) -> Any:
        """Each open peer pings; wait for every pong."""
        waits = []
        for peer in self.opened:
            d = peer.factory.wait_message(lambda m: wire.message_type(m) == wire.PONG)
            peer.send(wire.Ping(8, b"").encode())
            waits.append(d)
        yield defer.gatherResults(waits)


class PylnPeer:
    """An independent BOLT 8 peer: pyln-proto's responder, in a thread.

    Sends ``COUNT`` test messages, answers pings, pings twice itself (at the
    start and once it has every message) and records every message; sending
    and reading stay in its one thread (pyln's rotation race, see
    tests/test_interop.py).  ``secrets`` collects its keys through every
    rotation (they mirror the proxy's).
    """

    SECRET = bytes.fromhex("42" * 32)

    def __init__(self) -> None:
        self.node_id = lnkeys.public_key(self.SECRET)
        self.server = pyln_wire.LightningServerSocket(
            pyln_wire.PrivateKey(self.SECRET)
        )
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.server.settimeout(60)
        self.port = self.server.getsockname()[1]
        self.received: list[int] = []
        self.pongs = 0
        self.secrets: set[bytes] = set()
        self.error: str | None = None
        self.stopping = False
        self.done = deferToThread(self._run)

    def stop(self) -> Any:
        """End the thread; fires when it is gone."""
        self.stopping = True
        return self.done

    def _run(self) -> None:
        try:
            lconn, _ = self.server.accept()
        except OSError as e:
            self.error = f"accept: {e}"
            return
        sock, _, _ = tame_pyln_connection(lconn)
        try:
            self._serve(lconn, sock)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            sock.close()
            self.server.close()

    def _serve(self, lconn: Any, sock: Any) -> None:
        lconn.send_message(wire.Init(features=b"").encode())
        lconn.send_message(wire.Ping(4, b"").encode())
        sent = 0
        pinged_again = False
        while not self.stopping:
            for _ in range(min(4, COUNT - sent)):
                lconn.send_message(body(sent))
                sent += 1
            self.secrets.update((lconn.sk, lconn.rk, lconn.sck, lconn.rck))
            readable, _, _ = select.select([sock], [], [], 0.004)
            while readable:
                msg = bytes(lconn.read_message())
                msg_type = wire.message_type(msg)
                if msg_type == wire.PING:
                    pong = wire.pong_for(wire.Ping.decode(msg))
                    if pong is not None:
                        lconn.send_message(pong.encode())
                elif msg_type == wire.PONG:
                    self.pongs += 1
                else:
                    n = counter(msg)
                    if n is not None:
                        self.received.append(n)
                readable, _, _ = select.select([sock], [], [], 0)
            if len(self.received) >= COUNT and not pinged_again:
                lconn.send_message(wire.Ping(4, b"").encode())
                pinged_again = True


class KeyLog:
    """Every transport key and chaining key of this process's ciphers (the
    responders mirror the proxy's), through every rotation."""

    def __init__(self, case: TestCase) -> None:
        self.secrets: set[bytes] = set()
        original = noise._CipherState._rotate
        log = self

        def rotate(state: Any) -> None:
            original(state)
            log.secrets.add(state._key)
            log.secrets.add(state._ck)

        case.patch(noise._CipherState, "_rotate", rotate)

    def add_keys(self, tk: noise.TransportKeys) -> None:
        """The keys a client gave the proxy in ``finish``."""
        self.secrets.update((tk.sk, tk.rk, tk.ck))

    def scan(self, roots: list[str], texts: list[bytes]) -> list[str]:
        """Where any of the keys is found (raw or hex): files, then texts."""
        needles = [k for s in self.secrets for k in (s, s.hex().encode())]
        found = []
        for root in roots:
            for dirpath, _, names in os.walk(root):
                for name in names:
                    path = os.path.join(dirpath, name)
                    try:
                        with open(path, "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    if any(n in data for n in needles):
                        found.append(path)
        for i, text in enumerate(texts):
            if any(n in text for n in needles):
                found.append(f"log {i}")
        return found


class HotRestartTests(TestCase):
    """``--takeover`` and the systemd store with a real proxy."""

    timeout = 240

    def setUp(self) -> None:
        """A data dir and a working directory; cleanup of children."""
        self.base = tempfile.mkdtemp(prefix="lnproxy-hot-")
        self.data_dir = os.path.join(self.base, "data")
        self.cwd = os.path.join(self.base, "cwd")
        os.mkdir(self.cwd)
        self.addCleanup(shutil.rmtree, self.base, True)
        self.port = free_port()
        self.pyln = None
        self.children: list[TwistdProcess] = []
        self.keys = KeyLog(self)

    def tearDown(self) -> Any:
        """Stop every child still running."""
        return defer.gatherResults(
            [c.stop("KILL") for c in self.children if not c.ended.called]
        )

    def spawn(
        self, *extra: str, env: dict[str, str] | None = None, fds: list[int] = ()
    ) -> TwistdProcess:
        """``twistd -n lnproxy`` on the test's port and data dir."""
        argv, child_env = twistd_command(self.port, self.data_dir, *extra, env=env)
        child = TwistdProcess()
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        child_fds.update({fd: fd for fd in fds})
        R.spawnProcess(
            child, argv[0], argv, env=child_env, path=self.cwd, childFDs=child_fds
        )
        self.children.append(child)
        return child

    @defer.inlineCallbacks
    def start_traffic(self, old: TwistdProcess, with_pyln: bool = False) -> Any:
        """Peers, a logged-in client with a connection to each, a third one
        in its handshake; messages flowing both ways.

        :return: ``(peers, client, pending)``; ``pending`` is the unfinished
            connection's ``(connect result, initiator)``.
        """
        yield old.wait_started()
        peers = Peers(3)
        self.addCleanup(peers.stop)
        client = Client(self.port, os.urandom(32))
        self.addCleanup(client.stop)
        rpc = yield client.connect()
        for f, p in zip(peers.factories[:2], peers.ports[:2], strict=True):
            conn, tk = yield rpc.open_peer(f, p.getHost().port, persist=True)
            self.keys.add_keys(tk)
            client.add(conn)
        self.pyln: PylnPeer | None = None
        if with_pyln:
            self.pyln = pyln = PylnPeer()
            self.addCleanup(pyln.stop)
            conn, tk = yield rpc.open_peer(pyln.node_id, pyln.port, persist=True)
            self.keys.add_keys(tk)
            client.add(conn)
        pending = yield rpc.start_connect(
            peers.factories[2], peers.ports[2].getHost().port, persist=True
        )
        yield peers.ping()
        peers.start()
        client.start()
        return peers, client, pending

    @defer.inlineCallbacks
    def finish_pending(self, client: Client, pending: Any) -> Any:
        """Finish the third connection (on whichever process serves now)."""
        result, init = pending
        yield eventually(lambda: client.rpc is not None, timeout=30)
        assert client.rpc is not None
        tk = yield client.rpc.finish(result, init)
        self.keys.add_keys(tk)
        yield client.rpc.call(
            "send", conn=result["conn"], msg=wire.Init(features=b"").encode().hex()
        )
        client.add(result["conn"])

    @defer.inlineCallbacks
    def check_all_delivered(self, peers: Peers, client: Client, conns: int) -> Any:
        """Every message exactly once, in order, both ways; no peer closed."""
        pyln = self.pyln
        yield eventually(
            lambda: client.done()
            and all(len(peers.counters(p)) >= COUNT for p in peers.opened)
            and (pyln is None or (len(pyln.received) >= COUNT and pyln.pongs >= 2)),
            timeout=120,
        )
        if pyln is not None:
            self.assertIsNone(pyln.error)
            self.assertEqual(pyln.received, list(range(COUNT)))
            self.keys.secrets.update(pyln.secrets)
            conns -= 1
        self.assertEqual(len(peers.opened), conns)
        self.assertEqual(peers.closed(), 0)
        for peer in peers.opened:
            self.assertEqual(peers.counters(peer), list(range(COUNT)))
        self.assertEqual(len(client.received), conns + (pyln is not None))
        for conn, got in client.received.items():
            self.assertEqual(got, list(range(COUNT)), conn)
        self.assertEqual(client.errors, [])
        self.assertEqual(client.closed_events, [])
        yield peers.ping()

    @defer.inlineCallbacks
    def test_takeover(self) -> Any:
        """``--takeover``: same TCP connections, nothing lost or doubled,
        pings answered, the client closed with 1012 logs in again, the old
        process exits 0, no key on disk or in the logs."""
        metrics = f"tcp:{free_port()}:interface=127.0.0.1"
        old = self.spawn("--keepalive", "1", "--metrics", metrics)
        peers, client, pending = yield self.start_traffic(old, with_pyln=True)
        yield eventually(lambda: min(peers.sent.values()) >= COUNT // 3, timeout=60)
        new = self.spawn("--takeover", "--keepalive", "1", "--metrics", metrics)
        yield old.ended
        self.assertIsInstance(old.reason.value, ProcessDone, old.text)
        self.assertIn("hot restart: handed over 4 peer connections", old.text)
        yield new.wait_started()
        self.assertIn("adopted 4 peer connections", new.text)
        yield self.finish_pending(client, pending)
        yield self.check_all_delivered(peers, client, 4)
        self.assertEqual(client.close_codes, [1012])
        self.assertEqual(client.logins, 2)
        # The metrics listener crossed too; it tells what was taken over.
        url = f"http://127.0.0.1:{metrics.split(':')[1]}/metrics"
        text = yield deferToThread(lambda: urlopen(url, timeout=10).read().decode())
        self.assertIn("lnproxy_handover_connections 4.0", text)
        self.assertIn("lnproxy_handover_seconds ", text)
        # The keepalive (1 s) runs in the new process: the peers answer.
        yield task.deferLater(R, 2.5, lambda: None)
        self.assertEqual(peers.closed(), 0)
        assert self.pyln is not None
        self.assertIsNone(self.pyln.error)
        yield self.pyln.stop()
        client.stop()
        yield new.stop("TERM")
        found = self.keys.scan(
            [self.data_dir, self.cwd], [old.output, new.output]
        )
        self.assertGreater(len(self.keys.secrets), 9)
        self.assertEqual(found, [])

    @defer.inlineCallbacks
    def test_takeover_with_nothing_running(self) -> Any:
        """``--takeover`` with no process on the data dir starts normally."""
        child = self.spawn("--takeover")
        yield child.wait_started()
        self.assertIn("--takeover: no process serves", child.text)
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "takeover.sock")))
        self.assertEqual(
            stat.S_IMODE(os.stat(os.path.join(self.data_dir, "takeover.sock")).st_mode),
            0o600,
        )
        yield child.stop("TERM")

    @defer.inlineCallbacks
    def test_lock_never_free(self) -> Any:
        """The data dir lock crosses with the sockets: between the old
        process's exit and the new one opening its store, a third process
        cannot take the data dir."""
        old = self.spawn()
        yield old.wait_started()
        config = {"data-dir": self.data_dir, "takeover": True}
        incoming = yield deferToThread(hotrestart.prepare, config)
        self.assertIsNotNone(incoming)
        self.assertIsNotNone(incoming.lock_fd)
        yield old.ended
        assert old.reason is not None
        self.assertIsInstance(old.reason.value, ProcessDone)
        with self.assertRaises(DataDirLocked):
            datadir.acquire_lock(self.data_dir)
        store = Store.open(self.data_dir, lock_fd=incoming.lock_fd)
        store.close()
        incoming.received.close()
        # Closed for good: the data dir is free again.
        datadir.release_lock(datadir.acquire_lock(self.data_dir))

    @defer.inlineCallbacks
    def test_new_side_holds_sigterm(self) -> Any:
        """From its ready on, the new process holds SIGTERM back (a kill
        between the old one's commit and twistd's handler would drop every
        peer); the service lets it through once the reactor runs."""
        old = self.spawn()
        yield old.wait_started()
        self.addCleanup(hotrestart.release_signals)
        config = {"data-dir": self.data_dir, "takeover": True}
        incoming = hotrestart.prepare(config)  # main thread: its signal mask
        assert incoming is not None
        self.addCleanup(incoming.received.close)
        if incoming.lock_fd is not None:
            self.addCleanup(os.close, incoming.lock_fd)
        self.assertIn(signal.SIGTERM, signal.pthread_sigmask(signal.SIG_BLOCK, []))
        hotrestart.release_signals()
        self.assertNotIn(
            signal.SIGTERM, signal.pthread_sigmask(signal.SIG_BLOCK, [])
        )
        yield old.ended

    @defer.inlineCallbacks
    def test_sigterm_during_takeover(self) -> Any:
        """SIGTERM reaching the old process while a takeover waits for the
        new side's ready: the handover rolls back (the new side is told, and
        does not adopt) and the old process stops normally, at once."""
        old = self.spawn("--takeover-timeout", "5")
        yield old.wait_started()
        path = os.path.join(self.data_dir, "takeover.sock")
        pid = old.transport.pid

        def new_side() -> str:
            t = request_takeover(path)
            os.kill(pid, signal.SIGTERM)
            time.sleep(0.5)
            try:
                t.confirm(timeout=5)
            except TakeoverFailed as e:
                return str(e)
            t.received.close()
            return "adopted"

        started = time.monotonic()
        result = yield deferToThread(new_side)
        self.assertNotEqual(result, "adopted")
        yield eventually(lambda: old.ended.called, timeout=10)
        self.assertLess(time.monotonic() - started, 5)
        assert old.reason is not None
        # twistd ends with the signal that stopped it, once stopped cleanly.
        self.assertEqual(getattr(old.reason.value, "signal", None), signal.SIGTERM)
        self.assertIn("the old process is stopping", old.text)
        self.assertIn("lnproxy stopped", old.text)
        self.assertFalse(os.path.exists(path))

    @defer.inlineCallbacks
    def test_systemd_store(self) -> Any:
        """SIGTERM under a (fake) service manager with the fd store: the
        next process starts from the store; the same checks."""
        manager = FakeServiceManager()
        self.addCleanup(manager.close)
        env = dict(os.environ, **manager.environment())
        old = self.spawn("--systemd-fd-store", env=env)
        peers, client, pending = yield self.start_traffic(old)
        yield eventually(lambda: manager.seen("READY", pid=old.pid), timeout=30)
        yield eventually(lambda: min(peers.sent.values()) >= COUNT // 3, timeout=60)
        yield old.stop("TERM")
        self.assertIn("hot restart: handed over 3 peer connections", old.text)
        self.assertEqual(sorted(set(manager.names())), ["listen", "peer", "state"])
        argv, child_env = twistd_command(self.port, self.data_dir)
        args, child_env, fds = manager.command(argv, child_env)
        new = TwistdProcess()
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        child_fds.update({fd: fd for fd in fds})
        R.spawnProcess(new, args[0], args, env=child_env, path=self.cwd,
                       childFDs=child_fds)
        self.children.append(new)
        yield new.wait_started()
        self.assertIn("adopted 3 peer connections", new.text)
        yield eventually(lambda: manager.names() == [], timeout=10)
        yield self.finish_pending(client, pending)
        yield self.check_all_delivered(peers, client, 3)
        self.assertEqual(client.close_codes, [1012])
        client.stop()
        yield new.stop("TERM")
        self.assertEqual(
            self.keys.scan([self.data_dir, self.cwd], [old.output, new.output]), []
        )

    @defer.inlineCallbacks
    def test_failed_takeovers(self) -> Any:
        """The new side gives up, never confirms, is killed mid-handover:
        each time the old process serves on; nothing is lost."""
        old = self.spawn("--takeover-timeout", "1")
        peers, client, pending = yield self.start_traffic(old)
        path = os.path.join(self.data_dir, "takeover.sock")

        def give_up() -> int:
            t = request_takeover(path)
            count = len(t.received.connections)
            t.abort("cannot adopt (test)")
            return count

        def never_confirm() -> str:
            t = request_takeover(path)
            time.sleep(2.0)
            try:
                t.confirm(timeout=2.0)
            except TakeoverFailed as e:
                return str(e)
            return "confirmed"

        def killed() -> int:
            code = (
                "import os, signal, sys\n"
                "from lnproxy.handover import request_takeover\n"
                "request_takeover(sys.argv[1])\n"
                "os.kill(os.getpid(), signal.SIGKILL)\n"
            )
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = dict(os.environ, PYTHONPATH=root)
            proc = subprocess.run(
                [sys.executable, "-c", code, path], env=env, timeout=60, check=False
            )
            return proc.returncode

        yield eventually(lambda: min(peers.sent.values()) >= 200, timeout=60)
        count = yield deferToThread(give_up)
        self.assertEqual(count, 3)
        yield peers.ping()
        reason = yield deferToThread(never_confirm)
        self.assertRegex(reason, "rolled back|no commit")
        yield peers.ping()
        status = yield deferToThread(killed)
        self.assertEqual(status, -signal.SIGKILL)
        yield self.finish_pending(client, pending)
        yield self.check_all_delivered(peers, client, 3)
        self.assertEqual(client.close_codes, [])
        self.assertEqual(client.logins, 1)
        self.assertEqual(old.text.count("takeover rolled back, serving on"), 3)
        self.assertFalse(old.ended.called)


class PostgresRefusalTests(SynchronousTestCase):
    """Hot restart is for the SQLite store; PostgreSQL refuses it clearly."""

    def test_takeover_refused_with_postgresql(self) -> None:
        """``--takeover`` (and ``--systemd-fd-store``) with ``--database
        postgresql://...`` stop the start with a message, before anything
        connects."""
        for flag in ("--takeover", "--systemd-fd-store"):
            options = tap.Options()
            options.parseOptions(
                [
                    "--database",
                    "postgresql://127.0.0.1:1/none",
                    "--public-url",
                    "wss://proxy.example/",
                    "--data-dir",
                    self.mktemp(),
                    flag,
                ]
            )
            with self.assertRaises(SystemExit) as cm:
                build_service(R, options)
            self.assertIn("SQLite store only", str(cm.exception))


class StaleChannelTests(SynchronousTestCase):
    """A ``takeover.sock`` left behind by a crash is only a file."""

    def stale(self, version: int) -> str:
        """A data dir with a database of schema ``version`` and a socket
        file nobody serves (its process died without unlinking it)."""
        import socket
        import sqlite3

        from lnproxy.store.sqlite import DB_FILE

        base = tempfile.mkdtemp(prefix="lnproxy-stale-")  # short: AF_UNIX
        self.addCleanup(shutil.rmtree, base, True)
        data_dir = os.path.join(base, "data")
        Store.open(data_dir).close()
        db = sqlite3.connect(os.path.join(data_dir, DB_FILE))
        with db:
            db.execute("INSERT INTO version (version) VALUES (?)", (version,))
        db.close()
        skt = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        skt.bind(os.path.join(data_dir, hotrestart.CHANNEL))
        skt.close()
        return data_dir

    def test_stale_socket_starts_normally(self) -> None:
        """``--takeover`` with a stale socket file and a database of another
        schema (an upgrade after a crash) starts normally: no process to take
        over, nothing to refuse."""
        data_dir = self.stale(999)
        config = {"data-dir": data_dir, "takeover": True, "takeover-timeout": 2}
        self.assertIsNone(hotrestart.prepare(config))

    def test_live_process_of_another_schema_refused(self) -> None:
        """A live process on a database of another schema: refused before
        anything is asked of it (it is not even frozen)."""
        data_dir = self.stale(999)
        path = os.path.join(data_dir, hotrestart.CHANNEL)
        os.unlink(path)
        asked: list[bool] = []
        listener = TakeoverListener(
            R, path, lambda: asked.append(True) or Handover([]), lambda o: None
        )
        listener.start()
        self.addCleanup(listener.stop)
        config = {"data-dir": data_dir, "takeover": True, "takeover-timeout": 2}
        with self.assertRaises(SystemExit) as cm:
            hotrestart.prepare(config)
        self.assertIn("--takeover refused", str(cm.exception))
        self.assertIn("schema version 999", str(cm.exception))
        self.assertEqual(asked, [])
