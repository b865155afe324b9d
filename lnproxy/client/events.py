"""The client's event pipeline: every event handed to the application once,
in seq order (docs/protocol.md, "Events").

:class:`EventPipeline` takes the durable events (``message``, ``closed``,
...) the proxy sends, and hands them to the application's callback one at a
time, in ``seq`` order.  After the callback succeeds (it may return a
Deferred) it records the seq in the :class:`~lnproxy.client.state.SavedState`
and only then acknowledges it.  A replay of an event already recorded
(after a crash between the record and the ack, after a reconnect, from a
proxy restart) is acknowledged again but not delivered.  A failing callback,
or a failing save, is retried with backoff.

Acks are coalesced: the seqs recorded (or replayed) during one turn of the
reactor go out as one ``ack`` of the highest of them, sent by a
``callLater(0)`` (an ack covers every lower seq too).  A burst of events
read from one WebSocket frame batch thus costs the proxy one ack instead of
one per event.  Nothing is acknowledged before its handler finished and its
seq was saved; a pending ack is sent at once by :meth:`EventPipeline.halt`
(a clean stop), dropped by :meth:`EventPipeline.abort` and when the proxy
turns out to be another one.

Other parts may add to what is recorded with an event's seq, in the same
write, through an :class:`EventFollowUp` (the re-handshake of a persistent
peer, :mod:`lnproxy.client.peers`).

The pipeline sends nothing itself: acknowledging is a callable its owner
provides.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from lnproxy.client.state import ClientState, SavedState, StateChange

__all__ = ["Event", "EventFollowUp", "EventPipeline"]


@dataclass(frozen=True)
class Event:
    """One durable event from the proxy (``message``, ``closed``, ...).

    :ivar kind: the notification's method: ``"message"`` or ``"closed"``
        (later protocol versions may add kinds; they are delivered too).
    :ivar params: the notification's params, as sent.
    """

    kind: str
    params: Mapping[str, Any]

    @property
    def seq(self) -> int:
        """The per-node sequence number."""
        return int(self.params["seq"])

    @property
    def at(self) -> float:
        """When the proxy stored it (unix seconds)."""
        return float(self.params.get("at", 0.0))

    @property
    def conn(self) -> str | None:
        """The connection id, for ``message`` and ``closed``."""
        return self.params.get("conn")

    @property
    def peer(self) -> str | None:
        """The peer node id (hex)."""
        return self.params.get("peer")

    @property
    def msg(self) -> bytes | None:
        """The whole Lightning message (type included) of a ``message``."""
        text = self.params.get("msg")
        return bytes.fromhex(text) if isinstance(text, str) else None

    @property
    def type(self) -> int | None:
        """The Lightning message type of a ``message``."""
        return self.params.get("type")

    @property
    def summon(self) -> bool:
        """Whether the policy says this message needs the client."""
        return bool(self.params.get("summon", False))

    @property
    def reason(self) -> str | None:
        """Why a connection closed (``closed``)."""
        return self.params.get("reason")

    @property
    def reconnect(self) -> bool:
        """Whether a ``closed`` connection asks for a new handshake."""
        return self.params.get("reconnect") is True

    def as_json(self) -> dict[str, Any]:
        """``{"event": kind, **params}``: one JSON line of ``listen``."""
        return {"event": self.kind, **self.params}


class EventFollowUp(TypingProtocol):
    """What another part of the client does with a handled event."""

    def change_for(self, event: Event) -> defer.Deferred[StateChange | None]:
        """A change to record together with ``event``'s seq, or None.

        Called after the application handled ``event``; the change is
        applied to the state current at the time of the write.
        """

    def recorded(self, event: Event) -> None:
        """``event`` and its change are saved and acknowledged."""


def _advance(seq: int, extra: StateChange | None) -> StateChange:
    """The change that records ``seq`` (and ``extra``, in the same write)."""

    def change(st: ClientState) -> ClientState:
        if extra is not None:
            st = extra(st)
        return st.evolve(last_seq=max(st.last_seq, seq))

    return change


class EventPipeline:
    """Exactly-once, in-order delivery (see the module docstring).

    :param clock: timers for the retries.
    :param saved: the state (its ``last_seq`` says what was handled).
    :param deliver: the application's callback; may return a Deferred.
    :param ack: sends ``ack`` for a seq (may do nothing while logged out);
        called at most once per reactor turn, with the highest seq of it.
    :param retry_policy: ``attempt -> seconds`` before a retry.
    :param follow_up: what else to record with an event.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        saved: SavedState,
        deliver: Callable[[Event], Any],
        ack: Callable[[int], None],
        retry_policy: Callable[[int], float],
        follow_up: EventFollowUp,
    ) -> None:
        self.clock = clock
        self.saved = saved
        self.retry_policy = retry_policy
        self._deliver = deliver
        self._send_ack = ack
        self._follow_up = follow_up
        self._running = False
        self._aborted = False
        self._queue: deque[Event] = deque()
        self._busy = False
        self._pumping = False
        self._retry_call: IDelayedCall | None = None
        self._failures = 0
        #: A record whose save failed, to retry before anything else.
        self._unsaved: tuple[StateChange, Event] | None = None
        #: Bumped when the proxy turns out to be another one: work begun
        #: for the former proxy's events is dropped, not recorded.
        self._generation = 0
        #: The highest seq to acknowledge at the end of this reactor turn
        #: (0: none), and the call that will send it.
        self._ack_wanted = 0
        self._ack_call: IDelayedCall | None = None

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Accept events (again)."""
        self._running = True

    def halt(self) -> None:
        """Forget queued events and stop retrying.

        The proxy keeps what was not acknowledged and sends it again; a
        callback already running may finish and be recorded.  An ack
        waiting for the end of the reactor turn is sent now, while the
        session is still there.
        """
        self._running = False
        self._queue.clear()
        self._cancel_retry()
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
            self._flush_ack()

    def abort(self) -> None:
        """Stop at once, as a crash would: record and acknowledge nothing
        more, not even for a callback already running."""
        self._aborted = True
        self.halt()
        self._drop_ack()

    def _cancel_retry(self) -> None:
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None

    # -- input ---------------------------------------------------------------------

    def push(self, event: Event) -> None:
        """An event from the proxy, in the order it arrived."""
        self._queue.append(event)
        self.pump()

    def adopt_server(self, server_id: str) -> None:
        """Tie the state to the proxy ``server_id``; another proxy's seqs
        start over.

        When the proxy is not the one the state was recorded against, the
        handled-seq record is reset, and events of the former proxy still
        queued or being handled are dropped: their seqs mean nothing to the
        new one, which must neither see them acknowledged nor have them
        skip its own events.

        :raise Exception: when the state cannot be saved.
        """
        st = self.saved.current
        if st.server_id == server_id:
            return
        if st.server_id is not None:
            self._log.warn(
                "proxy server_id changed from {old} to {new}: its event seqs start "
                "over, so the handled-seq record is reset",
                old=st.server_id,
                new=server_id,
            )
            self._generation += 1
            self._drop_ack()
            self._queue.clear()
            self._unsaved = None
            self._failures = 0
            self._cancel_retry()
        self.saved.update(lambda s: s.evolve(server_id=server_id, last_seq=0))

    # -- delivery --------------------------------------------------------------------

    def pump(self) -> None:
        """Hand queued events to the callback, one at a time."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._busy and not self._aborted and self._retry_call is None:
                if self._unsaved is not None:
                    self._busy = True
                    self._record(*self._unsaved)
                    continue
                if not self._queue:
                    return
                event = self._queue.popleft()
                if event.seq <= self.saved.current.last_seq:
                    # Handled before (replay after a reconnect, a crash, a
                    # restart): acknowledge it again, do not deliver it.
                    self._ack(event.seq)
                    continue
                self._busy = True
                d = defer.maybeDeferred(self._deliver, event)
                d.addBoth(self._handled, event, self._generation)
        finally:
            self._pumping = False

    def _stale(self, generation: int) -> bool:
        """Whether work begun at ``generation`` belongs to a former proxy
        (then the pipeline moves on without it)."""
        if generation == self._generation:
            return False
        self._busy = False
        self.pump()
        return True

    def _handled(self, result: Any, event: Event, generation: int) -> None:
        if self._aborted or self._stale(generation):
            return
        if isinstance(result, Failure):
            self._failures += 1
            self._log.failure(
                "event callback failed for seq {seq}; retrying", result, seq=event.seq
            )
            if self._running:
                # Put it back at the head unless a stop emptied the queue
                # (then the proxy will send it again).
                self._queue.appendleft(event)
                self._schedule_retry()
            self._busy = False
            return
        self._failures = 0
        d = defer.maybeDeferred(self._follow_up.change_for, event)
        d.addCallback(self._follow_up_done, event, generation)
        d.addErrback(self._record_failed, event)

    def _follow_up_done(
        self, extra: StateChange | None, event: Event, generation: int
    ) -> None:
        if self._aborted or self._stale(generation):
            return
        self._record(_advance(event.seq, extra), event)

    def _record_failed(self, f: Failure, event: Event) -> None:
        # Only a bug gets here; deliver the event again rather than lose it.
        self._log.failure("cannot record seq {seq}", f, seq=event.seq)
        if self._running and not self._aborted:
            self._queue.appendleft(event)
            self._failures += 1
            self._schedule_retry()
        self._busy = False

    def _record(self, change: StateChange, event: Event) -> None:
        """Save the state, then acknowledge; retry the save if it fails."""
        if self._aborted:
            return
        try:
            st = self.saved.update(change)
        except Exception:
            if self._aborted:
                return
            self._log.failure("cannot save the client state; retrying")
            self._unsaved = (change, event)
            self._failures += 1
            self._schedule_retry()
            self._busy = False
            return
        self._unsaved = None
        self._failures = 0
        if self._aborted:
            return
        self._ack(st.last_seq)
        self._follow_up.recorded(event)
        self._busy = False
        self.pump()

    def _schedule_retry(self) -> None:
        delay = self.retry_policy(self._failures)

        def retry() -> None:
            self._retry_call = None
            self.pump()

        self._retry_call = self.clock.callLater(delay, retry)

    def _ack(self, seq: int) -> None:
        """Acknowledge ``seq`` at the end of this reactor turn, together
        with every other seq recorded in it (one ``ack`` of the highest)."""
        if self._aborted or seq <= 0:
            return
        self._ack_wanted = max(self._ack_wanted, seq)
        if self._ack_call is None:
            self._ack_call = self.clock.callLater(0, self._flush_ack)

    def _flush_ack(self) -> None:
        """Send the coalesced ack."""
        self._ack_call = None
        seq, self._ack_wanted = self._ack_wanted, 0
        if self._aborted or seq <= 0:
            return
        self._send_ack(seq)

    def _drop_ack(self) -> None:
        """Forget an ack not sent yet (a crash, or another proxy)."""
        if self._ack_call is not None and self._ack_call.active():
            self._ack_call.cancel()
        self._ack_call = None
        self._ack_wanted = 0
