"""Benchmarks of the PostgreSQL deployment against SQLite, in the same run.

Run from the repository root (PostgreSQL server binaries needed, or set
``LNPROXY_TEST_POSTGRES``)::

    python bench/postgres.py [--only store,e2e,failover,redirect,takeover]
        [--quick]

Sections (figures go into docs/performance.md, "Several processes on
PostgreSQL"):

- ``store``: events per second *committed* the way the journal commits
  them (one batch in flight, the next batch gathered meanwhile), SQLite
  inline on the calling thread (``synchronous=FULL``) against PostgreSQL
  through the database executor (``fsync=on``, ``synchronous_commit=on``),
  batches of 1, 10 and 100 events, then two PostgreSQL writers (two
  processes' worth of executors, disjoint nodes) together;
- ``e2e``: events per second committed *and delivered*: real ``twistd
  lnproxy`` processes, a local peer that sends messages as fast as the
  proxy reads them, a WebSocket client that receives and acknowledges them;
  SQLite, one PostgreSQL process, two PostgreSQL processes (a node on each);
- ``failover``: seconds from ``kill -9`` of a process that serves N nodes
  with one open peer link each until a survivor has written every closed
  event (``--lease-timeout 3``);
- ``takeover``: the database side of a failover alone: seconds for one
  survivor to take 1,000 and 10,000 nodes over (chunks of 200);
- ``redirect``: the time of a login at the owner against a login at
  another process (code 9, reconnect to the owner, login again).

The PostgreSQL server is a throwaway cluster (lnproxy.testing_postgres)
with fsync on, on the same disk as the SQLite data dirs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any

# Make ``lnproxy`` importable when run as ``python bench/postgres.py``.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lnproxy.store import KEY_FILE, EventRow, SqliteStore  # noqa: E402
from lnproxy.store.postgres import PostgresStore  # noqa: E402
from lnproxy.testing_postgres import TemporaryPostgres  # noqa: E402

PEER = "03" + "cd" * 32


def node(i: int) -> str:
    """A node id."""
    return "02" + f"{i:064x}"


def make_rows(node_id: str, first: int, count: int) -> list[EventRow]:
    """``count`` message events of one node from seq ``first`` (about 150
    bytes of payload, like a channel message)."""
    rows = []
    for seq in range(first, first + count):
        at = 1700000000.0 + seq / 1000
        params = json.dumps(
            {
                "seq": seq,
                "at": at,
                "conn": "c0ffee",
                "peer": PEER,
                "type": 132,
                "msg": "00" * 150,
                "summon": True,
            }
        )
        rows.append(EventRow(node_id, seq, "message", True, at, params))
    return rows


def sqlite_rate(parent: str, batch: int, seconds: float, nodes: int = 10) -> float:
    """Events/s committed by SqliteStore, ``batch`` events per commit,
    spread over ``nodes`` nodes, for about ``seconds``."""
    data_dir = tempfile.mkdtemp(dir=parent)
    store = SqliteStore.open(data_dir)
    seqs = dict.fromkeys(range(nodes), 1)
    done = 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            rows: list[EventRow] = []
            for k in range(batch):
                i = k % nodes
                rows.extend(make_rows(node(i), seqs[i], 1))
                seqs[i] += 1
            with store.transaction():
                store.append_events(rows)
            done += batch
    finally:
        store.close()
    return done / (time.perf_counter() - start)


def postgres_rate(
    url: str, key_path: str, batch: int, seconds: float, writers: int = 1
) -> float:
    """Events/s committed through DatabaseExecutor-style writer threads:
    ``writers`` independent stores (as many processes), each committing
    ``batch`` events per group, one group in flight per writer."""
    from twisted.internet import defer

    from lnproxy.store.executor import DatabaseExecutor

    class Reactor:
        """callFromThread on a thread: deliver at once (no reactor here)."""

        def callFromThread(self, fn: Any, *args: Any, **kw: Any) -> None:
            fn(*args, **kw)

    counts = [0] * writers
    stop_at = time.perf_counter() + seconds
    finished = threading.Event()
    alive = [writers]
    lock = threading.Lock()
    stores = [PostgresStore.open(url, key_path=key_path) for _ in range(writers)]
    executors = [
        DatabaseExecutor(Reactor(), s)  # type: ignore[arg-type]
        for s in stores
    ]
    for ex in executors:
        ex.start()

    def run(w: int) -> None:
        ex = executors[w]
        base = 1000 * (w + 1)
        seqs = dict.fromkeys(range(10), 1)

        def next_group(_: object = None) -> None:
            if time.perf_counter() >= stop_at:
                with lock:
                    alive[0] -= 1
                    if alive[0] == 0:
                        finished.set()
                return
            rows: list[EventRow] = []
            for k in range(batch):
                i = k % 10
                rows.extend(make_rows(node(base + i), seqs[i], 1))
                seqs[i] += 1

            def commit(s: PostgresStore) -> None:
                s.append_events(rows)

            d: defer.Deferred[None] = ex.write(commit)

            def ok(_: object) -> None:
                counts[w] += batch
                next_group()

            d.addCallbacks(ok, lambda f: print("commit failed:", f.getErrorMessage()))

        next_group()

    start = time.perf_counter()
    for w in range(writers):
        run(w)
    finished.wait(seconds + 30)
    elapsed = time.perf_counter() - start
    for ex in executors:
        ex.stop()
    for ex in executors:
        for t in ex._threads:
            t.join(5)
    for s in stores:
        s.close()
    return sum(counts) / elapsed


def section_store(args: argparse.Namespace, pg: TemporaryPostgres) -> None:
    """Commit rates, SQLite against PostgreSQL."""
    seconds = 1.0 if args.quick else 3.0
    key_dir = tempfile.mkdtemp()
    key_path = os.path.join(key_dir, KEY_FILE)
    print("\n## store: events/s committed (one group in flight)\n")
    print("| events per commit | SQLite FULL | PostgreSQL, 1 writer | ratio | "
          "PostgreSQL, 2 writers | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(dir=args.dir) as parent:
        for batch in (1, 10, 100):
            lite = sqlite_rate(parent, batch, seconds)
            one = postgres_rate(pg.create_database(), key_path, batch, seconds, 1)
            two = postgres_rate(pg.create_database(), key_path, batch, seconds, 2)
            print(
                f"| {batch} | {lite:,.0f}/s | {one:,.0f}/s | {one / lite:.2f}x | "
                f"{two:,.0f}/s | {two / lite:.2f}x |",
                flush=True,
            )


def section_takeover(args: argparse.Namespace, pg: TemporaryPostgres) -> None:
    """The database side of a failover: seconds for one survivor to take N
    nodes over (``take_over`` in chunks of 200, as the lease keeper does),
    each node with one unclosed connection, a webhook, a pending summon
    and a peer storage blob."""
    from lnproxy.leases import TAKE_OVER_CHUNK
    from lnproxy.store import ConnectionRow, WebhookRow

    key_dir = tempfile.mkdtemp()
    key_path = os.path.join(key_dir, KEY_FILE)
    print("\n## take-over: seconds for one survivor to claim N nodes\n")
    print("| nodes | seconds | nodes/s |")
    print("| --- | --- | --- |")
    for count in (1000,) if args.quick else (1000, 10000):
        url = pg.create_database()
        dead = PostgresStore.open(url, key_path=key_path)
        alive = PostgresStore.open(url, key_path=key_path)
        try:
            dead.register("ws://127.0.0.1:1", 15)
            alive.register("ws://127.0.0.1:2", 15)
            ids = [node(i) for i in range(count)]
            with dead.transaction():
                for i, n in enumerate(ids):
                    dead.claim(n)
                    dead.append_events(make_rows(n, 1, 1))
                    dead.put_connection(
                        ConnectionRow(
                            f"c{i}", n, PEER, "127.0.0.1:9735", True, 1.0, "open", ""
                        )
                    )
                    dead.add_webhook(WebhookRow(n, "w", "http://127.0.0.1:1/", 1.0))
                    dead.put_peer_storage(n, PEER, b"\x00" * 64, 1.0)
            dead.unregister()
            t = time.perf_counter()
            taken = 0
            while True:
                claims = alive.take_over(TAKE_OVER_CHUNK)
                taken += len(claims)
                if len(claims) < TAKE_OVER_CHUNK:
                    break
            took = time.perf_counter() - t
            assert taken == count, (taken, count)
            print(f"| {count:,} | {took:.2f} | {count / took:,.0f} |", flush=True)
        finally:
            dead.close()
            alive.close()


# -- the twistd sections ----------------------------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; "
    "sys.argv[0] = 'twistd'; sys.exit(run())"
)


class Proxies:
    """``twistd -n lnproxy`` children of one run (killed at the end)."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.children: list[Any] = []

    def spawn(self, port: int, *options: str) -> Any:
        """Start one child listening on ``port``; return its process."""
        import subprocess

        log = open(os.path.join(self.work, f"twistd-{port}.log"), "wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "lnproxy",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--data-dir",
                os.path.join(self.work, f"data-{port}"),
                "--max-requests-per-second",
                "0",
                *options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=REPO),
            cwd=self.work,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.children.append(proc)
        return proc

    def stop_all(self) -> None:
        """Kill every child still running."""
        for proc in self.children:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def pg_options(url: str, port: int, key: str, lease: float = 15.0) -> list[str]:
    """The scale-out options of one child."""
    return [
        "--database",
        url,
        "--public-url",
        f"ws://127.0.0.1:{port}",
        "--server-key",
        key,
        "--lease-timeout",
        str(lease),
    ]


