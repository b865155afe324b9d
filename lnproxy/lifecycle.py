"""The life of one peer connection, from ``connect`` to its acknowledged close.

One enum (:class:`ConnState`), one transition table (:data:`TRANSITIONS`)
and one small holder (:class:`Lifecycle`) shared by the peer protocol
(:mod:`lnproxy.peer`, which moves the connection through the handshake and
notices TCP going away), the hub's connection object (:mod:`lnproxy.hub`,
which announces it, records its close and forgets it) and the metrics
(:mod:`lnproxy.metrics`, which count connections by :attr:`ConnState.wire_name`).
docs/states.md draws the diagram.

A plain table rather than an automat machine: the holder is read on the
relay's hot path (``state is OPEN`` once per message), which must stay an
attribute read, and every transition is a single assignment with no
outputs of its own; the table gives the same "invalid transitions raise"
guarantee with no dispatch cost.  See docs/architecture.md, "Lifecycle".

Persisted names: the store and the ``connections`` method only ever show
``"handshake"``, ``"open"`` and ``"closed"`` (:data:`PERSISTED_STATES`);
:attr:`ConnState.wire_name` maps every state onto those (or onto
``"connecting"`` / ``"gone"`` for states no client can see).

Pure: no Twisted, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Final

__all__ = [
    "ConnState",
    "InvalidTransition",
    "Lifecycle",
    "TRANSITIONS",
    "PERSISTED_STATES",
    "METRIC_STATES",
    "PENDING",
    "ANNOUNCED",
    "VISIBLE",
    "from_wire_name",
]


class ConnState(enum.StrEnum):
    """Where a peer connection is in its life.

    A ``str`` enum: a state equals its value (``ConnState.CLOSED ==
    "closed"``), so code that compared the hub's old bare strings still
    works; new code compares members with ``is``.
    """

    #: ``connect`` was asked; TCP is being opened.
    CONNECTING = "connecting"
    #: TCP is up and the client's act 1 is written; waiting for act 2.
    ACT1_SENT = "act1 sent"
    #: Act 2 is relayed: the client has the conn id; waiting for ``finish``.
    HANDSHAKE = "handshake"
    #: ``finish`` installed the keys; messages are relayed both ways.
    OPEN = "open"
    #: A close was asked (client, timeout, keepalive...); TCP is not gone yet.
    CLOSING = "closing"
    #: The handshake failed before act 2 was relayed; TCP is being aborted.
    ABORTING = "aborting"
    #: The ``closed`` event is recorded; nothing more is relayed.  The
    #: connection stays listed until the client acknowledges that event.
    CLOSED = "closed"
    #: The client acknowledged the ``closed`` event: forgotten.
    ACKNOWLEDGED = "acknowledged"
    #: Never announced (TCP failed, act 2 never came): forgotten, no event.
    ABANDONED = "abandoned"

    @property
    def wire_name(self) -> str:
        """The name the store, ``connections`` and the metrics use."""
        return _WIRE_NAMES[self]


_WIRE_NAMES: Final[Mapping[ConnState, str]] = {
    ConnState.CONNECTING: "connecting",
    ConnState.ACT1_SENT: "connecting",
    ConnState.ABORTING: "connecting",
    ConnState.HANDSHAKE: "handshake",
    ConnState.OPEN: "open",
    # A closing connection is what it was for the client until TCP is gone
    # (only one that was open can still have its row rewritten).
    ConnState.CLOSING: "open",
    ConnState.CLOSED: "closed",
    ConnState.ACKNOWLEDGED: "gone",
    ConnState.ABANDONED: "gone",
}

#: The state names a stored connection row (and ``connections``) may hold.
PERSISTED_STATES: Final = ("handshake", "open", "closed")
#: The ``state`` label values of ``lnproxy_peer_connections``.
METRIC_STATES: Final = ("connecting", "handshake", "open", "closed")

#: Every allowed move; anything else raises :class:`InvalidTransition`.
TRANSITIONS: Final[Mapping[ConnState, frozenset[ConnState]]] = {
    ConnState.CONNECTING: frozenset(
        {ConnState.ACT1_SENT, ConnState.ABORTING, ConnState.ABANDONED}
    ),
    ConnState.ACT1_SENT: frozenset(
        {ConnState.HANDSHAKE, ConnState.ABORTING, ConnState.ABANDONED}
    ),
    ConnState.HANDSHAKE: frozenset(
        {ConnState.OPEN, ConnState.CLOSING, ConnState.CLOSED}
    ),
    ConnState.OPEN: frozenset({ConnState.CLOSING, ConnState.CLOSED}),
    ConnState.CLOSING: frozenset({ConnState.CLOSED}),
    ConnState.ABORTING: frozenset({ConnState.ABANDONED}),
    ConnState.CLOSED: frozenset({ConnState.ACKNOWLEDGED}),
    ConnState.ACKNOWLEDGED: frozenset(),
    ConnState.ABANDONED: frozenset(),
}

#: Handshakes in progress (they count against the handshake caps).
PENDING: Final = frozenset(
    {ConnState.CONNECTING, ConnState.ACT1_SENT, ConnState.HANDSHAKE}
)
#: The client has the conn id and the close is not recorded yet.
ANNOUNCED: Final = frozenset({ConnState.HANDSHAKE, ConnState.OPEN, ConnState.CLOSING})
#: A client may name it (``connections``, ``send``, ``disconnect``...).
VISIBLE: Final = ANNOUNCED | {ConnState.CLOSED}

_FROM_WIRE: Final = {
    "handshake": ConnState.HANDSHAKE,
    "open": ConnState.OPEN,
    "closed": ConnState.CLOSED,
}


def from_wire_name(name: str) -> ConnState:
    """The state a persisted name stands for.

    :raise ValueError: for a name not in :data:`PERSISTED_STATES`.
    """
    try:
        return _FROM_WIRE[name]
    except KeyError:
        raise ValueError(f"not a persisted connection state: {name!r}") from None


class InvalidTransition(RuntimeError):
    """A move the table does not allow: a bug in the caller, never input."""

    def __init__(self, old: ConnState, new: ConnState) -> None:
        super().__init__(f"connection cannot go from {old.value} to {new.value}")
        self.old = old
        self.new = new


class Lifecycle:
    """The one state of one connection, and the only way to change it.

    Read :attr:`state` directly (an attribute: the hot path does).  Change
    it with :meth:`advance`, which checks :data:`TRANSITIONS` and then tells
    ``on_change(old, new)``.

    :param state: where it starts (:attr:`ConnState.CONNECTING`, or
        :attr:`ConnState.OPEN` for a connection rebuilt from a snapshot).
    :param on_change: called after every transition.
    """

    __slots__ = ("state", "on_change")

    def __init__(
        self,
        state: ConnState = ConnState.CONNECTING,
        on_change: Callable[[ConnState, ConnState], None] | None = None,
    ) -> None:
        self.state = state
        self.on_change = on_change

    def __repr__(self) -> str:
        return f"<Lifecycle {self.state.value}>"

    def advance(self, new: ConnState) -> None:
        """Move to ``new``.

        :raise InvalidTransition: when the table does not allow it.
        """
        old = self.state
        if new not in TRANSITIONS[old]:
            raise InvalidTransition(old, new)
        self.state = new
        if self.on_change is not None:
            self.on_change(old, new)
