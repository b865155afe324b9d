"""The proxy out of file descriptors: ``connect`` fails cleanly, nothing else.

The proxy runs as ``twistd -n lnproxy`` in a subprocess whose
``RLIMIT_NOFILE`` soft limit is lowered to :data:`FD_LIMIT` (through
``preexec_fn``).  One client opens peer connections until ``connect`` is
refused, and the test checks the refusal (code 7, a message that names
file descriptors), that the connections already open and the WebSocket
session keep working, and that the proxy recovers once connections are
closed (new peer connections and new WebSocket sessions are accepted).
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Any

from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import wire
from lnproxy.hub import Hub, HubError, Limits
from lnproxy.peer import PeerFactory
from lnproxy.policy import Policy
from lnproxy.store import Store
from lnproxy.testing import ProxyProcess, twistd_command

from .harness import ProxyTestCase, RpcFailed, eventually, free_port

#: Low enough to run out after a few dozen peer connections, high enough for
#: twistd, SQLite and the listener to start.
FD_LIMIT = 64
#: More attempts than FD_LIMIT allows: the loop must hit the limit.
MAX_ATTEMPTS = 2 * FD_LIMIT


def _lower_nofile() -> None:
    """``preexec_fn``: lower the soft descriptor limit of the proxy."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))


class DescriptorLimitTests(ProxyTestCase):
    """A proxy with RLIMIT_NOFILE = 64, driven over real sockets."""

    timeout = 120

    def start_limited_proxy(self) -> int:
        """Start ``twistd -n lnproxy`` with the lowered limit; return its port."""
        port = free_port()
        data_dir = self.mktemp()
        log_path = self.mktemp() + ".log"
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        argv, env = twistd_command(port, data_dir)
        self.child = ProxyProcess(argv, env, log_path, port, preexec_fn=_lower_nofile)
        self.process = self.child.proc
        self.addCleanup(self._stop_process)
        return port

    def _stop_process(self) -> defer.Deferred[Any] | None:
        if self.process.poll() is not None:
            self.child.stop()
            return None
        self.process.send_signal(signal.SIGTERM)
        d = eventually(lambda: self.process.poll() is not None, timeout=15)
        # SIGKILL if it did not stop; close the log.
        return d.addBoth(lambda _: self.child.stop(signal.SIGKILL, wait=5))

    def proxy_log(self) -> str:
        """The tail of the proxy's log, for failure messages."""
        return self.child.log_tail()

    @defer.inlineCallbacks
    def test_connect_refused_then_recovers(self) -> defer.Generator:
        """Out of descriptors, ``connect`` answers code 7 "out of file
        descriptors"; open connections and the session still work; after
        some connections close, new connections and sessions are accepted."""
        port = self.start_limited_proxy()
        yield eventually(
            lambda: self.child.listening() or self.process.poll() is not None
        )
        self.assertIsNone(self.process.poll(), self.proxy_log())
        peer, peer_port = self.local_peer()
        client = yield self.logged_in(port=port)

        conns: list[str] = []
        refusal: RpcFailed | None = None
        for _ in range(MAX_ATTEMPTS):
            try:
                conn, _keys = yield client.open_peer(peer, peer_port)
            except RpcFailed as e:
                refusal = e
                break
            conns.append(conn)
        self.assertIsNotNone(refusal, "never ran out of descriptors")
        assert refusal is not None
        self.assertEqual(
            (refusal.code, refusal.message),
            (7, "proxy is out of file descriptors (Too many open files)"),
            self.proxy_log(),
        )
        # Most of the 64 descriptors went to peer connections.
        self.assertGreater(len(conns), FD_LIMIT // 2)
        self.assertIsNone(self.process.poll(), self.proxy_log())

        # The open connections still relay, both ways.
        first, last = conns[0], conns[-1]
        got = peer.wait_message(lambda m: m[:2] == b"\x80\x03")
        yield client.call("send", conn=last, msg="8003beef")
        self.assertEqual((yield got), bytes.fromhex("8003beef"))
        opened = [p for p in peer.connections if p.transport_cipher is not None]
        self.assertEqual(len(opened), len(conns))
        opened[0].send(bytes.fromhex("8005") + b"still here")
        event = yield client.wait_event(
            lambda e: e["method"] == "message" and e["params"]["type"] == 0x8005
        )
        self.assertEqual(event["params"]["msg"], "8005" + b"still here".hex())
        # The session answers requests, and lists exactly the open ones.
        listed = yield client.call("connections")
        self.assertEqual(
            sorted(c["conn"] for c in listed["connections"] if c["state"] == "open"),
            sorted(conns),
        )
        # A new client cannot get a descriptor now: the proxy accepts and
        # drops it (no hello) rather than leave it hanging, and goes on.
        turned_away = yield self.ws(port=port)
        yield turned_away.closed
        self.assertFalse(turned_away.hello.called)

        # Close a few: descriptors come back, connect works again.
        for conn in conns[:4]:
            yield client.call("disconnect", conn=conn)
        for conn in conns[:4]:
            yield client.wait_event(
                lambda e, c=conn: e["method"] == "closed" and e["params"]["conn"] == c
            )
        newest = yield client.wait_event(
            lambda e: e["method"] == "closed" and e["params"]["conn"] == conns[3]
        )
        yield client.call("ack", seq=newest["params"]["seq"])
        again, _keys = yield client.open_peer(peer, peer_port)
        self.assertNotIn(again, conns)
        # The listener kept accepting after EMFILE: a second session of the
        # same node logs in and sees the new connection, not the closed ones.
        other = yield self.logged_in(secret=client.node_secret, port=port)
        assert other.login_result is not None
        self.assertIn(
            again, [c["conn"] for c in other.login_result["connections"]]
        )
        self.assertNotIn(first, [c["conn"] for c in other.login_result["connections"]])
        got = peer.wait_message(lambda m: m[:2] == wire.PING.to_bytes(2, "big"))
        yield other.call("send", conn=again, msg=wire.Ping(num_pong_bytes=2).encode().hex())
        yield got
        self.assertIsNone(self.process.poll(), self.proxy_log())
        self.assertNotIn("Traceback", self.proxy_log())


NODE = "02" + "11" * 32
PEER = "03" + "22" * 32


class ConnectErrorMappingTests(SynchronousTestCase):
    """How :meth:`Hub.connect` reports a TCP connect that did not happen."""

    def hub_with(self, connect_peer: Any) -> Hub:
        """A started hub on a fresh store whose connector is ``connect_peer``."""
        store = Store.open(self.mktemp(), synchronous="NORMAL")
        self.addCleanup(store.close)
        hub = Hub(store, Clock(), connect_peer, Policy(), Limits())
        hub.startService()
        self.addCleanup(hub.stopService)
        return hub

    def refusal(self, connect_peer: Any) -> HubError:
        """The HubError ``connect`` fails with; the hub forgets the attempt."""
        hub = self.hub_with(connect_peer)
        try:
            d = hub.connect(NODE, PEER, "127.0.0.1", 9735, b"\x00" * 50, False)
        except HubError as e:
            err = e
        else:
            err = self.failureResultOf(d, HubError).value
        self.assertEqual((hub.connections, hub._handshakes), ({}, 0))
        return err

    def test_emfile_is_limit_exceeded(self) -> None:
        """Twisted's ConnectBindError(EMFILE) ("Couldn't bind") becomes code
        7, "proxy is out of file descriptors"."""

        def connect(host: str, port: int, f: PeerFactory, t: float) -> Any:
            return defer.fail(error.ConnectBindError(24, "Too many open files"))

        err = self.refusal(connect)
        self.assertEqual(
            (err.code, err.message),
            (7, "proxy is out of file descriptors (Too many open files)"),
        )

    def test_enfile_raised_synchronously_is_limit_exceeded(self) -> None:
        """An OSError(ENFILE) raised by the connector itself (the system's
        table is full) is code 7 as well."""

        def connect(host: str, port: int, f: PeerFactory, t: float) -> Any:
            raise OSError(23, "Too many open files in system")

        err = self.refusal(connect)
        self.assertEqual(
            (err.code, err.message),
            (7, "proxy is out of file descriptors (Too many open files in system)"),
        )

    def test_refused_is_still_unreachable(self) -> None:
        """Any other connect failure stays code 4 with the OS's message."""

        def connect(host: str, port: int, f: PeerFactory, t: float) -> Any:
            return defer.fail(error.ConnectionRefusedError("111: Connection refused"))

        err = self.refusal(connect)
        self.assertEqual(
            (err.code, err.message),
            (
                4,
                "peer unreachable: Connection was refused by other side: "
                "111: Connection refused.",
            ),
        )
