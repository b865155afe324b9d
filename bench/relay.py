"""Relay benchmark: the proxy against pyln-proto and bare Autobahn, same run.

Run from the repository root (the venv must hold pyln-proto)::

    python bench/relay.py [--quick] [--figures 1,3] [--profile DIR]

Everything is on 127.0.0.1.  The proxy runs in its own process pinned to
core 0 (``taskset -c 0``), the load generator (peers, clients) in processes
pinned to core 1.  Each reference runs with the same placement: the side that
stands where the proxy stands (responder, receiver, server) on core 0, the
side that drives the load on core 1.  Without ``taskset`` everything runs
unpinned and the output says so.

Runs come in pairs: a proxy run, then its reference run.  Each figure is the
median over 5 pairs (9 for figure 1; 1 pair with ``--quick``).  On a shared
machine other processes skew round trips by 2x, so the CPU that processes
outside the run used during each measurement is read from ``/proc/stat``; a
pair during which they used more than 0.15 cores is redone while the time
budget allows, and the output says how many pairs were discarded (or that
all were noisy).  The whole run takes under 3 minutes (under 60 s with
``--quick``).  Every TCP socket has TCP_NODELAY (pyln-proto's, the proxy's,
the bench's Autobahn ones).

Figures (issue 3's targets):

1. ping round trips answered by the proxy: a pyln-proto peer (TCP_NODELAY,
   exact reads with ``MSG_WAITALL``) pings through an open proxy connection
   and waits for each pong; reference: the same pinger against a pyln-proto
   responder that answers pings.  Target >= 0.9x.
2. 32-byte messages from a peer into the proxy's store: the peer writes a
   burst of frames it encrypted beforehand with pyln-proto; the figure is the
   time until the last event is committed (the node's ``next_seq`` as seen by
   another SQLite connection; no client is logged in).  Reference: the same
   burst into a pyln-proto ``read_message`` loop.  Target >= 1.0x.
3. peer -> proxy -> WebSocket client: the same burst, delivered as ``message``
   notifications to a logged-in Autobahn client that parses each one and
   acks every 1000.  Reference: a bare Autobahn server streaming notifications
   of the same shape and size to the same client.  Target >= 0.5x.
4. client -> proxy -> peer: ``send`` requests pipelined over the WebSocket,
   counted by a local BOLT 8 peer (:mod:`lnproxy.localpeer`) in the client's
   process.  The proxy runs with ``--max-requests-per-second 0``: its
   per-session request limit (5000/s by default) would otherwise be what is
   measured.  Reference: the same requests streamed by the same client to a
   bare Autobahn server that parses and counts them.  Target >= 0.5x.
5. sequential connection set-ups through the proxy: the client computes acts
   1 and 3 with :class:`lnproxy.noise.Initiator`, ``connect`` + ``finish``
   over the WebSocket, to a pyln-proto responder.  Reference: pyln-proto
   ``connect()`` to the same responder.  Targets: >= 0.5x, and under 2 ms
   added per set-up.

``--profile DIR`` runs the proxy under cProfile and leaves one ``.prof`` file
per proxy run in DIR (read them with ``python -m pstats``).

The same file holds the child roles (``--role ...``); they are started by
the orchestrator and are not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from _harness import ROOT, BenchChild, ChildGone, child_env, python_argv
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from lnproxy.testing import WholeSocket

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Core of the proxy (and of each reference's proxy-side process).
CORE_PROXY = 0
#: Core of the load generator (peers and clients).
CORE_LOAD = 1

#: An unknown odd type: the default policy queues it (stored, no summons).
MSG_TYPE = 0x8001
#: BOLT 1 ``init`` with no features, built by hand (as the interop test does).
INIT = struct.pack(">HHH", 16, 0, 0)
#: ``ping`` asking for an empty pong, with no padding.
PING = struct.pack(">HHH", 18, 0, 0)
PONG_TYPE = 19
#: A client acks every this many events (figure 3).
ACK_EVERY = 1000
#: Messages a WebSocket sender writes per reactor turn (figures 3 and 4).
CHUNK = 256
#: Bound for any single wait on a child process.
STEP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Sizes:
    """How much work each run does."""

    repeats: int
    #: Pairs for figure 1: round trips are short and swing the most.
    ping_repeats: int
    pings: int
    warm_pings: int
    store_messages: int
    ws_messages: int
    sends: int
    setups: int


FULL = Sizes(
    repeats=5,
    ping_repeats=9,
    pings=3000,
    warm_pings=300,
    store_messages=20000,
    ws_messages=20000,
    sends=20000,
    setups=100,
)
QUICK = Sizes(
    repeats=1,
    ping_repeats=1,
    pings=1500,
    warm_pings=200,
    store_messages=8000,
    ws_messages=8000,
    sends=8000,
    setups=40,
)


def blast_message(i: int) -> bytes:
    """The i-th 32-byte message of a burst: type, counter, padding."""
    return struct.pack(">HI", MSG_TYPE, i) + bytes(26)


def emit(tag: str, value: Any = None) -> None:
    """One line to the orchestrator: ``TAG`` or ``TAG <json>``."""
    line = tag if value is None else f"{tag} {json.dumps(value)}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# Role: the proxy (core 0)
# ---------------------------------------------------------------------------


def role_proxy(args: argparse.Namespace) -> None:
    """Build the service as ``twistd lnproxy`` does and run it.

    Prints ``PORT <n>`` once listening; stops on SIGTERM or stdin EOF.
    """
    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import Protocol
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from lnproxy.tap import Options, makeService

    log = open(os.path.join(args.data_dir, "proxy.log"), "a")
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(log)], redirectStandardIO=False
    )
    options = Options()
    options.parseOptions(
        ["--listen", "tcp:0:interface=127.0.0.1", "--data-dir", args.data_dir]
        + list(args.proxy_arg or [])
    )
    # What ``twistd lnproxy`` runs: makeService (build_service, then its
    # start-up tuning), on the same reactor.
    svc = makeService(options)
    svc.startService()
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    listening = svc.listeners[0]._waitingForPort.result  # type: ignore[attr-defined]
    port = listening.getHost().port

    class StopOnEof(Protocol):
        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(StopOnEof())
    emit("PORT", port)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    reactor.run()
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)


# ---------------------------------------------------------------------------
# Role: a pyln-proto peer (blocking sockets, no threads)
# ---------------------------------------------------------------------------


class Capture:
    """Stands in for the socket while pyln encrypts a burst in advance."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def send(self, data: bytes) -> int:
        """Keep the bytes."""
        self.parts.append(data)
        return len(data)


