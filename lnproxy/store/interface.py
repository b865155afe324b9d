"""What the rest of lnproxy may ask of a store: :class:`IStore`, its rows and
its errors.

The hub, the webhook notifier and the service talk to the store only through
:class:`IStore`; :class:`lnproxy.store.sqlite.SqliteStore` is the
implementation behind it today, and every implementation must pass the
contract tests in ``tests/test_store.py`` (``StoreContractTests``).

Guarantees every implementation gives (the protocol's promises in
``docs/protocol.md, "Events"`` rest on them):

- **Durable before offered.** A write has happened when the method (or the
  outermost :meth:`IStore.transaction`) returns: it survives a crash of the
  process and, unless the method was called with ``fsync=False``, a power
  cut. The hub offers an event to a client only after that, so nothing is
  ever offered that a restart could lose or renumber.
- **Per-node seqs without gaps.** Each node has its own event counter that
  starts at 1, increases by exactly 1 per stored event, and never goes back
  or repeats, even after every event was acknowledged and deleted.
- **All or nothing.** Each mutating method is atomic; inside
  :meth:`IStore.transaction` the whole block is.
- **Tenant isolation.** Every read or write that takes a ``node_id`` sees and
  touches only that node's rows.

All methods are synchronous and do a small, bounded amount of work, because
they run on the reactor thread. Nothing here reads the clock: timestamps
arrive inside the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from zope.interface import Attribute, Interface

from lnproxy.lifecycle import PERSISTED_STATES

__all__ = [
    "CONNECTION_STATES",
    "MAX_PEER_STORAGE_BLOB",
    "StoreError",
    "DBError",
    "DataDirLocked",
    "NodeLost",
    "EventRow",
    "ConnectionRow",
    "WebhookRow",
    "VaultEntry",
    "AccountRow",
    "VersionConflict",
    "VaultFull",
    "UserTaken",
    "IStore",
]

#: Connection states a row may hold: the lifecycle's persisted names, as in
#: the protocol's connection object (one vocabulary, :mod:`lnproxy.lifecycle`).
CONNECTION_STATES = frozenset(PERSISTED_STATES)

#: The largest peer storage blob a store keeps (BOLT 1: 65535 - 2 - 2).
MAX_PEER_STORAGE_BLOB = 65531


class StoreError(Exception):
    """The store cannot do what was asked (bad data dir, key, or data)."""


class DBError(StoreError):
    """The database cannot be used: unreadable, not ours, or a schema
    version this code cannot create, upgrade or understand."""


class VersionConflict(StoreError):
    """A vault write named a version that is not the entry's current one.

    :param current: the entry's current version (0 if it does not exist).
    """

    def __init__(self, current: int) -> None:
        super().__init__(f"version conflict: the current version is {current}")
        self.current = current


class VaultFull(StoreError):
    """A new vault name would exceed the node's entry limit."""


class UserTaken(StoreError):
    """An account user name is already bound to another node."""


class DataDirLocked(StoreError):
    """Another process (or another store in this one) holds the data dir
    lock."""


class NodeLost(StoreError):
    """A write was refused because this process no longer owns a node it
    wrote for (another process claimed it: the epoch moved). Nothing of the
    write was stored. Only stores shared by several processes raise it.

    :param node_ids: the nodes this process lost; it must stop serving them
        at once (close their sessions and peer connections).
    """

    def __init__(self, node_ids: Sequence[str]) -> None:
        self.node_ids = tuple(node_ids)
        shown = ", ".join(self.node_ids[:3])
        more = f" and {len(self.node_ids) - 3} more" if len(self.node_ids) > 3 else ""
        super().__init__(
            f"this process no longer owns node {shown}{more}: another process "
            "took it over"
        )