def run_twisted(args: argparse.Namespace, pg: TemporaryPostgres) -> None:
    """Run the reactor-based sections (one reactor run for all)."""
    from twisted.internet import task

    sections = set(args.only.split(","))

    def go(reactor: Any) -> Any:
        return _twisted_sections(reactor, args, pg, sections)

    try:
        task.react(go)
    except SystemExit as e:
        if e.code:
            raise


def _twisted_sections(
    reactor: Any, args: argparse.Namespace, pg: TemporaryPostgres, sections: set[str]
) -> Any:
    from twisted.internet import defer

    @defer.inlineCallbacks
    def run() -> Any:
        if "e2e" in sections:
            yield section_e2e(reactor, args, pg)
        if "redirect" in sections:
            yield section_redirect(reactor, args, pg)
        if "failover" in sections:
            yield section_failover(reactor, args, pg)

    return run()


def _helpers() -> Any:
    """The test harness's client pieces (a WebSocket JSON-RPC client, the
    client side of the split handshake)."""
    from tests import harness

    return harness


def _sleep(reactor: Any, seconds: float) -> Any:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


def _wait_port(reactor: Any, port: int, timeout: float = 30.0) -> Any:
    """Wait until something listens on 127.0.0.1:port."""
    import socket as socket_module

    from twisted.internet import defer

    @defer.inlineCallbacks
    def poll() -> Any:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with socket_module.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            yield _sleep(reactor, 0.1)
        raise RuntimeError(f"nothing listens on port {port} after {timeout} s")

    return poll()