def tame(lconn: Any) -> socket.socket:
    """TCP_NODELAY and exact reads on a handshaken pyln connection."""
    sock: socket.socket = lconn.connection
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(STEP_TIMEOUT)
    lconn.connection = WholeSocket(sock)
    return sock


def wait_go() -> bool:
    """Block until the orchestrator says ``GO`` (False on EOF)."""
    line = sys.stdin.readline()
    return line.strip() == "GO"


def pyln_pinger(lconn: Any, count: int, warm: int) -> dict[str, Any]:
    """Sequential pings, each waiting for its pong."""

    def one() -> None:
        lconn.send_message(PING)
        while True:
            msg = lconn.read_message()
            if (msg[0] << 8) | msg[1] == PONG_TYPE:
                return

    for _ in range(warm):
        one()
    emit("READY")
    if not wait_go():
        return {}
    t0 = time.monotonic()
    for _ in range(count):
        one()
    t1 = time.monotonic()
    return {"t0": t0, "t1": t1, "n": count}


def pyln_ponger(lconn: Any) -> None:
    """Answer pings until the connection ends (BOLT 1 pong)."""
    emit("READY")
    while True:
        try:
            msg = lconn.read_message()
        except (ValueError, OSError):
            return
        if (msg[0] << 8) | msg[1] == 18:
            num_pong_bytes = struct.unpack_from(">H", msg, 2)[0]
            if num_pong_bytes < 65532:
                lconn.send_message(
                    struct.pack(">HH", 19, num_pong_bytes) + bytes(num_pong_bytes)
                )


def pyln_blaster(
    lconn: Any, sock: socket.socket, count: int, db_path: str | None
) -> dict[str, Any]:
    """Write ``count`` messages, encrypted beforehand by pyln, in one go.

    With ``db_path``, also wait until the proxy has committed them all.
    """
    real, capture = lconn.connection, Capture()
    lconn.connection = capture
    for i in range(count):
        lconn.send_message(blast_message(i))
    lconn.connection = real
    blob = b"".join(capture.parts)
    db = None
    base = 0
    if db_path is not None:
        import sqlite3

        db = sqlite3.connect(db_path, isolation_level=None)
        base = db.execute("SELECT coalesce(sum(next_seq), 0) FROM nodes").fetchone()[0]
    emit("READY")
    if not wait_go():
        return {}
    t0 = time.monotonic()
    sock.sendall(blob)
    out: dict[str, Any] = {"t0": t0, "t_sent": time.monotonic(), "n": count}
    if db is not None:
        deadline = t0 + STEP_TIMEOUT
        while True:
            (seq,) = db.execute(
                "SELECT coalesce(sum(next_seq), 0) FROM nodes"
            ).fetchone()
            if seq >= base + count:
                out["t1"] = time.monotonic()
                out["stored"] = seq - base
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"only {seq - base} of {count} events stored in time")
            time.sleep(0.0005)
        db.close()
    return out


def pyln_receiver(lconn: Any, count: int) -> dict[str, Any]:
    """Read ``count`` messages with pyln's ``read_message``."""
    emit("READY")
    for _ in range(count):
        lconn.read_message()
    return {"t1": time.monotonic(), "n": count}


def role_pyln(args: argparse.Namespace) -> None:
    """A pyln-proto peer: responder (``--listen``) or initiator."""
    from pyln.proto import wire as pw

    secret = bytes.fromhex(args.secret) if args.secret else os.urandom(32)
    key = pw.PrivateKey(secret)
    keep: list[Any] = []
    if args.listen:
        from lnproxy import keys

        server = pw.LightningServerSocket(key)
        server.bind(("127.0.0.1", 0))
        server.listen(128)
        server.settimeout(STEP_TIMEOUT)
        emit(
            "PORT",
            {"port": server.getsockname()[1], "node": keys.public_key(secret).hex()},
        )
        if args.job == "accept":
            # Figure 5: accept (= run the responder handshake) and keep.
            for _ in range(args.count):
                lconn, _ = server.accept()
                keep.append(lconn)
            emit("RESULT", {"accepted": len(keep)})
            sys.stdin.read()
            return
        lconn, _ = server.accept()
    else:
        host, port, node = args.connect.split(":")
        if args.job == "connect":
            # Figure 5 reference: sequential direct handshakes.
            times = []
            for _ in range(args.warm):
                keep.append(pw.connect(key, bytes.fromhex(node), host, int(port)))
            emit("READY")
            if not wait_go():
                return
            for _ in range(args.count):
                t = time.monotonic()
                keep.append(pw.connect(key, bytes.fromhex(node), host, int(port)))
                times.append(time.monotonic() - t)
            emit("RESULT", {"times": times})
            sys.stdin.read()
            return
        lconn = pw.connect(key, bytes.fromhex(node), host, int(port))
    sock = tame(lconn)
    # init both ways: the responder reads first.
    if args.listen:
        lconn.read_message()
        lconn.send_message(INIT)
    else:
        lconn.send_message(INIT)
        lconn.read_message()
    result: dict[str, Any] | None = None
    if args.job == "pinger":
        result = pyln_pinger(lconn, args.count, args.warm)
    elif args.job == "ponger":
        pyln_ponger(lconn)
    elif args.job == "blaster":
        result = pyln_blaster(lconn, sock, args.count, args.db)
    elif args.job == "receiver":
        result = pyln_receiver(lconn, args.count)
    else:
        raise SystemExit(f"unknown pyln job {args.job}")
    if result is not None:
        emit("RESULT", result)
        sys.stdin.read()  # keep the connection until the orchestrator is done
    sock.close()


