"""What a :class:`~lnproxy.client.Client` does for several devices of one
node: the writer lease, the shared peer list in the vault, the account
(docs/client.md, "6. Several devices"; docs/protocol.md, "Several devices of
one node").

:class:`DevicesMixin` is part of :class:`~lnproxy.client.Client`; the
session code calls its ``_devices_*`` hooks at login, on the ``lease``
notification, when the WebSocket closes and around re-handshakes.

- **The lease.**  :meth:`DevicesMixin.acquire_lease` takes it (``force``
  to take it from another device); the client then asks for it again, without
  force, after every reconnect, since a lease ends with its WebSocket.
  ``writer`` is True while this client holds it, False after another
  device took it or refused it to us, None when the client does not use
  leases.  Persistent peers are re-handshaken only by a writer, or by a
  client that does not use leases when no other session holds one (the
  proxy's code 11 parks the re-handshake until this client gets the
  lease).
- **The peer list in the vault.**  With the proxy's ``vault`` feature, the
  client keeps its persistent peers (node id, address, init features) in
  the vault entry ``lnproxy.peers``, encrypted with a key derived from the
  node key (:mod:`lnproxy.client.vaultstate`), updated with compare-and-swap
  retries.  A device that takes the lease reads it and re-handshakes every
  listed peer that has no open connection, also peers another device
  opened.
- **The account.**  :meth:`DevicesMixin.account_set` stores the node key
  under a password; :meth:`DevicesMixin.from_account` builds a client on a
  device that has only the password.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, threads
from twisted.logger import Logger

from lnproxy.client import account
from lnproxy.client.errors import ClientError, ProxyError
from lnproxy.client.restore import RestoredAccount, restore_account
from lnproxy.client.vaultstate import VaultDocument, vault_key
from lnproxy.protocol import FEATURE_LEASE, FEATURE_VAULT, LEASE_HELD

if TYPE_CHECKING:
    from lnproxy.client.session import Client

__all__ = ["PEERS_ENTRY", "DevicesMixin"]

#: The vault entry holding the node's persistent peers.
PEERS_ENTRY = "lnproxy.peers"


class DevicesMixin:
    """Lease, vault and account methods of :class:`~lnproxy.client.Client`.

    :ivar writer: True while this client holds the writer lease, False when
        another device holds it (it took it, or refused it to us), None when
        this client has not asked for it.
    :ivar on_lease: ``fn(writer)`` hooks, called when the lease is won or
        lost.
    """

    _log = Logger()

    # Provided by Client: its key, reactor, requests and hooks, and two
    # primitives of its peer handling (_resume_rehandshakes runs every
    # pending re-handshake, _record_rehandshakes adds entries to the
    # state's record).
    _secret: bytes
    _reactor: Any
    call: Callable[..., defer.Deferred[Any]]
    connections: Callable[[], defer.Deferred[list[dict[str, Any]]]]
    _resume_rehandshakes: Callable[[], None]
    _record_rehandshakes: Callable[[dict[str, dict[str, str]]], None]
    _guard: Callable[..., None]

    if TYPE_CHECKING:

        @property
        def server_id(self) -> bytes | None:
            """The proxy's id (the client's)."""

        @property
        def server_features(self) -> frozenset[str]:
            """The proxy's ``hello.features`` (the client's)."""

        @property
        def state(self) -> Any:
            """The client's state (the client's)."""

    def _devices_init(self, lease: bool) -> None:
        """Called by Client.__init__."""
        self.writer: bool | None = None
        self.wants_lease = lease
        self.on_lease: list[Callable[[bool], Any]] = []
        self.peers = VaultDocument(self.call, PEERS_ENTRY, vault_key(self._secret))

    # -- hooks called by the session code --------------------------------------

    def _devices_logged_in(self) -> None:
        """A new session: no lease yet.  Take it again if we want it, then
        re-handshake what is pending."""
        self.writer = None
        if self.wants_lease and FEATURE_LEASE in self.server_features:
            d = self.acquire_lease(force=False)
            d.addErrback(self._lease_refused)
            return
        self._resume_logged()

    def _devices_closed(self) -> None:
        """The session closed: its lease ended with it."""
        self.writer = None

    def _devices_notification(self, method: str, params: dict[str, Any]) -> bool:
        """Handle a session notification; True when it was one of ours."""
        if method != "lease":
            return False
        if params.get("writer") is False and self.writer is not False:
            self._log.info("another device took the writer lease")
            self.writer = False
            for fn in list(self.on_lease):
                self._guard(fn, False)
        return True

    def _devices_may_rehandshake(self) -> bool:
        """Whether to start a re-handshake now (not when another device is
        known to hold the lease)."""
        return self.writer is not False

    def _devices_rehandshake_refused(self, e: ClientError, node: str) -> bool:
        """A re-handshake failed with ``e``; True when it is the lease (code
        11): the re-handshake is left to the holder (and kept on record)."""
        if not (isinstance(e, ProxyError) and e.code == LEASE_HELD):
            return False
        self._log.info(
            "re-handshake with {peer} left to the device holding the writer lease",
            peer=node,
        )
        if self.writer is None:
            self.writer = False
        return True

    def _devices_link_opened(self, node: str, address: str, features: bytes) -> None:
        """A persistent link is open: list its peer in the vault."""
        if FEATURE_VAULT not in self.server_features:
            return
        entry = {"address": address, "features": features.hex()}

        def add(peers: dict[str, Any]) -> dict[str, Any]:
            peers[node] = entry
            return peers

        self._update_peers(add, node)

    def _devices_link_dropped(self, node: str) -> None:
        """We closed a persistent link on purpose: unlist its peer."""
        if FEATURE_VAULT not in self.server_features:
            return

        def remove(peers: dict[str, Any]) -> dict[str, Any]:
            peers.pop(node, None)
            return peers

        self._update_peers(remove, node)

    # -- the lease -------------------------------------------------------------

    def acquire_lease(self, force: bool = False) -> defer.Deferred[None]:
        """Take the node's writer lease (``force``: from another device).

        From now on the client asks for it again after each reconnect
        (without force) until :meth:`release_lease`.  Once it holds the
        lease it re-handshakes every pending persistent peer, and the peers
        listed in the vault that have no open connection.

        :raise LeaseHeld: (code 11) another device holds it and not ``force``.
        """
        self.wants_lease = True

        def won(_: Any) -> None:
            first = self.writer is not True
            self.writer = True
            if first:
                self._log.info("holding the writer lease")
                for fn in list(self.on_lease):
                    self._guard(fn, True)
            self._resume_logged()

        return self.call("lease.acquire", {"force": force}).addCallback(won)

    def release_lease(self) -> defer.Deferred[None]:
        """Give the lease up (and stop asking for it after reconnects)."""
        self.wants_lease = False

        def released(_: Any) -> None:
            self.writer = None

        return self.call("lease.release", {}).addCallback(released)

    def _lease_refused(self, f: Any) -> None:
        if f.check(ProxyError) and f.value.code == LEASE_HELD:
            self._log.info("another device holds the writer lease; not writing")
            self.writer = False
            return
        self._log.info("cannot take the writer lease: {e}", e=f.getErrorMessage())

    def _resume_logged(self) -> None:
        """:meth:`_devices_resume`, its failures logged."""
        self._devices_resume().addErrback(
            lambda f: self._log.failure("cannot resume the re-handshakes", f)
        )

    @defer.inlineCallbacks
    def _devices_resume(self) -> Any:
        """Re-handshake what is pending: the state's record, and (as a
        writer) the vault's peers without an open connection."""
        if self.writer is True and FEATURE_VAULT in self.server_features:
            try:
                listed = yield self.peers.read()
                conns = yield self.connections()
            except ClientError as e:
                self._log.info("cannot read the peer list: {e}", e=str(e))
                listed, conns = {}, []
            open_peers = {c.get("peer") for c in conns if c.get("state") != "closed"}
            pending = self.state.rehandshake
            found = {
                node: {
                    "address": str(entry.get("address", "")),
                    "features": str(entry.get("features", "")),
                }
                for node, entry in listed.items()
                if isinstance(node, str)
                and isinstance(entry, dict)
                and node not in open_peers
                and node not in pending
            }
            if found:
                self._record_rehandshakes(found)
        self._resume_rehandshakes()

    def _update_peers(
        self, change: Callable[[dict[str, Any]], dict[str, Any]], node: str
    ) -> None:
        d = self.peers.update(change)
        d.addErrback(
            lambda f: self._log.info(
                "peer list in the vault not updated for {peer}: {e}",
                peer=node,
                e=f.getErrorMessage(),
            )
        )

    # -- vault -------------------------------------------------------------------

    def vault_get(self, name: str) -> defer.Deferred[tuple[int, bytes | None]]:
        """``(version, blob)`` of a vault entry (``(0, None)`` if none)."""

        def got(r: dict[str, Any]) -> tuple[int, bytes | None]:
            blob = r.get("blob")
            return int(r["version"]), None if blob is None else bytes.fromhex(blob)

        return self.call("vault.get", {"name": name}).addCallback(got)

    def vault_put(self, name: str, blob: bytes, version: int) -> defer.Deferred[int]:
        """Write an entry replacing ``version``; fires with the new one.

        :raise VersionConflict: (code 10; ``.version`` is the current one)
            when another device wrote first.
        """
        d = self.call(
            "vault.put", {"name": name, "blob": blob.hex(), "version": version}
        )
        return d.addCallback(lambda r: int(r["version"]))

    def vault_list(self) -> defer.Deferred[list[dict[str, Any]]]:
        """The node's vault entries ``{name, version, size}``."""
        return self.call("vault.list", {}).addCallback(lambda r: list(r["entries"]))

    def vault_remove(self, name: str, version: int) -> defer.Deferred[None]:
        """Remove an entry if its version is ``version``."""
        d = self.call("vault.remove", {"name": name, "version": version})
        return d.addCallback(lambda _: None)

    def vault_document(self, name: str) -> VaultDocument:
        """An encrypted JSON document in the vault under ``name``."""
        return VaultDocument(self.call, name, vault_key(self._secret))

    # -- account -----------------------------------------------------------------

    @defer.inlineCallbacks
    def account_set(self, user: str, password: str) -> Any:
        """Store the node key under ``user`` and ``password`` (replacing the
        node's previous account).  Runs the Argon2id in a thread.

        :raise NotAllowed: (code 8) the user name belongs to another node.
        :raise AccountError: a bad user name or an empty password.
        """
        account.check_user(user)
        if not password:
            raise account.AccountError("the password must not be empty")
        yield self.call("connections", {})  # logged in: server_id is known
        assert self.server_id is not None
        keys = yield threads.deferToThreadPool(
            self._reactor,
            self._reactor.getThreadPool(),
            account.derive,
            password,
            self.server_id,
            user,
        )
        del password
        blob = account.seal_node_key(keys.enc, user, self._secret)
        yield self.call(
            "account.set", {"user": user, "auth": keys.auth.hex(), "blob": blob.hex()}
        )

    def account_remove(self) -> defer.Deferred[None]:
        """Delete the node's account."""
        return self.call("account.remove", {}).addCallback(lambda _: None)

    @classmethod
    @defer.inlineCallbacks
    def from_account(
        cls, reactor: Any, url: str, user: str, password: str, **kwargs: Any
    ) -> Any:
        """Build a client (not started) on a device that has no node key:
        fetch the key from the account ``user`` with ``password``.

        The client is pinned to the ``server_id`` the account came from.
        Other keyword arguments go to :class:`~lnproxy.client.Client`.

        :return: a Deferred firing with the :class:`Client`.
        :raise LoginFailed: (code 2) wrong user name or password.
        :raise LimitExceeded: (code 7) too many failures; retry later.
        """
        restored: RestoredAccount = yield restore_account(
            reactor,
            url,
            user,
            password,
            server_id=kwargs.get("server_id"),
            tls_options=kwargs.get("tls_options"),
        )
        del password
        kwargs["server_id"] = restored.server_id
        factory: Any = cls
        client: Client = factory(reactor, url, restored.node_secret, **kwargs)
        return client