def _connect(reactor: Any, port: int) -> Any:
    """A WebSocket client of the harness, connected to ``port``."""
    from autobahn.twisted.websocket import WebSocketClientFactory
    from twisted.internet.endpoints import TCP4ClientEndpoint

    h = _helpers()
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}/", protocols=["lnproxy.v1"]
    )
    factory.protocol = h.WsClient
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)


def _relay(reactor: Any, ports: list[int], count: int) -> Any:
    """One node per port: a client logs in there and opens one link to a
    local peer; each peer sends ``count`` messages as fast as the proxy
    reads them; the clients ack as they go. Returns events/s committed and
    delivered, all nodes together (first send to last event)."""
    from twisted.internet import defer, task

    from lnproxy.localpeer import LocalPeerFactory

    @defer.inlineCallbacks
    def run() -> Any:
        peer = LocalPeerFactory()
        listening = reactor.listenTCP(0, peer, interface="127.0.0.1")
        peer_port = listening.getHost().port
        clients = []
        for port in ports:
            client = yield _connect(reactor, port)
            yield client.login(os.urandom(32))
            yield client.open_peer(peer, peer_port)
            clients.append(client)
        while len(peer.connections) < len(ports) or any(
            len(c.events) < 1 for c in clients
        ):
            yield _sleep(reactor, 0.01)
        for c in clients:
            yield c.call("ack", seq=1)
            c.events.clear()
            c.frames.clear()

        def ack_all() -> None:
            for c in clients:
                if c.events:
                    c.call("ack", seq=c.events[-1]["params"]["seq"]).addErrback(
                        lambda _: None
                    )

        acker = task.LoopingCall(ack_all)
        acker.start(0.05, now=False)
        body = bytes.fromhex("0080") + os.urandom(98)
        start = time.perf_counter()
        for link in peer.connections:
            for _ in range(count):
                link.send(body)
        while any(len(c.events) < count for c in clients):
            yield _sleep(reactor, 0.005)
        elapsed = time.perf_counter() - start
        acker.stop()
        for c in clients:
            c.dropConnection(abort=True)
        for link in list(peer.connections):
            link.transport.abortConnection()
        yield listening.stopListening()
        return count * len(ports) / elapsed

    return run()


