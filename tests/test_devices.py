"""Tests for lnproxy.devices: the lease, vault and account methods' back end,
on a real SQLite store and task.Clock (the API around it is tested in
tests/test_service_devices.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lnproxy import accounts
from lnproxy.devices import DeviceError, DeviceLimits, Devices, inline_runner
from lnproxy.protocol import (
    INVALID_PARAMS,
    LEASE_HELD,
    LIMIT_EXCEEDED,
    LOGIN_FAILED,
    NOT_ALLOWED,
    VERSION_CONFLICT,
)
from lnproxy.store import SqliteStore

NODE = "02" + "aa" * 32
OTHER = "03" + "bb" * 32
AUTH = "b47dcaf8e07efbc89a1c6e19262aa6f0d4e3f484892ff831f2e0b37d2263d1c1"
BLOB = "000102030405060708090a0b" + "ee" * 48


class DevicesTestCase(SynchronousTestCase):
    """A Devices on a fresh SQLite store and a fake clock."""

    def setUp(self) -> None:
        """Open the store; build Devices with small limits."""
        self.store = SqliteStore.open(os.path.abspath(self.mktemp()))
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(1000)
        self.devices: Devices[str] = Devices(
            self.store,
            self.clock,
            inline_runner,
            DeviceLimits(
                vault_entries_per_node=2,
                vault_blob_max=8,
                login_failures=3,
                login_window=60,
            ),
        )

    def error(self, fn: Callable[..., Any], *args: Any) -> DeviceError:
        """The DeviceError ``fn(*args)`` raises or its Deferred fails with."""
        try:
            result = fn(*args)
        except DeviceError as e:
            return e
        self.assertIsInstance(result, defer.Deferred)
        return self.failureResultOf(result, DeviceError).value


class LeaseTests(DevicesTestCase):
    """lease.acquire / lease.release and the write check."""

    def test_acquire_force_release(self) -> None:
        """Held: others get 11; force moves it and names the former holder."""
        d = self.devices
        self.assertEqual(d.lease_acquire(NODE, "phone", {}), ({"writer": True}, None))
        d.check_write(NODE, "phone")
        self.assertEqual(self.error(d.check_write, NODE, "laptop").code, LEASE_HELD)
        e = self.error(d.lease_acquire, NODE, "laptop", {"force": False})
        self.assertEqual(e.code, LEASE_HELD)
        result = d.lease_acquire(NODE, "laptop", {"force": True})
        self.assertEqual(result, ({"writer": True}, "phone"))
        self.assertEqual(self.error(d.check_write, NODE, "phone").code, LEASE_HELD)
        self.assertEqual(d.lease_release(NODE, "phone"), {})
        self.assertEqual(d.leases.holder(NODE), "laptop")
        d.session_ended(NODE, "laptop")
        d.check_write(NODE, "phone")

    def test_bad_force(self) -> None:
        """force must be a boolean."""
        e = self.error(self.devices.lease_acquire, NODE, "phone", {"force": 1})
        self.assertEqual(e.code, INVALID_PARAMS)
        self.assertIsNone(self.devices.leases.holder(NODE))


class VaultTests(DevicesTestCase):
    """vault.* answers and codes."""

    def test_round_trip(self) -> None:
        """put, get, list, remove as the contract's examples."""
        d = self.devices
        self.assertEqual(d.vault_get(NODE, {"name": "c"}), {"version": 0, "blob": None})
        put = {"name": "channels.v1", "blob": "8f3a11c0d2", "version": 0}
        self.assertEqual(d.vault_put(NODE, put), {"version": 1})
        self.assertEqual(
            d.vault_get(NODE, {"name": "channels.v1"}),
            {"version": 1, "blob": "8f3a11c0d2"},
        )
        self.assertEqual(
            d.vault_list(NODE),
            {"entries": [{"name": "channels.v1", "version": 1, "size": 5}]},
        )
        self.assertEqual(
            d.vault_remove(NODE, {"name": "channels.v1", "version": 1}), {}
        )
        self.assertEqual(d.vault_list(NODE), {"entries": []})

    def test_conflict_has_current_version(self) -> None:
        """A stale version answers 10 with data.version."""
        d = self.devices
        d.vault_put(NODE, {"name": "n", "blob": "00", "version": 0})
        e = self.error(d.vault_put, NODE, {"name": "n", "blob": "01", "version": 0})
        self.assertEqual((e.code, e.data), (VERSION_CONFLICT, {"version": 1}))
        e = self.error(d.vault_remove, NODE, {"name": "n", "version": 2})
        self.assertEqual((e.code, e.data), (VERSION_CONFLICT, {"version": 1}))

    def test_limits(self) -> None:
        """A blob above vault_blob_max and a name beyond the entry limit: 7."""
        d = self.devices
        e = self.error(d.vault_put, NODE, {"name": "n", "blob": "00" * 9, "version": 0})
        self.assertEqual(e.code, LIMIT_EXCEEDED)
        d.vault_put(NODE, {"name": "a", "blob": "00" * 8, "version": 0})
        d.vault_put(NODE, {"name": "b", "blob": "", "version": 0})
        e = self.error(d.vault_put, NODE, {"name": "c", "blob": "", "version": 0})
        self.assertEqual(e.code, LIMIT_EXCEEDED)
        self.assertEqual(
            DeviceLimits(3, 9).as_hello(),
            {"vault_entries_per_node": 3, "vault_blob_max": 9},
        )

    def test_bad_params(self) -> None:
        """Malformed names, blobs and versions answer -32602."""
        d = self.devices
        for params in (
            {"name": "Bad", "blob": "", "version": 0},
            {"name": "n", "blob": "xyz", "version": 0},
            {"name": "n", "blob": "", "version": -1},
            {"name": "n", "blob": ""},
        ):
            self.assertEqual(self.error(d.vault_put, NODE, params).code, INVALID_PARAMS)
        self.assertEqual(self.error(d.vault_get, NODE, {}).code, INVALID_PARAMS)


