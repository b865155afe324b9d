"""A tiny Twisted relay process for the hot-restart tests and bench.

It holds ``--count`` TCP connections to a peer the test runs (``tcp.Client``)
and a listener (``tcp.Server`` connections arrive there).  On each
connection it answers every line ``L`` with ``echo L <pid>`` and sends
``tick <k>`` every ``--tick`` seconds (``k`` consecutive per connection, so a
lost or repeated tick shows).  A connection's state (next tick, a partial
line) is its snapshot blob, resumed by the new process.

Modes:

- default: serve; accept ``--takeover`` requests on ``DIR/takeover.sock``;
  under a service manager (``NOTIFY_SOCKET``), store everything on SIGTERM.
- ``--takeover``: take over from the process serving ``DIR``.  ``--fail``
  makes it misbehave: ``abort`` (gives up before confirming, exit 3),
  ``hang`` (never confirms; the test kills it or the old side times out).
- started by a service manager with a stored state (``LISTEN_FDS``): resume.

It prints one status line per event on stdout (``serving``, ``received``,
``adopted``, ``committed``, ``rolledback``, ``stored``, ``listening``).
"""

from __future__ import annotations

import os
import sys

# First: the service manager's descriptors, before anything imports
# twisted.internet.endpoints (which deletes LISTEN_FDS).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lnproxy.handover import systemd  # noqa: E402

LISTEN = systemd.capture_listen_fds()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from twisted.internet import protocol, reactor, task  # noqa: E402

from lnproxy.handover import (  # noqa: E402
    Handover,
    NothingToTakeOver,
    Outcome,
    TakeoverFailed,
    TakeoverListener,
    request_takeover,
)
from lnproxy.handover.session import Frozen  # noqa: E402

R: Any = reactor


def say(*words: object) -> None:
    """One status line for the test."""
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


class Relay(protocol.Protocol):
    """Echo lines (with our pid), send numbered ticks."""

    def __init__(self, tick: int = 0, buf: bytes = b"") -> None:
        self.tick = tick
        self.buf = buf

    def dataReceived(self, data: bytes) -> None:
        """Answer each complete line."""
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            if line.startswith(b"flood "):
                # A big write, for tests of bytes stuck in Twisted's buffer.
                out.append(b"flood " + b"x" * int(line[6:]) + b"\n")
            else:
                out.append(b"echo " + line + b" %d\n" % os.getpid())
        if out:
            self.transport.write(b"".join(out))

    def send_tick(self) -> None:
        """The next numbered tick."""
        self.transport.write(b"tick %d\n" % self.tick)
        self.tick += 1

    def snapshot(self) -> bytes:
        """This connection's state for the next process."""
        return json.dumps({"tick": self.tick, "buf": self.buf.hex()}).encode()

    @classmethod
    def resume(cls, blob: bytes) -> Relay:
        """A protocol continuing from a snapshot."""
        state = json.loads(blob)
        return cls(state["tick"], bytes.fromhex(state["buf"]))


