"""Scale benchmark: thousands of peer connections through one proxy process.

Run from the repository root::

    /tmp/venv/bin/python bench/scale.py --peers 2000     # quick: ~3 minutes
    /tmp/venv/bin/python bench/scale.py --peers 10000    # target: ~14 minutes

Everything runs on 127.0.0.1 in child processes of this script, each with its
``RLIMIT_NOFILE`` soft limit raised to the hard limit:

``proxy`` (``taskset -c 0``)
    the real service, started as ``twistd -n --pidfile= lnproxy
    --keepalive 30 ...`` with ``PYTHONPATH`` = the repository root (through
    ``python -c "...twistd import run; run()"``: ``python -m
    twisted.scripts.twistd`` has no ``__main__`` guard and silently does
    nothing).
``peers`` (``taskset -c 1``)
    ``--listeners`` (default 100) BOLT 8 responders, each its own node id on
    its own port, all on one reactor: :class:`lnproxy.testing.ResponderFactory`
    (``record=False``), which sends ``init`` and answers pings, and hooks
    that count what it receives (it keeps no message, so the soak does not
    grow it).  It also offers a "sink" port that accepts and ignores connections,
    for the floor measurement.
``clients`` (``taskset -c 1``)
    the client side: one WebSocket session per node (``N / listeners``
    nodes, so 100 nodes x 100 peers for N = 10,000), each running the split
    handshake (:class:`lnproxy.noise.Initiator` + ``connect``/``finish``)
    to every peer listener, acknowledging its events about once a second,
    and re-handshaking every connection whose ``closed`` event says
    ``reconnect: true``.  Sixteen more sessions are used for the set-up
    benchmark only.
``floor`` (``taskset -c 0``, before the proxy starts)
    a bare Twisted process that opens N connections to the sink with
    ``reactor.connectTCP`` and gives each protocol an
    :class:`lnproxy.noise.Encryptor` and a :class:`~lnproxy.noise.Decryptor`:
    the floor for the proxy's memory per connection.
``pyln`` (``taskset -c 1``)
    pyln-proto's blocking ``connect()`` (initiator) straight to the same
    responders, sequentially and from 64 threads: the reference for set-ups
    per second.

The children take one JSON command per line on stdin and answer one JSON
line on stdout; this script is the only thing that talks to them.  They are
started with ``PR_SET_PDEATHSIG`` = SIGKILL and killed in a ``finally``
block, so nothing outlives the run (Ctrl-C and errors included).

Steps and figures (see docs/performance.md, "Scale"):

1. floor: RSS of the floor process before and after N connections;
2. proxy RSS at start, after the sessions logged in ("base"), and after N
   peer connections are open: (after - base) / N against the floor;
3. idle CPU of the proxy over ``--idle-seconds`` (utime + stime from
   /proc/PID/stat) with ``--keepalive 30``, so every link is pinged and
   answers during the window;
4. set-ups per second through the proxy (connect, act 2, finish, send init,
   until the peer's ``init`` event arrives) sequential and 64 concurrent,
   against pyln-proto direct handshakes (connect, send init, read the peer's
   init) to the same responders;
5. reconnect storm: the peers process aborts every connection in one reactor
   turn (``--storm abort``, RST) or is killed and restarted on the same
   ports and keys (``--storm restart``); the clients re-handshake on each
   ``closed`` event with ``reconnect: true``;
6. soak: every link carries a ping and a small message from the peer and a
   small message from the client every ``--soak-interval`` seconds, for
   ``--soak-seconds``; the proxy's RSS at the end against its RSS after the
   warm-up.

Use ``--workdir`` to keep the logs (proxy.log, peers.log, ...) and
``--json`` to write the figures as JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _harness import (
    ROOT,
    BenchChild,
    ChildGone,
    cpu_seconds,
    free_port,
    proxy_argv,
    python_argv,
)

#: Unknown odd message type: the default policy queues it (stored, no wake-up).
SOAK_TYPE = 32769
#: Per-node concurrency of the clients.  100 nodes x 8 stays under the
#: proxy's default of 1024 unfinished handshakes in all (and each node under
#: its default of 16).
PER_NODE_CONCURRENCY = 8
#: Sessions used only by the set-up benchmark: 2,000 set-ups per round stay
#: under the default 200 connections per node.
BENCH_NODES = 16


# ---------------------------------------------------------------------------
# helpers shared by every process
# ---------------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _child_setup() -> None:
    """``preexec_fn`` of every child: die with the parent, full fd limit."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    raise_nofile()
    # Ctrl-C goes to this script only; it stops the children itself.
    os.setpgrp()


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def machine_busy_seconds() -> float:
    """CPU seconds processes of the machine have used (from /proc/stat).

    user + nice + system only: interrupt and softirq time (where much of
    loopback TCP is processed) belongs to no process, ours included.
    """
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its reaped children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def open_fds(pid: int) -> int:
    """How many descriptors a process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------
# child processes: a JSON-lines control channel over stdio
# ---------------------------------------------------------------------------


def run_child(app: Any) -> None:
    """Serve ``app.cmd_<name>(**args)`` over stdin/stdout until ``quit``.

    A command returns a value or a Deferred; the reply is
    ``{"ok": value}`` or ``{"error": text}``.
    """
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    class Control(LineReceiver):
        """One JSON command per line in, one JSON reply per line out."""

        delimiter = b"\n"
        MAX_LENGTH = 64 * 1024 * 1024

        def lineReceived(self, line: bytes) -> None:
            request = json.loads(line)
            name = request.pop("cmd")
            if name == "quit":
                self._reply({"ok": None})
                reactor.callLater(0.05, reactor.stop)
                return
            d = defer.maybeDeferred(getattr(app, f"cmd_{name}"), **request)
            d.addCallbacks(
                lambda v: self._reply({"ok": v}),
                lambda f: self._reply({"error": f"{f.type.__name__}: {f.value}"}),
            )

        def _reply(self, obj: dict[str, Any]) -> None:
            self.sendLine(json.dumps(obj).encode())

        def connectionLost(self, reason: Any = None) -> None:
            # The orchestrator is gone: so are we.
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Control())
    reactor.run()


class Child(BenchChild):
    """A child process seen from the orchestrator (the process harness is
    :class:`_harness.BenchChild`, shared with bench/relay.py)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        workdir: Path,
        env: dict[str, str] | None = None,
        control: bool = True,
        port: int | None = None,
    ) -> None:
        # Without a control channel (the proxy) stdout is the log too: an
        # unread pipe would block the process once 64 KiB of log piled up.
        super().__init__(
            name,
            argv,
            workdir / f"{name}.log",
            dict(os.environ) if env is None else env,
            cwd=workdir,
            control=control,
            preexec_fn=_child_setup,
            port=port,
        )

    def call(self, cmd: str, timeout: float = 600.0, **args: Any) -> Any:
        """Send one command; wait for its reply.

        :raise RuntimeError: on an error reply, a dead child or a timeout.
        """
        self.write_line(json.dumps({"cmd": cmd, **args}).encode())
        try:
            line = self.read_line(time.monotonic() + timeout)
        except ChildGone:
            raise RuntimeError(
                f"{self.name} exited (status {self.proc.poll()}) during "
                f"{cmd}; see {self.log_path}"
            ) from None
        if line is None:
            raise RuntimeError(f"{self.name}: no answer to {cmd} in {timeout} s")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {cmd} failed: {reply['error']}")
        return reply["ok"]


