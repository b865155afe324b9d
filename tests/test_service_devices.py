"""Several devices of one node against the real proxy (127.0.0.1, SQLite):
the writer lease, the vault and accounts (docs/protocol.md, "Several
devices of one node").

Sessions here are plain JSON-RPC clients (tests/harness.py), so what is
checked is the wire: codes, data and notifications.  The client library's
use of these methods is tested in tests/test_client_devices.py.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.logger import globalLogPublisher

from lnproxy import keys, wire
from lnproxy.client import account
from lnproxy.protocol import (
    INVALID_REQUEST,
    LEASE_HELD,
    LIMIT_EXCEEDED,
    LOGIN_FAILED,
    METHOD_NOT_FOUND,
    NOT_ALLOWED,
    NOT_LOGGED_IN,
    VERSION_CONFLICT,
)

from .harness import ProxyTestCase, RpcFailed, WsClient, eventually

NODE_SECRET = bytes.fromhex("11" * 32)
OTHER_SECRET = bytes.fromhex("22" * 32)
PASSWORD = "correct horse battery staple"


class CapturedLogs:
    """Every log event of the process while a test runs, as text."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        """Keep the event: its format string, its fields and its failure."""
        self.lines.append(repr(sorted(event.items(), key=lambda kv: kv[0])))


class DevicesTestCase(ProxyTestCase):
    """A proxy, plus log capture and helpers for error replies."""

    def setUp(self) -> None:
        """Capture every log event (to scan them for secrets)."""
        self.logs = CapturedLogs()
        globalLogPublisher.addObserver(self.logs)
        self.addCleanup(globalLogPublisher.removeObserver, self.logs)

    @defer.inlineCallbacks
    def opened(self) -> Any:
        """A WebSocket that has received its hello (not logged in)."""
        client = yield self.ws()
        yield client.hello
        return client

    @defer.inlineCallbacks
    def error(self, client: WsClient, method: str, **params: Any) -> Any:
        """Call ``method``; it must fail. Returns the whole ``error``
        object (code, message, data)."""
        d = client.call(method, params)
        req_id = client._next_id
        yield self.assertFailure(d, RpcFailed)
        (reply,) = [r for r in client.replies if r.get("id") == req_id]
        return reply["error"]

    def assert_no_secrets(self, *secrets: bytes) -> None:
        """Neither the data dir's files nor the captured logs hold any of
        ``secrets``, raw or as hex (either case)."""
        needles: list[bytes] = []
        for secret in secrets:
            needles += [secret, secret.hex().encode(), secret.hex().upper().encode()]
        scanned = 0
        for root, _dirs, files in os.walk(self.data_dir):
            for name in files:
                if not os.path.isfile(os.path.join(root, name)):
                    continue  # takeover.sock, a Unix socket (hot restart)
                with open(os.path.join(root, name), "rb") as f:
                    data = f.read()
                scanned += 1
                for needle in needles:
                    self.assertNotIn(needle, data, f"found a secret in {name}")
        self.assertGreater(scanned, 0)
        text = "\n".join(self.logs.lines).encode("utf-8", "backslashreplace")
        self.assertGreater(len(self.logs.lines), 0)
        for needle in needles:
            self.assertNotIn(needle, text, "found a secret in the logs")


class LeaseTests(DevicesTestCase):
    """lease.acquire / lease.release and code 11."""

    @defer.inlineCallbacks
    def test_features_and_limits(self) -> Any:
        """hello lists lease, vault and account, and the vault's limits."""
        self.start_proxy("--max-vault-entries-per-node", "3")
        client = yield self.ws()
        hello = yield client.hello
        self.assertTrue({"account", "lease", "vault"} <= set(hello["features"]))
        self.assertEqual(hello["limits"]["vault_entries_per_node"], 3)
        self.assertEqual(hello["limits"]["vault_blob_max"], 65535)

    @defer.inlineCallbacks
    def test_login_rules(self) -> Any:
        """Before login only login and account.login work; account.login
        after login is -32600; unknown methods stay -32601."""
        self.start_proxy()
        client = yield self.opened()
        for method in ("lease.acquire", "vault.list", "account.set", "account.remove"):
            err = yield self.error(client, method)
            self.assertEqual(err["code"], NOT_LOGGED_IN, method)
        err = yield self.error(client, "lease.steal")
        self.assertEqual(err["code"], METHOD_NOT_FOUND)
        yield client.login(NODE_SECRET)
        err = yield self.error(client, "account.login", user="a", auth="00" * 32)
        self.assertEqual(err["code"], INVALID_REQUEST)

    @defer.inlineCallbacks
    def test_without_devices_methods_unknown(self) -> Any:
        """A factory without the devices back end answers -32601 for the
        lease, vault and account methods, and guards no writes."""
        self.start_proxy()
        self.proxy.factory.devices = None
        peer, port = self.local_peer()
        client = yield self.logged_in(NODE_SECRET)
        for method in ("lease.acquire", "vault.list", "account.remove"):
            err = yield self.error(client, method)
            self.assertEqual(err["code"], METHOD_NOT_FOUND, method)
        conn, _ = yield client.open_peer(peer, port)
        self.assertTrue(conn)
        fresh = yield self.opened()
        err = yield self.error(fresh, "account.login", user="a", auth="00" * 32)
        self.assertEqual(err["code"], METHOD_NOT_FOUND)

    @defer.inlineCallbacks
    def test_refusals_and_forced_move(self) -> Any:
        """Three sessions of one node: the holder writes, the others get
        11 for connect/finish/send/disconnect and for a plain acquire; a
        forced acquire moves the lease and tells the former holder."""
        self.start_proxy()
        peer, port = self.local_peer()
        phone = yield self.logged_in(NODE_SECRET)
        laptop = yield self.logged_in(NODE_SECRET)
        tablet = yield self.logged_in(NODE_SECRET)

        # Without a lease, everyone may write.
        conn, _ = yield laptop.open_peer(peer, port)
        self.assertEqual((yield phone.call("lease.acquire")), {"writer": True})
        self.assertEqual(
            (yield phone.call("lease.acquire", force=False)), {"writer": True}
        )
        ping = wire.Ping(num_pong_bytes=2, ignored=b"").encode().hex()
        for client in (laptop, tablet):
            refused = [
                (
                    "connect",
                    {
                        "peer": f"{peer.node_id.hex()}@127.0.0.1:{port}",
                        "act1": "00" * 50,
                    },
                ),
                (
                    "finish",
                    {
                        "conn": conn,
                        "act3": "00" * 66,
                        "sk": "00" * 32,
                        "rk": "00" * 32,
                        "ck": "00" * 32,
                    },
                ),
                ("send", {"conn": conn, "msg": ping}),
                ("disconnect", {"conn": conn}),
                ("lease.acquire", {}),
            ]
            for method, params in refused:
                err = yield self.error(client, method, **params)
                self.assertEqual(err["code"], LEASE_HELD, (method, err))
        # Reading, acks and the vault stay open to non-holders.
        listed = yield tablet.call("connections")
        self.assertEqual([c["conn"] for c in listed["connections"]], [conn])
        yield tablet.call("vault.list")
        # The holder writes on the laptop's connection (same node).
        self.assertEqual((yield phone.call("send", conn=conn, msg=ping)), {})

        # A forced move: the tablet takes it, the phone is told.
        self.assertEqual(
            (yield tablet.call("lease.acquire", force=True)), {"writer": True}
        )
        note = yield phone.wait_event(lambda e: e.get("method") == "lease")
        self.assertEqual(
            note, {"jsonrpc": "2.0", "method": "lease", "params": {"writer": False}}
        )
        self.assertNotIn("seq", note["params"])
        err = yield self.error(phone, "send", conn=conn, msg=ping)
        self.assertEqual(err["code"], LEASE_HELD)
        # Releasing a lease one lost changes nothing.
        self.assertEqual((yield phone.call("lease.release")), {})
        err = yield self.error(phone, "send", conn=conn, msg=ping)
        self.assertEqual(err["code"], LEASE_HELD)
        self.assertEqual((yield tablet.call("send", conn=conn, msg=ping)), {})
        # Only the phone was notified; nobody else got a lease frame.
        for client in (laptop, tablet):
            self.assertFalse([e for e in client.events if e.get("method") == "lease"])
        # Release: everyone writes again.
        self.assertEqual((yield tablet.call("lease.release")), {})
        self.assertEqual((yield laptop.call("send", conn=conn, msg=ping)), {})
        self.assertEqual((yield laptop.call("disconnect", conn=conn)), {})

    @defer.inlineCallbacks
    def test_other_nodes_unaffected(self) -> Any:
        """A node's lease does not touch another node's sessions."""
        self.start_proxy()
        peer, port = self.local_peer()
        holder = yield self.logged_in(NODE_SECRET)
        yield holder.call("lease.acquire")
        other = yield self.logged_in(OTHER_SECRET)
        conn, _ = yield other.open_peer(peer, port)
        self.assertTrue(conn)

    @defer.inlineCallbacks
    def test_lease_ends_with_session(self) -> Any:
        """When the holder's WebSocket closes, the others may write and
        acquire again, without force and without a notification."""
        self.start_proxy()
        peer, port = self.local_peer()
        phone = yield self.logged_in(NODE_SECRET)
        laptop = yield self.logged_in(NODE_SECRET)
        yield phone.call("lease.acquire")
        err = yield self.error(
            laptop,
            "connect",
            peer=f"{peer.node_id.hex()}@127.0.0.1:{port}",
            act1="00" * 50,
        )
        self.assertEqual(err["code"], LEASE_HELD)
        phone.sendClose(1000)
        yield phone.closed
        yield eventually(
            lambda: (
                not self.proxy.factory.devices.leases.holder(
                    keys.public_key(NODE_SECRET).hex()
                )
            )
        )
        conn, _ = yield laptop.open_peer(peer, port)
        self.assertTrue(conn)
        self.assertEqual((yield laptop.call("lease.acquire")), {"writer": True})
        self.assertFalse([e for e in laptop.events if e.get("method") == "lease"])


