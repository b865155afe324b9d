"""The event journal: per-node sequence numbers, batching, commit-then-offer.

Every event (a relayed message, a ``closed``) gets its node's next ``seq``
when it happens and joins the current batch.  The batch, with the
connection rows changed in the same reactor turn and the closes to record,
and the peer storage blobs kept in that turn (the newest per node and peer),
is committed in one SQLite transaction at the end of the turn
(``callLater(0)``).  Only after the commit is an event offered (to the
node's sessions, through the ``offer`` callable the hub gives) and shown to
:attr:`Journal.observers` (metrics, webhooks): a client never sees an event
that a crash could lose.  When the commit fails, everything is kept and the
same rows (same seqs) are tried again after ``retry_delay`` seconds.

The journal does not know nodes, sessions or connections: it numbers
events of any object with ``node_id`` and ``next_seq`` (the hub's
:class:`~lnproxy.hub.Node`, see :class:`EventLog`) and calls back.
See docs/architecture.md, "Journal".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from lnproxy.protocol import notification_text
from lnproxy.store import ConnectionRow, EventRow, IStore

__all__ = ["EventLog", "Journal", "event_text", "message_head"]


class EventLog(TypingProtocol):
    """The per-node numbering the journal advances (the hub's ``Node``)."""

    node_id: str
    #: The seq the next event of this node gets.
    next_seq: int


def message_head(now: float, conn_id: str, peer: str) -> str:
    """The part of a ``message`` event's params shared by one read.

    ``,"at":..,"conn":"..","peer":"..","type":``: every message of one read
    shares ``at``, ``conn`` and ``peer``, so it is built once per read, not
    per message (the float repr alone cost as much as the rest).
    """
    return f',"at":{now!r},"conn":"{conn_id}","peer":"{peer}","type":'


class Journal:
    """Numbers, batches, commits and then offers events.

    :param store: where batches are committed.
    :param clock: schedules the end-of-turn commit and its retries.
    :param offer: called as ``offer(row)`` for each committed event, in
        order; returns whether the node has a session online.
    :param retry_delay: seconds before a failed commit is tried again.
    """

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        offer: Callable[[EventRow], bool],
        retry_delay: float = 1.0,
    ) -> None:
        self.store = store
        self.clock = clock
        self.offer = offer
        self.retry_delay = retry_delay
        #: Called as ``fn(row, online)`` after an event is committed.
        self.observers: list[Callable[[EventRow, bool], None]] = []
        self._batch: list[EventRow] = []
        self._closes: list[tuple[str, int]] = []
        #: Connection rows to write with the next batch, by conn id.
        self._rows: dict[str, ConnectionRow] = {}
        #: Peer storage blobs to keep, by (node id, peer): the newest wins.
        self._blobs: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._flush_call: IDelayedCall | None = None

    # -- adding ---------------------------------------------------------------

    def emit(
        self, log: EventLog, kind: str, fields: dict[str, Any], summon: bool
    ) -> int:
        """Add one event of ``kind`` (params: ``seq``, ``at``, ``fields``).

        :return: its seq.
        """
        seq = log.next_seq
        log.next_seq = seq + 1
        now = self.clock.seconds()
        params = json.dumps({"seq": seq, "at": now, **fields}, separators=(",", ":"))
        self._add(EventRow(log.node_id, seq, kind, summon, now, params))
        return seq

    def emit_message(
        self,
        log: EventLog,
        msg_type: int,
        msg: bytes,
        summon: bool,
        now: float,
        head: str,
    ) -> None:
        """Add one ``message`` event (the relay's hot path).

        :param head: :func:`message_head` of the read it came in.
        """
        seq = log.next_seq
        log.next_seq = seq + 1
        # Formatted by hand: every field is a number, a bool or hex we made,
        # and this runs once per relayed message.
        params = (
            '{"seq":'
            + str(seq)
            + head
            + str(msg_type)
            + ',"msg":"'
            + msg.hex()
            + ('","summon":true}' if summon else '","summon":false}')
        )
        self._batch.append(EventRow(log.node_id, seq, "message", summon, now, params))
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def record_close(self, conn_id: str, seq: int) -> None:
        """Mark a connection row closed by the event ``seq``, in the batch
        that carries that event."""
        self._closes.append((conn_id, seq))

    def stage_connection(self, row: ConnectionRow) -> None:
        """Write a connection row with the next batch (a later one for the
        same conn id replaces it).  Schedules no commit of its own: readers
        of connection rows call :meth:`flush` first."""
        self._rows[row.conn_id] = row

    def keep_peer_storage(
        self, node_id: str, peer: str, blob: bytes, at: float
    ) -> None:
        """Keep a peer's ``peer_storage`` blob with the next batch (a later
        one of the same node and peer replaces it, so a flood costs one
        write per turn).  It is committed at the end of this turn, with no
        fsync of its own when events ride in the same batch."""
        self._blobs[(node_id, peer)] = (blob, at)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def peer_storage(self, node_id: str, peer: str) -> bytes | None:
        """The newest blob of a node's peer: staged in this batch, or
        stored."""
        staged = self._blobs.get((node_id, peer))
        if staged is not None:
            return staged[0]
        return self.store.get_peer_storage(node_id, peer)

    def _add(self, row: EventRow) -> None:
        self._batch.append(row)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    # -- committing -------------------------------------------------------------

    def flush(self) -> None:
        """Commit what is pending, then offer it and tell observers."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if not self._batch and not self._rows and not self._blobs:
            return
        batch, closes, rows = self._batch, self._closes, self._rows
        blobs = self._blobs
        self._batch, self._closes, self._rows, self._blobs = [], [], {}, {}
        store = self.store
        try:
            with store.transaction():
                # Rows before closes: a row queued while open must not
                # overwrite the closed state recorded in this same batch.
                for conn_row in rows.values():
                    store.put_connection(conn_row)
                store.append_events(batch)
                for conn_id, seq in closes:
                    store.close_connection(conn_id, seq)
                for (node_id, peer), (blob, at) in blobs.items():
                    store.put_peer_storage(node_id, peer, blob, at)
        except Exception:
            # Keep everything and try again shortly: nothing is offered to a
            # client before it is on disk.
            self._log.failure("could not commit {n} events; retrying", n=len(batch))
            self._batch = batch + self._batch
            self._closes = closes + self._closes
            self._rows = {**rows, **self._rows}
            self._blobs = {**blobs, **self._blobs}
            if self._flush_call is None:
                self._flush_call = self.clock.callLater(self.retry_delay, self.flush)
            return
        offer = self.offer
        observers = self.observers
        for row in batch:
            online = offer(row)
            for fn in observers:
                fn(row, online)


def event_text(row: EventRow) -> str:
    """The notification of a stored event (JSON text)."""
    return notification_text(row.kind, row.params)