@dataclass(frozen=True)
class EventRow:
    """One stored event of a node.

    :param node_id: the node, lowercase hex (66 characters).
    :param seq: the per-node sequence number, starting at 1.
    :param kind: the event method, e.g. ``"message"`` or ``"closed"``.
    :param summon: whether the event needs the node's client (wake it up).
    :param at: unix seconds when the event happened.
    :param params: JSON text of the notification params (includes ``seq``).
    """

    node_id: str
    seq: int
    kind: str
    summon: bool
    at: float
    params: str


@dataclass(frozen=True)
class ConnectionRow:
    """One peer connection of a node.

    :param conn_id: the connection id, unique over all nodes.
    :param node_id: the owning node, lowercase hex.
    :param peer: the peer's node id, lowercase hex.
    :param address: ``host:port`` the proxy connected to.
    :param persist: whether a drop should summon the client.
    :param since: unix seconds when the connection was requested.
    :param state: ``"handshake"``, ``"open"`` or ``"closed"``.
    :param their_init: the peer's init message as hex, once received.
    :param closed_seq: seq of the ``closed`` event; set exactly when closed.
    """

    conn_id: str
    node_id: str
    peer: str
    address: str
    persist: bool
    since: float
    state: str
    their_init: str | None = None
    closed_seq: int | None = None


@dataclass(frozen=True)
class WebhookRow:
    """One webhook of a node.

    :param node_id: the owning node, lowercase hex.
    :param webhook_id: the id given to the client by ``webhook.set``.
    :param url: where to POST.
    :param created: unix seconds when it was set.
    """

    node_id: str
    webhook_id: str
    url: str
    created: float


@dataclass(frozen=True)
class VaultEntry:
    """One vault entry of a node, as ``vault.list`` shows it.

    :param name: the entry's name.
    :param version: its current version, from 1.
    :param size: the blob's length in bytes.
    """

    name: str
    version: int
    size: int


@dataclass(frozen=True)
class AccountRow:
    """The account of a node.

    :param user: the user name (unique over all nodes).
    :param node_id: the node, lowercase hex.
    :param auth_hash: the slow, salted hash of the client's ``auth``
        (:func:`lnproxy.accounts.hash_auth`); never ``auth`` itself.
    :param blob: the node key as the client encrypted it.
    :param updated: unix seconds of the last ``account.set``.
    """

    user: str
    node_id: str
    auth_hash: str = field(repr=False)
    blob: bytes = field(repr=False)
    updated: float


