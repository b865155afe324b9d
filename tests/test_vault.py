"""Tests for lnproxy.vault: vault and account parameter checks."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lnproxy import vault
from lnproxy.protocol import INVALID_PARAMS, LIMIT_EXCEEDED


class VaultParamTests(SynchronousTestCase):
    """name, blob and version."""

    def code(self, fn: Any, params: dict[str, Any]) -> int:
        """The ParamError code ``fn(params)`` raises."""
        with self.assertRaises(vault.ParamError) as caught:
            fn(params)
        return caught.exception.code

    def test_names(self) -> None:
        """1-64 of a-z0-9._- pass; everything else is -32602."""
        for good in ("a", "channels.v1", "x_y-z.0", "a" * 64, "..."):
            self.assertEqual(vault.vault_name({"name": good}), good)
        for bad in ("", "A", "a" * 65, "a b", "é", "a/b", 5, None, "a\n"):
            self.assertEqual(self.code(vault.vault_name, {"name": bad}), INVALID_PARAMS)
        self.assertEqual(self.code(vault.vault_name, {}), INVALID_PARAMS)

    def test_blobs(self) -> None:
        """Hex passes (uppercase too, empty too); above the limit is code 7."""
        self.assertEqual(vault.vault_blob({"blob": "8f3A"}), b"\x8f\x3a")
        self.assertEqual(vault.vault_blob({"blob": ""}), b"")
        big = "00" * vault.VAULT_BLOB_MAX
        self.assertEqual(len(vault.vault_blob({"blob": big})), vault.VAULT_BLOB_MAX)
        self.assertEqual(
            self.code(vault.vault_blob, {"blob": big + "00"}), LIMIT_EXCEEDED
        )
        for bad in ("0", "zz", "00 11", " 00", b"00", 0, None, "0x00"):
            self.assertEqual(self.code(vault.vault_blob, {"blob": bad}), INVALID_PARAMS)

    def test_versions(self) -> None:
        """Non-negative integers pass; bools, floats, negatives do not."""
        self.assertEqual(vault.vault_version({"version": 0}), 0)
        self.assertEqual(vault.vault_version({"version": 17}), 17)
        for bad in (-1, True, 1.0, "1", None, vault.VERSION_MAX):
            self.assertEqual(
                self.code(vault.vault_version, {"version": bad}), INVALID_PARAMS
            )


class AccountParamTests(SynchronousTestCase):
    """user, auth and the account blob."""

    def code(self, fn: Any, params: dict[str, Any]) -> int:
        """The ParamError code ``fn(params)`` raises."""
        with self.assertRaises(vault.ParamError) as caught:
            fn(params)
        return caught.exception.code

    def test_users(self) -> None:
        """1-64 characters of any text; not empty, not longer, not a lone
        surrogate."""
        for good in ("alice", "Zoë ☃", "x" * 64):
            self.assertEqual(vault.account_user({"user": good}), good)
        for bad in ("", "x" * 65, "\ud800", 3, None):
            self.assertEqual(
                self.code(vault.account_user, {"user": bad}), INVALID_PARAMS
            )

    def test_user_nul_refused(self) -> None:
        """U+0000 anywhere in a user name answers -32602 (PostgreSQL text
        cannot hold it, and it would end as an internal error there)."""
        for bad in ("\x00", "a\x00b", "alice\x00"):
            self.assertEqual(
                self.code(vault.account_user, {"user": bad}), INVALID_PARAMS
            )

    def test_user_not_normalised(self) -> None:
        """The NFC and NFD spellings of one name come back unchanged (two
        users, as their salts differ)."""
        nfc, nfd = "Zo\u00eb", "Zoe\u0308"
        self.assertEqual(vault.account_user({"user": nfc}), nfc)
        self.assertEqual(vault.account_user({"user": nfd}), nfd)

    def test_auth(self) -> None:
        """Exactly 32 bytes of hex."""
        self.assertEqual(vault.account_auth({"auth": "AB" * 32}), b"\xab" * 32)
        for bad in ("ab" * 31, "ab" * 33, "zz" * 32, 1, None):
            self.assertEqual(
                self.code(vault.account_auth, {"auth": bad}), INVALID_PARAMS
            )

    def test_account_blob(self) -> None:
        """Hex of 1-4096 bytes; above is code 7, empty or not hex -32602."""
        self.assertEqual(len(vault.account_blob({"blob": "00" * 4096})), 4096)
        self.assertEqual(
            self.code(vault.account_blob, {"blob": "00" * 4097}), LIMIT_EXCEEDED
        )
        for bad in ("", "0", "xy"):
            self.assertEqual(
                self.code(vault.account_blob, {"blob": bad}), INVALID_PARAMS
            )