def section_e2e(reactor: Any, args: argparse.Namespace, pg: TemporaryPostgres) -> Any:
    """Committed and delivered: SQLite, PostgreSQL x1, PostgreSQL x2."""
    from twisted.internet import defer

    from tests.harness import free_port

    count = 3000 if args.quick else 10000
    rounds = 1 if args.quick else 3

    @defer.inlineCallbacks
    def run() -> Any:
        work = tempfile.mkdtemp(prefix="lnproxy-bench-")
        key = os.path.join(work, KEY_FILE)
        print("\n## e2e: events/s committed and delivered "
              f"({count} messages of 100 bytes per node, median of {rounds})\n")
        results: dict[str, list[float]] = {"sqlite": [], "pg1": [], "pg2": []}
        for _ in range(rounds):
            procs = Proxies(work)
            try:
                p = free_port()
                procs.spawn(p, "--server-key", key)
                yield _wait_port(reactor, p)
                results["sqlite"].append((yield _relay(reactor, [p], count)))
                procs.stop_all()
                url = pg.create_database()
                p1 = free_port()
                procs.spawn(p1, *pg_options(url, p1, key))
                yield _wait_port(reactor, p1)
                results["pg1"].append((yield _relay(reactor, [p1], count)))
                p2 = free_port()
                procs.spawn(p2, *pg_options(url, p2, key))
                yield _wait_port(reactor, p2)
                results["pg2"].append((yield _relay(reactor, [p1, p2], count)))
            finally:
                procs.stop_all()
        med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
        print("| setup | events/s | vs SQLite | all runs |")
        print("| --- | --- | --- | --- |")
        for name, label in (
            ("sqlite", "SQLite, one process, one node"),
            ("pg1", "PostgreSQL, one process, one node"),
            ("pg2", "PostgreSQL, two processes, a node on each"),
        ):
            runs = ", ".join(f"{r:,.0f}" for r in results[name])
            print(
                f"| {label} | {med[name]:,.0f} | {med[name] / med['sqlite']:.2f}x "
                f"| {runs} |",
                flush=True,
            )

    return run()


