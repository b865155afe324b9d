"""Benchmarks of the PostgreSQL deployment against SQLite, in the same run.

Run from the repository root (PostgreSQL server binaries needed, or set
``LNPROXY_TEST_POSTGRES``)::

    python bench/postgres.py [--only store,e2e,failover,redirect] [--quick]

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
    executors = [DatabaseExecutor(Reactor(), s) for s in stores]  # type: ignore[arg-type]
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


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="store,e2e,failover,redirect")
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
        for name in ("e2e", "failover", "redirect"):
            if name in sections:
                fn = globals().get(f"section_{name}")
                if fn is None:
                    print(f"\n## {name}: not available in this version\n")
                else:
                    fn(args, pg)
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
