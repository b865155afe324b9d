"""The server's back end for several devices of one node: lease, vault,
account (docs/protocol.md, "Several devices of one node").

:class:`Devices` holds what the ``lease.*``, ``vault.*`` and ``account.*``
methods need and does their work; :mod:`lnproxy.api` validates nothing of
its own for them, calls these methods with the request's ``params`` and
turns a :class:`DeviceError` into the error reply.  Sessions are opaque
hashable objects (the API passes its protocol instance).

- The lease is in memory (:class:`lnproxy.lease.LeaseBook`): it belongs to
  a session, and sessions do not outlive the process.
- Vault entries and accounts are in the store (:class:`IStore`), written
  with the same durability as events.  With PostgreSQL (``database``, the
  database executor) every store call runs on the executor's threads and
  the methods answer with Deferreds: the reactor never waits on the
  network.
- ``auth`` is hashed with scrypt (:mod:`lnproxy.accounts`) in a thread, at
  most :attr:`Devices.max_hashing` at a time; more waiting than
  :attr:`Devices.max_waiting` answer code 7, and so does a session that
  already has :attr:`Devices.max_per_session` hashes waiting or running
  (one client cannot fill the queue that every other client shares).
- Failed ``account.login`` attempts are counted per user name, and an
  attempt counts as failed from its start until it succeeds, so parallel
  attempts cannot overrun the limit.  An attempt turned away with code 7
  because the hashing queue is full was never checked and does not count
  (a flood by someone else must not lock a user out).

Nothing here logs an ``auth``, a blob or a hash.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger

from lnproxy import accounts, vault
from lnproxy.lease import LeaseBook, LeaseHeld
from lnproxy.protocol import (
    INVALID_PARAMS,
    LEASE_HELD,
    LIMIT_EXCEEDED,
    LOGIN_FAILED,
    NOT_ALLOWED,
    VERSION_CONFLICT,
)
from lnproxy.store.interface import (
    AccountRow,
    IStore,
    UserTaken,
    VaultFull,
    VersionConflict,
)

if TYPE_CHECKING:
    from lnproxy.store.executor import DatabaseExecutor

__all__ = [
    "DeviceError",
    "DeviceLimits",
    "Devices",
    "thread_runner",
    "inline_runner",
]

S = TypeVar("S", bound=Hashable)
T = TypeVar("T")


def thread_runner(
    reactor: IReactorThreads,
) -> Callable[[Callable[[], Any]], defer.Deferred[Any]]:
    """A runner for CPU-heavy calls (``run(fn) -> Deferred``) on the
    reactor's thread pool (scrypt releases the GIL, so the reactor keeps
    running while it hashes)."""

    def run(fn: Callable[[], Any]) -> defer.Deferred[Any]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), fn)

    return run


def inline_runner(fn: Callable[[], Any]) -> defer.Deferred[Any]:
    """A runner that runs the call at once (for unit tests)."""
    return defer.maybeDeferred(fn)


class DeviceError(Exception):
    """An error reply for a lease, vault or account method."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


@dataclass(frozen=True)
class DeviceLimits:
    """The vault's limits (``hello.limits``) and the login limiter's.

    :param vault_entries_per_node: names one node may keep in the vault.
    :param vault_blob_max: the largest vault blob in bytes.
    :param login_failures: failed ``account.login`` attempts for one user
        name within ``login_window`` after which it answers code 7.
    :param login_window: seconds a failed attempt counts.
    """

    vault_entries_per_node: int = vault.VAULT_ENTRIES_PER_NODE
    vault_blob_max: int = vault.VAULT_BLOB_MAX
    login_failures: int = 5
    login_window: float = 300.0

    def as_hello(self) -> dict[str, Any]:
        """The entries this adds to ``hello.limits``."""
        return {
            "vault_entries_per_node": self.vault_entries_per_node,
            "vault_blob_max": self.vault_blob_max,
        }


def _param_error(e: vault.ParamError) -> DeviceError:
    return DeviceError(e.code, e.message)


