"""Tests for lnproxy.client.vaultstate: an encrypted JSON document in the
vault, updated with compare-and-swap retries.

The vault behind ``call`` is the server's own back end
(:class:`lnproxy.devices.Devices` on a real SQLite store), so the versions
and conflicts are the proxy's, not a mock's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lnproxy.client.errors import error_for_code
from lnproxy.client.vaultstate import VaultDocument, VaultError, vault_key
from lnproxy.devices import DeviceError, Devices, inline_runner
from lnproxy.store import SqliteStore

NODE = "02" + "aa" * 32
SECRET = bytes.fromhex("11" * 32)


class VaultDocumentTests(SynchronousTestCase):
    """Two devices sharing one document."""

    def setUp(self) -> None:
        """A Devices back end on SQLite; ``call`` maps its errors to the
        client's exceptions."""
        self.store = SqliteStore.open(os.path.abspath(self.mktemp()))
        self.addCleanup(self.store.close)
        self.devices: Devices[str] = Devices(self.store, Clock(), inline_runner)
        self.calls: list[str] = []
        #: Run before the next vault.put reaches the vault (an interleaving).
        self.before_put: list[Callable[[], None]] = []

    def call(self, method: str, params: dict[str, Any]) -> defer.Deferred[Any]:
        """One request of device 1, after any interleaved write."""
        if method == "vault.put" and self.before_put:
            self.before_put.pop(0)()
        return self.call_quietly(method, params)

    def call_quietly(self, method: str, params: dict[str, Any]) -> defer.Deferred[Any]:
        """One request to the vault, as a Client.call would answer it."""
        self.calls.append(method)
        handlers = {
            "vault.get": self.devices.vault_get,
            "vault.put": self.devices.vault_put,
        }
        try:
            return defer.succeed(handlers[method](NODE, params))
        except DeviceError as e:
            return defer.fail(error_for_code(e.code, e.message, e.data))

    def doc(self, secret: bytes = SECRET) -> VaultDocument:
        """Device 1's document peers.v1 under ``secret``'s vault key."""
        return VaultDocument(self.call, "peers.v1", vault_key(secret))

    def other_doc(self) -> VaultDocument:
        """Device 2's view of the same document (no interleaving hooks)."""
        return VaultDocument(self.call_quietly, "peers.v1", vault_key(SECRET))

    def test_empty_then_written(self) -> None:
        """A missing entry reads as {}; an update writes version 1."""
        doc = self.doc()
        self.assertEqual(self.successResultOf(doc.read()), {})
        self.assertEqual(doc.version, 0)
        result = self.successResultOf(doc.update(lambda d: {**d, "a": 1}))
        self.assertEqual(result, {"a": 1})
        self.assertEqual(doc.version, 1)
        self.assertEqual(self.successResultOf(self.doc().read()), {"a": 1})

    def test_proxy_sees_ciphertext(self) -> None:
        """The stored blob holds neither the JSON nor the key."""
        doc = self.doc()
        self.successResultOf(doc.update(lambda d: {"peer": "secret-address"}))
        entry = self.store.vault_get(NODE, "peers.v1")
        assert entry is not None
        self.assertNotIn(b"secret-address", entry[1])
        self.assertNotIn(vault_key(SECRET), entry[1])

    def test_conflict_retried(self) -> None:
        """Device 2 writes between device 1's read and write: device 1 gets
        code 10, reads again, reapplies its change, and both changes stay."""
        one, two = self.doc(), self.other_doc()
        self.successResultOf(one.update(lambda d: {"base": True}))
        self.before_put.append(
            lambda: self.successResultOf(two.update(lambda d: {**d, "two": 2}))
        )
        result = self.successResultOf(one.update(lambda d: {**d, "one": 1}))
        self.assertEqual(result, {"base": True, "one": 1, "two": 2})
        self.assertEqual(one.conflicts, 1)
        self.assertEqual(two.conflicts, 0)
        self.assertEqual(one.version, 3)
        self.assertEqual(
            self.successResultOf(self.doc().read()), {"base": True, "one": 1, "two": 2}
        )

    def test_gives_up(self) -> None:
        """Losing every attempt ends in VaultError, not an endless loop."""
        one, two = self.doc(), self.other_doc()
        one.max_attempts = 3
        for i in range(3):
            self.before_put.append(
                lambda i=i: self.successResultOf(two.update(lambda d: {"n": i}))
            )
        f = self.failureResultOf(one.update(lambda d: {"mine": 1}), VaultError)
        self.assertIn("3 writes in a row", str(f.value))
        self.assertEqual(one.conflicts, 3)

    def test_other_key_refused(self) -> None:
        """Another node's key (or a tampered blob) does not decrypt."""
        self.successResultOf(self.doc().update(lambda d: {"a": 1}))
        self.failureResultOf(self.doc(bytes.fromhex("22" * 32)).read(), VaultError)

    def test_other_errors_propagate(self) -> None:
        """Errors other than code 10 are not retried."""
        doc = VaultDocument(self.call, "Bad Name", vault_key(SECRET))
        f = self.failureResultOf(doc.update(lambda d: d))
        self.assertEqual(f.value.code, -32602)
        self.assertEqual(self.calls, ["vault.get"])