# ---------------------------------------------------------------------------
# Roles on Twisted: the WebSocket client and the bare Autobahn server
# ---------------------------------------------------------------------------


def _twisted_role(main: Callable[[Any, Any], Any]) -> None:
    """Run ``main(reactor, stdin_lines)`` (an inlineCallbacks function) and
    stop on stdin EOF or when it fails."""
    from twisted.internet import defer, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    class Lines(LineReceiver):
        delimiter = b"\n"

        def __init__(self) -> None:
            self.waiting: list[defer.Deferred[str]] = []
            self.eof: defer.Deferred[None] = defer.Deferred()

        def lineReceived(self, line: bytes) -> None:
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(line.decode().strip())

        def next_line(self) -> defer.Deferred[str]:
            d: defer.Deferred[str] = defer.Deferred()
            self.waiting.append(d)
            return d

        def connectionLost(self, reason: Any = None) -> None:
            self.eof.callback(None)
            if reactor.running:
                reactor.stop()

    lines = Lines()
    stdio.StandardIO(lines)

    def failed(f: Any) -> None:
        sys.stderr.write(f.getTraceback())
        emit("FAILED", f.getErrorMessage())
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(
        lambda: defer.maybeDeferred(main, reactor, lines).addErrback(failed)
    )
    reactor.run()


def _no_delay(transport: Any) -> None:
    """TCP_NODELAY on a Twisted TCP transport.

    Autobahn's ``tcpNoDelay`` option never applies on Twisted (it is read
    before the factory's options are copied onto the protocol), so the
    bench sets it itself, on both sides, as the proxy does.
    """
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass


def _connect_ws(reactor: Any, port: int) -> Any:
    """A Deferred firing with an open :class:`lnproxy.testing.RpcClient`
    (``on_event``/``on_raw`` take the notifications and frames)."""
    from lnproxy.testing import connect_rpc

    d = connect_rpc(reactor, port)
    return d.addCallback(lambda client: client.opened.addCallback(lambda _: client))


@implementer(IPushProducer)
class _Pump:
    """Writes ``count`` WebSocket messages, CHUNK per reactor turn, and
    stops while the TCP transport is full."""

    def __init__(
        self, reactor: Any, proto: Any, make: Callable[[int], bytes], count: int
    ):
        self.reactor = reactor
        self.proto = proto
        self.make = make
        self.count = count
        self.sent = 0
        self.paused = False
        self.scheduled = False
        proto.transport.registerProducer(self, True)

    def start(self) -> None:
        self._schedule()

    def _schedule(self) -> None:
        if not self.scheduled and self.sent < self.count:
            self.scheduled = True
            self.reactor.callLater(0, self._run)

    def _run(self) -> None:
        self.scheduled = False
        send = self.proto.sendMessage
        make = self.make
        end = min(self.count, self.sent + CHUNK)
        i = self.sent
        while i < end and not self.paused:
            send(make(i))
            i += 1
        self.sent = i
        if not self.paused:
            self._schedule()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.paused = True
        self.count = self.sent


def _send_request(conn: str) -> Callable[[int], bytes]:
    """``send`` request i with a 32-byte message."""
    head = '{"jsonrpc":"2.0","id":'
    tail_prefix = ',"method":"send","params":{"conn":"' + conn + '","msg":"'

    def make(i: int) -> bytes:
        return (
            head + str(i + 1000) + tail_prefix + blast_message(i).hex() + '"}}'
        ).encode()

    return make