class AccountTests(DevicesTestCase):
    """account.* answers, the hash and the limiter."""

    def set_account(self, node: str = NODE, user: str = "alice") -> None:
        """account.set for ``node``."""
        d = self.devices.account_set(node, {"user": user, "auth": AUTH, "blob": BLOB})
        self.assertEqual(self.successResultOf(d), {})

    def test_set_and_login(self) -> None:
        """The right auth gets the node id and the blob; the store keeps a
        scrypt record, never auth."""
        self.set_account()
        d = self.devices.account_login({"user": "alice", "auth": AUTH})
        self.assertEqual(self.successResultOf(d), {"node_id": NODE, "blob": BLOB})
        row = self.store.get_account("alice")
        assert row is not None
        self.assertTrue(row.auth_hash.startswith("scrypt$"))
        self.assertNotIn(AUTH, row.auth_hash)

    def test_wrong_and_unknown_same(self) -> None:
        """A wrong auth and an unknown user answer the same code and text."""
        self.set_account()
        wrong = self.error(
            self.devices.account_login, {"user": "alice", "auth": "00" * 32}
        )
        unknown = self.error(self.devices.account_login, {"user": "bob", "auth": AUTH})
        self.assertEqual((wrong.code, wrong.message), (unknown.code, unknown.message))
        self.assertEqual(wrong.code, LOGIN_FAILED)

    def test_limiter(self) -> None:
        """Code 2 three times, then 7 (even for the right auth), then after
        the window the right auth works again; unknown names the same."""
        self.set_account()
        for user in ("alice", "nobody"):
            for _ in range(3):
                e = self.error(
                    self.devices.account_login, {"user": user, "auth": "00" * 32}
                )
                self.assertEqual(e.code, LOGIN_FAILED)
            e = self.error(self.devices.account_login, {"user": user, "auth": AUTH})
            self.assertEqual(e.code, LIMIT_EXCEEDED)
        self.clock.advance(61)
        d = self.devices.account_login({"user": "alice", "auth": AUTH})
        self.assertEqual(self.successResultOf(d)["node_id"], NODE)

    def test_parallel_attempts_count(self) -> None:
        """Attempts still hashing count as failures: the fourth parallel
        attempt answers 7 before any hash finished."""
        self.set_account()
        waiting: list[defer.Deferred[Any]] = []

        def slow(fn: Callable[[], Any]) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            waiting.append(d)
            return d.addCallback(lambda _: fn())

        self.devices._run_hash = slow
        attempts = [
            self.devices.account_login({"user": "alice", "auth": "00" * 32})
            for _ in range(3)
        ]
        fourth = self.devices.account_login({"user": "alice", "auth": AUTH})
        self.assertEqual(self.failureResultOf(fourth, DeviceError).value.code, 7)
        while waiting:
            waiting.pop(0).callback(None)
        for d in attempts:
            self.assertEqual(self.failureResultOf(d, DeviceError).value.code, 2)

    def test_user_taken(self) -> None:
        """A user name bound to another node answers 8; rebinding one's own
        account under a new name works."""
        self.set_account()
        d = self.devices.account_set(
            OTHER, {"user": "alice", "auth": AUTH, "blob": BLOB}
        )
        self.assertEqual(self.failureResultOf(d, DeviceError).value.code, NOT_ALLOWED)
        self.set_account(user="alice2")
        self.assertIsNone(self.store.get_account("alice"))

    def test_remove(self) -> None:
        """After account.remove the user is unknown (code 2)."""
        self.set_account()
        self.assertEqual(self.devices.account_remove(NODE), {})
        e = self.error(self.devices.account_login, {"user": "alice", "auth": AUTH})
        self.assertEqual(e.code, LOGIN_FAILED)

    def test_bad_params(self) -> None:
        """Bad user, auth or blob: -32602; a blob above 4096 bytes: 7."""
        for params in (
            {"user": "", "auth": AUTH, "blob": BLOB},
            {"user": "a", "auth": AUTH[:-2], "blob": BLOB},
            {"user": "a", "auth": AUTH, "blob": "zz"},
        ):
            e = self.error(self.devices.account_set, NODE, params)
            self.assertEqual(e.code, INVALID_PARAMS)
        big = {"user": "a", "auth": AUTH, "blob": "00" * 4097}
        self.assertEqual(self.error(self.devices.account_set, NODE, big).code, 7)
        e = self.error(self.devices.account_login, {"user": "a"})
        self.assertEqual(e.code, INVALID_PARAMS)

    def test_too_many_waiting(self) -> None:
        """Beyond max_waiting queued hashes, account methods answer 7."""
        self.devices._run_hash = lambda fn: defer.Deferred()
        self.devices.max_waiting = 1
        pending = [
            self.devices.account_login({"user": f"u{i}", "auth": AUTH})
            for i in range(3)
        ]
        for d in pending:
            self.assertNoResult(d)
        d = self.devices.account_login({"user": "u9", "auth": AUTH})
        self.assertEqual(self.failureResultOf(d, DeviceError).value.code, 7)
        for d in pending:
            d.cancel()
            self.failureResultOf(d)


