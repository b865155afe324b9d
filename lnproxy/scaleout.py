"""The parts of a process that runs in a deployment of several processes on
one PostgreSQL database (docs/protocol.md, "Running several processes
(scale-out)"), besides the store itself:

- :class:`ReactorStore`: what code on the reactor thread (the webhook
  notifier, the health check) may ask of the store. It answers from memory
  (the owner of a node keeps its webhooks; the hub keeps its inbox count)
  and queues writes on the database executor; anything that would wait on
  the network raises instead, so a missed path shows in tests rather than
  as a stalled reactor.
- :class:`HealthProbe`: asks the database, from a reader thread, whether
  it takes writes, once a second; ``/healthz`` reads the cached answer.
- :class:`Deployment`: the executor, the lease keeper and the probe of one
  process, started before the hub and stopped after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from lnproxy.leases import LeaseKeeper
from lnproxy.store.executor import DatabaseExecutor
from lnproxy.store.interface import (
    EventRow,
    NodeLost,
    StoreError,
    WebhookRow,
)
from lnproxy.store.postgres import Claim, PostgresStore

__all__ = ["ReactorStore", "HealthProbe", "Deployment"]

_log = Logger()


class ReactorStore:
    """The store as the reactor thread sees it on PostgreSQL: memory for
    reads, the executor for writes.

    :param executor: the database executor.
    :param server_secret: the server key (as the store's).
    :param pending: ``fn(node_id)``: the node's unacknowledged events (the
        hub's count).
    :param healthy: ``fn()``: whether the database and the lease are fine.
    :param on_lost: ``fn(node_ids)`` when a queued write met NodeLost.
    """

    def __init__(
        self,
        executor: DatabaseExecutor[PostgresStore],
        server_secret: bytes,
        pending: Callable[[str], int],
        healthy: Callable[[], bool],
        on_lost: Callable[[Sequence[str]], None],
    ) -> None:
        self.executor = executor
        self.server_secret = server_secret
        self._pending = pending
        self._healthy = healthy
        self._on_lost = on_lost
        self._webhooks: dict[str, list[WebhookRow]] = {}
        self._blobs: dict[str, dict[str, bytes]] = {}

    # -- what the owner keeps ------------------------------------------------

    def load(self, claim: Claim) -> None:
        """Keep a node's webhooks from its claim (it is ours now)."""
        self._webhooks[claim.node_id] = list(claim.webhooks)
        self._blobs[claim.node_id] = dict(claim.peer_storage)

    def forget(self, node_ids: Sequence[str]) -> None:
        """Drop nodes this process no longer serves."""
        for node_id in node_ids:
            self._webhooks.pop(node_id, None)
            self._blobs.pop(node_id, None)

    def webhooks(self, node_id: str) -> list[WebhookRow]:
        """The node's webhooks, oldest first (none if not ours)."""
        return list(self._webhooks.get(node_id, ()))

    def webhook_count(self, node_id: str) -> int:
        """The number of the node's webhooks."""
        return len(self._webhooks.get(node_id, ()))

    def add_webhook(self, row: WebhookRow) -> defer.Deferred[None]:
        """Add a webhook here at once and in the database by the next
        group commit.

        :return: fires once the row is committed (``webhook.set`` answers
            then); fails, with the webhook taken out again, if the write
            failed.
        :raises StoreError: if the node has one with that id, or is not
            served by this process.
        """
        hooks = self._webhooks.get(row.node_id)
        if hooks is None:
            raise StoreError(f"node {row.node_id} is not served by this process")
        if any(h.webhook_id == row.webhook_id for h in hooks):
            raise StoreError(
                f"node {row.node_id} already has a webhook {row.webhook_id!r}"
            )
        hooks.append(row)

        def undo(f: Failure) -> Failure:
            kept = self._webhooks.get(row.node_id)
            if kept is not None and row in kept:
                kept.remove(row)
            return f

        return self._queue(row.node_id, lambda s: s.add_webhook(row)).addErrback(
            undo
        )

    def remove_webhook(self, node_id: str, webhook_id: str) -> bool:
        """Remove a webhook here at once and in the database by the next
        group commit; return whether it existed."""
        hooks = self._webhooks.get(node_id, [])
        kept = [h for h in hooks if h.webhook_id != webhook_id]
        if len(kept) == len(hooks):
            return False
        self._webhooks[node_id] = kept
        self._queue(node_id, lambda s: s.remove_webhook(node_id, webhook_id)).addErrback(
            lambda _: None
        )
        return True

    def _queue(
        self, node_id: str, fn: Callable[[PostgresStore], Any]
    ) -> defer.Deferred[None]:
        """Queue a webhook write; a lost node is reported, other errors
        logged; the Deferred fails then too."""

        def failed(f: Failure) -> Failure:
            if isinstance(f.value, NodeLost):
                self._on_lost(f.value.node_ids)
            else:
                _log.failure("could not store a webhook of {node}", f, node=node_id)
            return f

        return self.executor.write(fn).addCallback(lambda _: None).addErrback(failed)

    def get_peer_storage(self, node_id: str, peer: str) -> bytes | None:
        """The blob a peer of the node gave, as loaded when the node was
        claimed (newer ones the journal keeps itself)."""
        return self._blobs.get(node_id, {}).get(peer)

    def pending_count(self, node_id: str) -> int:
        """The node's unacknowledged events, as the hub counts them."""
        return self._pending(node_id)

    def newest_summons(self) -> list[EventRow]:
        """None at start: on PostgreSQL the nodes of a stopped or crashed
        process are woken by whoever takes them over (with
        :attr:`Claim.newest_summon`), once across the deployment."""
        return []

    def writable(self) -> bool:
        """The last health probe's answer (and the lease held)."""
        return self._healthy()

    def __getattr__(self, name: str) -> Any:
        """Any other store method would wait on the network: refuse."""
        raise StoreError(
            f"store.{name} would wait on the database on the reactor thread; "
            "use the database executor"
        )


class HealthProbe:
    """Asks the database once a second (on a reader thread) whether it
    takes writes; :attr:`ok` is the last answer, False after ``timeout``
    seconds without one.

    :param executor: the database executor.
    :param clock: the reactor's time.
    """

    def __init__(
        self,
        executor: DatabaseExecutor[PostgresStore],
        clock: IReactorTime,
        interval: float = 1.0,
        timeout: float = 3.0,
    ) -> None:
        self.executor = executor
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self._answered_at: float | None = None
        self._last = False
        self._busy = False
        self._loop: LoopingCall | None = None

    @property
    def ok(self) -> bool:
        """Whether the database answered writable within the timeout."""
        if self._answered_at is None:
            return False
        fresh = self.clock.seconds() - self._answered_at < self.timeout
        return self._last and fresh

    def start(self) -> None:
        """Probe now and then every ``interval`` seconds."""
        self._loop = LoopingCall(self.probe)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """Stop probing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def probe(self) -> None:
        """One probe (skipped while the last one has not answered)."""
        if self._busy:
            return
        self._busy = True

        def answered(writable: bool) -> None:
            self._busy = False
            self._last = bool(writable)
            self._answered_at = self.clock.seconds()

        def failed(_: Failure) -> None:
            self._busy = False
            self._last = False
            self._answered_at = self.clock.seconds()

        self.executor.read(lambda s: s.writable()).addCallbacks(answered, failed)


class Deployment(service.Service):
    """The database side of one process of a deployment on PostgreSQL.

    The executor and the lease keeper exist from construction (the hub is
    built with them); :meth:`prepare` connects and registers, at start.

    :param reactor: the reactor (time and ``callFromThread``).
    :param store: the opened writer store (suspended is fine).
    :param public_url: ``--public-url``.
    :param lease_timeout: ``--lease-timeout``.
    :param readers: reader threads (each with its own connection).
    """

    def __init__(
        self,
        reactor: Any,
        store: PostgresStore,
        public_url: str,
        lease_timeout: float,
        readers: int = 2,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.public_url = public_url
        self.lease_timeout = lease_timeout
        self._reader_count = readers
        self._readers: list[PostgresStore] = []
        from_threads: IReactorFromThreads = reactor
        self.executor: DatabaseExecutor[PostgresStore] = DatabaseExecutor(
            from_threads, store
        )
        #: Set before start: called with nodes lost / claims taken over.
        self.on_lost: Callable[[Sequence[str]], None] = lambda ids: None
        self.on_taken: Callable[[list[Claim]], None] = lambda claims: None
        self.keeper = LeaseKeeper(
            self.executor,
            reactor,
            public_url,
            lease_timeout,
            lambda ids: self.on_lost(ids),
            lambda claims: self.on_taken(claims),
        )
        self.probe = HealthProbe(self.executor, reactor)

    def prepare(self) -> None:
        """Connect (writer and readers) and register this process,
        synchronously: at start-up, before any client is accepted.

        :raises StoreError: if the database cannot be reached.
        """
        self.store.resume()
        self._readers = [self.store.clone() for _ in range(self._reader_count)]
        for reader in self._readers:
            reader.resume()
        self.executor.set_readers(self._readers)
        self.keeper.register_now(self.store)
        _log.info(
            "registered as process {pid} at {url} (lease {timeout} s)",
            pid=self.store.process_id,
            url=self.public_url,
            timeout=self.lease_timeout,
        )

    @property
    def healthy(self) -> bool:
        """The database answers writable and the lease is held."""
        return self.probe.ok and self.keeper.valid

    def startService(self) -> None:
        """Start the threads, the renewals and the probe."""
        super().startService()
        self.executor.start()
        self.keeper.startService()
        self.probe.start()

    @defer.inlineCallbacks
    def shutdown(self) -> Any:
        """After the hub stopped: end the lease, finish queued work, close
        every connection.

        Each database wait is bounded by :data:`STOP_WAIT`: a database that
        hangs (frozen, its disk stuck) rather than refuses must not keep
        the process from exiting. Work still queued then is dropped
        uncommitted (nothing of it was offered; whoever takes the nodes over
        writes ``proxy failed`` for their connections); the threads are
        daemons, and the connections they hold are left to the exit.
        """
        finished = True
        try:
            self.probe.stop()
            yield self.keeper.stopService()
            if self.executor._running:
                ended = yield _within(
                    self.reactor, STOP_WAIT, self.keeper.unregister()
                )
                if not ended:
                    _log.warn("could not end the lease at stop")
                finished = yield _within(self.reactor, STOP_WAIT, self.executor.stop())
                if not finished:
                    _log.warn(
                        "the database did not answer within {s} s at stop: "
                        "{n} jobs dropped uncommitted",
                        s=STOP_WAIT,
                        n=self.executor.queued,
                    )
        finally:
            if finished:
                for reader in self._readers:
                    reader.close()
                self.store.close()


#: Seconds a stop waits for each database step (the lease's end, the
#: queued work) before it goes without it.
STOP_WAIT = 5.0


def _within(
    clock: IReactorTime, seconds: float, d: defer.Deferred[Any]
) -> defer.Deferred[bool]:
    """Fire with True when ``d`` fires (either way), or with False after
    ``seconds``; ``d`` itself is left alone (it may fire later)."""
    done: defer.Deferred[bool] = defer.Deferred()

    def finish(ok: bool) -> None:
        if not done.called:
            done.callback(ok)

    def settled(result: object) -> None:
        if isinstance(result, Failure):
            _log.warn("at stop: {e}", e=result.getErrorMessage())
        finish(True)

    d.addBoth(settled)
    timer = clock.callLater(seconds, finish, False)

    def stop_timer(ok: bool) -> bool:
        if timer.active():
            timer.cancel()
        return ok

    return done.addCallback(stop_timer)