def role_client(args: argparse.Namespace) -> None:
    """The load generator's WebSocket side (Twisted + Autobahn)."""
    from twisted.internet import defer

    @defer.inlineCallbacks
    def login(client: Any) -> Any:
        secret = os.urandom(32)
        yield client.login(secret)
        return secret

    @defer.inlineCallbacks
    def open_conn(client: Any, secret: bytes, peer: str) -> Any:
        # ``secret`` is the one the client logged in with.
        node, host, port = peer.split(":")
        r, init = yield client.start_connect(bytes.fromhex(node), int(port), host=host)
        yield client.finish(r, init)
        return r["conn"]

    @defer.inlineCallbacks
    def main(reactor: Any, lines: Any) -> Any:
        job = args.job
        client = yield _connect_ws(reactor, args.port)
        if job in ("ref-recv", "ref-send"):
            yield ref_job(reactor, lines, client)
            return
        secret = yield login(client)
        if job == "setup":
            yield setup_job(reactor, lines, client, secret)
            return
        peer_factory = None
        peer = args.peer
        if job == "send":
            from lnproxy.localpeer import LocalPeerFactory

            peer_factory = LocalPeerFactory()
            listening = reactor.listenTCP(0, peer_factory, interface="127.0.0.1")
            peer = f"{peer_factory.node_id.hex()}:127.0.0.1:{listening.getHost().port}"
            opened = peer_factory.wait_open()
        conn = yield open_conn(client, secret, peer)
        yield client.call("send", conn=conn, msg=INIT.hex())
        if job in ("hold", "logout"):
            if job == "logout":
                client.sendClose()
                yield client.closed
            emit("READY")
            yield lines.eof
        elif job == "recv":
            yield recv_job(reactor, lines, client)
        elif job == "send":
            local = yield opened
            yield send_job(reactor, lines, client, conn, peer_factory, local)

    @defer.inlineCallbacks
    def recv_job(reactor: Any, lines: Any, client: Any) -> Any:
        """Figure 3: count message notifications; ack every ACK_EVERY."""
        done: defer.Deferred[float] = defer.Deferred()
        state = {"n": 0}
        target = args.count

        def on_event(obj: dict[str, Any]) -> None:
            params = obj.get("params", {})
            if obj.get("method") != "message" or params.get("type") != MSG_TYPE:
                return
            state["n"] += 1
            n = state["n"]
            if n % ACK_EVERY == 0:
                client.call("ack", seq=params["seq"]).addErrback(done.errback)
            if n == target and not done.called:
                done.callback(time.monotonic())

        client.on_event = on_event
        emit("READY")
        t1 = yield done
        emit("RESULT", {"t1": t1, "n": state["n"]})
        yield lines.eof

    @defer.inlineCallbacks
    def send_job(
        reactor: Any, lines: Any, client: Any, conn: str, peer_factory: Any, local: Any
    ) -> Any:
        """Figure 4: pipeline ``send`` requests; the local peer counts."""
        done: defer.Deferred[float] = defer.Deferred()
        state = {"n": 0, "replies": 0, "errors": 0}
        target = args.count

        def on_message(p: Any, msg: bytes) -> None:
            if (msg[0] << 8) | msg[1] == MSG_TYPE:
                state["n"] += 1
                if state["n"] == target:
                    done.callback(time.monotonic())

        peer_factory.on_message.append(on_message)

        # Replies are counted, not parsed: an error reply names "error".
        def on_raw(payload: bytes) -> bool:
            if payload.startswith(b'{"jsonrpc":"2.0","id":') and payload.endswith(
                b'"result":{}}'
            ):
                state["replies"] += 1
                return True
            if b'"error"' in payload:
                state["errors"] += 1
                sys.stderr.write(payload.decode() + "\n")
                return True
            return False

        client.on_raw = on_raw
        emit("READY")
        go = yield lines.next_line()
        if go != "GO":
            return
        t0 = time.monotonic()
        _Pump(reactor, client, _send_request(conn), target).start()
        t1 = yield done
        # Not timed: every reply arrives, none is an error.
        for _ in range(1000):
            if state["replies"] + state["errors"] >= target:
                break
            yield deferLater(reactor, 0.01)
        emit("RESULT", {"t0": t0, "t1": t1, "n": state["n"], **state})
        yield lines.eof

    @defer.inlineCallbacks
    def setup_job(reactor: Any, lines: Any, client: Any, secret: bytes) -> Any:
        """Figure 5: sequential set-ups through the proxy to a pyln responder."""
        for _ in range(args.warm):
            yield open_conn(client, secret, args.peer)
        emit("READY")
        go = yield lines.next_line()
        if go != "GO":
            return
        times = []
        for _ in range(args.count):
            t = time.monotonic()
            yield open_conn(client, secret, args.peer)
            times.append(time.monotonic() - t)
        emit("RESULT", {"times": times})
        yield lines.eof

    @defer.inlineCallbacks
    def ref_job(reactor: Any, lines: Any, client: Any) -> Any:
        """References of figures 3 and 4, against the bare server."""
        done: defer.Deferred[float] = defer.Deferred()
        state = {"n": 0}
        target = args.count
        if args.job == "ref-recv":

            def on_event(obj: dict[str, Any]) -> None:
                params = obj.get("params", {})
                if obj.get("method") != "message" or params.get("type") != MSG_TYPE:
                    return
                state["n"] += 1
                n = state["n"]
                if n % ACK_EVERY == 0:
                    # Same traffic as figure 3; the bare server ignores it.
                    client.sendMessage(
                        json.dumps(
                            {
                                "jsonrpc": "2.0",
                                "id": n,
                                "method": "ack",
                                "params": {"seq": params["seq"]},
                            }
                        ).encode()
                    )
                if n == target and not done.called:
                    done.callback(time.monotonic())

            client.on_event = on_event
        else:

            def on_raw(payload: bytes) -> bool:
                if payload == b'"done"':
                    done.callback(time.monotonic())
                return True

            client.on_raw = on_raw
        emit("READY")
        go = yield lines.next_line()
        if go != "GO":
            return
        t0 = time.monotonic()
        if args.job == "ref-recv":
            client.sendMessage(b'"go"')
        else:
            _Pump(reactor, client, _send_request("0123456789abcdef"), target).start()
        t1 = yield done
        emit("RESULT", {"t0": t0, "t1": t1, "n": target})
        yield lines.eof

    def deferLater(reactor: Any, delay: float) -> Any:
        from twisted.internet import task

        return task.deferLater(reactor, delay, lambda: None)

    _twisted_role(main)


def role_ws_server(args: argparse.Namespace) -> None:
    """A bare Autobahn server: streams notifications (``stream``) or counts
    requests (``count``); the references of figures 3 and 4."""
    from autobahn.twisted.websocket import (
        WebSocketServerFactory,
        WebSocketServerProtocol,
    )
    from twisted.internet import defer

    count = args.count
    conn_id = "0123456789abcdef"
    peer = "02" + "ab" * 32

    def notification(i: int) -> bytes:
        # The shape and size of the proxy's ``message`` event (figure 3).
        params = (
            f'{{"seq":{i + 2},"at":{time.time()!r},"conn":"{conn_id}",'
            f'"peer":"{peer}","type":{MSG_TYPE},"msg":"{blast_message(i).hex()}",'
            f'"summon":false}}'
        )
        return ('{"jsonrpc":"2.0","method":"message","params":' + params + "}").encode()

    class Server(WebSocketServerProtocol):
        def connectionMade(self) -> None:
            super().connectionMade()
            _no_delay(self.transport)

        def onConnect(self, request: Any) -> Any:
            return "lnproxy.v1" if "lnproxy.v1" in request.protocols else None

        def onOpen(self) -> None:
            self.n = 0
            self.sendMessage(b'{"jsonrpc":"2.0","method":"hello","params":{}}')

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            if args.job == "stream":
                if payload == b'"go"':
                    _Pump(reactor, self, notification, count).start()
                return
            obj = json.loads(payload)
            if obj.get("method") == "send":
                self.n += 1
                if self.n == count:
                    self.sendMessage(b'"done"')

    from twisted.internet import reactor

    def main(reactor: Any, lines: Any) -> Any:
        factory = WebSocketServerFactory(protocols=["lnproxy.v1"])
        factory.protocol = Server
        factory.setProtocolOptions(tcpNoDelay=True, webStatus=False)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        emit("PORT", port.getHost().port)
        return defer.succeed(None)

    _twisted_role(main)