class IStore(Interface):
    """The durable state of the proxy: events, connections, webhooks, the
    peers' stored blobs (peer storage) and the server key.

    Every mutating method runs inside the current :meth:`transaction` if one
    is open, otherwise in its own. After :meth:`close` every method except
    :meth:`close` and :meth:`writable` raises :class:`StoreError`.

    ``fsync=False`` (on :meth:`ack` and :meth:`put_connection`): the write is
    still committed before the method returns, visible to every later read
    and kept if the process crashes; only a power cut (or OS crash) may lose
    it until the next write made with ``fsync=True``, which makes it durable
    too. Inside an open :meth:`transaction` the flag changes nothing: the
    outermost block's commit decides. Use it only for writes whose loss costs
    little and whose flush would sit on a client's critical path.
    """

    server_secret = Attribute(
        "The proxy's own 32-byte secp256k1 secret key (bytes). Never log it."
    )

    def transaction() -> AbstractContextManager[None]:
        """Run the ``with`` block in one transaction.

        The block's writes commit together when the outermost block ends, and
        only then become visible to other connections or processes. If the
        block raises, all its writes are undone and the exception propagates.
        Blocks nest: an inner block joins the outer transaction (its writes
        commit only with it), and if an inner block, or a store method called
        inside, raises and the caller catches the exception, only that inner
        block's writes are undone. A transaction must not span a reactor
        turn: it may hold a write lock.
        """

    def next_seq(node_id: str) -> int:
        """Return the seq the node's next event will get (1 if unknown).

        It never decreases, also not when events are acknowledged.

        :param node_id: the node.
        """

    def append_events(rows: Sequence[EventRow]) -> None:
        """Store new events, all or none, and advance each node's next_seq.

        The rows may belong to several nodes; for each node their seqs must
        continue exactly from :meth:`next_seq`, one by one in the given order.
        That is what keeps the protocol's promise that seq increases by
        exactly 1 and never repeats. An empty sequence changes nothing.

        :param rows: the events, in seq order per node.
        :raises StoreError: if a seq is not the node's next one (nothing is
            stored then), naming the node and the expected seq.
        """

    def events_after(node_id: str, after_seq: int, limit: int) -> list[EventRow]:
        """Return up to ``limit`` stored events of the node with seq >
        ``after_seq``, in ascending seq order.

        :param node_id: the node.
        :param after_seq: return only events after this seq (0 for all).
        :param limit: the maximum number of rows, at least 1 (it bounds the
            time spent on the reactor thread).
        :raises ValueError: if ``limit`` is below 1.
        """

    def pending_count(node_id: str) -> int:
        """Return the number of stored (unacknowledged) events of the node.

        :param node_id: the node.
        """

    def newest_summons() -> list[EventRow]:
        """Return the newest unacknowledged summon-class event of every node
        that has a webhook, one row per node, ordered by node id (for the
        notifier at startup: nodes left waiting by a stop or crash are woken
        again)."""

    def ack(node_id: str, seq: int, *, fsync: bool = True) -> list[str]:
        """Acknowledge the node's events up to and including ``seq``.

        Deletes those events and the node's closed connections whose
        ``closed`` event is among them (the protocol lists a closed
        connection until its closed event is acknowledged). next_seq is not
        changed. Acknowledging again or a lower seq is harmless. Checking
        that ``seq`` is not beyond the newest event is the caller's job
        (compare with :meth:`next_seq`).

        :param node_id: the node.
        :param seq: the highest acknowledged seq.
        :param fsync: see the class docstring; an ack lost to a power cut
            only makes those events be delivered again, which clients
            recognise by their ``seq``.
        :return: the ids of the deleted connections, ordered by ``since``
            (then conn_id).
        """

    def put_connection(row: ConnectionRow, *, fsync: bool = True) -> None:
        """Insert a connection, or replace the one with the same conn_id.

        :param row: the connection; ``state`` must be one of
            :data:`CONNECTION_STATES` and ``closed_seq`` must be set exactly
            when ``state`` is ``"closed"`` (otherwise :meth:`ack` could never
            delete it).
        :param fsync: see the class docstring.
        :raises StoreError: if the state or closed_seq is invalid (nothing
            is stored then).
        """

    def close_connection(conn_id: str, closed_seq: int) -> None:
        """Mark a connection closed by the event ``closed_seq``.

        :param conn_id: the connection.
        :param closed_seq: the seq of its ``closed`` event.
        :raises StoreError: ``unknown connection '<id>'`` if there is none.
        """

    def get_connection(conn_id: str) -> ConnectionRow | None:
        """Return one connection by id, or None.

        Connection ids are unique over all nodes; the caller must still check
        that the row's node_id is the asking node's.

        :param conn_id: the connection.
        """

    def connections(node_id: str) -> list[ConnectionRow]:
        """Return all connections of the node (handshake, open, and closed
        ones whose closed event is not acknowledged), ordered by ``since``
        (then conn_id).

        :param node_id: the node.
        """

    def unclosed_connections() -> list[ConnectionRow]:
        """Return every connection not closed, of any node, ordered by
        ``since`` (then conn_id). At start these are the ones a crash left
        behind; they need a ``closed`` event (reason ``proxy restarted``)."""

    def add_webhook(row: WebhookRow) -> None:
        """Store a new webhook.

        :param row: the webhook.
        :raises StoreError: ``node <id> already has a webhook '<id>'`` if the
            node has one with that id (which stays unchanged).
        """

    def webhooks(node_id: str) -> list[WebhookRow]:
        """Return the node's webhooks, oldest (``created``) first.

        :param node_id: the node.
        """

    def remove_webhook(node_id: str, webhook_id: str) -> bool:
        """Delete one of the node's webhooks.

        :param node_id: the node; another node's webhook is never touched.
        :param webhook_id: the webhook.
        :return: whether it existed.
        """

    def webhook_count(node_id: str) -> int:
        """Return the number of the node's webhooks.

        :param node_id: the node.
        """

    def vault_get(node_id: str, name: str) -> tuple[int, bytes] | None:
        """Return ``(version, blob)`` of the node's entry, or None when the
        name was never written or was removed.

        :param node_id: the node; another node's entries are never seen.
        :param name: the entry's name.
        """

    def vault_put(
        node_id: str, name: str, blob: bytes, version: int, max_entries: int, now: float
    ) -> int:
        """Write an entry if its current version is ``version`` (0: the name
        does not exist), atomically (compare-and-swap).

        :param node_id: the node.
        :param name: the entry's name.
        :param blob: the new content.
        :param version: the version this write replaces.
        :param max_entries: the node's entry limit; only a new name counts.
        :param now: unix seconds, kept as the entry's ``updated``.
        :return: the new version, ``version + 1``.
        :raises VersionConflict: when ``version`` is not the current one
            (nothing changes); its ``current`` is the current version.
        :raises VaultFull: when a new name would make more than
            ``max_entries`` (nothing changes).
        """

    def vault_list(node_id: str) -> list[VaultEntry]:
        """Return the node's entries, ordered by name.

        :param node_id: the node.
        """

    def vault_remove(node_id: str, name: str, version: int) -> None:
        """Delete an entry if its current version is ``version``.

        Removing a name that does not exist with ``version`` 0 changes
        nothing and succeeds.

        :raises VersionConflict: when ``version`` is not the current one.
        """

    def set_account(row: AccountRow) -> None:
        """Bind ``row.user`` to ``row.node_id``, replacing the node's
        previous account (whatever its user name), atomically.

        :raises UserTaken: when the user name belongs to another node
            (nothing changes).
        """

    def get_account(user: str) -> AccountRow | None:
        """Return the account of a user name, or None.

        :param user: the user name, compared exactly.
        """

    def remove_account(node_id: str) -> bool:
        """Delete the node's account.

        :return: whether it had one.
        """

    def put_peer_storage(node_id: str, peer: str, blob: bytes, at: float) -> None:
        """Keep the newest BOLT 1 ``peer_storage`` blob a peer of the node
        gave (docs/protocol.md, "Peer storage"), replacing the one kept
        before: one blob per node and peer, never a history.

        :param node_id: the node, lowercase hex.
        :param peer: the peer's node id, lowercase hex.
        :param blob: the blob, at most 65531 bytes (may be empty).
        :param at: unix seconds when it arrived.
        :raises StoreError: if the blob is longer than 65531 bytes (nothing
            is stored then, the kept blob stays).
        """

    def get_peer_storage(node_id: str, peer: str) -> bytes | None:
        """Return the blob kept for this node and peer, or None.

        :param node_id: the node; another node's blobs are never seen.
        :param peer: the peer's node id.
        """

    def writable() -> bool:
        """Health check: can the store still take its write lock and write?

        Changes nothing, also inside an open transaction whose writes it
        leaves alone.

        :return: False if the store is closed or the database reports an
            error; never raises.
        """

    def suspend() -> None:
        """Let go of the database connection(s), keeping what guards the
        data (the data dir lock) and the server key.

        ``twistd`` builds the service and then, unless run with ``-n``, forks
        to daemonize; a database connection must not cross a ``fork``. The
        service checks the store while it is built, calls this, and calls
        :meth:`resume` in the process that will use it.
        """

    def resume() -> None:
        """Reconnect after :meth:`suspend`; a no-op when connected.

        :raises StoreError: if the store was closed.
        """

    def close() -> None:
        """Release everything (connections, locks). Idempotent. An open
        transaction is rolled back."""
