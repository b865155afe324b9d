"""Tests for lnproxy.client.account: the contract's key derivation and blob.

The expected values are computed here independently of the module under
test: the salt with hashlib, the Argon2id output with argon2-cffi (the
reference C implementation, a different library from ``cryptography``),
and the blob is the worked example of docs/protocol.md, "Several devices of
one node", which was cross-checked with two implementations.
"""

from __future__ import annotations

import hashlib

from argon2.low_level import Type, hash_secret_raw
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import keys
from lnproxy.client import account

PASSWORD = "correct horse battery staple"
USER = "alice"
SERVER_SECRET = bytes.fromhex("33" * 32)
SERVER_ID = bytes.fromhex(
    "023c72addb4fdf09af94f0c94d7fe92a386a7e70cf8a1d85916386bb2535c7b1b1"
)
NODE_SECRET = bytes.fromhex("11" * 32)
NODE_ID = bytes.fromhex(
    "034f355bdcb7cc0af728ef3cceb9615d90684bb5b2ca5f859ab0f0b704075871aa"
)
NONCE = bytes(range(12))
# docs/protocol.md, "Several devices of one node", the example table.
DOC_SALT = "e3541f5566f23f658ce1b894cb059422b97a4a8b97499a8a07f2a1a08cc8df18"
DOC_AUTH = "b47dcaf8e07efbc89a1c6e19262aa6f0d4e3f484892ff831f2e0b37d2263d1c1"
DOC_ENC = "e1c8bea4194db25694afcdf8275b9720830b42728e2c8ee297bc40a167029303"
DOC_BLOB = (
    "000102030405060708090a0bafa3910e28b5ee0840c6f05b0e4684a66032c406"
    "f632a20da6f6c938ad91684915ade9c8cc8e548e9be8efb4aa013fd8"
)


def reference_k(password: str, server_id: bytes, user: str) -> bytes:
    """The 64 Argon2id bytes, computed without lnproxy's code."""
    salt = hashlib.sha256(
        b"lnproxy/1 account" + server_id + user.encode("utf-8")
    ).digest()
    return hash_secret_raw(
        password.encode("utf-8"),
        salt,
        time_cost=3,
        memory_cost=65536,
        parallelism=1,
        hash_len=64,
        type=Type.ID,
    )


class ExampleTests(SynchronousTestCase):
    """The derivation reproduces independent values."""

    _cache: dict[str, object] = {}

    def setUp(self) -> None:
        """Derive once for the class (each derivation takes a fraction of a
        second)."""
        if not self._cache:
            self._cache["derived"] = account.derive(PASSWORD, SERVER_ID, USER)
            self._cache["reference"] = reference_k(PASSWORD, SERVER_ID, USER)
        derived = self._cache["derived"]
        reference = self._cache["reference"]
        assert isinstance(derived, account.AccountKeys)
        assert isinstance(reference, bytes)
        self.derived = derived
        self.reference = reference

    def test_example_keys(self) -> None:
        """The example's server key gives its server_id and node key its id."""
        self.assertEqual(keys.public_key(SERVER_SECRET), SERVER_ID)
        self.assertEqual(keys.public_key(NODE_SECRET), NODE_ID)

    def test_salt(self) -> None:
        """The salt is the SHA256 the contract states, as in the example."""
        expected = hashlib.sha256(b"lnproxy/1 account" + SERVER_ID + b"alice")
        self.assertEqual(account.account_salt(SERVER_ID, USER), expected.digest())
        self.assertEqual(account.account_salt(SERVER_ID, USER).hex(), DOC_SALT)

    def test_auth_enc_match_argon2_cffi(self) -> None:
        """auth and enc are the two halves of argon2-cffi's Argon2id output."""
        self.assertEqual(self.derived.auth, self.reference[:32])
        self.assertEqual(self.derived.enc, self.reference[32:])

    def test_auth_enc_match_document(self) -> None:
        """auth and enc are the documented example values."""
        self.assertEqual(self.derived.auth.hex(), DOC_AUTH)
        self.assertEqual(self.derived.enc.hex(), DOC_ENC)

    def test_blob_matches_document(self) -> None:
        """Sealing with the example nonce gives the documented blob."""
        blob = account.seal_node_key(self.derived.enc, USER, NODE_SECRET, NONCE)
        self.assertEqual(blob.hex(), DOC_BLOB)
        self.assertEqual(len(blob), account.BLOB_LENGTH)

    def test_open_document_blob(self) -> None:
        """The documented blob opens to the node secret, checked against the id."""
        secret = account.open_node_key(
            bytes.fromhex(DOC_ENC), USER, bytes.fromhex(DOC_BLOB), NODE_ID
        )
        self.assertEqual(secret, NODE_SECRET)

    def test_repr_hides_keys(self) -> None:
        """The keys' repr shows no byte of auth or enc."""
        text = repr(self.derived)
        self.assertNotIn(DOC_AUTH[:16], text)
        self.assertNotIn(DOC_ENC[:16], text)
        self.assertNotIn(repr(self.derived.auth)[:12], text)