class VaultTests(DevicesTestCase):
    """vault.* over the wire."""

    @defer.inlineCallbacks
    def test_examples(self) -> Any:
        """The contract's example exchange, answer for answer."""
        self.start_proxy()
        c = yield self.logged_in(NODE_SECRET)
        put = yield c.call(
            "vault.put", name="channels.v1", blob="8f3a11c0d2", version=0
        )
        self.assertEqual(put, {"version": 1})
        got = yield c.call("vault.get", name="channels.v1")
        self.assertEqual(got, {"version": 1, "blob": "8f3a11c0d2"})
        listed = yield c.call("vault.list")
        self.assertEqual(
            listed, {"entries": [{"name": "channels.v1", "version": 1, "size": 5}]}
        )
        self.assertEqual(
            (yield c.call("vault.remove", name="channels.v1", version=1)), {}
        )
        got = yield c.call("vault.get", name="channels.v1")
        self.assertEqual(got, {"version": 0, "blob": None})

    @defer.inlineCallbacks
    def test_cas_two_writers(self) -> Any:
        """Two devices write the same version at once, five rounds: exactly
        one wins each round, the other gets code 10 with the current
        version and succeeds when it writes again naming it."""
        self.start_proxy()
        one = yield self.logged_in(NODE_SECRET)
        two = yield self.logged_in(NODE_SECRET)
        version = 0
        for round_ in range(5):
            calls = []
            for name, client in (("one", one), ("two", two)):
                d = client.call(
                    "vault.put",
                    name="state",
                    blob=f"{round_:02x}" + name.encode().hex(),
                    version=version,
                )
                calls.append((client, client._next_id, d))
            results = yield defer.DeferredList(
                [d for _, _, d in calls], consumeErrors=True
            )
            wins = [ok for ok, _ in results]
            self.assertEqual(sorted(wins), [False, True], f"round {round_}")
            winner_result = next(r for ok, r in results if ok)
            self.assertEqual(winner_result, {"version": version + 1})
            loser, loser_id, _ = next(
                c for c, (ok, _) in zip(calls, results, strict=True) if not ok
            )
            (reply,) = [r for r in loser.replies if r.get("id") == loser_id]
            self.assertEqual(reply["error"]["code"], VERSION_CONFLICT)
            self.assertEqual(reply["error"]["data"], {"version": version + 1})
            retried = yield loser.call(
                "vault.put",
                name="state",
                blob="ff",
                version=reply["error"]["data"]["version"],
            )
            self.assertEqual(retried, {"version": version + 2})
            version += 2
        got = yield one.call("vault.get", name="state")
        self.assertEqual(got, {"version": 10, "blob": "ff"})

    @defer.inlineCallbacks
    def test_limits_and_params(self) -> Any:
        """Entries beyond the limit and blobs above 65535 bytes: code 7;
        bad names and non-hex blobs: -32602; stale remove: 10."""
        self.start_proxy("--max-vault-entries-per-node", "2")
        c = yield self.logged_in(NODE_SECRET)
        yield c.call("vault.put", name="a", blob="", version=0)
        yield c.call("vault.put", name="b", blob="00" * 65535, version=0)
        err = yield self.error(c, "vault.put", name="c", blob="", version=0)
        self.assertEqual(err["code"], LIMIT_EXCEEDED)
        err = yield self.error(c, "vault.put", name="a", blob="00" * 65536, version=1)
        self.assertEqual(err["code"], LIMIT_EXCEEDED)
        for params in (
            {"name": "A", "blob": "", "version": 0},
            {"name": "a", "blob": "0g", "version": 1},
            {"name": "a", "blob": "", "version": "1"},
        ):
            err = yield self.error(c, "vault.put", **params)
            self.assertEqual(err["code"], -32602, params)
        err = yield self.error(c, "vault.remove", name="a", version=7)
        self.assertEqual((err["code"], err["data"]), (VERSION_CONFLICT, {"version": 1}))

    @defer.inlineCallbacks
    def test_nodes_do_not_see_each_other(self) -> Any:
        """Another node's vault is empty and its writes are its own."""
        self.start_proxy()
        mine = yield self.logged_in(NODE_SECRET)
        theirs = yield self.logged_in(OTHER_SECRET)
        yield mine.call("vault.put", name="n", blob="aa", version=0)
        self.assertEqual((yield theirs.call("vault.list")), {"entries": []})
        self.assertEqual(
            (yield theirs.call("vault.get", name="n")), {"version": 0, "blob": None}
        )
        yield theirs.call("vault.put", name="n", blob="bb", version=0)
        self.assertEqual(
            (yield mine.call("vault.get", name="n")), {"version": 1, "blob": "aa"}
        )


