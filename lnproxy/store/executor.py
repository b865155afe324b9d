"""Database work off the reactor thread: one writer thread that
group-commits, a few reader threads, and Deferreds back on the reactor.

A PostgreSQL store waits on the network, so a serving process must never
call it from the reactor thread. :class:`DatabaseExecutor` owns the store
connections (one store object per thread; a store is not thread-safe):

- :meth:`DatabaseExecutor.write` queues ``fn(store)`` for the **writer
  thread**. The writer takes everything queued since its last commit (the
  work of one or more reactor turns), runs each job in its own savepoint of
  one transaction and commits once: one round trip and one WAL flush for the
  whole group. A job that raises is undone alone (its Deferred fails); if
  the commit fails, every job of the group fails. Each Deferred fires on the
  reactor thread after the commit, in queue order, so the caller offers
  nothing before it is durable.
- :meth:`DatabaseExecutor.read` queues ``fn(store)`` for a **reader thread**
  (its own connection, no transaction), or the writer when there is none.

Why threads rather than psycopg's asyncio API is argued in
docs/architecture.md, "PostgreSQL and several processes": in short, the
reactor is not an asyncio loop in every deployment, the store interface is
synchronous and shared with SQLite, and one writer thread gives group
commit for free.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

from lnproxy.store.interface import IStore

__all__ = ["DatabaseExecutor", "ExecutorStopped"]

T = TypeVar("T")
S = TypeVar("S", bound=IStore)

_log = Logger()


class ExecutorStopped(Exception):
    """Work was queued after :meth:`DatabaseExecutor.stop`."""


@dataclass
class _Job(Generic[S]):
    """One queued piece of work and where its result goes."""

    fn: Callable[[S], Any]
    deferred: defer.Deferred[Any] = field(default_factory=defer.Deferred)


_STOP: Any = object()


class DatabaseExecutor(Generic[S]):
    """Runs store work on its own threads and answers with Deferreds.

    :param reactor: where results are delivered (``callFromThread``).
    :param writer: the store the writer thread uses (all writes).
    :param readers: stores for reader threads (one thread each); none means
        reads run on the writer thread too.
    :param max_group: the most jobs one commit takes.
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        writer: S,
        readers: Sequence[S] = (),
        max_group: int = 1000,
    ) -> None:
        self._reactor = reactor
        self.writer = writer
        self.readers = list(readers)
        self.max_group = max_group
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[Any] = (
            queue.SimpleQueue() if self.readers else self._writes
        )
        self._threads: list[threading.Thread] = []
        self._running = False
        self._stopped: defer.Deferred[None] | None = None
        self._alive = 0
        #: Commits made by the writer (for tests and metrics).
        self.commits = 0
        #: Write jobs committed (``jobs / commits`` is the group size).
        self.jobs = 0
        #: Jobs queued and not answered yet.
        self.queued = 0

    # -- lifecycle ----------------------------------------------------------

    def set_readers(self, readers: Sequence[S]) -> None:
        """Give the reader threads their stores (before :meth:`start`)."""
        if self._running:
            raise RuntimeError("set_readers after start")
        self.readers = list(readers)
        self._reads = queue.SimpleQueue() if self.readers else self._writes

    def start(self) -> None:
        """Start the threads (idempotent)."""
        if self._running:
            return
        self._running = True
        loops: list[tuple[str, Callable[[], None]]] = [
            ("lnproxy-db-writer", self._writer_loop)
        ]
        for i, store in enumerate(self.readers):
            loops.append(
                (f"lnproxy-db-reader-{i}", functools.partial(self._reader_loop, store))
            )
        self._alive = len(loops)
        for name, target in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> defer.Deferred[None]:
        """Finish what is queued, then end the threads; the Deferred fires
        when they are gone. The stores are not closed (their owner does)."""
        if self._stopped is not None:
            return self._stopped
        self._stopped = defer.Deferred()
        if not self._running:
            self._stopped.callback(None)
            return self._stopped
        self._running = False
        self._writes.put(_STOP)
        if self.readers:
            for _ in self.readers:
                self._reads.put(_STOP)
        return self._stopped

    def _thread_done(self) -> None:
        """A thread ended (reactor thread)."""
        self._alive -= 1
        if self._alive == 0 and self._stopped is not None:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(1.0)
            self._stopped.callback(None)

    # -- queueing (reactor thread) ------------------------------------------

    def write(self, fn: Callable[[S], T]) -> defer.Deferred[T]:
        """Run ``fn(writer_store)`` in the next group commit.

        :return: fires with ``fn``'s result after the commit, or fails with
            its exception (only its own writes undone) or the commit's.
        """
        return self._queue(self._writes, fn)

    def read(self, fn: Callable[[S], T]) -> defer.Deferred[T]:
        """Run ``fn(reader_store)`` on a reader thread (no transaction).

        :return: fires with ``fn``'s result, or fails with its exception.
        """
        return self._queue(self._reads, fn)

    def _queue(
        self, q: queue.SimpleQueue[Any], fn: Callable[[S], T]
    ) -> defer.Deferred[T]:
        if not self._running:
            return defer.fail(ExecutorStopped("the database executor is stopped"))
        job: _Job[S] = _Job(fn)
        self.queued += 1
        q.put(job)
        return job.deferred

    def _deliver(self, results: list[tuple[_Job[S], bool, Any]]) -> None:
        """Fire the Deferreds of answered jobs, in order (reactor thread)."""
        for job, ok, value in results:
            self.queued -= 1
            if ok:
                job.deferred.callback(value)
            else:
                job.deferred.errback(value)

    # -- threads ------------------------------------------------------------

    def _writer_loop(self) -> None:
        """Take all queued jobs, run them in one transaction, commit once."""
        store = self.writer
        stopping = False
        try:
            while not stopping:
                first = self._writes.get()
                if first is _STOP:
                    break
                group: list[_Job[S]] = [first]
                while len(group) < self.max_group:
                    try:
                        more = self._writes.get_nowait()
                    except queue.Empty:
                        break
                    if more is _STOP:
                        stopping = True
                        break
                    group.append(more)
                self._reactor.callFromThread(self._deliver, self._commit(store, group))
        finally:
            self._reactor.callFromThread(self._thread_done)

    def _commit(
        self, store: S, group: list[_Job[S]]
    ) -> list[tuple[_Job[S], bool, Any]]:
        """Run one group in one transaction (writer thread)."""
        results: list[tuple[_Job[S], bool, Any]] = []
        if len(group) == 1:
            # Alone in its group: its own transaction, no savepoint.
            job = group[0]
            try:
                with store.transaction():
                    value = job.fn(store)
            except Exception:
                return [(job, False, _last())]
            self.commits += 1
            self.jobs += 1
            return [(job, True, value)]
        try:
            with store.transaction():
                for job in group:
                    try:
                        with store.transaction():
                            value = job.fn(store)
                    except Exception:
                        results.append((job, False, _last()))
                    else:
                        results.append((job, True, value))
        except Exception:
            failure = _last()
            return [(job, False, failure) for job in group]
        self.commits += 1
        self.jobs += len(group)
        return results

    def _reader_loop(self, store: S) -> None:
        """Answer read jobs one by one (reader thread)."""
        try:
            while True:
                job = self._reads.get()
                if job is _STOP:
                    break
                try:
                    result = (job, True, job.fn(store))
                except Exception:
                    result = (job, False, _last())
                self._reactor.callFromThread(self._deliver, [result])
        finally:
            self._reactor.callFromThread(self._thread_done)


def _last() -> Failure:
    """The exception being handled, as a Failure without frames (it crosses
    threads)."""
    failure = Failure()
    failure.cleanFailure()
    return failure