# ---------------------------------------------------------------------------
# The orchestrator
# ---------------------------------------------------------------------------


class BenchError(Exception):
    """A child failed or did not answer in time."""


class Child(BenchChild):
    """A child process of this script, pinned to a core when possible (the
    process harness is :class:`_harness.BenchChild`, shared with
    bench/scale.py)."""

    def __init__(self, name: str, core: int | None, role_args: list[str], log_dir: str):
        self.stderr_path = os.path.join(log_dir, f"{name}.stderr")
        super().__init__(
            name,
            python_argv(__file__, core, *role_args),
            self.stderr_path,
            child_env(),
            cwd=ROOT,
        )

    def _stderr_tail(self) -> str:
        return self.log_tail(2000)

    def expect(self, tag: str, timeout: float = STEP_TIMEOUT) -> Any:
        """Wait for the line ``TAG [json]``; return the parsed json (or None)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.read_line(deadline)
            except ChildGone:
                self.proc.wait(5)
                raise BenchError(
                    f"{self.name} exited with {self.proc.returncode} before {tag}\n"
                    + self._stderr_tail()
                ) from None
            if line is None:
                raise BenchError(
                    f"{self.name}: no {tag} within {timeout} s\n{self._stderr_tail()}"
                )
            word, _, rest = line.decode().partition(" ")
            if word == "FAILED":
                raise BenchError(f"{self.name} failed: {rest}\n{self._stderr_tail()}")
            if word == tag:
                return json.loads(rest) if rest else None

    def say(self, line: str) -> None:
        """One line on the child's stdin."""
        self.write_line(line.encode())

    def ask_to_stop(self, sigterm: bool = False) -> None:
        """SIGTERM (the proxy) and stdin EOF (every child)."""
        if self.proc.poll() is None:
            try:
                if sigterm:
                    self.proc.send_signal(signal.SIGTERM)
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass

    def wait_stopped(self) -> None:
        """Wait for the child to exit; kill it after 10 s."""
        self.stop(sig=None, wait=10)


class Run:
    """The children of one measurement; all stopped on exit."""

    def __init__(self, bench: Bench, label: str) -> None:
        self.bench = bench
        self.label = label
        self.children: list[tuple[Child, bool]] = []
        self.dir = tempfile.mkdtemp(prefix=f"relay-{label}-", dir=bench.data_root)

    def spawn(
        self, name: str, core: int, *role_args: str, sigterm: bool = False
    ) -> Child:
        """Start a child on ``core`` (unpinned when taskset is missing)."""
        child = Child(
            name, core if self.bench.pinned else None, list(role_args), self.dir
        )
        self.children.append((child, sigterm))
        return child

    def child(
        self, name: str, core: int, role: str, job: str, **options: object
    ) -> Child:
        """:meth:`spawn` a child in ``role`` doing ``job``; each option
        ``some_name=value`` becomes ``--some-name value`` (``True``: the
        bare flag ``--some-name``)."""
        args = ["--role", role, "--job", job]
        for key, value in options.items():
            args.append("--" + key.replace("_", "-"))
            if value is not True:
                args.append(str(value))
        return self.spawn(name, core, *args)

    def proxy(self, *proxy_args: str) -> tuple[Child, int]:
        """Start the proxy on the proxy core; return it and its port."""
        data_dir = os.path.join(self.dir, "data")
        os.makedirs(data_dir)
        role = ["--role", "proxy", "--data-dir", data_dir]
        role += [f"--proxy-arg={a}" for a in proxy_args]
        if self.bench.profile_dir:
            self.bench.profile_count += 1
            name = f"proxy-{self.label}-{self.bench.profile_count}.prof"
            role += ["--profile", os.path.join(self.bench.profile_dir, name)]
        child = self.spawn("proxy", CORE_PROXY, *role, sigterm=True)
        self.data_dir = data_dir
        return child, child.expect("PORT")

    def children_cpu(self) -> float:
        """CPU seconds used so far by this run's children."""
        return sum(c.cpu_seconds() for c, _ in self.children if c.proc.poll() is None)

    def close(self) -> None:
        """Stop every child: all are asked first (a peer blocked on its
        socket exits once the other end is gone), then waited for."""
        for child, sigterm in self.children:
            child.ask_to_stop(sigterm)
        for child, _ in self.children:
            child.wait_stopped()
        if not self.bench.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Measure:
    """One run's figure: ``value`` in the figure's unit, and how busy the
    proxy-side core was (CPU seconds of the proxy-side process / wall)."""

    value: float
    busy: float = float("nan")