class AccountTests(DevicesTestCase):
    """account.* over the wire, with keys derived by the client library."""

    @defer.inlineCallbacks
    def set_account(self, user: str = "alice") -> Any:
        """Log in with the node key and set the account; returns
        (server_id, AccountKeys)."""
        c = yield self.logged_in(NODE_SECRET)
        server_id = bytes.fromhex(c.hello_params["server_id"])
        derived = account.derive(PASSWORD, server_id, user)
        blob = account.seal_node_key(derived.enc, user, NODE_SECRET)
        result = yield c.call(
            "account.set", user=user, auth=derived.auth.hex(), blob=blob.hex()
        )
        self.assertEqual(result, {})
        return server_id, derived

    @defer.inlineCallbacks
    def test_login_gives_blob(self) -> Any:
        """account.login answers node_id and a blob that opens to the node
        key; the session is still not logged in."""
        self.start_proxy()
        _, derived = yield self.set_account()
        c = yield self.opened()
        result = yield c.call("account.login", user="alice", auth=derived.auth.hex())
        node_id = keys.public_key(NODE_SECRET)
        self.assertEqual(result["node_id"], node_id.hex())
        secret = account.open_node_key(
            derived.enc, "alice", bytes.fromhex(result["blob"]), node_id
        )
        self.assertEqual(secret, NODE_SECRET)
        err = yield self.error(c, "vault.list")
        self.assertEqual(err["code"], NOT_LOGGED_IN)
        yield c.login(secret)
        self.assertEqual((yield c.call("vault.list")), {"entries": []})
        self.assert_no_secrets(NODE_SECRET, derived.enc, PASSWORD.encode())

    @defer.inlineCallbacks
    def test_wrong_passwords(self) -> Any:
        """A wrong password and an unknown user answer the same code 2 with
        the same message, five times each; then code 7, also for the right
        password; another user name is not affected."""
        self.start_proxy()
        server_id, derived = yield self.set_account()
        wrong = account.derive("not the password", server_id, "alice")
        c = yield self.opened()
        messages = set()
        for user, auth in (("alice", wrong.auth), ("mallory", derived.auth)):
            for _ in range(5):
                err = yield self.error(c, "account.login", user=user, auth=auth.hex())
                self.assertEqual(err["code"], LOGIN_FAILED)
                messages.add(err["message"])
            err = yield self.error(c, "account.login", user=user, auth=auth.hex())
            self.assertEqual(err["code"], LIMIT_EXCEEDED)
        self.assertEqual(len(messages), 1)
        err = yield self.error(
            c, "account.login", user="alice", auth=derived.auth.hex()
        )
        self.assertEqual(err["code"], LIMIT_EXCEEDED)
        err = yield self.error(c, "account.login", user="bob", auth=derived.auth.hex())
        self.assertEqual(err["code"], LOGIN_FAILED)
        # The session can still log in with the key: account failures do
        # not spend the login challenge.
        yield c.login(NODE_SECRET)
        self.assert_no_secrets(NODE_SECRET, derived.enc, wrong.enc, PASSWORD.encode())

    @defer.inlineCallbacks
    def test_user_bound_to_another_node(self) -> Any:
        """account.set with a user name of another node: code 8; after
        account.remove the name is free (and its login answers 2)."""
        self.start_proxy()
        _, derived = yield self.set_account()
        other = yield self.logged_in(OTHER_SECRET)
        err = yield self.error(
            other, "account.set", user="alice", auth="00" * 32, blob="00" * 60
        )
        self.assertEqual(err["code"], NOT_ALLOWED)
        mine = yield self.logged_in(NODE_SECRET)
        self.assertEqual((yield mine.call("account.remove")), {})
        c = yield self.opened()
        err = yield self.error(
            c, "account.login", user="alice", auth=derived.auth.hex()
        )
        self.assertEqual(err["code"], LOGIN_FAILED)
        self.assertEqual(
            (
                yield other.call(
                    "account.set", user="alice", auth="00" * 32, blob="00" * 60
                )
            ),
            {},
        )