def _python_argv(core: int | None, *args: str) -> list[str]:
    """argv running this script (a child role) pinned to ``core``."""
    return python_argv(__file__, core, *args)


# ---------------------------------------------------------------------------
# role "peers": BOLT 8 responders + the sink
# ---------------------------------------------------------------------------


class PeersApp:
    """Responders on many ports, each with its own node id."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.open: set[Any] = set()
        self.ports: list[Any] = []
        self.stats: Counter[str] = Counter()
        self._ticker: Any = None
        self._rr = 0
        from lnproxy import wire

        self._ping, self._pong, self._init = wire.PING, wire.PONG, wire.INIT

    def cmd_listen(
        self, secrets: list[str], ports: list[int] | None = None
    ) -> list[int]:
        """Listen as each node secret; ``ports`` to reuse (restart) or None."""
        from lnproxy.testing import ResponderFactory

        out = []
        for i, hex_secret in enumerate(secrets):
            factory = ResponderFactory(secret=bytes.fromhex(hex_secret), record=False)
            factory.on_open.append(self._opened)
            factory.on_message.append(self._message)
            factory.on_close.append(self._closed)
            port = self.reactor.listenTCP(
                ports[i] if ports else 0, factory, backlog=4096, interface="127.0.0.1"
            )
            self.ports.append(port)
            out.append(port.getHost().port)
        return out

    def _opened(self, p: Any) -> None:
        self.open.add(p)
        self.stats["handshakes"] += 1

    def _message(self, p: Any, m: bytes) -> None:
        # The responder answers pings itself.
        t = (m[0] << 8) | m[1]
        if t == self._ping:
            self.stats["pings_answered"] += 1
        elif t == self._init:
            self.stats["inits"] += 1
        elif t == self._pong:
            self.stats["pongs"] += 1
        else:
            self.stats["msgs"] += 1

    def _closed(self, p: Any) -> None:
        from lnproxy import noise

        self.open.discard(p)
        if isinstance(p.error, noise.TransportError):
            self.stats["decrypt_errors"] += 1
        elif isinstance(p.error, noise.HandshakeError):
            self.stats["handshake_errors"] += 1

    def cmd_sink(self) -> int:
        """A port that accepts and ignores connections (for the floor)."""
        from twisted.internet.protocol import Factory, Protocol

        factory = Factory.forProtocol(Protocol)
        port = self.reactor.listenTCP(0, factory, backlog=4096, interface="127.0.0.1")
        return int(port.getHost().port)

    def cmd_stats(self) -> dict[str, Any]:
        """Counters and the number of handshaked connections."""
        return {"open": len(self.open), **self.stats}

    def cmd_abort(self) -> dict[str, Any]:
        """Abort (RST) every connection in one reactor turn."""
        conns = list(self.open)
        at = time.monotonic()
        for p in conns:
            p.transport.abortConnection()
        return {"aborted": len(conns), "at": at}

    def cmd_soak(self, interval: float, tick: float = 0.1) -> None:
        """Start: every open link gets a ping and a small message per interval."""
        from twisted.internet.task import LoopingCall

        from lnproxy import wire

        ping = wire.Ping(num_pong_bytes=4).encode()
        msg = SOAK_TYPE.to_bytes(2, "big") + b"\x00" * 30

        def step() -> None:
            conns = list(self.open)
            if not conns:
                return
            k = max(1, math.ceil(len(conns) * tick / interval))
            for _ in range(k):
                self._rr = (self._rr + 1) % len(conns)
                p = conns[self._rr]
                if p.is_open:
                    p.send(ping)
                    p.send(msg)
                    self.stats["soak_sent"] += 2

        self._ticker = LoopingCall(step)
        self._ticker.start(tick, now=False)

    def cmd_soak_stop(self) -> dict[str, Any]:
        """Stop the soak traffic."""
        if self._ticker is not None and self._ticker.running:
            self._ticker.stop()
        return self.cmd_stats()

    def cmd_close_all(self) -> int:
        """Abort every connection and stop listening (before exit)."""
        n = len(self.open)
        for p in list(self.open):
            p.transport.abortConnection()
        for port in self.ports:
            port.stopListening()
        return n


# ---------------------------------------------------------------------------
# role "floor": a bare Twisted process with N connections and 2 ciphers each
# ---------------------------------------------------------------------------


class FloorApp:
    """Holds N outbound connections, each with an Encryptor and a Decryptor."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.conns: list[Any] = []

    def cmd_connect(self, host: str, port: int, n: int) -> int:
        """Open ``n`` connections (at most 500 in flight); fire when all are up."""
        from twisted.internet import defer
        from twisted.internet.protocol import ClientFactory, Protocol

        from lnproxy import noise

        done: defer.Deferred[int] = defer.Deferred()
        app = self
        state = {"started": 0, "up": 0}

        class Holder(Protocol):
            """Holds a connection and its two cipher states; nothing else."""

            def connectionMade(self) -> None:
                self.enc = noise.Encryptor(os.urandom(32), os.urandom(32))
                self.dec = noise.Decryptor(os.urandom(32), os.urandom(32))
                app.conns.append(self)
                state["up"] += 1
                if state["up"] == n:
                    done.callback(n)
                elif state["started"] < n:
                    start_one()

        class Factory(ClientFactory):
            """Builds holders; any failed connect fails the command."""

            protocol = Holder

            def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
                if not done.called:
                    done.errback(reason)

        factory = Factory()

        def start_one() -> None:
            state["started"] += 1
            self.reactor.connectTCP(host, port, factory)

        for _ in range(min(500, n)):
            start_one()
        return done  # type: ignore[return-value]

    def cmd_close_all(self) -> int:
        """Abort every connection (no TIME_WAIT left behind)."""
        for p in self.conns:
            p.transport.abortConnection()
        n = len(self.conns)
        self.conns = []
        return n


# ---------------------------------------------------------------------------
# role "clients": WebSocket sessions running split handshakes
# ---------------------------------------------------------------------------


