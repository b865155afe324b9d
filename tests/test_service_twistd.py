"""Subprocess smoke tests: ``twistd -n lnproxy`` as an operator runs it.

The plugin is found from the source tree (``PYTHONPATH`` = the repo root).
The test process keeps its reactor running, so a real WebSocket client and a
local Lightning peer in it talk to the proxy in the child process.

Note: ``python -m twisted.scripts.twistd`` does nothing (that module has no
``__main__`` block), so the child runs twistd's own entry point,
``twisted.scripts.twistd.run``, exactly as the ``twistd`` console script does.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from twisted.internet import defer, error, reactor

from lnproxy import keys
from lnproxy.testing import STARTED_LINE, TwistdProcess, spawn_twistd, twistd_command

from .harness import ProxyTestCase, eventually, free_port

#: Seconds allowed for a child to start or to stop.
CHILD_TIMEOUT = 20.0

#: The child process (from :mod:`lnproxy.testing`).
Twistd = TwistdProcess


class TwistdTests(ProxyTestCase):
    """Start, use and stop ``twistd -n lnproxy`` processes."""

    timeout = 90

    def spawn(self, data_dir: str, port: int) -> Twistd:
        """Start ``twistd -n --pidfile= lnproxy --listen ... --data-dir ...``."""
        cwd = self.mktemp()
        os.makedirs(cwd)
        proto = spawn_twistd(reactor, port, data_dir, cwd=cwd)
        self.addCleanup(self._reap, proto, proto.transport)
        return proto

    def _reap(self, proto: Twistd, transport: Any) -> defer.Deferred[Any] | None:
        if proto.ended.called:
            return None
        transport.signalProcess("KILL")
        return proto.ended

    @defer.inlineCallbacks
    def started(self, proto: Twistd) -> Any:
        """Wait until the child logs that it serves (its port is bound)."""
        try:
            yield proto.wait_started().addTimeout(CHILD_TIMEOUT, reactor)
        except RuntimeError:
            pass  # it ended: the assertion below shows its output
        self.assertIn(STARTED_LINE, proto.text, proto.text)

    @defer.inlineCallbacks
    def test_run_login_sigterm(self) -> Any:
        """twistd starts in the foreground, serves a logged-in client that
        opens a persist connection; SIGTERM stops it cleanly (twistd then
        re-raises SIGTERM on itself, as Twisted does), the data dir keeps the
        database and key, and a proxy on that data dir replays every event,
        with the ``proxy stopped`` closed event."""
        data_dir = os.path.abspath(self.mktemp())
        port = free_port()
        child = self.spawn(data_dir, port)
        yield self.started(child)
        peer, peer_port = self.local_peer()
        secret = os.urandom(32)
        client = yield self.logged_in(secret, port=port)
        self.assertEqual(client.login_result["inbox"], {"next_seq": 1, "pending": 0})
        opened = peer.wait_open()
        conn, _ = yield client.open_peer(peer, peer_port, persist=True)
        p = yield opened
        p.send(bytes.fromhex("0084aa"))
        yield client.wait_event(lambda e: e["params"]["seq"] == 2)

        os.kill(child.transport.pid, signal.SIGTERM)
        yield child.ended.addTimeout(CHILD_TIMEOUT, reactor)
        reason = child.reason
        # Exit status 0, or (what twistd does) SIGTERM re-raised on itself
        # once the clean shutdown has finished; systemd counts both as clean.
        status = (reason.value.exitCode, reason.value.signal)
        self.assertIn(status, [(0, None), (None, signal.SIGTERM)], child.text)
        self.assertIn("lnproxy stopped; every stored event is kept", child.text)
        self.assertIn("Server Shut Down.", child.text)
        self.assertNotIn("Traceback", child.text)
        self.assertTrue(os.path.isfile(os.path.join(data_dir, "lnproxy.sqlite")))
        self.assertEqual(
            os.stat(os.path.join(data_dir, "server.key")).st_mode & 0o777, 0o600
        )
        code, _ = yield client.closed
        self.assertEqual(code, 1001)
        ev = yield client.wait_event(lambda e: e["method"] == "closed")
        self.assertEqual(
            (ev["params"]["reason"], ev["params"]["reconnect"]), ("proxy stopped", True)
        )
        yield eventually(lambda: peer.closed_count == 1)

        self.start_proxy(data_dir=data_dir)
        again = yield self.logged_in(secret)
        self.assertEqual(again.login_result["inbox"], {"next_seq": 4, "pending": 3})
        yield eventually(lambda: len(again.events) == 3)
        self.assertEqual(
            [e["params"] for e in again.events], [e["params"] for e in client.events]
        )
        self.assertEqual(again.events[2]["params"]["conn"], conn)

    @defer.inlineCallbacks
    def test_second_twistd_refused(self) -> Any:
        """A second twistd on a data dir in use exits non-zero at once with a
        message naming the data dir and the process holding it; the first
        keeps serving."""
        data_dir = os.path.abspath(self.mktemp())
        port = free_port()
        first = self.spawn(data_dir, port)
        yield self.started(first)
        second = self.spawn(data_dir, free_port())
        yield second.ended.addTimeout(CHILD_TIMEOUT, reactor)
        reason = second.reason
        self.assertIsInstance(reason.value, error.ProcessTerminated)
        self.assertEqual(reason.value.exitCode, 1, second.text)
        self.assertIn(
            f"is using the data dir {data_dir}; refusing to start", second.text
        )
        self.assertIn(f"(pid {first.transport.pid})", second.text)
        self.assertNotIn("lnproxy started", second.text)
        client = yield self.logged_in(port=port)
        self.assertEqual(client.login_result["connections"], [])

    @defer.inlineCallbacks
    def test_crash_then_restart(self) -> Any:
        """After SIGKILL (no clean stop) the next proxy on the data dir
        writes a ``proxy restarted`` closed event for the connection the
        dead process held, with reconnect = persist, after the events that
        were already stored."""
        data_dir = os.path.abspath(self.mktemp())
        port = free_port()
        child = self.spawn(data_dir, port)
        yield self.started(child)
        peer, peer_port = self.local_peer()
        secret = os.urandom(32)
        client = yield self.logged_in(secret, port=port)
        keep, _ = yield client.open_peer(peer, peer_port, persist=True)
        plain, _ = yield client.open_peer(peer, peer_port)
        yield eventually(lambda: len(client.events) == 2)
        os.kill(child.transport.pid, signal.SIGKILL)
        yield child.ended.addTimeout(CHILD_TIMEOUT, reactor)
        reason = child.reason
        self.assertEqual(reason.value.signal, signal.SIGKILL)
        self.assertNotIn("lnproxy stopped", child.text)

        self.start_proxy(data_dir=data_dir)
        again = yield self.logged_in(secret)
        self.assertEqual(again.login_result["inbox"], {"next_seq": 5, "pending": 4})
        yield eventually(lambda: len(again.events) == 4)
        closed = {
            e["params"]["conn"]: (e["params"]["reason"], e["params"]["reconnect"])
            for e in again.events[2:]
        }
        self.assertEqual(
            closed, {keep: ("proxy restarted", True), plain: ("proxy restarted", False)}
        )
        self.assertEqual([e["params"]["type"] for e in again.events[:2]], [16, 16])
        self.assertEqual(
            keys.public_key(self.proxy.store.server_secret).hex(),
            client.hello_params["server_id"],
        )

    @defer.inlineCallbacks
    def test_daemonized_twistd(self) -> Any:
        """Without ``-n`` twistd forks to daemonize after building the
        service: the daemon reopens the database itself, writes its own pid
        into the lock file, stores and replays events, and stops on SIGTERM
        with every event kept."""
        data_dir = os.path.abspath(self.mktemp())
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        pidfile = os.path.join(work, "twistd.pid")
        logfile = os.path.join(work, "twistd.log")
        port = free_port()
        launcher = Twistd()
        args, env = twistd_command(
            port, data_dir, foreground=False, pidfile=pidfile,
            twistd_args=[f"--logfile={logfile}"],
        )  # fmt: skip
        reactor.spawnProcess(launcher, args[0], args, env=env, path=work)
        yield launcher.ended.addTimeout(CHILD_TIMEOUT, reactor)
        self.assertEqual(launcher.reason.value.exitCode, 0, launcher.text)

        def log() -> str:
            with open(logfile, encoding="utf-8") as f:
                return f.read()

        yield eventually(
            lambda: os.path.exists(logfile) and "lnproxy started" in log(),
            timeout=CHILD_TIMEOUT,
            interval=0.05,
        )
        with open(pidfile) as f:
            daemon_pid = int(f.read())
        self.addCleanup(self._kill_quietly, daemon_pid)
        with open(os.path.join(data_dir, "lock")) as f:
            self.assertEqual(int(f.read()), daemon_pid)
        peer, peer_port = self.local_peer()
        secret = os.urandom(32)
        client = yield self.logged_in(secret, port=port)
        yield client.open_peer(peer, peer_port)
        yield eventually(lambda: len(client.events) == 1)

        os.kill(daemon_pid, signal.SIGTERM)
        yield eventually(lambda: "Server Shut Down." in log(), timeout=CHILD_TIMEOUT)
        yield eventually(lambda: not os.path.exists(pidfile), timeout=CHILD_TIMEOUT)
        self.assertNotIn("Traceback", log())
        self.start_proxy(data_dir=data_dir)
        again = yield self.logged_in(secret)
        self.assertEqual(again.login_result["inbox"]["pending"], 2)

    def _kill_quietly(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