class Bench:
    """Runs the figures and prints them."""

    def __init__(
        self,
        sizes: Sizes,
        pinned: bool,
        data_root: str,
        profile_dir: str | None,
        keep: bool,
    ) -> None:
        self.sizes = sizes
        self.pinned = pinned
        self.data_root = data_root
        self.profile_dir = profile_dir
        self.profile_count = 0
        self.keep = keep
        #: CPU (in cores) used by other processes during each measurement.
        self.background: list[float] = []

    @contextmanager
    def run(self, label: str) -> Iterator[Run]:
        """A :class:`Run` whose children are stopped afterwards."""
        r = Run(self, label)
        self._current = r
        try:
            yield r
        finally:
            r.close()

    def _go(
        self, side: Child, go: Child, result_from: Child, also: Child | None = None
    ) -> tuple[dict[str, Any], float, float]:
        """Say GO to ``go``, wait for ``result_from``'s RESULT (and then for
        ``also``'s); return the first with the CPU seconds ``side`` used
        meanwhile and the wall time.  Also notes the CPU that processes
        other than this run's used meanwhile (:attr:`background`)."""
        run = self._current
        ours0 = run.children_cpu()
        busy0 = _machine_busy()
        c0, w0 = side.cpu_seconds(), time.monotonic()
        go.say("GO")
        result = result_from.expect("RESULT")
        if also is not None:
            result = {**result, **{"also": also.expect("RESULT")}}
        cpu, wall = side.cpu_seconds() - c0, time.monotonic() - w0
        other = (_machine_busy() - busy0) - (run.children_cpu() - ours0)
        self.background.append(max(0.0, other) / wall)
        return result, cpu, wall

    # -- figure 1: ping round trips --------------------------------------------

    def ping_proxy(self) -> Measure:
        s = self.sizes
        with self.run("ping-proxy") as r:
            proxy, port = r.proxy()
            peer = r.child(
                "peer",
                CORE_LOAD,
                "pyln",
                "pinger",
                listen=True,
                count=s.pings,
                warm=s.warm_pings,
            )
            info = peer.expect("PORT")
            client = r.child(
                "client",
                CORE_LOAD,
                "client",
                "hold",
                port=port,
                peer=f"{info['node']}:127.0.0.1:{info['port']}",
            )
            client.expect("READY")
            peer.expect("READY")
            res, cpu, wall = self._go(proxy, peer, peer)
            return Measure(res["n"] / (res["t1"] - res["t0"]), cpu / wall)

    def ping_reference(self) -> Measure:
        s = self.sizes
        with self.run("ping-ref") as r:
            server = r.child("ponger", CORE_PROXY, "pyln", "ponger", listen=True)
            info = server.expect("PORT")
            pinger = r.child(
                "pinger",
                CORE_LOAD,
                "pyln",
                "pinger",
                connect=f"127.0.0.1:{info['port']}:{info['node']}",
                count=s.pings,
                warm=s.warm_pings,
            )
            server.expect("READY")
            pinger.expect("READY")
            res, cpu, wall = self._go(server, pinger, pinger)
            return Measure(res["n"] / (res["t1"] - res["t0"]), cpu / wall)

    # -- figure 2: into the store ------------------------------------------------

    def store_proxy(self) -> Measure:
        n = self.sizes.store_messages
        with self.run("store-proxy") as r:
            proxy, port = r.proxy("--max-events-per-node", str(n + 1000))
            db = os.path.join(r.data_dir, "lnproxy.sqlite")
            peer = r.child(
                "peer", CORE_LOAD, "pyln", "blaster", listen=True, count=n, db=db
            )
            info = peer.expect("PORT")
            client = r.child(
                "client",
                CORE_LOAD,
                "client",
                "logout",
                port=port,
                peer=f"{info['node']}:127.0.0.1:{info['port']}",
            )
            client.expect("READY")
            peer.expect("READY")
            res, cpu, wall = self._go(proxy, peer, peer)
            if res["stored"] != n:
                raise BenchError(f"stored {res['stored']} events, expected {n}")
            return Measure(n / (res["t1"] - res["t0"]), cpu / wall)

    def store_reference(self) -> Measure:
        n = self.sizes.store_messages
        with self.run("store-ref") as r:
            recv = r.child(
                "receiver", CORE_PROXY, "pyln", "receiver", listen=True, count=n
            )
            info = recv.expect("PORT")
            blaster = r.child(
                "blaster",
                CORE_LOAD,
                "pyln",
                "blaster",
                connect=f"127.0.0.1:{info['port']}:{info['node']}",
                count=n,
            )
            recv.expect("READY")
            blaster.expect("READY")
            sent, cpu, wall = self._go(recv, blaster, blaster, also=recv)
            return Measure(n / (sent["also"]["t1"] - sent["t0"]), cpu / wall)

    # -- figure 3: peer -> proxy -> WebSocket client -------------------------------

    def to_client_proxy(self) -> Measure:
        n = self.sizes.ws_messages
        with self.run("toclient-proxy") as r:
            proxy, port = r.proxy()
            peer = r.child("peer", CORE_LOAD, "pyln", "blaster", listen=True, count=n)
            info = peer.expect("PORT")
            client = r.child(
                "client",
                CORE_LOAD,
                "client",
                "recv",
                port=port,
                count=n,
                peer=f"{info['node']}:127.0.0.1:{info['port']}",
            )
            client.expect("READY")
            peer.expect("READY")
            sent, cpu, wall = self._go(proxy, peer, peer, also=client)
            return Measure(n / (sent["also"]["t1"] - sent["t0"]), cpu / wall)

    def to_client_reference(self) -> Measure:
        return self._ws_reference(
            "toclient-ref", "stream", "ref-recv", self.sizes.ws_messages
        )

    def _ws_reference(
        self, label: str, server_job: str, client_job: str, n: int
    ) -> Measure:
        """Figures 3 and 4's reference: a bare Autobahn server and client
        moving ``n`` messages; the rate the client measured."""
        with self.run(label) as r:
            server = r.child("server", CORE_PROXY, "ws-server", server_job, count=n)
            port = server.expect("PORT")
            client = r.child(
                "client", CORE_LOAD, "client", client_job, port=port, count=n
            )
            client.expect("READY")
            res, cpu, wall = self._go(server, client, client)
            return Measure(n / (res["t1"] - res["t0"]), cpu / wall)

    # -- figure 4: client -> proxy -> peer -------------------------------------------

    def to_peer_proxy(self) -> Measure:
        n = self.sizes.sends
        with self.run("topeer-proxy") as r:
            proxy, port = r.proxy("--max-requests-per-second", "0")
            client = r.child("client", CORE_LOAD, "client", "send", port=port, count=n)
            client.expect("READY")
            res, cpu, wall = self._go(proxy, client, client)
            if res["errors"] or res["replies"] != n:
                raise BenchError(
                    f"send: {res['replies']} replies, {res['errors']} errors"
                )
            return Measure(n / (res["t1"] - res["t0"]), cpu / wall)

    def to_peer_reference(self) -> Measure:
        return self._ws_reference("topeer-ref", "count", "ref-send", self.sizes.sends)

    # -- figure 5: connection set-ups ------------------------------------------------

    def setup_proxy(self) -> Measure:
        n, warm = self.sizes.setups, 5
        with self.run("setup-proxy") as r:
            proxy, port = r.proxy("--max-connections-per-node", str(n + warm + 10))
            peer = r.child(
                "peer", CORE_LOAD, "pyln", "accept", listen=True, count=n + warm
            )
            info = peer.expect("PORT")
            client = r.child(
                "client",
                CORE_LOAD,
                "client",
                "setup",
                port=port,
                count=n,
                warm=warm,
                peer=f"{info['node']}:127.0.0.1:{info['port']}",
            )
            client.expect("READY")
            res, cpu, wall = self._go(proxy, client, client)
            peer.expect("RESULT")
            return Measure(statistics.mean(res["times"]) * 1000, cpu / wall)

    def setup_reference(self) -> Measure:
        n, warm = self.sizes.setups, 5
        with self.run("setup-ref") as r:
            server = r.child(
                "server", CORE_PROXY, "pyln", "accept", listen=True, count=n + warm
            )
            info = server.expect("PORT")
            client = r.child(
                "client",
                CORE_LOAD,
                "pyln",
                "connect",
                connect=f"127.0.0.1:{info['port']}:{info['node']}",
                count=n,
                warm=warm,
            )
            client.expect("READY")
            res, cpu, wall = self._go(server, client, client)
            server.expect("RESULT")
            return Measure(statistics.mean(res["times"]) * 1000, cpu / wall)


