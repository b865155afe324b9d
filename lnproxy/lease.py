"""The writer lease: which session of a node may change channel state.

docs/protocol.md, "Several devices of one node", "The writer lease".  One
node may be logged in from several sessions (devices).  A session that is
going to write takes the node's lease; while it holds it, the node's other
sessions get code 11 for ``connect``, ``finish``, ``send`` and
``disconnect``.  The lease ends with ``lease.release`` or with its
session.  While nobody holds it every session may do everything, as on a
server without leases.

:class:`LeaseBook` is the bookkeeping only: pure, no I/O, sessions are any
hashable objects, and the clock is injected (it only dates the lease, for
logs and metrics; a lease never expires by time).  The WebSocket layer
(:mod:`lnproxy.api`) asks it before each writing method and sends the
``lease`` notification to the former holder that :meth:`LeaseBook.acquire`
returns after a forced move.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

__all__ = ["LeaseHeld", "Lease", "Acquired", "LeaseBook", "WRITING_METHODS"]

#: The methods a non-holder may not call while another session holds the lease.
WRITING_METHODS = frozenset({"connect", "finish", "send", "disconnect"})

S = TypeVar("S", bound=Hashable)


class LeaseHeld(Exception):
    """Another session of the node holds the lease (code 11)."""


@dataclass(frozen=True, slots=True)
class Lease(Generic[S]):
    """A node's lease: the session holding it and since when."""

    holder: S
    since: float


@dataclass(frozen=True, slots=True)
class Acquired(Generic[S]):
    """What :meth:`LeaseBook.acquire` did.

    ``former`` is the session that lost the lease through ``force`` (it
    must be told with the ``lease`` notification), or None.
    """

    former: S | None


class LeaseBook(Generic[S]):
    """The leases of every node served by this process.

    :param clock: dates each lease (``clock.seconds()`` when taken).
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._leases: dict[str, Lease[S]] = {}

    def __len__(self) -> int:
        """How many nodes have a lease held right now."""
        return len(self._leases)

    def lease(self, node_id: str) -> Lease[S] | None:
        """The node's current lease, or None."""
        return self._leases.get(node_id)

    def holder(self, node_id: str) -> S | None:
        """The session holding the node's lease, or None."""
        lease = self._leases.get(node_id)
        return None if lease is None else lease.holder

    def may_write(self, node_id: str, session: S) -> bool:
        """Whether ``session`` may touch the node's peer connections now:
        nobody holds the lease, or ``session`` does."""
        lease = self._leases.get(node_id)
        return lease is None or lease.holder == session

    def check_write(self, node_id: str, session: S) -> None:
        """:raise LeaseHeld: unless :meth:`may_write`."""
        if not self.may_write(node_id, session):
            raise LeaseHeld("another session of the node holds the writer lease")

    def acquire(self, node_id: str, session: S, force: bool = False) -> Acquired[S]:
        """Give the node's lease to ``session``.

        Acquiring a lease one already holds changes nothing (and keeps its
        date).  With another holder: :class:`LeaseHeld` unless ``force``,
        in which case the lease moves and the former holder is returned.

        :raise LeaseHeld: when another session holds it and not ``force``.
        """
        lease = self._leases.get(node_id)
        if lease is not None and lease.holder == session:
            return Acquired(None)
        if lease is not None and not force:
            raise LeaseHeld("another session of the node holds the writer lease")
        self._leases[node_id] = Lease(session, self._clock.seconds())
        return Acquired(None if lease is None else lease.holder)

    def release(self, node_id: str, session: S) -> bool:
        """End the lease if ``session`` holds it; True when it did.

        Releasing a lease one does not hold (never had, or lost to a forced
        move) is not an error: it changes nothing.
        """
        lease = self._leases.get(node_id)
        if lease is None or lease.holder != session:
            return False
        del self._leases[node_id]
        return True

    def session_ended(self, node_id: str, session: S) -> bool:
        """A session closed: its lease, if any, ends with it."""
        return self.release(node_id, session)

    def held_for(self, node_id: str) -> float | None:
        """Seconds the node's current lease has been held, or None."""
        lease = self._leases.get(node_id)
        if lease is None:
            return None
        return self._clock.seconds() - lease.since