class Devices(Generic[S]):
    """Lease, vault and account methods for every node of this process.

    :param store: where vault entries and accounts live.
    :param clock: the time source (vault ``updated``, the limiter, leases).
    :param run_hash: runs scrypt off the reactor thread
        (:func:`thread_runner`); :func:`inline_runner` in unit tests.
    :param limits: the vault's and the limiter's limits.
    :param database: the database executor (PostgreSQL): store calls run
        on its threads and the vault and account methods return Deferreds.
        None (SQLite): store calls run inline, as before.
    """

    _log = Logger()

    #: scrypt calls running at once.
    max_hashing = 2
    #: scrypt calls waiting for a slot; one more answers code 7.
    max_waiting = 64
    #: scrypt calls (waiting or running) of one session; one more answers 7.
    max_per_session = 2

    def __init__(
        self,
        store: IStore,
        clock: IReactorTime,
        run_hash: Callable[[Callable[[], Any]], defer.Deferred[Any]],
        limits: DeviceLimits | None = None,
        database: DatabaseExecutor[Any] | None = None,
    ) -> None:
        self.store = store
        self.database = database
        self.clock = clock
        self.limits = limits or DeviceLimits()
        self.leases: LeaseBook[S] = LeaseBook(clock)
        self.limiter = accounts.LoginLimiter(
            clock,
            max_failures=self.limits.login_failures,
            window=self.limits.login_window,
        )
        self._run_hash = run_hash
        self._hashing = defer.DeferredSemaphore(self.max_hashing)
        #: Hashes waiting or running per session (no entry for none).
        self._hashes_of: dict[Hashable, int] = {}

    def _store(
        self,
        fn: Callable[[IStore], Any],
        then: Callable[[Any], Any],
        write: bool,
    ) -> Any:
        """Run ``fn(store)`` and pass its result to ``then``: inline (its
        errors raised) without a database executor, else on the executor
        (writer or reader thread) with ``then`` as a callback."""
        if self.database is None:
            return then(fn(self.store))
        run = self.database.write if write else self.database.read
        return run(fn).addCallback(then)

    def _hash_refused(self, session: Hashable | None) -> DeviceError | None:
        """The code 7 answer when no hash may be queued for ``session`` now."""
        if session is not None and (
            self._hashes_of.get(session, 0) >= self.max_per_session
        ):
            return DeviceError(
                LIMIT_EXCEEDED, "too many account requests at once; retry later"
            )
        if len(self._hashing.waiting) >= self.max_waiting:
            return DeviceError(LIMIT_EXCEEDED, "too many account requests; retry later")
        return None

    def _hash(self, fn: Callable[[], T], session: Hashable | None) -> defer.Deferred[T]:
        """Run ``fn`` (scrypt) in a hashing slot; the caller checked
        :meth:`_hash_refused` first.

        The first hash of the process also makes the unknown-user record
        (:func:`lnproxy.accounts.prepare`), whichever account method it is
        for: were it left to the first unknown-user login, that one attempt
        would take twice as long as for a known user.
        """
        job: Callable[[], T] = fn
        if not accounts.prepared():

            def first_job() -> T:
                accounts.prepare()
                return fn()

            job = first_job
        if session is None:
            return self._hashing.run(self._run_hash, job)
        self._hashes_of[session] = self._hashes_of.get(session, 0) + 1

        def done(result: Any) -> Any:
            left = self._hashes_of.pop(session, 1) - 1
            if left > 0:
                self._hashes_of[session] = left
            return result

        return self._hashing.run(self._run_hash, job).addBoth(done)

    # -- lease ----------------------------------------------------------------

    def check_write(self, node_id: str, session: S) -> None:
        """:raise DeviceError: code 11 when another session holds the lease."""
        try:
            self.leases.check_write(node_id, session)
        except LeaseHeld as e:
            raise DeviceError(LEASE_HELD, str(e)) from None

    def lease_acquire(
        self, node_id: str, session: S, params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], S | None]:
        """``lease.acquire {force?}``: the result and the session that lost
        the lease (to be sent the ``lease`` notification), if any."""
        force = params.get("force", False)
        if not isinstance(force, bool):
            raise DeviceError(INVALID_PARAMS, "parameter 'force' must be a boolean")
        try:
            acquired = self.leases.acquire(node_id, session, force)
        except LeaseHeld as e:
            raise DeviceError(LEASE_HELD, str(e)) from None
        self._log.info(
            "node {node} writer lease taken{how}",
            node=node_id,
            how=" (moved by force)" if acquired.former is not None else "",
        )
        return {"writer": True}, acquired.former

    def lease_release(self, node_id: str, session: S) -> dict[str, Any]:
        """``lease.release {}`` -> ``{}`` (also when not the holder)."""
        if self.leases.release(node_id, session):
            self._log.info("node {node} writer lease released", node=node_id)
        return {}

    def session_ended(self, node_id: str, session: S) -> None:
        """A session closed: its lease ends."""
        if self.leases.session_ended(node_id, session):
            self._log.info(
                "node {node} writer lease ended with its session", node=node_id
            )

    # -- vault ------------------------------------------------------------------

    def vault_put(self, node_id: str, params: Mapping[str, Any]) -> Any:
        """``vault.put {name, blob, version}`` -> ``{version}``."""
        try:
            name = vault.vault_name(params)
            blob = vault.vault_blob(params, self.limits.vault_blob_max)
            version = vault.vault_version(params)
        except vault.ParamError as e:
            raise _param_error(e) from None
        limit = self.limits.vault_entries_per_node
        now = self.clock.seconds()

        def put(store: IStore) -> Any:
            try:
                return store.vault_put(node_id, name, blob, version, limit, now)
            except VersionConflict as e:
                raise DeviceError(
                    VERSION_CONFLICT, "version conflict", {"version": e.current}
                ) from None
            except VaultFull:
                raise DeviceError(
                    LIMIT_EXCEEDED, f"vault is full ({limit} entries per node)"
                ) from None

        return self._store(put, lambda new: {"version": new}, write=True)

    def vault_get(self, node_id: str, params: Mapping[str, Any]) -> Any:
        """``vault.get {name}`` -> ``{version, blob}`` (0 and null if none)."""
        try:
            name = vault.vault_name(params)
        except vault.ParamError as e:
            raise _param_error(e) from None

        def answer(entry: tuple[int, bytes] | None) -> dict[str, Any]:
            if entry is None:
                return {"version": 0, "blob": None}
            return {"version": entry[0], "blob": entry[1].hex()}

        return self._store(
            lambda store: store.vault_get(node_id, name), answer, write=False
        )

    def vault_list(self, node_id: str) -> Any:
        """``vault.list {}`` -> ``{entries: [{name, version, size}]}``."""
        return self._store(
            lambda store: store.vault_list(node_id),
            lambda entries: {
                "entries": [
                    {"name": e.name, "version": e.version, "size": e.size}
                    for e in entries
                ]
            },
            write=False,
        )

    def vault_remove(self, node_id: str, params: Mapping[str, Any]) -> Any:
        """``vault.remove {name, version}`` -> ``{}``."""
        try:
            name = vault.vault_name(params)
            version = vault.vault_version(params)
        except vault.ParamError as e:
            raise _param_error(e) from None

        def remove(store: IStore) -> None:
            try:
                store.vault_remove(node_id, name, version)
            except VersionConflict as e:
                raise DeviceError(
                    VERSION_CONFLICT, "version conflict", {"version": e.current}
                ) from None

        return self._store(remove, lambda _: {}, write=True)

    # -- account ----------------------------------------------------------------

    def account_set(
        self, node_id: str, params: Mapping[str, Any], session: S | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        """``account.set {user, auth, blob}`` -> ``{}``; code 8 for a user
        name bound to another node.

        :param session: the asking session, for :attr:`max_per_session`.
        """
        try:
            user = vault.account_user(params)
            auth = vault.account_auth(params)
            blob = vault.account_blob(params)
        except vault.ParamError as e:
            return defer.fail(_param_error(e))
        refused = self._hash_refused(session)
        if refused is not None:
            return defer.fail(refused)

        def keep(record: str) -> Any:
            row = AccountRow(user, node_id, record, blob, self.clock.seconds())

            def write(store: IStore) -> None:
                try:
                    store.set_account(row)
                except UserTaken:
                    raise DeviceError(
                        NOT_ALLOWED, "this user name belongs to another node"
                    ) from None

            def done(_: object) -> dict[str, Any]:
                self._log.info("node {node} set its account", node=node_id)
                return {}

            return self._store(write, done, write=True)

        return self._hash(lambda: accounts.hash_auth(auth), session).addCallback(
            keep
        )

    def account_login(
        self, params: Mapping[str, Any], session: S | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        """``account.login {user, auth}`` -> ``{node_id, blob}``.

        A wrong user and a wrong ``auth`` answer the same code 2 after the
        same work; a user name with too many recent failures answers code 7
        without any check, and so does any attempt while the hashing queue
        (or the session's share of it) is full; only the latter does not
        count as a failure.

        :param session: the asking session, for :attr:`max_per_session`.
        """
        try:
            user = vault.account_user(params)
            auth = vault.account_auth(params)
        except vault.ParamError as e:
            return defer.fail(_param_error(e))
        if self.limiter.blocked(user):
            return defer.fail(
                DeviceError(
                    LIMIT_EXCEEDED,
                    "too many failed account logins for this user; retry later",
                )
            )
        refused = self._hash_refused(session)
        if refused is not None:
            # Turned away unchecked: not a failed attempt of this user.
            return defer.fail(refused)
        # Counted as failed until it succeeds: parallel attempts cannot
        # overrun the limit while their hashes run.
        self.limiter.failed(user)

        def found(row: AccountRow | None) -> Any:
            record = None if row is None else row.auth_hash

            def checked(ok: bool) -> Any:
                if not ok or row is None:
                    raise DeviceError(
                        LOGIN_FAILED, "login failed: wrong user or password"
                    )

                def again(current: AccountRow | None) -> dict[str, Any]:
                    if current != row:
                        # Changed or removed while hashing: as if it never
                        # matched.
                        raise DeviceError(
                            LOGIN_FAILED, "login failed: wrong user or password"
                        )
                    self.limiter.succeeded(user)
                    return {"node_id": row.node_id, "blob": row.blob.hex()}

                return self._store(
                    lambda store: store.get_account(user), again, write=False
                )

            return self._hash(
                lambda: accounts.verify_auth(record, auth), session
            ).addCallback(checked)

        if self.database is None:
            return found(self.store.get_account(user))
        return self.database.read(lambda store: store.get_account(user)).addCallback(
            found
        )

    def account_remove(self, node_id: str) -> Any:
        """``account.remove {}`` -> ``{}``."""

        def done(removed: bool) -> dict[str, Any]:
            if removed:
                self._log.info("node {node} removed its account", node=node_id)
            return {}

        return self._store(
            lambda store: store.remove_account(node_id), done, write=True
        )
