"""This process's side of node ownership in a deployment of several
processes on one PostgreSQL database (docs/protocol.md, "Running several
processes (scale-out)").

:class:`LeaseKeeper` runs on the reactor; every database call goes through
the :class:`~lnproxy.store.executor.DatabaseExecutor`'s writer thread (the
store keeps which nodes it owns at which epoch, so all ownership work stays
on that one thread). It:

- registers the process (its ``--public-url``) and renews its lease every
  third of ``--lease-timeout`` with one UPDATE, however many nodes it owns;
- keeps a **local deadline**: the send time of the last successful renewal
  plus the lease timeout. The database dates the lease from when the UPDATE
  ran, after the send, so this deadline passes first: when it does (the
  database is unreachable, the process was paused) the keeper tells
  :attr:`on_lost` that every node is gone *before* another process may
  claim them, and the hub stops serving them at once;
- claims nodes for logins (:meth:`claim`) and, on the same period, takes
  over the nodes of processes whose lease expired (:attr:`on_taken`, which
  writes their ``closed`` events and so wakes their clients);
- at a clean stop, ends its lease at once (:meth:`unregister`).

Nothing here depends on LISTEN/NOTIFY: the periodic checks are the
mechanism, and correctness rests on the epoch fencing in the store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from lnproxy.store.executor import DatabaseExecutor
from lnproxy.store.postgres import Claim, PostgresStore

__all__ = ["LeaseKeeper", "LeaseLapsed"]

#: Nodes one take-over transaction claims (several survivors share a dead
#: process's nodes by chunks).
TAKE_OVER_CHUNK = 200


class LeaseLapsed(Exception):
    """This process's lease has lapsed (the database is unreachable or the
    process was paused): it may not claim or serve nodes until a renewal
    succeeds."""


class LeaseKeeper(service.Service):
    """Registers, renews, claims and takes over nodes for one process.

    :param executor: the database executor (its writer is a
        :class:`PostgresStore`).
    :param clock: the reactor's time.
    :param public_url: this process's ``--public-url``.
    :param lease_timeout: ``--lease-timeout`` in seconds.
    :param on_lost: called as ``fn(node_ids)`` with nodes this process no
        longer owns; it must stop serving them at once.
    :param on_taken: called as ``fn(claims)`` with nodes taken over from a
        dead process (each with the connections to close).
    """

    _log = Logger()

    def __init__(
        self,
        executor: DatabaseExecutor[PostgresStore],
        clock: IReactorTime,
        public_url: str,
        lease_timeout: float,
        on_lost: Callable[[Sequence[str]], None],
        on_taken: Callable[[list[Claim]], None],
    ) -> None:
        self.executor = executor
        self.clock = clock
        self.public_url = public_url
        self.lease_timeout = lease_timeout
        self.on_lost = on_lost
        self.on_taken = on_taken
        self.interval = lease_timeout / 3.0
        #: The local deadline of the lease (reactor clock), None while none.
        self.deadline: float | None = None
        self._watchdog: IDelayedCall | None = None
        self._loop: LoopingCall | None = None
        self._busy = False
        #: Renewals and take-overs that failed in a row (for health/logs).
        self.failures = 0
        #: Nodes this process serves, as the keeper knows them (reactor side).
        self.nodes: set[str] = set()

    # -- lifecycle ----------------------------------------------------------

    @property
    def valid(self) -> bool:
        """Whether the lease is held (renewed within the lease timeout)."""
        return self.deadline is not None and self.clock.seconds() < self.deadline

    def register_now(self, store: PostgresStore) -> str:
        """Register synchronously with ``store`` (at start-up, before the
        executor runs and before any client is accepted) and start the
        local deadline. Returns the process id.

        :raises DBError: if the database cannot be reached.
        """
        sent = self.clock.seconds()
        process_id = store.register(self.public_url, self.lease_timeout)
        self._extend(sent)
        return process_id

    def startService(self) -> None:
        """Start the periodic renewal and failover check."""
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        """Stop renewing (the caller then runs :meth:`unregister`)."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._cancel_watchdog()
        return defer.succeed(None)

    def unregister(self) -> defer.Deferred[None]:
        """End this process's lease now (a clean stop, after the hub wrote
        its ``closed`` events): another process claims a node at once at
        its next login, and the others' next take-over round gets the rest
        and wakes the clients waiting for a summon."""
        self.nodes.clear()
        return self.executor.write(lambda s: s.unregister())

    # -- the lease ----------------------------------------------------------

    def _extend(self, sent: float) -> None:
        """A renewal sent at ``sent`` succeeded: move the local deadline."""
        self.deadline = sent + self.lease_timeout
        self.failures = 0
        self._cancel_watchdog()
        delay = max(0.0, self.deadline - self.clock.seconds())
        self._watchdog = self.clock.callLater(delay, self._lapsed)

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _lapsed(self) -> None:
        """The local deadline passed without a renewal: every node may be
        claimed by others from now on, so stop serving all of them."""
        self._watchdog = None
        self.deadline = None
        lost = sorted(self.nodes)
        self._log.warn(
            "lease lapsed (no renewal for {timeout} s): giving up {count} nodes",
            timeout=self.lease_timeout,
            count=len(lost),
        )
        self._lose(lost)

    def _lose(self, node_ids: Sequence[str]) -> None:
        """Forget nodes here and in the store's fencing map; tell the hub."""
        if not node_ids:
            return
        for node_id in node_ids:
            self.nodes.discard(node_id)
        ids = list(node_ids)
        self.executor.write(lambda s: s.forget(ids)).addErrback(lambda _: None)
        self.on_lost(ids)

    def tick(self) -> defer.Deferred[None]:
        """Renew the lease, then take over nodes of expired processes.

        Skipped while the previous tick still runs (a slow database must not
        pile renewals up).
        """
        if self._busy:
            return defer.succeed(None)
        self._busy = True
        d = self._renew()
        d.addCallback(lambda _: self._take_over() if self.valid else None)
        d.addErrback(self._tick_failed)

        def done(_: object) -> None:
            self._busy = False

        d.addBoth(done)
        return d

    def _renew(self) -> defer.Deferred[None]:
        sent = self.clock.seconds()

        def renewed(lost: list[str]) -> None:
            if not self.running:
                # Answered after the stop (a slow database): no new
                # watchdog may outlive the service.
                return
            self._extend(sent)
            lost = [n for n in lost if n in self.nodes]
            if lost:
                self._lose(lost)

        return self.executor.write(lambda s: s.renew()).addCallback(renewed)

    @defer.inlineCallbacks
    def _take_over(self) -> Any:
        while self.valid and self.running:
            claims = yield self.executor.write(
                lambda s: s.take_over(TAKE_OVER_CHUNK)
            )
            if not claims:
                return
            for claim in claims:
                self.nodes.add(claim.node_id)
            self._log.info(
                "took over {count} nodes of expired processes", count=len(claims)
            )
            self.on_taken(claims)
            if len(claims) < TAKE_OVER_CHUNK:
                return

    def _tick_failed(self, f: Failure) -> None:
        self.failures += 1
        self._log.warn(
            "lease renewal failed ({n} in a row): {error}",
            n=self.failures,
            error=f.getErrorMessage(),
        )

    # -- nodes --------------------------------------------------------------

    def claim(self, node_id: str) -> defer.Deferred[Claim]:
        """Find the node's owner, becoming it when there is no live one.

        :return: the :class:`Claim`; fails with :class:`LeaseLapsed` while
            the lease is not held.
        """
        if not self.valid:
            return defer.fail(
                LeaseLapsed("this process's lease has lapsed; try again shortly")
            )

        me = self.executor.writer.process_id or ""

        def check(url: str | None) -> Claim | defer.Deferred[Claim]:
            if url is not None:
                # Served by a live process: redirect without writing.
                return Claim(node_id, owned=False, url=url)
            return self.executor.write(lambda s: s.claim(node_id)).addCallback(
                claimed
            )

        def claimed(claim: Claim) -> Claim:
            if claim.owned:
                if not self.valid:
                    # The lease lapsed while the claim was on its way: do
                    # not start serving what others may take.
                    self._lose([node_id])
                    raise LeaseLapsed("this process's lease has lapsed")
                self.nodes.add(node_id)
            return claim

        return self.executor.read(
            lambda s: s.other_live_owner(node_id, me)
        ).addCallback(check)

    def release(self, node_ids: Sequence[str]) -> defer.Deferred[None]:
        """Give nodes up (no owner) so that any process claims them next."""
        ids = list(node_ids)
        for node_id in ids:
            self.nodes.discard(node_id)
        return self.executor.write(lambda s: s.release(ids))

    def lost(self, node_ids: Sequence[str]) -> None:
        """The store refused a write with NodeLost: the nodes are gone."""
        self._lose([n for n in node_ids if n in self.nodes])
