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

With a database executor (PostgreSQL; docs/architecture.md, "PostgreSQL
and several processes") the commit runs on the executor's writer thread
instead of inline: one
commit is in flight at a time, events of later turns gather meanwhile and
go in the next one, and the offer still happens only after the commit
(back on the reactor thread). A commit refused with
:class:`~lnproxy.store.NodeLost` (another process took a node over) drops
that node's rows, reports the node to ``on_lost`` and commits the rest at
once. :meth:`Journal.idle` fires when everything emitted so far is
committed.

The journal does not know nodes, sessions or connections: it numbers
events of any object with ``node_id`` and ``next_seq`` (the hub's
:class:`~lnproxy.hub.Node`, see :class:`EventLog`) and calls back.
See docs/architecture.md, "Journal".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lnproxy.protocol import notification_text
from lnproxy.store import ConnectionRow, EventRow, IStore, NodeLost
from lnproxy.store.executor import ExecutorStopped

if TYPE_CHECKING:
    from lnproxy.store.executor import DatabaseExecutor

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
    :param executor: commit on this database executor's writer thread
        (PostgreSQL) instead of inline on ``store``.
    :param on_lost: called as ``fn(node_ids)`` when a commit was refused
        because this process lost those nodes (with an executor only).
    """

    _log = Logger()

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        offer: Callable[[EventRow], bool],
        retry_delay: float = 1.0,
        executor: DatabaseExecutor[Any] | None = None,
        on_lost: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.offer = offer
        self.retry_delay = retry_delay
        self.executor = executor
        self.on_lost = on_lost
        #: The commit on the executor, while one is in flight.
        self._inflight: defer.Deferred[None] | None = None
        self._idle_waiters: list[defer.Deferred[None]] = []
        #: The node of each recorded close, by conn id (to drop lost nodes').
        self._close_nodes: dict[str, str] = {}
        #: Consecutive failed commits (for the health check).
        self.failures = 0
        #: Called as ``fn(row, online)`` after an event is committed.
        self.observers: list[Callable[[EventRow, bool], None]] = []
        self._batch: list[EventRow] = []
        self._closes: list[tuple[str, int]] = []
        #: Connection rows to write with the next batch, by conn id.
        self._rows: dict[str, ConnectionRow] = {}
        #: Peer storage blobs to keep, by (node id, peer): the newest wins.
        self._blobs: dict[tuple[str, str], tuple[bytes, float]] = {}
        #: With an executor: blobs committed by this process (the store
        #: the reactor sees only knows those loaded when a node was claimed).
        self._kept: dict[tuple[str, str], bytes] = {}
        self._flush_call: IDelayedCall | None = None
        #: Set by :meth:`close`: no commit is scheduled any more.
        self._closed = False
        #: The last commit failed: it may have happened all the same (the
        #: link broke after the server committed), so the next one first
        #: skips what is already stored instead of failing on it forever.
        self._uncertain = False

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
            self._schedule(0)

    def record_close(self, conn_id: str, seq: int, node_id: str | None = None) -> None:
        """Mark a connection row closed by the event ``seq``, in the batch
        that carries that event.

        :param node_id: the connection's node (lets :meth:`discard` drop it).
        """
        self._closes.append((conn_id, seq))
        if node_id is not None:
            self._close_nodes[conn_id] = node_id

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
            self._schedule(0)

    def peer_storage(self, node_id: str, peer: str) -> bytes | None:
        """The newest blob of a node's peer: staged in this batch, or
        stored."""
        staged = self._blobs.get((node_id, peer))
        if staged is not None:
            return staged[0]
        kept = self._kept.get((node_id, peer))
        if kept is not None:
            return kept
        return self.store.get_peer_storage(node_id, peer)

    def _add(self, row: EventRow) -> None:
        self._batch.append(row)
        if self._flush_call is None:
            self._schedule(0)

    # -- committing -------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        """Commit after ``delay`` seconds (0: at the end of this turn),
        unless the journal was closed."""
        if not self._closed:
            self._flush_call = self.clock.callLater(delay, self.flush)

    def close(self) -> None:
        """The service stopped: cancel the scheduled commit and schedule no
        other (a commit that fails after the stop, with the database away,
        must not leave a retry loop behind).  What is still uncommitted
        stays unwritten, as after a crash: the next start (or the process
        that takes the nodes over) writes their connections' ``closed``
        events."""
        self._closed = True
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()

    @property
    def pending(self) -> bool:
        """Whether anything is waiting for (or in) a commit."""
        return bool(
            self._batch or self._rows or self._closes or self._blobs or self._inflight
        )

    def idle(self) -> defer.Deferred[None]:
        """Fire once everything emitted or staged so far is committed (at
        once if nothing is pending). With an executor a commit is started
        if none is in flight."""
        if not self.pending:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        if self._inflight is None and self._flush_call is None:
            self._schedule(0)
        return d

    def _fire_idle(self) -> None:
        if self.pending or not self._idle_waiters:
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for d in waiters:
            d.callback(None)

    def discard(self, node_ids: Sequence[str]) -> None:
        """Drop what is not committed yet of nodes this process no longer
        serves (they were taken over: their new owner writes the closed
        events from the rows it finds)."""
        gone = set(node_ids)
        self._batch = [r for r in self._batch if r.node_id not in gone]
        self._rows = {k: r for k, r in self._rows.items() if r.node_id not in gone}
        self._closes = [
            (c, q) for c, q in self._closes if self._close_nodes.get(c) not in gone
        ]
        for conn_id in [c for c, n in self._close_nodes.items() if n in gone]:
            del self._close_nodes[conn_id]
        self._blobs = {k: b for k, b in self._blobs.items() if k[0] not in gone}
        self._kept = {k: b for k, b in self._kept.items() if k[0] not in gone}
        self._fire_idle()

    def _take(self) -> _Batch:
        taken = _Batch(
            self._batch, self._closes, self._rows, self._blobs, self._uncertain
        )
        self._batch, self._closes, self._rows, self._blobs = [], [], {}, {}
        return taken

    def _put_back(self, taken: _Batch) -> None:
        self._batch = taken.events + self._batch
        self._closes = taken.closes + self._closes
        self._rows = {**taken.rows, **self._rows}
        self._blobs = {**taken.blobs, **self._blobs}

    @staticmethod
    def _write(store: IStore, taken: _Batch) -> None:
        """Write one batch inside the caller's transaction."""
        events, closes = taken.events, taken.closes
        if taken.uncertain:
            # The previous attempt failed, perhaps after its COMMIT reached
            # the database. Seqs are this owner's alone (fencing), so one
            # below the stored next_seq was committed by that attempt:
            # write it again and the store refuses the repeat, skip it and
            # it is offered once, with its seq, after this commit.
            stored = {n: store.next_seq(n) for n in {r.node_id for r in events}}
            events = [r for r in events if r.seq >= stored[r.node_id]]
        # Rows before closes: a row queued while open must not
        # overwrite the closed state recorded in this same batch.
        for conn_row in taken.rows.values():
            store.put_connection(conn_row)
        store.append_events(events)
        for conn_id, seq in closes:
            if taken.uncertain:
                # Recorded by the attempt that committed, or acknowledged
                # and deleted since: nothing left to do.
                row = store.get_connection(conn_id)
                if row is None or row.closed_seq == seq:
                    continue
            store.close_connection(conn_id, seq)
        for (node_id, peer), (blob, at) in taken.blobs.items():
            store.put_peer_storage(node_id, peer, blob, at)

    def _committed(self, taken: _Batch) -> None:
        """Offer a committed batch and tell observers."""
        self.failures = 0
        self._uncertain = False
        for conn_id, _ in taken.closes:
            self._close_nodes.pop(conn_id, None)
        if self.executor is not None:
            for key, (blob, _) in taken.blobs.items():
                self._kept[key] = blob
        offer = self.offer
        observers = self.observers
        for row in taken.events:
            online = offer(row)
            for fn in observers:
                fn(row, online)

    def flush(self) -> None:
        """Commit what is pending, then offer it and tell observers.

        Inline on the store; with an executor, start a commit (or let the
        one in flight be followed by another at once)."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()
        if self.executor is not None:
            self._flush_async(self.executor)
            return
        if not self._batch and not self._rows and not self._blobs:
            self._fire_idle()
            return
        taken = self._take()
        store = self.store
        try:
            with store.transaction():
                self._write(store, taken)
        except Exception:
            # Keep everything and try again shortly: nothing is offered to a
            # client before it is on disk.
            self.failures += 1
            self._uncertain = True
            self._log.failure(
                "could not commit {n} events; retrying", n=len(taken.events)
            )
            self._put_back(taken)
            if self._flush_call is None:
                self._schedule(self.retry_delay)
            return
        self._committed(taken)
        self._fire_idle()

    def _flush_async(self, executor: DatabaseExecutor[Any]) -> None:
        """One commit in flight on the executor; the next follows it."""
        if self._inflight is not None:
            return
        if not self._batch and not self._rows and not self._closes and not self._blobs:
            self._fire_idle()
            return
        taken = self._take()
        write = self._write

        def commit(store: IStore) -> None:
            write(store, taken)

        d = executor.write(commit)
        self._inflight = d

        def done(_: object) -> None:
            self._inflight = None
            self._committed(taken)
            self._after_commit()

        def failed(f: Failure) -> None:
            self._inflight = None
            if isinstance(f.value, NodeLost):
                lost = f.value.node_ids
                self._log.warn(
                    "{n} nodes were taken over by another process; dropping "
                    "their uncommitted events",
                    n=len(lost),
                )
                self._put_back(taken)
                self.discard(lost)
                if self.on_lost is not None:
                    self.on_lost(lost)
                self._after_commit()
                return
            self.failures += 1
            self._uncertain = True
            if isinstance(f.value, ExecutorStopped):
                # The process is stopping and its database threads are gone:
                # no retry can succeed (and a retry loop would outlive the
                # service). The rows stay unwritten: whoever takes the nodes
                # over writes "proxy failed" for their connections.
                self._put_back(taken)
                self._log.warn(
                    "the database executor stopped: {n} events not written",
                    n=len(taken.events),
                )
                return
            self._log.warn(
                "could not commit {n} events ({error}); retrying in {delay} s",
                n=len(taken.events),
                error=f.getErrorMessage(),
                delay=self.retry_delay,
            )
            self._put_back(taken)
            if self._flush_call is None:
                self._schedule(self.retry_delay)

        d.addCallbacks(done, failed)

    def _after_commit(self) -> None:
        """Start the next commit if anything gathered, else wake waiters."""
        if self._batch or self._rows or self._closes or self._blobs:
            if self._flush_call is None or not self._flush_call.active():
                self._flush_call = None
                self.flush()
        else:
            self._fire_idle()


@dataclass
class _Batch:
    """What one commit writes."""

    events: list[EventRow]
    closes: list[tuple[str, int]]
    rows: dict[str, ConnectionRow]
    blobs: dict[tuple[str, str], tuple[bytes, float]]
    #: The previous attempt failed and may have committed.
    uncertain: bool = False


def event_text(row: EventRow) -> str:
    """The notification of a stored event (JSON text)."""
    return notification_text(row.kind, row.params)