def section_redirect(
    reactor: Any, args: argparse.Namespace, pg: TemporaryPostgres
) -> Any:
    """Login at the owner against login elsewhere + redirect + login."""
    from twisted.internet import defer

    from tests.harness import free_port

    n = 20 if args.quick else 60

    @defer.inlineCallbacks
    def login_at(port: int, secret: bytes) -> Any:
        client = yield _connect(reactor, port)
        try:
            yield client.login(secret)
        except Exception as e:
            code = getattr(e, "code", None)
            if code != 9:
                raise
            reply = [f for f in client.frames if "error" in f][-1]
            url = reply["error"]["data"]["url"]
            client.dropConnection(abort=True)
            client = yield _connect(reactor, int(url.rsplit(":", 1)[1]))
            yield client.login(secret)
        client.dropConnection(abort=True)

    @defer.inlineCallbacks
    def run() -> Any:
        work = tempfile.mkdtemp(prefix="lnproxy-bench-")
        key = os.path.join(work, KEY_FILE)
        url = pg.create_database()
        procs = Proxies(work)
        try:
            p1, p2 = free_port(), free_port()
            procs.spawn(p1, *pg_options(url, p1, key))
            procs.spawn(p2, *pg_options(url, p2, key))
            yield _wait_port(reactor, p1)
            yield _wait_port(reactor, p2)
            secret = os.urandom(32)
            yield login_at(p1, secret)  # p1 owns the node now
            direct, redirected = [], []
            for _ in range(n):
                t = time.perf_counter()
                yield login_at(p1, secret)
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                yield login_at(p2, secret)
                redirected.append(time.perf_counter() - t)
        finally:
            procs.stop_all()
        d = sorted(direct)[n // 2] * 1000
        r = sorted(redirected)[n // 2] * 1000
        print(f"\n## redirect: connect + hello + login, median of {n}\n")
        print("| login | ms |")
        print("| --- | --- |")
        print(f"| at the owner | {d:.1f} |")
        print(f"| at another process (code 9, then at the owner) | {r:.1f} |")
        print(f"| cost of the redirect | {r - d:.1f} |", flush=True)

    return run()


def section_failover(
    reactor: Any, args: argparse.Namespace, pg: TemporaryPostgres
) -> Any:
    """kill -9 of a process with N open links: time until a survivor has
    written every closed event."""
    import signal

    from twisted.internet import defer

    from lnproxy.localpeer import LocalPeerFactory
    from tests.harness import free_port

    links = args.links
    per_node = 10
    lease = 3.0

    @defer.inlineCallbacks
    def run() -> Any:
        import psycopg

        work = tempfile.mkdtemp(prefix="lnproxy-bench-")
        key = os.path.join(work, KEY_FILE)
        url = pg.create_database()
        procs = Proxies(work)
        peer = LocalPeerFactory()
        listening = reactor.listenTCP(0, peer, interface="127.0.0.1")
        peer_port = listening.getHost().port
        try:
            p1, p2 = free_port(), free_port()
            dead = procs.spawn(p1, *pg_options(url, p1, key, lease))
            procs.spawn(p2, *pg_options(url, p2, key, lease))
            yield _wait_port(reactor, p1)
            yield _wait_port(reactor, p2)
            t = time.perf_counter()
            clients = []
            for _ in range(links // per_node):
                client = yield _connect(reactor, p1)
                yield client.login(os.urandom(32))
                opens = [
                    client.open_peer(peer, peer_port, persist=True)
                    for _ in range(per_node)
                ]
                yield defer.gatherResults(opens)
                clients.append(client)
            setup = time.perf_counter() - t
            with psycopg.connect(url, autocommit=True) as conn:
                (opened,) = conn.execute(
                    "SELECT count(*) FROM connections WHERE state <> 'closed'"
                ).fetchone()
            for c in clients:
                c.dropConnection(abort=True)
            dead.send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            closed = 0
            with psycopg.connect(url, autocommit=True) as conn:
                while time.perf_counter() - killed < lease + 60:
                    (closed,) = conn.execute(
                        "SELECT count(*) FROM events WHERE kind = 'closed'"
                    ).fetchone()
                    if closed >= opened:
                        break
                    yield _sleep(reactor, 0.05)
            took = time.perf_counter() - killed
        finally:
            procs.stop_all()
            yield listening.stopListening()
        print(f"\n## failover after kill -9 (--lease-timeout {lease:g})\n")
        print("| open links on the dead process | nodes | closed events written |"
              " seconds after kill -9 | target |")
        print("| --- | --- | --- | --- | --- |")
        print(
            f"| {opened} | {links // per_node} | {closed} | {took:.2f} | "
            f"<= {lease + 5:g} |"
        )
        print(f"(set-up of the links took {setup:.1f} s)", flush=True)

    return run()


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="store,e2e,failover,redirect,takeover")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", default=None, help="where the data dirs go")
    parser.add_argument("--links", type=int, default=1000, help="failover links")
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))
    pg = TemporaryPostgres(fsync=True)
    pg.start()
    try:
        if "store" in sections:
            section_store(args, pg)
        if "takeover" in sections:
            section_takeover(args, pg)
        if sections & {"e2e", "failover", "redirect"}:
            run_twisted(args, pg)
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