class Process:
    """The relay's own state: connections, listener, ticker."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.relays: list[Relay] = []
        self.port: Any = None
        self.ticker = task.LoopingCall(self.tick)
        self.listener: TakeoverListener | None = None

    def tick(self) -> None:
        """Tick on every open connection."""
        for relay in self.relays:
            if relay.transport is not None and relay.transport.connected:
                relay.send_tick()

    def start_ticking(self) -> None:
        """Start (or resume) the ticker."""
        if self.args.tick > 0 and not self.ticker.running:
            self.ticker.start(self.args.tick, now=False)

    def collect(self) -> Handover:
        """Stop our own activity and describe everything (one reactor turn)."""
        if self.ticker.running:
            self.ticker.stop()
        live = [
            r for r in self.relays if r.transport is not None and r.transport.connected
        ]
        return Handover(
            [(r.transport, r.snapshot()) for r in live],
            [(self.port, "relay")] if self.port is not None else [],
            json.dumps({"pid": os.getpid()}).encode(),
        )

    def on_outcome(self, outcome: Outcome) -> None:
        """Exit 0 after a commit; else go on."""
        if outcome.committed:
            say(
                "committed",
                outcome.connections,
                f"{outcome.seconds:.4f}",
                outcome.pending,
            )
            R.stop()
        else:
            say("rolledback", outcome.reason.replace("\n", " "))
            self.start_ticking()

    def factory(self) -> protocol.Factory:
        """Listener factory: new Relays, tracked."""
        proc = self

        class F(protocol.Factory):
            def buildProtocol(self, addr: Any) -> Relay:
                relay = Relay()
                proc.relays.append(relay)
                return relay

        return F()

    def serve_channel(self) -> None:
        """Accept takeover requests on DIR/takeover.sock."""
        self.listener = TakeoverListener(
            R,
            os.path.join(self.args.dir, "takeover.sock"),
            self.collect,
            self.on_outcome,
            timeout=self.args.timeout,
        )
        self.listener.start()
        if os.environ.get("NOTIFY_SOCKET"):
            R.addSystemEventTrigger("before", "shutdown", self.store_on_stop)

    def store_on_stop(self) -> None:
        """systemd path: on SIGTERM, upload everything, then let go."""
        if self.listener is not None and self.listener.fileno() < 0:
            return  # already handed over through the channel
        frozen = Frozen(self.collect(), R.seconds())
        notifier = systemd.Notifier()
        try:
            systemd.store(notifier, frozen)
        except Exception as e:
            say("storefailed", e)
            frozen.rollback()
            return
        frozen.commit()
        say("stored", len(frozen.transports))

    def fresh(self) -> None:
        """Connect to the peer, listen, serve."""
        for _ in range(self.args.count):
            relay = Relay()
            self.relays.append(relay)
            protocol.ClientCreator(R, lambda r=relay: r).connectTCP(
                "127.0.0.1", self.args.peer_port
            )
        self.port = R.listenTCP(0, self.factory(), interface="127.0.0.1")
        say("listening", self.port.getHost().port)


def resume(proc: Process, received: Any, relays: list[Relay]) -> None:
    """Adopt everything under the protocols built from the blobs."""
    adopted = received.adopt(R, relays, [proc.factory()] * len(received.listeners))
    proc.relays = [
        r for r, t in zip(relays, adopted.transports, strict=True) if t is not None
    ]
    proc.port = next((p for p in adopted.ports if p is not None), None)
    say("adopted", len(proc.relays), len(adopted.ports))


def main() -> int:
    """Run the relay."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--peer-port", type=int, default=0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--tick", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--takeover", action="store_true")
    parser.add_argument("--fail", choices=["none", "abort", "hang"], default="none")
    args = parser.parse_args()
    proc = Process(args)
    notifier = systemd.Notifier()
    if args.takeover:
        started = time.monotonic()
        try:
            takeover = request_takeover(os.path.join(args.dir, "takeover.sock"))
        except NothingToTakeOver:
            say("nothing-to-take-over")
            proc.fresh()
        except TakeoverFailed as e:
            say("failed", e)
            return 2
        else:
            say(
                "received",
                len(takeover.received.connections),
                f"{time.monotonic() - started:.4f}",
            )
            if args.fail == "abort":
                takeover.abort("cannot adopt (test)")
                return 3
            if args.fail == "hang":
                time.sleep(600)
                return 4
            # Prepare everything that can fail before confirming: the
            # stall peers see only covers the adoption after the commit.
            relays = [Relay.resume(c.blob) for c in takeover.received.connections]
            relays_ok = True
            try:
                takeover.confirm()
            except TakeoverFailed as e:
                say("failed", e)
                relays_ok = False
            if not relays_ok:
                return 2
            say("confirmed", f"{time.monotonic() - started:.4f}")
            resume(proc, takeover.received, relays)
            say("takeover-seconds", f"{time.monotonic() - started:.4f}")
    else:
        received = systemd.restore(LISTEN)
        if received is None:
            proc.fresh()
        else:
            relays = [Relay.resume(c.blob) for c in received.connections]
            resume(proc, received, relays)
            for name in (systemd.PEER, systemd.LISTENER, systemd.STATE):
                notifier.remove(name)
    proc.serve_channel()
    proc.start_ticking()
    notifier.ready()
    say("serving", os.getpid(), len(proc.relays))
    R.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