@dataclass(frozen=True)
class Figure:
    """One row of the final table."""

    number: int
    title: str
    unit: str
    proxy: Callable[[Bench], Measure]
    reference: Callable[[Bench], Measure]
    reference_name: str
    target: float
    #: True when a smaller value is better (milliseconds per set-up).
    lower_is_better: bool = False
    #: Printed under the figure (what is not default about the run).
    note: str = ""


FIGURES = [
    Figure(
        1,
        "ping round trips answered by the proxy",
        "round trips/s",
        Bench.ping_proxy,
        Bench.ping_reference,
        "pyln <-> pyln",
        0.9,
    ),
    Figure(
        2,
        "32-byte messages peer -> proxy store",
        "msgs/s",
        Bench.store_proxy,
        Bench.store_reference,
        "pyln -> pyln read_message",
        1.0,
    ),
    Figure(
        3,
        "peer -> proxy -> WebSocket client",
        "msgs/s",
        Bench.to_client_proxy,
        Bench.to_client_reference,
        "bare Autobahn server -> client",
        0.5,
    ),
    Figure(
        4,
        "client -> proxy -> peer (send)",
        "msgs/s",
        Bench.to_peer_proxy,
        Bench.to_peer_reference,
        "bare Autobahn client -> server",
        0.5,
        note=(
            "the proxy runs with --max-requests-per-second 0: its default "
            "(5000 requests/s per session, code 7 beyond) would cap one "
            "pipelining session at 5000 sends/s"
        ),
    ),
    Figure(
        5,
        "sequential connection set-ups",
        "ms each",
        Bench.setup_proxy,
        Bench.setup_reference,
        "pyln connect() direct",
        0.5,
        lower_is_better=True,
    ),
]

#: Figure 5's absolute target: milliseconds added per set-up.
ADDED_MS_TARGET = 2.0
#: A pair (proxy run, reference run) during which other processes used more
#: than this many cores is redone, within the time budget.
NOISY_CORES = 0.15
#: Seconds to wait, before each pair, for the machine to be quiet.
QUIET_WAIT = 3.0
#: Whole-run budgets in seconds (the issue asks for < 3 min and < 60 s).
FULL_BUDGET = 150.0
QUICK_BUDGET = 45.0


def _fsync_probe(directory: str, count: int = 5) -> float:
    """Median milliseconds of a 4 KiB write + fsync in ``directory``.

    The proxy fsyncs once per batch and once per connection set-up; other
    processes' disk traffic (which the CPU check cannot see) shows here.
    """
    fd, path = tempfile.mkstemp(prefix="relay-fsync-", dir=directory)
    times = []
    try:
        for _ in range(count):
            t = time.perf_counter()
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1000


def _wait_quiet(limit: float) -> float:
    """Wait up to ``limit`` seconds for other processes to use fewer than
    :data:`NOISY_CORES` cores; return the last load seen."""
    deadline = time.monotonic() + limit
    while True:
        b0, t0 = _machine_busy(), time.monotonic()
        time.sleep(0.2)
        load = (_machine_busy() - b0) / (time.monotonic() - t0)
        if load <= NOISY_CORES or time.monotonic() >= deadline:
            return load


def _machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _fmt(value: float, unit: str) -> str:
    if unit == "ms each":
        return f"{value:.2f} ms"
    return f"{value:,.0f}/s"


def _machine() -> list[str]:
    lines = []
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import cryptography

        crypto = cryptography.__version__
    except ImportError:
        crypto = "missing"
    lines.append(
        f"machine: {os.cpu_count()} cores ({model}); "
        f"Python {platform.python_version()}; "
        f"cryptography {crypto}"
    )
    return lines


def _fs_type(path: str) -> str:
    best, fstype = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if path.startswith(mount) and len(mount) > len(best):
                    best, fstype = mount, parts[2]
    except OSError:
        pass
    return fstype


