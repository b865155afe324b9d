"""Hot-restart bench: handover time and the stall peers see.

Run from the repository root::

    python bench/handover.py [--sizes 1,100,1000] [--window 2]

A relay process (``tests/handover_relay.py``, the mechanics of
:mod:`lnproxy.handover` without lnproxy's own cipher work) holds N TCP
connections to a peer in this process.  ``--active`` of them (100, or all
if fewer) play ping-pong without pause: send a line, wait for its echo,
send the next; the others stay open and idle (a single Python peer playing
on 10,000 connections would measure itself).  The peer
records when each echo arrives; the *stall* is the longest gap between two
consecutive echoes on any connection within the measured window.

For each N, three windows in the same run, on the same connections:

- ``none``: no restart (the baseline: what a busy shared machine adds);
- ``takeover``: a new process started with ``--takeover`` takes over through
  the Unix socket channel (the window includes its interpreter start-up,
  but the old process keeps serving until the new one asks);
- ``systemd``: a restart through the fake service manager's file
  descriptor store: SIGTERM, store, exit, start the new process from
  ``LISTEN_FDS`` (here the stall includes the new process's whole
  start-up: nobody serves in between).

Figures: the stall (ms), the old side's freeze-to-commit time (ms), the
new side's request-to-adopted time (ms; takeover only), and the messages
answered; medians over ``--repeat`` runs (3) as a shared machine is
noisy.  Every line must be answered exactly once, in order, with no EOF
(checked, else the run fails).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task  # noqa: E402

from lnproxy.testing_systemd import FakeServiceManager  # noqa: E402
from tests.handover_support import RELAY, Child, Peers, spawn  # noqa: E402

R: Any = reactor


def sleep(seconds: float) -> defer.Deferred[None]:
    """A reactor-friendly sleep."""
    return task.deferLater(R, seconds, lambda: None)


@defer.inlineCallbacks
def wait(predicate: Any, timeout: float = 60.0, what: str = "") -> Any:
    """Poll until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what or predicate}")
        yield sleep(0.01)


def stall(peers: Peers, start: float, end: float) -> float:
    """The longest gap between consecutive echoes ending in [start, end]."""
    worst = 0.0
    for c in peers.connections:
        times = c.echo_times
        previous = None
        for t in times:
            if previous is not None and start <= t <= end:
                worst = max(worst, t - previous)
            previous = t
    return worst


def answered(peers: Peers) -> int:
    """Echoes received so far over all connections."""
    return sum(len(c.echoes) for c in peers.connections)


@defer.inlineCallbacks
def start_relay(
    peers: Peers,
    port: int,
    n: int,
    workdir: str,
    manager: FakeServiceManager | None,
    active: int,
) -> Any:
    """A fresh relay with n connections, ping-pong started on ``active``."""
    args = ["--dir", workdir, "--peer-port", str(port), "--count", str(n)]
    args += ["--tick", "0"]
    if manager is None:
        child = spawn(args)
    else:
        argv, env, fds = manager.command([sys.executable, RELAY, *args])
        child = spawn(argv, env=env, fds=fds, full_argv=True)
        manager.main_pid = child.pid
    yield wait(lambda: child.line("serving") is not None)
    yield wait(lambda: len(peers.connections) == n, 300)
    for c in peers.connections[:active]:
        c.send_next()
    return child