class VariationTests(SynchronousTestCase):
    """Each input changes the result; bad inputs are refused."""

    def test_unicode_user_and_password(self) -> None:
        """Non-ASCII names and passwords are used as UTF-8, as the reference."""
        user, password = "zoë", "pässwörd ☃"
        derived = account.derive(password, SERVER_ID, user)
        k = reference_k(password, SERVER_ID, user)
        self.assertEqual(derived.auth + derived.enc, k)

    def test_server_id_in_salt(self) -> None:
        """The same user has a different salt at another server."""
        other = keys.public_key(bytes.fromhex("44" * 32))
        self.assertNotEqual(
            account.account_salt(SERVER_ID, USER), account.account_salt(other, USER)
        )

    def test_random_nonce(self) -> None:
        """Two seals of one key differ (fresh nonces) and both open."""
        enc = bytes.fromhex(DOC_ENC)
        one = account.seal_node_key(enc, USER, NODE_SECRET)
        two = account.seal_node_key(enc, USER, NODE_SECRET)
        self.assertNotEqual(one[:12], two[:12])
        for blob in (one, two):
            self.assertEqual(account.open_node_key(enc, USER, blob), NODE_SECRET)

    def test_wrong_enc(self) -> None:
        """Another enc (a wrong password) does not open the blob."""
        with self.assertRaises(account.AccountError) as caught:
            account.open_node_key(bytes(32), USER, bytes.fromhex(DOC_BLOB))
        self.assertIn("does not open", str(caught.exception))

    def test_other_user(self) -> None:
        """The user name is authenticated data: another name fails."""
        with self.assertRaises(account.AccountError):
            account.open_node_key(
                bytes.fromhex(DOC_ENC), "bob", bytes.fromhex(DOC_BLOB)
            )

    def test_tampered_blob(self) -> None:
        """Every flipped byte makes the blob fail."""
        blob = bytes.fromhex(DOC_BLOB)
        for i in range(len(blob)):
            bad = bytearray(blob)
            bad[i] ^= 1
            with self.assertRaises(account.AccountError):
                account.open_node_key(bytes.fromhex(DOC_ENC), USER, bytes(bad))

    def test_wrong_node(self) -> None:
        """A blob for one node does not pass as another's."""
        other = keys.public_key(bytes.fromhex("22" * 32))
        with self.assertRaises(account.AccountError) as caught:
            account.open_node_key(
                bytes.fromhex(DOC_ENC), USER, bytes.fromhex(DOC_BLOB), other
            )
        self.assertIn("another node", str(caught.exception))

    def test_wrong_sizes(self) -> None:
        """Blobs, keys, nonces and secrets of the wrong size are refused."""
        enc = bytes.fromhex(DOC_ENC)
        with self.assertRaises(account.AccountError):
            account.open_node_key(enc, USER, bytes(59))
        with self.assertRaises(account.AccountError):
            account.open_node_key(bytes(31), USER, bytes.fromhex(DOC_BLOB))
        with self.assertRaises(account.AccountError):
            account.seal_node_key(enc, USER, bytes(31))
        with self.assertRaises(account.AccountError):
            account.seal_node_key(enc, USER, NODE_SECRET, bytes(11))
        with self.assertRaises(account.AccountError):
            account.account_salt(SERVER_ID[:32], USER)

    def test_bad_user_names(self) -> None:
        """Empty, too long, non-text and unencodable user names are refused."""
        for user in ("", "x" * 65, 7, None, "\ud800"):
            with self.assertRaises(account.AccountError):
                account.check_user(user)
        self.assertEqual(account.check_user("x" * 64), "x" * 64)

    def test_nul_in_user_name(self) -> None:
        """A user name with U+0000, which the proxy refuses, is refused
        here first (before the Argon2id work)."""
        with self.assertRaises(account.AccountError):
            account.check_user("a\x00b")
        with self.assertRaises(account.AccountError):
            account.derive("password", SERVER_ID, "a\x00b")

    def test_empty_password(self) -> None:
        """An empty password is refused before any work is done."""
        with self.assertRaises(account.AccountError):
            account.derive("", SERVER_ID, USER)
        with self.assertRaises(account.AccountError):
            account.derive("\udc80", SERVER_ID, USER)