def orchestrate(args: argparse.Namespace) -> int:
    """Run the chosen figures and print each, then the table."""
    started = time.monotonic()
    sizes = QUICK if args.quick else FULL
    pinned = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    data_root = os.path.abspath(args.data_root or tempfile.gettempdir())
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
    bench = Bench(sizes, pinned, data_root, args.profile, args.keep)
    chosen = [f for f in FIGURES if not args.figures or f.number in args.figures]

    print(f"lnproxy relay benchmark ({'quick' if args.quick else 'full'} mode)")
    for line in _machine():
        print(line)
    if pinned:
        print(
            "placement: proxy (and each reference's server side) on core "
            f"{CORE_PROXY}, "
            f"load generator on core {CORE_LOAD} (taskset)"
        )
    else:
        why = (
            "taskset is missing"
            if shutil.which("taskset") is None
            else "fewer than 2 cores"
        )
        print(f"placement: UNPINNED ({why}); figures swing between runs")
    print(
        f"data dirs under {data_root} ({_fs_type(data_root)}); "
        f"SQLite synchronous=FULL as in service"
    )
    print(
        f"runs per figure: {sizes.repeats} pairs ({sizes.ping_repeats} for figure 1), "
        "each a proxy run then its reference run; "
        f"a pair during which other processes used > {NOISY_CORES} cores is redone "
        "while time allows; medians shown; busy = CPU of the proxy-side process / wall"
    )
    print()

    rows = []
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    pair_seconds: dict[int, float] = {}
    for index, fig in enumerate(chosen):
        kept: list[tuple[Measure, Measure, float]] = []
        noisy: list[tuple[Measure, Measure, float]] = []
        attempts = 0
        fsyncs: list[float] = []
        repeats = sizes.ping_repeats if fig.number == 1 else sizes.repeats
        # An equal share of what is left of the budget for each figure left.
        share = (budget - (time.monotonic() - started)) / (len(chosen) - index)
        deadline = time.monotonic() + share
        while len(kept) < repeats and attempts < 3 * repeats:
            spare = deadline - time.monotonic() - pair_seconds.get(fig.number, 8.0)
            if attempts > 0 and spare < 0:
                break
            _wait_quiet(min(QUIET_WAIT, max(0.0, spare)))
            fsyncs.append(_fsync_probe(data_root))
            attempts += 1
            t0 = time.monotonic()
            first_bg = len(bench.background)
            pm = fig.proxy(bench)
            rm = fig.reference(bench)
            pair_seconds[fig.number] = time.monotonic() - t0
            bg = max(bench.background[first_bg:])
            (kept if bg <= NOISY_CORES else noisy).append((pm, rm, bg))
        used = kept or noisy
        proxy_runs = [u[0] for u in used]
        ref_runs = [u[1] for u in used]
        p = statistics.median(m.value for m in proxy_runs)
        ref = statistics.median(m.value for m in ref_runs)
        ratio = ref / p if fig.lower_is_better else p / ref
        met = ratio >= fig.target
        print(f"[{fig.number}] {fig.title} ({fig.unit})")
        if fig.note:
            print(f"    note: {fig.note}")
        print(
            "    lnproxy   "
            + ", ".join(
                f"{_fmt(m.value, fig.unit)} (busy {m.busy:.0%})" for m in proxy_runs
            )
        )
        print(
            f"    reference ({fig.reference_name}) "
            + ", ".join(
                f"{_fmt(m.value, fig.unit)} (busy {m.busy:.0%})" for m in ref_runs
            )
        )
        bgs = [u[2] for u in used]
        if not kept:
            note = (
                "ALL PAIRS NOISY: other processes kept the machine busy; "
                "figures are not trustworthy"
            )
        else:
            note = (
                f"{len(noisy)} pair(s) discarded (other processes used "
                f"> {NOISY_CORES} cores)"
                if noisy
                else "no pair discarded"
            )
            if len(kept) < repeats:
                note += (
                    f"; only {len(kept)} of {repeats} quiet pairs in the time budget"
                )
        print(
            f"    other processes used at most {max(bgs):.2f} cores during the pairs "
            f"shown; {note}"
        )
        if fig.number in (2, 5):
            print(
                "    a 4 KiB write + fsync in the data root took "
                f"{statistics.median(fsyncs):.2f} ms (median; max "
                f"{max(fsyncs):.2f} ms) before the pairs"
            )
        print(
            f"    => lnproxy {_fmt(p, fig.unit)}, reference {_fmt(ref, fig.unit)}, "
            f"ratio {ratio:.2f}x (target >= {fig.target}x): "
            f"{'met' if met else 'MISSED'}"
        )
        flag = "" if kept else " (noisy)"
        rows.append(
            (
                f"{fig.number}. {fig.title}{flag}",
                _fmt(p, fig.unit),
                _fmt(ref, fig.unit),
                f"{ratio:.2f}x",
                f">= {fig.target}x",
                "yes" if met else "NO",
            )
        )
        if fig.lower_is_better:
            added = p - ref
            ok = added < ADDED_MS_TARGET
            print(
                f"    => added per set-up: {added:.2f} ms "
                f"(target < {ADDED_MS_TARGET} ms): "
                f"{'met' if ok else 'MISSED'}"
            )
            rows.append(
                (
                    f"{fig.number}b. added per set-up{flag}",
                    f"{p:.2f} ms",
                    f"{ref:.2f} ms",
                    f"+{added:.2f} ms",
                    f"< {ADDED_MS_TARGET} ms",
                    "yes" if ok else "NO",
                )
            )
        sys.stdout.flush()

    print()
    header = ("figure", "lnproxy", "reference", "ratio", "target", "met?")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("-|-".join("-" * w for w in widths))
    print(f"\nwhole run: {time.monotonic() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments: orchestrator by default, a child with ``--role``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, smaller runs (< 60 s)")
    p.add_argument(
        "--figures",
        type=lambda s: [int(x) for x in s.split(",")],
        help="comma-separated figure numbers (default: all)",
    )
    p.add_argument("--profile", metavar="DIR", help="cProfile each proxy run into DIR")
    p.add_argument(
        "--data-root",
        metavar="DIR",
        help="where the proxy's data dirs go (default: the temp dir)",
    )
    p.add_argument("--keep", action="store_true", help="keep data dirs and child logs")
    # Child roles (internal).
    p.add_argument(
        "--role",
        choices=["proxy", "pyln", "client", "ws-server"],
        help=argparse.SUPPRESS,
    )
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--proxy-arg", action="append", help=argparse.SUPPRESS)
    p.add_argument("--listen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--connect", help=argparse.SUPPRESS)
    p.add_argument("--secret", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "proxy":
        role_proxy(args)
    elif args.role == "pyln":
        role_pyln(args)
    elif args.role == "client":
        role_client(args)
    elif args.role == "ws-server":
        role_ws_server(args)
    else:
        return orchestrate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