@defer.inlineCallbacks
def run_size(n: int, window: float, workdir: str, modes: list[str], active: int) -> Any:
    """The three windows for one N; a dict of figures."""
    results: dict[str, Any] = {"n": n, "systemd": 0.0, "systemd_wall": 0.0}
    for mode in modes:
        peers = Peers(ping_pong=True)
        port = peers.listen()
        d = os.path.join(workdir, f"{n}-{mode}")
        os.makedirs(d, mode=0o700, exist_ok=True)
        manager = FakeServiceManager() if mode == "systemd" else None
        children: list[Child] = []
        try:
            old = yield start_relay(peers, port, n, d, manager, active)
            children.append(old)
            yield sleep(0.5)
            if mode == modes[0]:
                t0 = R.seconds()
                yield sleep(window)
                results["none"] = stall(peers, t0, R.seconds())
                results["none_rate"] = answered(peers) / window
            t0 = R.seconds()
            if mode == "takeover":
                new = spawn(["--dir", d, "--takeover", "--tick", "0"])
                children.append(new)
                yield old.ended
            else:
                assert manager is not None
                old.kill("TERM")
                yield old.ended
                argv, env, fds = manager.command(
                    [sys.executable, RELAY, "--dir", d, "--tick", "0"]
                )
                new = spawn(argv, env=env, fds=fds, full_argv=True)
                manager.main_pid = new.pid
                children.append(new)
            yield wait(
                lambda new=new: new.line("serving") is not None,
                what=f"the new process to serve: {new.lines} {new.err[-500:]!r}",
            )
            took = R.seconds() - t0
            yield sleep(window)
            results[mode] = stall(peers, t0, R.seconds())
            results[f"{mode}_wall"] = took
            committed = old.line("committed")
            if committed is not None:
                results[f"{mode}_freeze"] = float(committed.split()[2])
            adopted = new.line("takeover-seconds")
            if adopted is not None:
                results[f"{mode}_new"] = float(adopted.split()[1])
            if old.status != 0:
                raise RuntimeError(f"old process exited {old.status}: {old.err!r}")
            for c in peers.connections:
                c.peers.ping_pong = False
            yield wait(peers.all_answered, 30, "every answer")
            problems = peers.problems()
            if problems:
                raise RuntimeError(f"{mode} N={n}: {problems[:5]}")
            if len(peers.connections) != n:
                raise RuntimeError(
                    f"{mode} N={n}: {len(peers.connections)} connections"
                )
            results[f"{mode}_answered"] = answered(peers)
        finally:
            for child in children:
                child.kill()
            for child in children:
                if child.status is None:
                    yield child.ended
            yield peers.close()
            if manager is not None:
                manager.close()
    return results


@defer.inlineCallbacks
def main(reactor_: Any, args: argparse.Namespace) -> Any:
    """Every size, then the table."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="lnproxy-handover-") as workdir:
        for n in args.sizes:
            runs = []
            for i in range(args.repeat):
                run = yield run_size(
                    n,
                    args.window,
                    os.path.join(workdir, str(i)),
                    args.modes,
                    args.active,
                )
                runs.append(run)
            rows.append(
                {
                    key: statistics.median(r.get(key, 0.0) for r in runs)
                    for key in runs[0]
                }
            )
            print(f"N={n} done ({args.repeat} runs)", flush=True)
    ms = lambda x: f"{1000 * x:8.1f}"  # noqa: E731
    print()
    print(
        "     N | stall none | stall takeover | stall systemd |"
        " freeze->commit | new: ask->adopted | restart wall (systemd)"
    )
    for r in rows:
        print(
            f"{r['n']:6d} | {ms(r['none'])} ms | {ms(r['takeover'])} ms    |"
            f" {ms(r['systemd'])} ms   | {ms(r.get('takeover_freeze', 0))} ms    |"
            f" {ms(r.get('takeover_new', 0))} ms       | {ms(r['systemd_wall'])} ms"
        )
    print()
    print(
        f"medians of {args.repeat} runs; {args.active} connections active;"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "every line answered exactly once and in order, no EOF, on every"
        " connection, in every window"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 1000]
    )
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument(
        "--modes",
        type=lambda s: s.split(","),
        default=["takeover", "systemd"],
        help="takeover (always measures no-restart too), systemd",
    )
    parser.add_argument(
        "--active",
        type=int,
        default=100,
        help="connections playing request/response (the others stay open, idle)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per N (median)")
    task.react(main, [parser.parse_args()])
