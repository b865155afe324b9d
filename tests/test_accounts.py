"""Tests for lnproxy.accounts: the auth hash and the login limiter."""

from __future__ import annotations

import hashlib
import time

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import accounts

AUTH = bytes.fromhex("b47dcaf8e07efbc89a1c6e19262aa6f0d4e3f484892ff831f2e0b37d2263d1c1")


class HashTests(SynchronousTestCase):
    """hash_auth / verify_auth."""

    def test_fixed_salt_is_plain_scrypt(self) -> None:
        """The record is hashlib's scrypt of auth with the stated parameters."""
        salt = bytes(range(16))
        record = accounts.hash_auth(AUTH, salt)
        expected = hashlib.scrypt(
            AUTH, salt=salt, n=2**14, r=8, p=1, maxmem=64 * 2**20, dklen=32
        )
        self.assertEqual(record, f"scrypt$14$8$1${salt.hex()}${expected.hex()}")

    def test_verify(self) -> None:
        """The right auth verifies; another does not."""
        record = accounts.hash_auth(AUTH)
        self.assertTrue(accounts.verify_auth(record, AUTH))
        self.assertFalse(accounts.verify_auth(record, bytes(32)))

    def test_own_salt(self) -> None:
        """Two records of one auth differ (own random salt) and both verify."""
        one, two = accounts.hash_auth(AUTH), accounts.hash_auth(AUTH)
        self.assertNotEqual(one, two)
        self.assertTrue(accounts.verify_auth(two, AUTH))

    def test_record_holds_no_auth(self) -> None:
        """The record does not contain auth."""
        self.assertNotIn(AUTH.hex(), accounts.hash_auth(AUTH))

    def test_unknown_and_broken_records(self) -> None:
        """None or a malformed record verify nothing (and do not raise)."""
        for record in (
            None,
            "",
            "scrypt$x",
            "bcrypt$1$2$3$00$00",
            "scrypt$99$8$1$00$00",
            "scrypt$14$8$1$zz$00",
        ):
            self.assertFalse(accounts.verify_auth(record, AUTH))

    def test_unknown_user_costs_the_same(self) -> None:
        """Checking an unknown user costs about as much as a wrong auth.

        The best of several runs is compared, so that the machine's load
        does not decide; a check that skipped the hash would be ~1000
        times faster.
        """
        record = accounts.hash_auth(AUTH)
        accounts.verify_auth(None, AUTH)  # makes the dummy record once

        def best(rec: str | None) -> float:
            times = []
            for _ in range(5):
                start = time.perf_counter()
                accounts.verify_auth(rec, bytes(32))
                times.append(time.perf_counter() - start)
            return min(times)

        known, unknown = best(record), best(None)
        self.assertLess(unknown, known * 3)
        self.assertGreater(unknown, known / 3)


class LimiterTests(SynchronousTestCase):
    """LoginLimiter on task.Clock."""

    def setUp(self) -> None:
        """3 failures within 60 s block; at most 4 names tracked."""
        self.clock = Clock()
        self.limiter = accounts.LoginLimiter(
            self.clock, max_failures=3, window=60, max_names=4
        )

    def test_blocks_after_failures(self) -> None:
        """Blocked after the third failure, free again after the window."""
        for _ in range(2):
            self.limiter.failed("alice")
            self.assertFalse(self.limiter.blocked("alice"))
        self.clock.advance(10)
        self.limiter.failed("alice")
        self.assertTrue(self.limiter.blocked("alice"))
        self.assertEqual(self.limiter.retry_after("alice"), 50)
        self.clock.advance(49)
        self.assertTrue(self.limiter.blocked("alice"))
        self.clock.advance(1)
        self.assertFalse(self.limiter.blocked("alice"))
        self.assertEqual(self.limiter.retry_after("alice"), 0)

    def test_sliding_window(self) -> None:
        """Failures older than the window no longer count."""
        self.limiter.failed("alice")
        self.clock.advance(59)
        self.limiter.failed("alice")
        self.clock.advance(2)
        self.limiter.failed("alice")
        self.assertFalse(self.limiter.blocked("alice"))

    def test_names_are_separate(self) -> None:
        """Failures for one name do not block another."""
        for _ in range(3):
            self.limiter.failed("alice")
        self.assertTrue(self.limiter.blocked("alice"))
        self.assertFalse(self.limiter.blocked("bob"))

    def test_success_clears(self) -> None:
        """A success forgets the name's failures."""
        self.limiter.failed("alice")
        self.limiter.failed("alice")
        self.limiter.succeeded("alice")
        self.limiter.failed("alice")
        self.assertFalse(self.limiter.blocked("alice"))

    def test_bounded_names(self) -> None:
        """At most max_names are tracked; the stalest is forgotten."""
        for name in ("a", "b", "c", "d", "e"):
            self.limiter.failed(name)
            self.clock.advance(1)
        self.assertEqual(len(self.limiter), 4)
        for _ in range(2):
            self.limiter.failed("e")
        self.assertTrue(self.limiter.blocked("e"))

    def test_expired_names_dropped(self) -> None:
        """A name whose failures all expired is no longer kept."""
        self.limiter.failed("alice")
        self.clock.advance(61)
        self.assertFalse(self.limiter.blocked("alice"))
        self.assertEqual(len(self.limiter), 0)

    def test_bad_settings(self) -> None:
        """Non-positive settings are refused."""
        self.assertRaises(ValueError, accounts.LoginLimiter, self.clock, 0)
        self.assertRaises(ValueError, accounts.LoginLimiter, self.clock, 1, 0)
