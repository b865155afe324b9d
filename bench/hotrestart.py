"""Hot restart of the real proxy: the stall peers see, and the handover time.

Run from the repository root::

    python bench/hotrestart.py [--sizes 1,100,1000,10000] [--window 3]

For each N: a ``twistd -n lnproxy`` child, one logged-in client (this
process) that opens N peer connections (the whole split handshake) to a
BOLT 8 responder in this process (:class:`lnproxy.testing.ResponderFactory`).
Up to 100 of them ping without pause (send a ping, wait for the proxy's
pong, send the next); the *stall* is the longest gap between two pongs on
any of them within a window.  Two windows on the same connections, in the
same run: ``none`` (no restart: what the machine adds by itself) and
``takeover`` (``twistd -n lnproxy --takeover`` started on the same data dir;
the window runs until the old process has exited and one more second).
A third window, ``fd store`` (N up to a third of RLIMIT_NOFILE: the fake
service manager in this process holds a copy of every socket): a process
started under :class:`lnproxy.testing_systemd.FakeServiceManager` takes
over (not measured), then gets SIGTERM, stores everything and exits, and
the next process starts from ``LISTEN_FDS``: nobody serves in between, so
this stall is the new process's start-up.
The old process logs how long peers were not read (freeze to commit), the
new one how long from its request to every socket adopted; both are
reported.  Every peer connection must stay up (checked).  RLIMIT_NOFILE is
raised to the hard limit (children inherit it).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor, task  # noqa: E402

from lnproxy import wire  # noqa: E402
from lnproxy.testing import (  # noqa: E402
    ResponderFactory,
    ResponderPeer,
    TwistdProcess,
    connect_rpc,
    free_port,
    twistd_command,
)
from lnproxy.testing_systemd import FakeServiceManager  # noqa: E402

R: Any = reactor
ACTIVE = 100
VERBOSE = False
PROFILE = ""
SYSTEMD = True
ARGS = (
    "--max-connections-per-node", "20000",
    "--max-handshakes-per-node", "256",
    "--max-handshakes", "4096",
    "--max-events-per-node", "10000000",
    "--keepalive", "600",
    "--max-requests-per-second", "0",
)


def sleep(seconds: float) -> defer.Deferred[None]:
    """A reactor-friendly sleep."""
    return task.deferLater(R, seconds, lambda: None)


class Pinger:
    """Continuous ping-pong on the active connections; gaps between pongs."""

    def __init__(self, factory: ResponderFactory) -> None:
        self.active: list[ResponderPeer] = []
        self.last: dict[int, float] = {}
        self.max_gap = 0.0
        self.pongs = 0
        factory.on_message.append(self.message)

    def start(self, peers: list[ResponderPeer]) -> None:
        """Start pinging on ``peers``."""
        self.active = peers
        now = time.monotonic()
        for p in peers:
            self.last[id(p)] = now
            p.send(wire.Ping(4, b"").encode())

    def gap(self) -> float:
        """The longest gap so far, counting the open one of a connection
        still waiting for its pong."""
        now = time.monotonic()
        return max([self.max_gap, *(now - t for t in self.last.values())])

    def reset(self) -> None:
        """A new window."""
        now = time.monotonic()
        self.last = {k: now for k in self.last}
        self.max_gap = 0.0
        self.pongs = 0

    def message(self, peer: ResponderPeer, msg: bytes) -> None:
        """A pong: note the gap, ping again."""
        if wire.message_type(msg) != wire.PONG or id(peer) not in self.last:
            return
        now = time.monotonic()
        self.max_gap = max(self.max_gap, now - self.last[id(peer)])
        self.last[id(peer)] = now
        self.pongs += 1
        peer.send(wire.Ping(4, b"").encode())


@defer.inlineCallbacks
def run_size(n: int, window: float) -> Any:
    """One proxy, N connections, the two windows."""
    base = tempfile.mkdtemp(prefix="lnproxy-hotbench-")
    data_dir = os.path.join(base, "data")
    port = free_port()
    factory = ResponderFactory(record=False)
    listening = R.listenTCP(0, factory, interface="127.0.0.1", backlog=1024)
    peer_port = listening.getHost().port
    pinger = Pinger(factory)
    children = []

    def spawn(
        *extra: str,
        twistd_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> TwistdProcess:
        argv, env = twistd_command(
            port, data_dir, *ARGS, *extra, twistd_args=twistd_args, env=env
        )
        child = TwistdProcess()
        R.spawnProcess(child, argv[0], argv, env=env, path=base)
        children.append(child)
        return child

    try:
        old = spawn()
        yield old.wait_started()
        rpc = yield connect_rpc(R, port)
        yield rpc.login(os.urandom(32))
        opened = 0
        while opened < n:
            batch = min(200, n - opened)
            yield defer.gatherResults(
                [rpc.open_peer(factory, peer_port) for _ in range(batch)]
            )
            opened += batch
        pinger.start(factory.connections[:ACTIVE])
        results = {}
        yield sleep(1.0)
        pinger.reset()
        yield sleep(window)
        results["none"] = (pinger.gap(), pinger.pongs)
        pinger.reset()
        profile = (
            (f"--profile={PROFILE}", "--profiler=cprofile", "--savestats")
            if PROFILE
            else ()
        )
        new = spawn("--takeover", twistd_args=profile)
        yield old.ended
        yield new.wait_started()
        yield sleep(1.0)
        results["takeover"] = (pinger.gap(), pinger.pongs)
        if factory.closed_count:
            raise RuntimeError(f"{factory.closed_count} peer connections closed")
        unread = re.search(r"not read for ([0-9.]+) s", old.text)
        adopt = re.search(r"adopted .* ([0-9.]+) s since the request", new.text)
        stall_systemd = None
        if SYSTEMD and 3 * n + 500 < resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
            # A process under the (fake) service manager takes over (not
            # measured); then SIGTERM -> fd store -> exit -> the next
            # process from LISTEN_FDS (measured: nobody serves in between).
            manager = FakeServiceManager(store_max=n + 16)
            env = dict(os.environ, **manager.environment())
            mid = spawn("--takeover", "--systemd-fd-store", env=env)
            yield new.ended
            yield mid.wait_started()
            # READY=1 comes once its reactor runs (its SIGTERM handler is in).
            while not manager.seen("READY", pid=mid.pid):
                yield sleep(0.01)
            pinger.reset()
            yield mid.stop("TERM")
            argv, child_env = twistd_command(port, data_dir, *ARGS)
            args, child_env, fds = manager.command(argv, child_env)
            last = TwistdProcess()
            child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
            child_fds.update({fd: fd for fd in fds})
            R.spawnProcess(
                last, args[0], args, env=child_env, path=base, childFDs=child_fds
            )
            children.append(last)
            yield last.wait_started()
            yield sleep(1.0)
            stall_systemd = pinger.gap()
            if factory.closed_count:
                raise RuntimeError(
                    f"{factory.closed_count} peer connections closed (fd store)"
                )
            if VERBOSE:
                print("    fd store pongs:", pinger.pongs)
                for line in (mid.text + last.text).splitlines():
                    if "hot restart" in line or "Traceback" in line or "rror" in line:
                        print("   ", line[:160])
            manager.close()
            new = last
        if VERBOSE:
            for line in (old.text + new.text).splitlines():
                if "takeover" in line or "hot restart" in line or "adopting" in line:
                    print("   ", line[:160])
        yield new.stop("TERM")
        return {
            "n": n,
            "stall_none_ms": results["none"][0] * 1000,
            "stall_takeover_ms": results["takeover"][0] * 1000,
            "stall_systemd_ms": stall_systemd * 1000 if stall_systemd else None,
            "unread_ms": float(unread.group(1)) * 1000 if unread else None,
            "request_to_adopted_ms": float(adopt.group(1)) * 1000 if adopt else None,
            "pongs": results["takeover"][1],
        }
    finally:
        for child in children:
            if not child.ended.called:
                child.stop("KILL")
        factory.abort_all()
        listening.stopListening()
        shutil.rmtree(base, True)


@defer.inlineCallbacks
def main(argv: list[str]) -> Any:
    """Parse arguments, run every size, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument(
        "--profile-new", default="", help="cProfile the new process into this file"
    )
    parser.add_argument(
        "--no-systemd", action="store_true", help="skip the fd store window"
    )
    parser.add_argument("--verbose", action="store_true", help="print handover logs")
    args = parser.parse_args(argv)
    global VERBOSE, PROFILE, SYSTEMD
    SYSTEMD = not args.no_systemd
    VERBOSE = args.verbose
    PROFILE = os.path.abspath(args.profile_new) if args.profile_new else ""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"RLIMIT_NOFILE {hard}")
    print(
        f"{'N':>6} {'stall none ms':>14} {'stall takeover ms':>18}"
        f" {'peers unread ms':>16} {'request->adopted ms':>20} {'stall fd store ms':>18}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        if size + 500 > hard:
            print(f"{size:>6} skipped: RLIMIT_NOFILE {hard} is too low")
            continue
        r = yield run_size(size, args.window)
        print(
            f"{r['n']:>6} {r['stall_none_ms']:>14.1f} {r['stall_takeover_ms']:>18.1f}"
            f" {r['unread_ms'] or 0:>16.1f} {r['request_to_adopted_ms'] or 0:>20.1f}"
            f" {r['stall_systemd_ms'] or 0:>18.1f}",
            flush=True,
        )


if __name__ == "__main__":
    task.react(lambda _r: main(sys.argv[1:]))
