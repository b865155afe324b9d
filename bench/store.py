"""Micro-benchmark of lnproxy.store: the cost of storing one event.

Every event is committed before it is sent, on the reactor thread, so the
commit cost bounds how many events per second one proxy can take. This
measures ``Store.append_events`` with one event per transaction and with
batches of 10 and 100, under ``synchronous=FULL`` (what the service uses:
one fsync per commit) and ``NORMAL`` (no fsync per commit in WAL mode; a
power cut may lose the newest commits), and prints microseconds per event
and events per second.

Run from the repository root::

    python bench/store.py [--dir DIR]

``--dir`` picks where the temporary data dirs go; use the disk that will hold
the real data dir, since tmpfs or a RAM-backed disk makes fsync free. A few
thousand events in all; each case stops early after a few seconds on a slow
disk.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time

# Make ``lnproxy`` importable when run as ``python bench/store.py``.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lnproxy.store import EventRow, Store  # noqa: E402

#: (events per transaction, events in total) for each case.
CASES = [(1, 300), (10, 1000), (100, 2000)]
SYNCHRONOUS = ["FULL", "NORMAL"]
#: Seconds after which a case stops (keeps the run bounded on slow disks).
CASE_TIME_CAP = 4.0

NODE = "02" + "ab" * 32
PEER = "03" + "cd" * 32


def make_batches(batch: int, total: int) -> list[list[EventRow]]:
    """Build the events up front so that only storing them is timed.

    :param batch: events per transaction.
    :param total: events in all (a multiple of ``batch``).
    :return: the batches, seqs 1..total.
    """
    rows = []
    for seq in range(1, total + 1):
        at = 1700000000.0 + seq / 1000
        # A typical channel message: about 150 bytes of payload as hex.
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
        rows.append(EventRow(NODE, seq, "message", True, at, params))
    return [rows[i : i + batch] for i in range(0, total, batch)]


def run_case(
    parent: str, synchronous: str, batch: int, total: int
) -> tuple[int, float]:
    """Store ``total`` events in batches in a fresh data dir.

    :param parent: directory for the temporary data dir.
    :param synchronous: ``"FULL"`` or ``"NORMAL"``.
    :param batch: events per transaction.
    :param total: events to store.
    :return: events stored and seconds spent.
    """
    batches = make_batches(batch, total)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        store = Store.open(os.path.join(tmp, "data"), synchronous=synchronous)
        try:
            done = 0
            start = time.perf_counter()
            for rows in batches:
                store.append_events(rows)
                done += len(rows)
                if time.perf_counter() - start > CASE_TIME_CAP:
                    break
            elapsed = time.perf_counter() - start
        finally:
            store.close()
    return done, elapsed


def filesystem_of(path: str) -> str:
    """Return the filesystem type holding ``path`` (Linux), or "unknown"."""
    path = os.path.realpath(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                mount_point = fields[1]
                inside = path == mount_point or path.startswith(
                    mount_point.rstrip("/") + "/"
                )
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, fields[2]
    except OSError:
        pass
    return fstype


def main(argv: list[str] | None = None) -> int:
    """Run every case and print one line per case.

    :param argv: command line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir",
        default=tempfile.gettempdir(),
        help="where to create the temporary data dirs (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    print(
        f"lnproxy store benchmark: SQLite {sqlite3.sqlite_version}, "
        f"Python {sys.version.split()[0]}"
    )
    print(f"data dirs under {args.dir} ({filesystem_of(args.dir)})")
    print(
        f"{'synchronous':<12}{'batch':>6}{'events':>8}{'us/event':>11}{'events/s':>10}"
    )
    for synchronous in SYNCHRONOUS:
        for batch, total in CASES:
            done, elapsed = run_case(args.dir, synchronous, batch, total)
            per_event = elapsed / done
            print(
                f"{synchronous:<12}{batch:>6}{done:>8}"
                f"{per_event * 1e6:>11.1f}{1 / per_event:>10.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
