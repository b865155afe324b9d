"""The keepalive sweep: one periodic pass over the open connections.

Silence means no complete authenticated message.  After ``keepalive``
seconds of it the proxy pings (asking for no pong bytes); when nothing
arrives for ``keepalive`` more seconds it closes the connection
(``keepalive timeout``).  A frame whose length header arrived must have its
body within ``body_timeout`` (``message body timeout``).  A connection the
proxy is not reading (its node's inbox is full) is never blamed for the
silence.

One pass every few seconds instead of a timer per connection: with ten
thousand idle peers, per-connection timers rescheduled on every message
cost more than this loop.  The per-connection clocks (``last_rx``,
``ping_sent_at``, ``body_since``) live on the connection, which resets them
when a message arrives; see docs/architecture.md, "Keepalive".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from lnproxy import wire

__all__ = ["KEEPALIVE_PING", "Keepable", "KeepaliveSweep", "sweep_interval"]

#: The proxy's own keepalive ping: asks for an empty pong.
KEEPALIVE_PING: Final = wire.Ping(num_pong_bytes=0).encode()


class Keepable(TypingProtocol):
    """What the sweep needs of a connection (the hub's ``Connection``)."""

    #: When the last whole message arrived (or reading resumed).
    last_rx: float
    #: When our unanswered ping was sent, or None.
    ping_sent_at: float | None
    #: Since when a frame's body has been awaited, or None.
    body_since: float | None

    @property
    def reading_paused(self) -> bool:
        """The proxy is not reading this peer (its node's inbox is full)."""

    @property
    def awaiting_body(self) -> bool:
        """A length header arrived and its body has not."""

    def send_own(self, msg: bytes) -> bool:
        """Send a message of the proxy's own; False when it cannot."""

    def close(self, reason: str) -> None:
        """Close the connection; the closed event says ``reason``."""


def sweep_interval(keepalive: float) -> float:
    """Seconds between passes: a quarter of ``keepalive``, within 0.5-5 s."""
    return max(0.5, min(keepalive / 4, 5.0))


class KeepaliveSweep:
    """Pings silent peers and closes dead or stuck ones.

    :param clock: the reactor's time.
    :param connections: the open connections (the hub's live mapping).
    :param keepalive: seconds of silence before a ping, and before a close
        after an unanswered ping.
    :param body_timeout: seconds a frame body may take once its header came.
    :param count: called as ``count(name)`` with ``ping_sent`` and
        ``keepalive_closed`` (metrics).
    """

    def __init__(
        self,
        clock: IReactorTime,
        connections: Mapping[str, Keepable],
        keepalive: float,
        body_timeout: float,
        count: Callable[[str], None],
    ) -> None:
        self.clock = clock
        self.connections = connections
        self.keepalive = keepalive
        self.body_timeout = body_timeout
        self.count = count
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        """Sweep every :func:`sweep_interval` seconds from now on."""
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self.clock
        self._loop.start(sweep_interval(self.keepalive), now=False)

    def stop(self) -> None:
        """Stop sweeping."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def sweep(self) -> None:
        """One pass over the open connections."""
        now = self.clock.seconds()
        keepalive = self.keepalive
        body_timeout = self.body_timeout
        for conn in list(self.connections.values()):
            if conn.reading_paused:
                # Not reading it (its node's inbox is full): its silence is ours.
                conn.last_rx = now
                conn.ping_sent_at = None
                continue
            if conn.ping_sent_at is not None:
                if now - conn.ping_sent_at >= keepalive:
                    self.count("keepalive_closed")
                    conn.close("keepalive timeout")
                    continue
            elif now - conn.last_rx >= keepalive:
                conn.ping_sent_at = now
                if not conn.send_own(KEEPALIVE_PING):
                    continue
                self.count("ping_sent")
            if conn.awaiting_body:
                if conn.body_since is None:
                    conn.body_since = now
                elif now - conn.body_since >= body_timeout:
                    conn.close("message body timeout")
            else:
                conn.body_since = None
