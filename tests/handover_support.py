"""Shared pieces of the hot-restart tests and bench: the peer and a child.

:class:`Peers` is the test-controlled side of every TCP connection the
relay process (``tests/handover_relay.py``) holds: it sends numbered lines
and checks what comes back (every echo exactly once and in order, ticks
consecutive, no EOF).  :class:`Child` runs one relay process.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.python.failure import Failure

R: Any = reactor
HERE = os.path.dirname(os.path.abspath(__file__))
RELAY = os.path.join(HERE, "handover_relay.py")
REPO = os.path.dirname(HERE)

_ECHO = re.compile(rb"^echo m(\d+) (\d+)$")
_TICK = re.compile(rb"^tick (\d+)$")


class PeerConnection(protocol.Protocol):
    """One connection as the peer sees it."""

    def __init__(self, peers: Peers) -> None:
        self.peers = peers
        self.sent = 0
        self.echoes: list[int] = []
        self.echo_pids: list[int] = []
        self.ticks: list[int] = []
        self.other: list[bytes] = []
        #: lengths of the "flood" lines received
        self.floods: list[int] = []
        self.buf = b""
        self.lost: Failure | None = None
        #: reactor time of each echo (request/response bench)
        self.echo_times: list[float] = []

    def connectionMade(self) -> None:
        """Count it."""
        self.peers.connections.append(self)

    def send_next(self) -> None:
        """Send the next numbered line."""
        self.transport.write(b"m%d\n" % self.sent)
        self.sent += 1

    def dataReceived(self, data: bytes) -> None:
        """Sort the lines: echoes, ticks, anything else."""
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            m = _ECHO.match(line)
            if m:
                self.echoes.append(int(m.group(1)))
                self.echo_pids.append(int(m.group(2)))
                self.echo_times.append(R.seconds())
                if self.peers.ping_pong:
                    self.send_next()
                continue
            if line.startswith(b"flood "):
                self.floods.append(len(line) - 6)
                continue
            m = _TICK.match(line)
            if m:
                self.ticks.append(int(m.group(1)))
                continue
            self.other.append(line)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        """The peer saw the connection end: a hot restart must never do this."""
        self.lost = reason

    def problems(self) -> list[str]:
        """What is wrong with what this connection received (empty: fine)."""
        out = []
        if self.lost is not None and not self.peers.closing:
            out.append(f"connection lost: {self.lost.getErrorMessage()}")
        if self.echoes != list(range(len(self.echoes))):
            out.append(f"echoes out of order or repeated: {self.echoes[:50]}")
        if self.ticks != list(range(len(self.ticks))):
            out.append("ticks not consecutive")
        if self.other:
            out.append(f"unexpected lines {self.other[:5]}")
        return out


class Peers(protocol.Factory):
    """The listening peer and all its connections."""

    def __init__(self, ping_pong: bool = False) -> None:
        self.connections: list[PeerConnection] = []
        self.ping_pong = ping_pong
        self.closing = False
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> PeerConnection:
        """One more connection."""
        return PeerConnection(self)

    def listen(self) -> int:
        """Listen on 127.0.0.1; the port number."""
        self.port = R.listenTCP(0, self, interface="127.0.0.1", backlog=2048)
        port: int = self.port.getHost().port
        return port

    def send_all(self) -> None:
        """One line on every connection."""
        for c in self.connections:
            c.send_next()

    def all_answered(self) -> bool:
        """Every line sent so far has its echo."""
        return all(len(c.echoes) == c.sent for c in self.connections)

    def problems(self) -> list[str]:
        """Every connection's problems, numbered."""
        return [
            f"#{i}: {p}" for i, c in enumerate(self.connections) for p in c.problems()
        ]

    def close(self) -> defer.Deferred[Any]:
        """Close every connection and the port."""
        self.closing = True
        for c in self.connections:
            if c.transport is not None:
                c.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)


class Child(protocol.ProcessProtocol):
    """A relay process: its status lines and its exit status."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.err = b""
        self._buf = b""
        self.status: int | None = None
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.pid = 0

    def outReceived(self, data: bytes) -> None:
        """Status lines."""
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        self.lines.extend(line.decode() for line in lines)

    def errReceived(self, data: bytes) -> None:
        """Tracebacks, for the failure message."""
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        """Record the exit status."""
        self.status = getattr(reason.value, "exitCode", None)
        if self.status is None:
            self.status = -(getattr(reason.value, "signal", 0) or 1)
        self.ended.callback(self.status)

    def line(self, word: str) -> str | None:
        """The first status line starting with ``word``."""
        return next((x for x in self.lines if x.split()[:1] == [word]), None)

    def kill(self, signal: str = "KILL") -> None:
        """Signal it if it still runs."""
        if self.status is None and self.transport is not None:
            self.transport.signalProcess(signal)


def spawn(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    fds: Sequence[int] = (),
    full_argv: bool = False,
) -> Child:
    """Start ``python tests/handover_relay.py ARGS`` (or a full argv)."""
    child = Child()
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = REPO
    argv = list(args) if full_argv else [sys.executable, RELAY, *args]
    child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
    child_fds.update({fd: fd for fd in fds})
    R.spawnProcess(child, argv[0], argv, env=child_env, path=REPO, childFDs=child_fds)
    child.pid = child.transport.pid if child.transport is not None else 0
    return child