class RpcFailed(Exception):
    """An error reply from the proxy."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ClientsApp:
    """Many nodes, one WebSocket session each, driving the proxy."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.nodes: list[Any] = []
        self.peers: list[tuple[bytes, int]] = []
        self.stats: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.auto_reconnect = False
        self.storm: dict[str, Any] = {}
        #: Per set-up: (connect + act 2, finish reply, send reply, init event)
        #: in seconds; reset by each set-up benchmark.
        self.phases: list[tuple[float, float, float, float]] = []
        self._storm_done: Any = None
        self._bench_conns: list[tuple[Any, str]] = []
        self._soak: Any = None
        self._rr = 0

    # -- set-up --------------------------------------------------------------

    def cmd_login(
        self, port: int, secrets: list[str], peers: list[list[Any]]
    ) -> dict[str, Any]:
        """Open one WebSocket per node secret and log in; learn the peers."""
        from twisted.internet import defer

        self.peers = [(bytes.fromhex(node_id), p) for node_id, p in peers]
        self.proxy_port = port
        t0 = time.monotonic()
        ds = [self._login(bytes.fromhex(s)) for s in secrets]
        d = defer.gatherResults(ds, consumeErrors=True)
        return d.addCallback(  # type: ignore[return-value]
            lambda _: {"nodes": len(self.nodes), "seconds": time.monotonic() - t0}
        )

    def _login(self, secret: bytes) -> Any:
        """Open one node's WebSocket and log in; fires when logged in."""
        from autobahn.twisted.websocket import WebSocketClientFactory
        from twisted.internet import defer
        from twisted.internet.endpoints import TCP4ClientEndpoint

        from lnproxy import keys

        node = _Node(self, secret)
        self.nodes.append(node)
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{self.proxy_port}/", protocols=["lnproxy.v1"]
        )
        factory.protocol = _ws_protocol_class()
        factory.node = node  # type: ignore[attr-defined]
        ep = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.proxy_port)

        @defer.inlineCallbacks
        def go() -> Any:
            yield ep.connect(factory)
            hello = yield node.hello
            digest = keys.login_digest(
                bytes.fromhex(hello["server_id"]), bytes.fromhex(hello["challenge"])
            )
            yield node.call(
                "login",
                node_id=node.node_id.hex(),
                signature=keys.sign_digest(secret, digest).hex(),
            )

        return go()

    # -- one split handshake ------------------------------------------------

    def open_one(self, node: Any, peer_index: int, persist: bool) -> Any:
        """connect, finish, send init, wait for the peer's init event.

        Fires with the conn id; fails with :class:`RpcFailed` or a timeout.
        """
        from twisted.internet import defer

        from lnproxy import noise

        peer_id, port = self.peers[peer_index]

        @defer.inlineCallbacks
        def go() -> Any:
            t0 = time.monotonic()
            init = noise.Initiator(node.secret, peer_id)
            r = yield node.call(
                "connect",
                peer=f"{peer_id.hex()}@127.0.0.1:{port}",
                act1=init.act1().hex(),
                persist=persist,
            )
            conn = r["conn"]
            got_init: defer.Deferred[None] = defer.Deferred()
            node.init_waiters[conn] = got_init
            node.peer_of[conn] = peer_index
            init.read_act2(bytes.fromhex(r["act2"]))
            act3, tk = init.act3()
            # Pipelined, as a client may: the server handles them in order.
            d1 = node.call(
                "finish",
                conn=conn,
                act3=act3.hex(),
                sk=tk.sk.hex(),
                rk=tk.rk.hex(),
                ck=tk.ck.hex(),
            )
            d2 = node.call("send", conn=conn, msg=_INIT_HEX)
            t1 = time.monotonic()
            try:
                yield d1
                t2 = time.monotonic()
                yield d2
                t3 = time.monotonic()
                yield got_init.addTimeout(60, self.reactor)
            finally:
                node.init_waiters.pop(conn, None)
            t4 = time.monotonic()
            self.phases.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
            node.open_conns.add(conn)
            return conn

        return go()

    def _run_plan(
        self, plan: list[tuple[Any, int]], persist: bool, concurrency: int
    ) -> Any:
        """Run set-ups with at most ``concurrency`` in flight in all and
        :data:`PER_NODE_CONCURRENCY` per node; fires with a result dict."""
        from twisted.internet import defer
        from twisted.python.failure import Failure

        t0 = time.monotonic()
        self.phases = []
        result: dict[str, Any] = {"ok": 0, "failed": 0}
        errors: Counter[str] = Counter()
        conns: list[tuple[Any, str]] = []
        latencies: list[float] = []
        per_node: dict[int, list[tuple[Any, int]]] = {}
        for node, peer in reversed(plan):
            per_node.setdefault(node.index, []).append((node, peer))
        sem = defer.DeferredSemaphore(concurrency)

        @defer.inlineCallbacks
        def worker(items: list[tuple[Any, int]]) -> Any:
            while items:
                node, peer = items.pop()
                yield sem.acquire()
                t = time.monotonic()
                try:
                    conn = yield self.open_one(node, peer, persist)
                except Exception:
                    result["failed"] += 1
                    errors[_error_key(Failure())] += 1
                else:
                    result["ok"] += 1
                    latencies.append(time.monotonic() - t)
                    conns.append((node, conn))
                finally:
                    sem.release()

        workers = [
            worker(items)
            for items in per_node.values()
            for _ in range(min(PER_NODE_CONCURRENCY, len(items)))
        ]

        def done(_: Any) -> dict[str, Any]:
            result["seconds"] = time.monotonic() - t0
            if self.phases:
                cols = list(zip(*self.phases, strict=True))
                result["phases_p50_ms"] = {
                    name: round(1000 * sorted(col)[len(col) // 2], 3)
                    for name, col in zip(
                        ("connect", "finish", "send", "init_event"), cols, strict=True
                    )
                }
            result["errors"] = dict(errors)
            result["conns"] = conns
            latencies.sort()
            if latencies:
                result["p50_ms"] = 1000 * latencies[len(latencies) // 2]
                result["p99_ms"] = 1000 * latencies[int(len(latencies) * 0.99)]
            return result

        return defer.gatherResults(workers, consumeErrors=True).addCallback(done)

    def cmd_open(self, count: int, nodes: int, concurrency: int = 100000) -> Any:
        """Open ``count`` persistent connections: node i // P to peer i % P."""
        npeers = len(self.peers)
        plan = [(self.nodes[(i // npeers) % nodes], i % npeers) for i in range(count)]
        d = self._run_plan(plan, persist=True, concurrency=concurrency)
        return d.addCallback(_strip_conns)

    def cmd_setup_bench(self, count: int, concurrency: int, first_node: int) -> Any:
        """Set-ups per second with non-persistent connections on the bench
        nodes; they stay open until :meth:`cmd_setup_cleanup`."""
        bench = self.nodes[first_node:]
        npeers = len(self.peers)
        plan = [(bench[i % len(bench)], (i * 7) % npeers) for i in range(count)]

        def done(r: dict[str, Any]) -> dict[str, Any]:
            r["rate"] = r["ok"] / r["seconds"] if r["seconds"] else 0.0
            self._bench_conns = r.pop("conns")
            return r

        d = self._run_plan(plan, persist=False, concurrency=concurrency)
        return d.addCallback(done)

    def cmd_setup_cleanup(self) -> Any:
        """Disconnect the connections of the last set-up benchmark."""
        from twisted.internet import defer

        conns, self._bench_conns = self._bench_conns, []
        for n, c in conns:
            n.open_conns.discard(c)
        d = defer.gatherResults(
            [n.call("disconnect", conn=c) for n, c in conns], consumeErrors=True
        )
        return d.addCallback(lambda _: len(conns))

    # -- events ----------------------------------------------------------------

    def on_event(self, node: Any, obj: dict[str, Any]) -> None:
        """Route one notification."""
        params = obj["params"]
        method = obj["method"]
        seq = params["seq"]
        if seq > node.max_seq:
            node.max_seq = seq
            node.schedule_ack()
        if method == "message":
            self.stats[f"type_{params['type']}"] += 1
            if params["type"] == 16:
                d = node.init_waiters.get(params["conn"])
                if d is not None and not d.called:
                    d.callback(None)
        elif method == "closed":
            conn = params["conn"]
            self.stats["closed"] += 1
            node.open_conns.discard(conn)
            peer = node.peer_of.pop(conn, None)
            if params["reconnect"]:
                self.stats["closed_reconnect"] += 1
                if self.auto_reconnect and peer is not None:
                    self._reconnect(node, peer)

    def _reconnect(self, node: Any, peer: int) -> None:
        """Queue a storm re-handshake of ``node`` to ``peer``."""
        storm = self.storm
        if storm["first_closed_at"] is None:
            storm["first_closed_at"] = time.monotonic()
        storm["closed_events"] += 1
        node.reconnect_queue.append(peer)
        node.pump_reconnects()

    def reconnect_finished(self, ok: bool, f: Any = None) -> None:
        """Bookkeeping of one storm re-handshake."""
        storm = self.storm
        if ok:
            storm["reopened"] += 1
            storm["last_open_at"] = time.monotonic()
        else:
            storm["failed"] += 1
            storm["errors"][_error_key(f)] += 1
        if (
            self._storm_done is not None
            and storm["reopened"] + storm["failed"] >= storm["expect"]
            and not self._storm_done.called
        ):
            self._storm_done.callback(None)

    def cmd_arm_storm(self, expect: int) -> None:
        """Re-handshake on every closed event with reconnect true from now on."""
        from twisted.internet import defer

        self.auto_reconnect = True
        self.storm = {
            "expect": expect,
            "closed_events": 0,
            "reopened": 0,
            "failed": 0,
            "retries": 0,
            "errors": Counter(),
            "first_closed_at": None,
            "last_open_at": None,
        }
        self._storm_done = defer.Deferred()

    def cmd_storm_wait(self, limit: float) -> Any:
        """Fires when every expected connection is open again (or failed),
        or after ``limit`` seconds."""
        d = self._storm_done
        d.addTimeout(limit, self.reactor)

        def report(_: Any) -> dict[str, Any]:
            s = dict(self.storm)
            s["errors"] = dict(s["errors"])
            s["timed_out"] = not (s["reopened"] + s["failed"] >= s["expect"])
            s["open_now"] = sum(len(n.open_conns) for n in self.nodes)
            self.auto_reconnect = False
            return s

        return d.addBoth(report)

    # -- soak -------------------------------------------------------------------

    def cmd_soak(self, interval: float, tick: float = 0.1) -> None:
        """Every open link gets one small message from the client per interval."""
        from twisted.internet.task import LoopingCall

        msg = (SOAK_TYPE.to_bytes(2, "big") + b"\x01" * 30).hex()
        links: list[tuple[Any, str]] = []
        ticks = [0]

        def count_error(f: Any) -> None:
            self.errors[_error_key(f)] += 1

        def count_sent(_: Any) -> None:
            self.stats["sent"] += 1

        def step() -> None:
            # Refresh the link list about once a second, not every tick.
            if ticks[0] % 10 == 0:
                links[:] = [(n, c) for n in self.nodes for c in n.open_conns]
            ticks[0] += 1
            if not links:
                return
            k = max(1, math.ceil(len(links) * tick / interval))
            for _ in range(k):
                self._rr = (self._rr + 1) % len(links)
                node, conn = links[self._rr]
                if conn in node.open_conns:
                    node.call("send", conn=conn, msg=msg).addCallbacks(
                        count_sent, count_error
                    )

        self._soak = LoopingCall(step)
        self._soak.start(tick, now=False)

    def cmd_soak_stop(self) -> dict[str, Any]:
        """Stop the soak traffic; return the counters."""
        if self._soak is not None and self._soak.running:
            self._soak.stop()
        return self.cmd_stats()

    def cmd_stats(self) -> dict[str, Any]:
        """Counters."""
        return {
            "open": sum(len(n.open_conns) for n in self.nodes),
            "errors": dict(self.errors),
            **self.stats,
        }

    def cmd_settle(self) -> Any:
        """Send every pending ack now; fire when they are answered."""
        from twisted.internet import defer

        return defer.gatherResults(
            [n.ack_now() for n in self.nodes], consumeErrors=True
        ).addCallback(lambda _: None)


def _error_key(f: Any) -> str:
    """How a failed set-up is counted: ``code N`` or the exception's name."""
    if f.check(RpcFailed):
        return f"code {f.value.code}"
    return f.type.__name__


def _strip_conns(r: dict[str, Any]) -> dict[str, Any]:
    """Drop the connection list from a result (not JSON, not needed)."""
    r.pop("conns", None)
    return r


_INIT_HEX = ""


class _Node:
    """One node: its WebSocket session, its calls, its connections."""

    def __init__(self, app: ClientsApp, secret: bytes) -> None:
        from twisted.internet import defer

        from lnproxy import keys

        self.app = app
        self.index = len(app.nodes)
        self.secret = secret
        self.node_id = keys.public_key(secret)
        self.ws: Any = None
        self.hello: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._calls: dict[int, Any] = {}
        self._next = 0
        self.max_seq = 0
        self.acked = 0
        self._ack_call: Any = None
        self.init_waiters: dict[str, Any] = {}
        self.peer_of: dict[str, int] = {}
        self.open_conns: set[str] = set()
        self.reconnect_queue: list[int] = []
        self.reconnecting = 0

    def call(self, method: str, **params: Any) -> Any:
        """One JSON-RPC request; fires with the result or fails RpcFailed."""
        from twisted.internet import defer

        self._next += 1
        d: defer.Deferred[Any] = defer.Deferred()
        self._calls[self._next] = d
        self.ws.sendMessage(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": self._next,
                    "method": method,
                    "params": params,
                },
                separators=(",", ":"),
            ).encode()
        )
        return d

    def reply(self, obj: dict[str, Any]) -> None:
        """Fire the Deferred of the request this reply answers."""
        d = self._calls.pop(obj["id"], None)
        if d is None:
            return
        if "error" in obj:
            d.errback(RpcFailed(obj["error"]["code"], obj["error"]["message"]))
        else:
            d.callback(obj["result"])

    def schedule_ack(self) -> None:
        """Acknowledge about once a second (as a thrifty client would)."""
        if self._ack_call is None:
            self._ack_call = self.app.reactor.callLater(1.0, self.ack_now)

    def ack_now(self) -> Any:
        """Acknowledge everything received so far; fires when answered."""
        from twisted.internet import defer

        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        if self.max_seq <= self.acked:
            return defer.succeed(None)
        seq = self.max_seq
        d = self.call("ack", seq=seq)

        def done(_: Any) -> None:
            self.acked = max(self.acked, seq)

        return d.addCallback(done)

    def pump_reconnects(self) -> None:
        """Re-handshake queued peers, PER_NODE_CONCURRENCY at a time; retry
        refusals (code 4 or 7) with a backoff, count them."""
        while self.reconnect_queue and self.reconnecting < PER_NODE_CONCURRENCY:
            peer = self.reconnect_queue.pop(0)
            self.reconnecting += 1
            self._attempt(peer, 0)

    def _attempt(self, peer: int, tries: int) -> None:
        """One re-handshake attempt; refusals are retried with a backoff."""
        app = self.app
        d = app.open_one(self, peer, persist=True)

        def ok(_: Any) -> None:
            self.reconnecting -= 1
            app.reconnect_finished(True)
            self.pump_reconnects()

        def failed(f: Any) -> None:
            code = f.value.code if f.check(RpcFailed) else None
            if code in (4, 7) and tries < 20:
                app.storm["retries"] += 1
                app.storm["errors"][f"retried {_error_key(f)}"] += 1
                delay = min(5.0, 0.1 * 2**tries) * (0.5 + random.random())
                app.reactor.callLater(delay, self._attempt, peer, tries + 1)
                return
            self.reconnecting -= 1
            app.reconnect_finished(False, f)
            self.pump_reconnects()

        d.addCallbacks(ok, failed)


def _ws_protocol_class() -> type:
    """The WebSocket client protocol (built lazily)."""
    global _WsProtocol, _INIT_HEX
    if _WsProtocol is not None:
        return _WsProtocol
    from autobahn.twisted.websocket import WebSocketClientProtocol

    from lnproxy import wire

    _INIT_HEX = wire.Init(features=b"").encode().hex()

    class WsProtocol(WebSocketClientProtocol):
        """A node's WebSocket: replies to its calls, events to the app."""

        def connectionMade(self) -> None:
            super().connectionMade()
            # Autobahn tries to set TCP_NODELAY before it has copied the
            # factory's options, and its bare except hides the failure.
            self.transport.setTcpNoDelay(True)

        def onOpen(self) -> None:
            self.node = self.factory.node
            self.node.ws = self

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            obj = json.loads(payload)
            if "id" in obj:
                self.node.reply(obj)
            elif obj.get("method") == "hello":
                self.node.hello.callback(obj["params"])
            else:
                self.node.app.on_event(self.node, obj)

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            self.factory.node.app.stats["ws_closed"] += 1

    _WsProtocol = WsProtocol
    return WsProtocol


_WsProtocol: type | None = None


# ---------------------------------------------------------------------------
# role "pyln": pyln-proto direct handshakes (blocking, threads)
# ---------------------------------------------------------------------------


def run_pyln(spec_path: str) -> None:
    """Read the spec (peers, count, concurrency); print one JSON result line."""
    from pyln.proto import wire as pyln_wire
    from pyln.proto.primitives import PrivateKey

    from lnproxy import wire

    spec = json.loads(Path(spec_path).read_text())
    peers = [(bytes.fromhex(n), p) for n, p in spec["peers"]]
    count, concurrency = spec["count"], spec["concurrency"]
    init = wire.Init(features=b"").encode()
    keys_ = [PrivateKey(os.urandom(32)) for _ in range(concurrency)]
    held: list[Any] = []
    lock = threading.Lock()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    counter = iter(range(count))

    def worker(w: int) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            node_id, port = peers[(i * 7) % len(peers)]
            t = time.monotonic()
            try:
                lconn = pyln_wire.connect(keys_[w], node_id, "127.0.0.1", port)
                lconn.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                lconn.send_message(init)
                m = lconn.read_message()
                if m[:2] != b"\x00\x10":
                    raise ValueError("first message is not init")
            except Exception as e:  # counted, reported
                with lock:
                    errors[type(e).__name__] += 1
                continue
            with lock:
                latencies.append(time.monotonic() - t)
                held.append(lconn)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - t0
    for lconn in held:
        lconn.connection.close()
    latencies.sort()
    print(
        json.dumps(
            {
                "ok": len(held),
                "failed": sum(errors.values()),
                "errors": dict(errors),
                "seconds": seconds,
                "rate": len(held) / seconds,
                "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
                "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)]
                if latencies
                else None,
            }
        )
    )


# ---------------------------------------------------------------------------
# the orchestrator
# ---------------------------------------------------------------------------


class Report:
    """Collects figures and prints them with reference, ratio and target."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        """Print a progress line now (stderr, flushed)."""
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def figure(
        self,
        key: str,
        label: str,
        value: float,
        unit: str,
        reference: float | None = None,
        ref_label: str = "",
        target: str = "",
        met: bool | None = None,
    ) -> None:
        """Record one figure and its comparison."""
        self.figures[key] = {
            "value": value,
            "unit": unit,
            "reference": reference,
            "reference_label": ref_label,
            "target": target,
            "met": met,
        }
        text = f"{label}: {value:,.2f} {unit}"
        if reference is not None:
            ratio = value / reference if reference else float("inf")
            self.figures[key]["ratio"] = ratio
            text += (
                f"  (reference {ref_label}: {reference:,.2f} {unit}; "
                f"ratio {ratio:.2f})"
            )
        if target:
            text += f"  target {target}: {'MET' if met else 'MISSED'}"
        self.lines.append(text)
        self.say(text)


def orchestrate(args: argparse.Namespace) -> int:
    """Run every step; print the figures; kill every child."""
    report = Report()
    keep = args.workdir is not None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lnproxy-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    n = args.peers
    listeners = min(args.listeners, n)
    nodes = math.ceil(n / listeners)
    hard = raise_nofile()
    need = n + 200
    if hard < need:
        report.say(f"RLIMIT_NOFILE hard limit {hard} < {need}: lower --peers")
        return 2

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    profiler: Profiler | None = None
    try:
        report.say(
            f"N={n}: {nodes} nodes x {listeners} peers; workdir {workdir}; "
            f"quick={args.quick}"
        )
        peer_secrets = [os.urandom(32).hex() for _ in range(listeners)]
        peers = Child("peers", _python_argv(1, "--role", "peers"), workdir, env)
        children.append(peers)
        ports = peers.call("listen", secrets=peer_secrets)
        from lnproxy import keys

        peer_list = [
            [keys.public_key(bytes.fromhex(s)).hex(), p]
            for s, p in zip(peer_secrets, ports, strict=True)
        ]

        # -- 1. floor ----------------------------------------------------------
        sink = peers.call("sink")
        floor = Child("floor", _python_argv(0, "--role", "floor"), workdir, env)
        children.append(floor)
        floor.call("close_all")  # a no-op round trip: imports done
        time.sleep(0.5)
        floor_before = rss_kib(floor.pid)
        floor.call("connect", host="127.0.0.1", port=sink, n=n, timeout=300)
        time.sleep(1.0)
        floor_after = rss_kib(floor.pid)
        floor_per_conn = (floor_after - floor_before) / n
        floor.call("close_all")
        floor.call("quit")
        floor.stop()
        report.say(
            f"floor: {floor_before} KiB -> {floor_after} KiB with {n} connections"
        )

        # -- 2. proxy and sessions -------------------------------------------------
        proxy_port = free_port()
        data_dir = workdir / "proxy-data"
        argv, _ = proxy_argv(
            proxy_port,
            str(data_dir),
            "--keepalive",
            str(args.keepalive),
            core=0,
            listen=f"tcp:{proxy_port}:interface=127.0.0.1:backlog=1024",
        )
        proxy = Child("proxy", argv, workdir, env, control=False, port=proxy_port)
        children.append(proxy)
        proxy.wait_listening(60)
        profiler = Profiler(args.profile_dir, proxy.pid)
        time.sleep(1.0)
        proxy_start = rss_kib(proxy.pid)
        clients = Child("clients", _python_argv(1, "--role", "clients"), workdir, env)
        children.append(clients)
        node_secrets = [os.urandom(32).hex() for _ in range(nodes + BENCH_NODES)]
        login = clients.call(
            "login", port=proxy_port, secrets=node_secrets, peers=peer_list
        )
        report.say(f"{login['nodes']} sessions logged in in {login['seconds']:.2f} s")
        time.sleep(2.0)
        proxy_base = rss_kib(proxy.pid)
        fds_base = open_fds(proxy.pid)

        # -- 3. open N ----------------------------------------------------------------
        cpu0 = _cpu_of(proxy, clients, peers)
        opened = clients.call("open", count=n, nodes=nodes, timeout=1800)
        opened["cpu_percent"] = _cpu_percent(cpu0, _cpu_of(proxy, clients, peers))
        report.say(
            f"opened {opened['ok']} of {n} in {opened['seconds']:.1f} s "
            f"({opened['ok'] / opened['seconds']:.0f}/s), failed {opened['failed']} "
            f"{opened['errors']}; p50 {opened.get('p50_ms', 0):.1f} ms "
            f"{opened.get('phases_p50_ms')}; CPU % {opened['cpu_percent']}"
        )
        clients.call("settle")
        time.sleep(3.0)
        pstats = peers.call("stats")
        proxy_open = rss_kib(proxy.pid)
        fds_open = open_fds(proxy.pid)
        per_conn = (proxy_open - proxy_base) / n
        report.say(
            f"proxy RSS: start {proxy_start} KiB, base {proxy_base} KiB, "
            f"with {n} open {proxy_open} KiB; descriptors {fds_base} -> {fds_open}; "
            f"peers see {pstats['open']} open, {pstats.get('inits', 0)} inits"
        )
        report.figure(
            "rss_per_conn",
            f"proxy RSS per open peer connection (N={n})",
            per_conn,
            "KiB",
            floor_per_conn,
            "bare Twisted + 2 ciphers",
            "<= 16 KiB",
            per_conn <= 16,
        )
        report.figure(
            "rss_base",
            "proxy base RSS (started, sessions logged in)",
            proxy_base / 1024,
            "MiB",
            target="<= 82 MiB",
            met=proxy_base / 1024 <= 82,
        )
        report.figures["rss_detail"] = {
            "proxy_start_kib": proxy_start,
            "proxy_base_kib": proxy_base,
            "proxy_open_kib": proxy_open,
            "floor_before_kib": floor_before,
            "floor_after_kib": floor_after,
            "proxy_fds_base": fds_base,
            "proxy_fds_open": fds_open,
            "open": opened,
        }

        # -- 4. idle CPU -------------------------------------------------------------
        window = args.idle_seconds
        s0 = peers.call("stats")
        profiler.start("idle")
        c0, t0 = cpu_seconds(proxy.pid), time.monotonic()
        time.sleep(window)
        c1, t1 = cpu_seconds(proxy.pid), time.monotonic()
        profiler.stop()
        s1 = peers.call("stats")
        idle = 100 * (c1 - c0) / (t1 - t0)
        pings = s1.get("pings_answered", 0) - s0.get("pings_answered", 0)
        report.say(
            f"idle window {t1 - t0:.1f} s: proxy CPU {c1 - c0:.2f} s; "
            f"{pings} keepalive pings answered by the peers"
        )
        report.figure(
            "idle_cpu",
            f"proxy idle CPU over {t1 - t0:.0f} s with {n} links, keepalive "
            f"{args.keepalive} s ({pings} pings)",
            idle,
            "% of a core",
            target="< 2%",
            met=idle < 2,
        )
        report.figures["idle_cpu"]["pings"] = pings
        report.figures["idle_cpu"]["window"] = t1 - t0

        # -- 5. set-ups per second ----------------------------------------------
        spec_base = {"peers": peer_list}
        for label, count, conc in (
            ("sequential", args.setups_seq, 1),
            ("64 concurrent", args.setups_conc, 64),
        ):
            # Rounds alternate proxy and pyln, and each side reports its
            # median round: a burst of other work on the machine, or a full
            # garbage collection in the proxy, then skews one round only.
            vias: list[dict[str, Any]] = []
            directs: list[dict[str, Any]] = []
            for round_no in range(args.setups_rounds):
                waited = _wait_quiet(args.quiet_percent, (proxy, clients, peers))
                if waited >= 1:
                    report.say(f"  waited {waited:.0f} s for other processes to calm")
                if round_no == 0:
                    profiler.start(f"setups-{conc}")
                cpu0 = _cpu_of(proxy, clients, peers)
                via = clients.call(
                    "setup_bench", count=count, concurrency=conc, first_node=nodes,
                    timeout=900,
                )
                cpu1 = _cpu_of(proxy, clients, peers)
                if round_no == 0:
                    profiler.stop()
                via["cpu_ms_per_setup"] = {
                    k: round(1000 * (cpu1[k] - cpu0[k]) / max(1, via["ok"]), 3)
                    for k in cpu0
                    if not k.startswith("_")
                }
                via["foreign_percent"] = _foreign_percent(cpu0, cpu1)
                clients.call("setup_cleanup")
                clients.call("settle")
                vias.append(via)
                cpu0 = _cpu_of(peers)
                own0 = own_cpu_seconds()
                direct = _pyln(
                    workdir, env, dict(spec_base, count=count, concurrency=conc)
                )
                cpu1 = _cpu_of(peers)
                # The pyln process is reaped: its CPU is in our children's.
                cpu0["pyln"], cpu1["pyln"] = own0, own_cpu_seconds()
                direct["foreign_percent"] = _foreign_percent(cpu0, cpu1)
                directs.append(direct)
                time.sleep(0.5)
            via = sorted(vias, key=lambda r: r["rate"])[len(vias) // 2]
            direct = sorted(directs, key=lambda r: r["rate"])[len(directs) // 2]
            failed = sum(r["failed"] for r in vias)
            report.say(
                f"set-ups {label}, {args.setups_rounds} rounds of {count}: proxy "
                f"{[round(r['rate']) for r in vias]}/s (other processes "
                f"{[r['foreign_percent'] for r in vias]}% of a core), {failed} failed "
                f"{[r['errors'] for r in vias if r['errors']]}; median round p50 "
                f"{via.get('p50_ms', 0):.1f} ms {via.get('phases_p50_ms')} CPU "
                f"ms/set-up {via['cpu_ms_per_setup']}; pyln "
                f"{[round(r['rate']) for r in directs]}/s (other processes "
                f"{[r['foreign_percent'] for r in directs]}%), "
                f"{sum(r['failed'] for r in directs)} failed, median round p50 "
                f"{direct.get('p50_ms') or 0:.1f} ms"
            )
            key = "setups_seq" if conc == 1 else "setups_conc"
            report.figure(
                key,
                f"set-ups/s through the proxy, {label} (median of "
                f"{args.setups_rounds})",
                via["rate"],
                "/s",
                direct["rate"],
                "pyln-proto direct",
                ">= 0.5x",
                via["rate"] >= 0.5 * direct["rate"] and failed == 0,
            )
            report.figures[key]["proxy_rounds"] = vias
            report.figures[key]["pyln_rounds"] = directs
            proxy_ms = via["cpu_ms_per_setup"]["proxy"]
            if proxy_ms:
                report.say(
                    f"  the proxy spent {proxy_ms:.2f} ms of CPU per set-up: one core "
                    f"would carry about {1000 / proxy_ms:,.0f} set-ups/s"
                )
        time.sleep(2.0)

        # -- 6. reconnect storm -------------------------------------------------
        waited = _wait_quiet(args.quiet_percent, (proxy, clients, peers))
        if waited >= 1:
            report.say(f"waited {waited:.0f} s for other processes to calm")
        clients.call("arm_storm", expect=n)
        cpu0 = _cpu_of(proxy, clients, peers)
        if args.storm == "restart":
            t_drop = time.monotonic()
            peers.stop(signal.SIGKILL)
            children.remove(peers)
            peers = Child("peers", _python_argv(1, "--role", "peers"), workdir, env)
            children.append(peers)
            peers.call("listen", secrets=peer_secrets, ports=ports)
            cpu0["peers"] = 0.0  # a new process: all its CPU is the storm's
            aborted = n
        else:
            res = peers.call("abort")
            t_drop, aborted = res["at"], res["aborted"]
        storm = clients.call(
            "storm_wait", limit=args.storm_timeout, timeout=args.storm_timeout + 60
        )
        cpu1 = _cpu_of(proxy, clients, peers)
        storm["cpu_percent"] = _cpu_percent(cpu0, cpu1)
        storm["foreign_percent"] = _foreign_percent(cpu0, cpu1)
        end = storm["last_open_at"] or time.monotonic()
        took = end - t_drop
        report.say(
            f"storm ({args.storm}): {aborted} dropped; {storm['closed_events']} closed "
            f"events with reconnect true; {storm['reopened']} reopened, "
            f"{storm['failed']} failed, {storm['retries']} retried "
            f"{storm['errors']}; open now {storm['open_now']}; CPU % "
            f"{storm['cpu_percent']}, other processes {storm['foreign_percent']}%"
        )
        report.figure(
            "storm",
            f"reconnect storm: time until all {n} open again",
            took,
            "s",
            target="zero failed set-ups",
            # A refusal while the restarted peers are not listening yet
            # (code 4, retried) is the peers' doing; anything else is not.
            met=storm["failed"] == 0
            and storm["reopened"] == n
            and storm["closed_events"] == n
            and all(
                k == "retried code 4" and args.storm == "restart"
                for k in storm["errors"]
            ),
        )
        report.figures["storm"].update(
            {
                k: v
                for k, v in storm.items()
                if k not in ("first_closed_at", "last_open_at")
            }
        )
        clients.call("settle")

        # -- 7. soak -------------------------------------------------------------
        soak = args.soak_seconds
        warm = args.warmup_seconds if args.warmup_seconds is not None else soak / 10
        peers.call("soak", interval=args.soak_interval)
        clients.call("soak", interval=args.soak_interval)
        profiler.start("soak")
        s_c0 = cpu_seconds(proxy.pid)
        t_start = time.monotonic()
        samples: list[tuple[float, int]] = []
        rss_warm = None
        while True:
            now = time.monotonic() - t_start
            if now >= soak:
                break
            samples.append((now, rss_kib(proxy.pid)))
            if rss_warm is None and now >= warm:
                rss_warm = samples[-1][1]
            time.sleep(min(5.0, soak - now))
        rss_end = rss_kib(proxy.pid)
        soak_cpu = 100 * (cpu_seconds(proxy.pid) - s_c0) / (time.monotonic() - t_start)
        profiler.stop()
        pst = peers.call("soak_stop")
        cst = clients.call("soak_stop")
        if rss_warm is None:
            rss_warm = samples[0][1]
        growth = 100 * (rss_end - rss_warm) / rss_warm
        report.say(
            f"soak {soak:.0f} s (warm-up {warm:.0f} s): RSS warm {rss_warm} KiB, end "
            f"{rss_end} KiB, max {max(s for _, s in samples)} KiB; proxy CPU "
            f"{soak_cpu:.0f}%; peers sent {pst.get('soak_sent', 0)}, got "
            f"{pst.get('msgs', 0)} msgs and {pst.get('pongs', 0)} pongs; clients got "
            f"{cst.get(f'type_{SOAK_TYPE}', 0)} events, sent {cst.get('sent', 0)}, "
            f"errors {cst['errors']}"
        )
        report.figure(
            "soak_rss",
            f"RSS after {soak:.0f} s of traffic vs after warm-up",
            rss_end / 1024,
            "MiB",
            rss_warm / 1024,
            "after warm-up",
            "within 5%",
            abs(growth) <= 5,
        )
        report.figures["soak_rss"].update(
            {
                "seconds": soak,
                "warmup": warm,
                "interval": args.soak_interval,
                "proxy_cpu_percent": soak_cpu,
                "samples": samples,
                "peers": pst,
                "clients": cst,
            }
        )
        report.say(f"done in {time.monotonic() - started:.0f} s")
    except KeyboardInterrupt:
        report.say("interrupted: stopping every child")
        return 130
    finally:
        if profiler is not None:
            profiler.stop()
        for child in children:
            if child.name == "peers" and child.proc.poll() is None:
                # RST every peer link first: no TIME_WAIT left on the proxy side.
                try:
                    child.call("close_all", timeout=30)
                except Exception:
                    pass
        for child in reversed(children):
            child.stop(signal.SIGTERM if child.name == "proxy" else signal.SIGKILL)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    wall = time.monotonic() - started
    foreign = (machine_busy_seconds() - busy0) - (own_cpu_seconds() - own0)
    report.figures["foreign_cpu"] = {"seconds": foreign, "wall": wall}
    print()
    print(f"== lnproxy scale, N={n} ({nodes} nodes x {listeners} peers) ==")
    print(_machine())
    # Other processes on these two cores skew every figure: say how much.
    print(
        f"run: {wall:.0f} s; other processes used {foreign:.1f} CPU-seconds "
        f"({100 * foreign / wall:.1f}% of one core on average)"
    )
    for line in report.lines:
        print(line)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"n": n, "machine": _machine(), "figures": report.figures}, indent=1
            )
        )
    return 0


class Profiler:
    """``py-spy record`` of the proxy during named steps (``--profile-dir``)."""

    def __init__(self, directory: str | None, pid: int) -> None:
        self.directory = Path(directory) if directory else None
        self.pid = pid
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, step: str) -> None:
        """Begin sampling (collapsed stacks, 200 Hz) into ``STEP.txt``."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self._proc = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--rate", "200", "--format",
             "raw", "--output", str(self.directory / f"{step}.txt"), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_child_setup,
        )

    def stop(self) -> None:
        """Stop sampling; py-spy writes its file on SIGINT."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None


def _cpu_of(*children: Child) -> dict[str, Any]:
    """CPU seconds of each child, and the time they were read."""
    snap: dict[str, Any] = {c.name: cpu_seconds(c.pid) for c in children}
    snap["_t"] = time.monotonic()
    snap["_busy"] = machine_busy_seconds()
    return snap


def _wait_quiet(
    threshold: float, children: tuple[Child, ...], limit: float = 120
) -> float:
    """Wait (up to ``limit`` s) for a second in which processes other than
    ours use less than ``threshold`` percent of a core; return the wait."""
    t0 = time.monotonic()
    while threshold > 0 and time.monotonic() - t0 < limit:
        before = _cpu_of(*children)
        time.sleep(1.0)
        if _foreign_percent(before, _cpu_of(*children)) < threshold:
            break
    return time.monotonic() - t0 - (1.0 if threshold > 0 else 0.0)


def _foreign_percent(before: dict[str, Any], after: dict[str, Any]) -> float:
    """Percent of one core used by processes other than the snapshot's."""
    ours = sum(after[k] - before[k] for k in before if not k.startswith("_"))
    busy = after["_busy"] - before["_busy"]
    return round(100 * (busy - ours) / (after["_t"] - before["_t"]), 1)


def _cpu_percent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Percent of one core each child used between two snapshots."""
    wall = after["_t"] - before["_t"]
    return {
        k: round(100 * (after[k] - before[k]) / wall, 1)
        for k in before
        if not k.startswith("_")
    }


def _pyln(workdir: Path, env: dict[str, str], spec: dict[str, Any]) -> Any:
    """Run the pyln-proto reference in its own process on core 1."""
    path = workdir / "pyln-spec.json"
    path.write_text(json.dumps(spec))
    argv = _python_argv(1, "--role", "pyln", "--spec", str(path))
    out = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        timeout=900,
        preexec_fn=_child_setup,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"pyln reference failed: {out.stderr.decode()[-2000:]}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def _machine() -> str:
    """One line naming the CPU, kernel, Python and cryptography versions."""
    import cryptography

    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: {os.cpu_count()} CPUs ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, cryptography {cryptography.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the orchestrator or one child role."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", default="orchestrate",
                   choices=["orchestrate", "peers", "clients", "floor", "pyln"])
    p.add_argument("--spec", help="(pyln role) the spec file")
    p.add_argument("--peers", type=int, default=2000, help="peer connections N")
    p.add_argument("--listeners", type=int, default=100,
                   help="peer node ids (listening ports); nodes = N / listeners")
    p.add_argument("--quick", action="store_true",
                   help="shorter windows (default when --peers < 10000)")
    p.add_argument("--full", action="store_true", help="full windows whatever N")
    p.add_argument("--keepalive", type=float, default=30.0)
    p.add_argument("--idle-seconds", type=float, default=None,
                   help="idle CPU window (60 full, 30 quick)")
    p.add_argument("--setups-seq", type=int, default=None,
                   help="sequential set-ups per round (500 full, 200 quick)")
    p.add_argument("--setups-conc", type=int, default=None,
                   help="set-ups at 64 concurrent per round (2000 full, 1000 quick)")
    p.add_argument("--setups-rounds", type=int, default=3,
                   help="rounds of each set-up benchmark (median reported)")
    p.add_argument("--quiet-percent", type=float, default=10.0,
                   help="before each set-up round, wait (up to 2 min) until other "
                   "processes use less than this much of a core (0: do not wait)")
    p.add_argument("--storm", choices=["abort", "restart"], default="abort",
                   help="drop every link by RST from the peers process (abort) or "
                   "by killing and restarting it (restart)")
    p.add_argument("--storm-timeout", type=float, default=600.0)
    p.add_argument("--soak-seconds", type=float, default=None,
                   help="steady traffic duration (600 full, 60 quick)")
    p.add_argument("--soak-interval", type=float, default=10.0,
                   help="seconds between messages on each link during the soak")
    p.add_argument("--warmup-seconds", type=float, default=None,
                   help="RSS reference point into the soak (default soak/10)")
    p.add_argument("--profile-dir",
                   help="py-spy the proxy during the set-ups, idle and soak steps "
                   "(collapsed stacks, one file per step)")
    p.add_argument("--workdir", help="keep logs and data here")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)

    if args.role == "pyln":
        run_pyln(args.spec)
        return 0
    if args.role != "orchestrate":
        raise_nofile()
        app = {"peers": PeersApp, "clients": ClientsApp, "floor": FloorApp}[args.role]()
        run_child(app)
        return 0
    args.quick = (args.quick or args.peers < 10000) and not args.full
    full = not args.quick
    if args.idle_seconds is None:
        args.idle_seconds = 60.0 if full else 30.0
    if args.setups_seq is None:
        args.setups_seq = 500 if full else 200
    if args.setups_conc is None:
        args.setups_conc = 2000 if full else 1000
    if args.soak_seconds is None:
        args.soak_seconds = 600.0 if full else 60.0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