class HashingFairnessTests(DevicesTestCase):
    """The shared scrypt queue: one client cannot take all of it, and being
    turned away by it is not a failed login."""

    def hold_hashes(self) -> list[defer.Deferred[Any]]:
        """Make every hash wait until the returned Deferreds are fired."""
        waiting: list[defer.Deferred[Any]] = []

        def slow(fn: Callable[[], Any]) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            waiting.append(d)
            return d.addCallback(lambda _: fn())

        self.devices._run_hash = slow
        return waiting

    def test_one_session_cannot_fill_the_queue(self) -> None:
        """A session beyond max_per_session hashes answers 7 itself, while
        another session's account.login is still queued and answered."""
        self.devices.account_set(
            NODE, {"user": "alice", "auth": AUTH, "blob": BLOB}
        )
        waiting = self.hold_hashes()
        self.devices.max_waiting = 4
        flood = [
            self.devices.account_login({"user": f"x{i}", "auth": AUTH}, "bad")
            for i in range(10)
        ]
        allowed = self.devices.max_per_session
        for d in flood[allowed:]:
            self.assertEqual(self.failureResultOf(d, DeviceError).value.code, 7)
        good = self.devices.account_login({"user": "alice", "auth": AUTH}, "good")
        self.assertNoResult(good)
        while waiting:
            waiting.pop(0).callback(None)
        self.assertEqual(self.successResultOf(good)["node_id"], NODE)
        for d in flood[:allowed]:
            self.assertEqual(self.failureResultOf(d, DeviceError).value.code, 2)
        self.assertEqual(self.devices._hashes_of, {})
        # Its share is free again once its hashes are done.
        d = self.devices.account_login({"user": "alice", "auth": AUTH}, "bad")
        waiting.pop(0).callback(None)
        self.assertEqual(self.successResultOf(d)["node_id"], NODE)

    def test_account_set_shares_the_session_limit(self) -> None:
        """account.set counts against the same per-session share."""
        waiting = self.hold_hashes()
        params = {"user": "alice", "auth": AUTH, "blob": BLOB}
        sets = [
            self.devices.account_set(NODE, params, "phone")
            for _ in range(self.devices.max_per_session + 1)
        ]
        self.assertEqual(self.failureResultOf(sets[-1], DeviceError).value.code, 7)
        while waiting:
            waiting.pop(0).callback(None)
        for d in sets[:-1]:
            self.assertEqual(self.successResultOf(d), {})

    def test_full_queue_is_not_a_failed_login(self) -> None:
        """Attempts answered 7 because the queue is full (someone else's
        flood) do not count against the user: once it drains, the right
        auth logs in."""
        self.devices.account_set(
            NODE, {"user": "alice", "auth": AUTH, "blob": BLOB}
        )
        waiting = self.hold_hashes()
        self.devices.max_waiting = 1
        flood = [
            self.devices.account_login({"user": f"x{i}", "auth": AUTH}, f"s{i}")
            for i in range(self.devices.max_hashing + 1)
        ]
        for _ in range(self.devices.limits.login_failures + 1):
            d = self.devices.account_login({"user": "alice", "auth": AUTH}, "me")
            self.assertEqual(self.failureResultOf(d, DeviceError).value.code, 7)
        self.assertFalse(self.devices.limiter.blocked("alice"))
        while waiting:
            waiting.pop(0).callback(None)
        for d in flood:
            self.failureResultOf(d, DeviceError)
        d = self.devices.account_login({"user": "alice", "auth": AUTH}, "me")
        waiting.pop(0).callback(None)
        self.assertEqual(self.successResultOf(d)["node_id"], NODE)


class UnknownUserCostTests(DevicesTestCase):
    """The first login of the process costs the same for any user name."""

    def scrypts_of_first_login(self, user: str) -> int:
        """scrypt runs of ``user``'s login with a wrong auth, as the first
        hash of a fresh process."""
        self.patch(accounts, "_dummy", None)
        calls: list[int] = []
        scrypt = accounts._scrypt

        def counting(*args: Any) -> bytes:
            calls.append(1)
            return scrypt(*args)

        self.patch(accounts, "_scrypt", counting)
        d = self.devices.account_login({"user": user, "auth": "00" * 32})
        self.assertEqual(self.failureResultOf(d, DeviceError).value.code, 2)
        self.patch(accounts, "_scrypt", scrypt)
        return len(calls)

    def test_first_login_same_cost_known_or_unknown(self) -> None:
        """Making the unknown-user record rides with the first hash of any
        kind, so a known and an unknown name's first attempts run the same
        number of scrypts (more for the unknown one would tell it does not
        exist)."""
        self.devices.account_set(NODE, {"user": "alice", "auth": AUTH, "blob": BLOB})
        known = self.scrypts_of_first_login("alice")
        unknown = self.scrypts_of_first_login("nobody")
        self.assertEqual(known, unknown)
