"""End-to-end tests of the client API: hello, subprotocol, login, every
method and every error code of docs/protocol.md (except 8, which needs webhooks).

Real reactor, real TCP on 127.0.0.1, real SQLite under ``mktemp()``, real
Autobahn WebSocket clients; peers are local Twisted BOLT 8 responders.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from lnproxy import keys, noise, wire
from lnproxy.api import RpcError, peer_param

from .harness import ProxyTestCase, eventually, free_port

#: secp256k1 group order, to build a high-S twin of a signature.
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: 33 bytes with a valid prefix whose x is not on the curve (x = 5 is not).
NOT_A_POINT = "02" + "00" * 31 + "05"


def _reply_error(reply: dict[str, Any]) -> tuple[Any, int]:
    """``(id, code)`` of an error reply."""
    return reply["id"], reply["error"]["code"]


class HelloAndSubprotocolTests(ProxyTestCase):
    """What a client sees when it opens a WebSocket."""

    @defer.inlineCallbacks
    def test_hello_fields(self) -> Any:
        """``hello`` carries protocol ``lnproxy/1``, the proxy's own key as
        server_id, a 32-byte lowercase hex challenge and every required
        limit, with the operator's values."""
        svc = self.start_proxy(
            "--handshake-timeout",
            "7",
            "--keepalive",
            "9",
            "--max-sessions-per-node",
            "3",
            "--max-connections-per-node",
            "5",
            "--max-events-per-node",
            "77",
        )
        client = yield self.ws()
        hello = yield client.hello
        self.assertEqual(hello["protocol"], "lnproxy/1")
        self.assertEqual(
            hello["server_id"], keys.public_key(svc.store.server_secret).hex()
        )
        self.assertTrue(keys.is_node_id(bytes.fromhex(hello["server_id"])))
        self.assertRegex(hello["challenge"], r"\A[0-9a-f]{64}\Z")
        limits = hello["limits"]
        self.assertEqual(limits["max_message"], 65535)
        self.assertEqual(limits["connections_per_node"], 5)
        self.assertEqual(limits["sessions_per_node"], 3)
        self.assertEqual(limits["events_per_node"], 77)
        self.assertEqual(limits["handshake_timeout"], 7)
        self.assertEqual(limits["keepalive"], 9)
        self.assertIsInstance(limits["webhooks_per_node"], int)
        self.assertEqual(limits["vault_entries_per_node"], 64)
        self.assertEqual(limits["vault_blob_max"], 65535)
        self.assertEqual(
            hello["features"],
            ["account", "lease", "peer_storage", "takeover", "vault"],
        )
        # The hello is the first frame, and a notification (no id).
        self.assertEqual(client.frames[0]["method"], "hello")
        self.assertNotIn("id", client.frames[0])

    @defer.inlineCallbacks
    def test_challenges_differ(self) -> Any:
        """Every session gets its own challenge."""
        self.start_proxy()
        a = yield self.ws()
        b = yield self.ws()
        ha = yield a.hello
        hb = yield b.hello
        self.assertNotEqual(ha["challenge"], hb["challenge"])
        self.assertEqual(ha["server_id"], hb["server_id"])

    @defer.inlineCallbacks
    def test_subprotocol_offered(self) -> Any:
        """A client offering ``lnproxy.v1`` (among others) gets it."""
        self.start_proxy()
        client = yield self.ws(protocols=["other.v9", "lnproxy.v1"])
        yield client.hello
        self.assertEqual(client.websocket_protocol_in_use, "lnproxy.v1")
        yield client.login(os.urandom(32))

    @defer.inlineCallbacks
    def test_no_subprotocol_accepted(self) -> Any:
        """A client offering no subprotocol is accepted and can log in."""
        self.start_proxy()
        client = yield self.ws(protocols=[])
        yield client.hello
        self.assertIsNone(client.websocket_protocol_in_use)
        result = yield client.login(os.urandom(32))
        self.assertEqual(result["inbox"], {"next_seq": 1, "pending": 0})

    @defer.inlineCallbacks
    def test_other_subprotocol_refused(self) -> Any:
        """A client offering only other subprotocols is refused at the
        opening handshake: it never gets a hello."""
        self.start_proxy()
        client = yield self.ws(protocols=["other.v9"])
        yield client.closed
        self.assertIsNone(client.hello_params)


class _RawClient(Protocol):
    """Writes bytes, records what comes back and when the server closes."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class HttpLimitTests(ProxyTestCase):
    """The HTTP upgrade request is bounded."""

    @defer.inlineCallbacks
    def test_endless_request_headers_dropped(self) -> Any:
        """Request headers that go past 16 KiB without ending are dropped at
        once, without an answer; a normal client still gets in."""
        self.start_proxy()
        raw = _RawClient(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 40_000
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port)
        yield endpoint.connect(ClientFactory.forProtocol(lambda: raw))
        # At once, not after the 5 s opening handshake timeout (which would
        # drop it too): the cap is what closes it.
        yield raw.lost.addTimeout(2, reactor)
        self.assertEqual(raw.received, b"")
        client = yield self.logged_in()
        self.assertEqual(client.login_result["inbox"]["pending"], 0)

    @defer.inlineCallbacks
    def test_wrong_path_refused(self) -> Any:
        """A WebSocket upgrade on another path than ``/`` is refused with
        HTTP 404."""
        self.start_proxy()
        raw = _RawClient(
            b"GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy_port)
        yield endpoint.connect(ClientFactory.forProtocol(lambda: raw))
        yield raw.lost.addTimeout(10, reactor)
        self.assertTrue(raw.received.startswith(b"HTTP/1.1 404"), raw.received[:40])


class JsonRpcErrorTests(ProxyTestCase):
    """JSON-RPC's own error codes (-32700, -32600, -32601, -32602)."""

    @defer.inlineCallbacks
    def raw(self, client: Any, text: str | bytes, binary: bool = False) -> Any:
        """Send one raw frame and return the next reply."""
        nxt = client.next_reply()
        client.send_raw(text, binary=binary)
        reply = yield nxt
        return reply

    @defer.inlineCallbacks
    def test_parse_error(self) -> Any:
        """Non-JSON text answers -32700 with id null; the session survives."""
        self.start_proxy()
        client = yield self.ws()
        yield client.hello
        for text in ("{not json", "", '{"jsonrpc": "2.0", "id": 1,'):
            reply = yield self.raw(client, text)
            self.assertEqual(_reply_error(reply), (None, -32700))
        result = yield client.login(os.urandom(32))
        self.assertEqual(result["inbox"]["pending"], 0)

    @defer.inlineCallbacks
    def test_invalid_requests(self) -> Any:
        """Batches, non-objects, a wrong or missing ``jsonrpc``, a method
        that is not a string, a bad id type and binary frames answer -32600."""
        self.start_proxy()
        client = yield self.ws()
        yield client.hello
        cases = [
            ('[{"jsonrpc":"2.0","id":1,"method":"connections"}]', None),
            ("[]", None),
            ("42", None),
            ('"login"', None),
            ("null", None),
            ('{"jsonrpc":"1.0","id":5,"method":"connections"}', 5),
            ('{"id":6,"method":"connections"}', 6),
            ('{"jsonrpc":"2.0","id":"s","method":7}', "s"),
            ('{"jsonrpc":"2.0","id":"t"}', "t"),
            ('{"jsonrpc":"2.0","id":1.5,"method":"connections"}', None),
            ('{"jsonrpc":"2.0","id":true,"method":"connections"}', None),
            ('{"jsonrpc":"2.0","id":[1],"method":"connections"}', None),
            ('{"jsonrpc":"2.0","id":{"a":1},"method":"connections"}', None),
            ('{"jsonrpc":"2.0","id":null,"method":"connections"}', None),
        ]
        for text, req_id in cases:
            reply = yield self.raw(client, text)
            self.assertEqual(_reply_error(reply), (req_id, -32600), text)
        reply = yield self.raw(client, b'{"jsonrpc":"2.0","id":9}', binary=True)
        self.assertEqual(reply["error"]["code"], -32600)

    @defer.inlineCallbacks
    def test_second_login_is_invalid_request(self) -> Any:
        """A second ``login`` on a logged-in session answers -32600 and
        changes nothing: the session stays the first node, with its
        connections."""
        self.start_proxy()
        peer, port = self.local_peer()
        a_secret, b_secret = os.urandom(32), os.urandom(32)
        client = yield self.logged_in(a_secret)
        conn, _ = yield client.open_peer(peer, port)
        hello = yield client.hello
        digest = keys.login_digest(
            bytes.fromhex(hello["server_id"]), bytes.fromhex(hello["challenge"])
        )
        for secret in (b_secret, a_secret):
            yield self.expect_error(
                client.call(
                    "login",
                    node_id=keys.public_key(secret).hex(),
                    signature=keys.sign_digest(secret, digest).hex(),
                ),
                -32600,
            )
        listed = yield client.call("connections")
        self.assertEqual([c["conn"] for c in listed["connections"]], [conn])
        yield client.call("send", conn=conn, msg="0085")

    @defer.inlineCallbacks
    def test_unknown_method(self) -> Any:
        """An unknown method answers -32601 before and after login."""
        self.start_proxy()
        client = yield self.ws()
        yield client.hello
        yield self.expect_error(client.call("nosuch"), -32601)
        yield self.expect_error(client.call("Login"), -32601)
        yield client.login(os.urandom(32))
        yield self.expect_error(client.call("nosuch"), -32601)
        yield self.expect_error(client.call("connections.list"), -32601)

    @defer.inlineCallbacks
    def test_params_not_an_object(self) -> Any:
        """``params`` that is not an object answers -32602."""
        self.start_proxy()
        client = yield self.logged_in()
        reply = yield self.raw(
            client, '{"jsonrpc":"2.0","id":3,"method":"connections","params":[]}'
        )
        self.assertEqual(_reply_error(reply), (3, -32602))

    @defer.inlineCallbacks
    def test_notification_gets_no_reply(self) -> Any:
        """A request without an id (a notification) is executed but gets no
        response, not even an error; the next request is answered."""
        self.start_proxy()
        client = yield self.logged_in()
        client.send_raw('{"jsonrpc":"2.0","method":"connections"}')
        client.send_raw('{"jsonrpc":"2.0","method":"nosuch"}')
        result = yield client.call("connections")
        self.assertEqual(result, {"connections": []})
        self.assertEqual(len(client.replies), 2)  # login and connections

    @defer.inlineCallbacks
    def test_invalid_params(self) -> Any:
        """Wrong types, wrong hex lengths, non-hex, bad node ids and bad peer
        strings answer -32602 in every method that takes them."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        good_peer = f"{peer.node_id.hex()}@127.0.0.1:{port}"
        act1 = "00" * 50
        bad_connect = [
            {"act1": act1},
            {"peer": good_peer},
            {"peer": 5, "act1": act1},
            {"peer": good_peer, "act1": 5},
            {"peer": good_peer, "act1": "00" * 49},
            {"peer": good_peer, "act1": "00" * 51},
            {"peer": good_peer, "act1": "zz" * 50},
            {"peer": good_peer, "act1": "0" * 99},
            {"peer": good_peer, "act1": act1, "persist": "yes"},
            {"peer": good_peer, "act1": act1, "persist": 1},
            {"peer": "nonsense", "act1": act1},
            {"peer": peer.node_id.hex(), "act1": act1},
            {"peer": f"{peer.node_id.hex()}@", "act1": act1},
            {"peer": f"{peer.node_id.hex()[:64]}@127.0.0.1:{port}", "act1": act1},
            {"peer": f"{NOT_A_POINT}@127.0.0.1:{port}", "act1": act1},
            {"peer": f"{peer.node_id.hex()}@127.0.0.1:70000", "act1": act1},
            {"peer": f"{peer.node_id.hex()}@127.0.0.1:0", "act1": act1},
            {"peer": f"{peer.node_id.hex()}@::1:9735", "act1": act1},
            {"peer": f"{peer.node_id.hex()}@127.0.0.1:port", "act1": act1},
        ]
        for params in bad_connect:
            yield self.expect_error(client.call("connect", params), -32602)
        conn, tk = yield client.open_peer(peer, port)
        k = "00" * 32
        bad_finish = [
            {"act3": "00" * 66, "sk": k, "rk": k, "ck": k},
            {"conn": 1, "act3": "00" * 66, "sk": k, "rk": k, "ck": k},
            {"conn": conn, "act3": "00" * 65, "sk": k, "rk": k, "ck": k},
            {"conn": conn, "act3": "00" * 66, "sk": "00" * 31, "rk": k, "ck": k},
            {"conn": conn, "act3": "00" * 66, "sk": k, "rk": k + "00", "ck": k},
            {"conn": conn, "act3": "00" * 66, "sk": k, "rk": k, "ck": "xy" * 32},
            {"conn": conn, "act3": "00" * 66, "sk": k, "rk": k},
        ]
        for params in bad_finish:
            yield self.expect_error(client.call("finish", params), -32602)
        bad_send = [
            {"conn": conn},
            {"msg": "0085"},
            {"conn": conn, "msg": 133},
            {"conn": conn, "msg": ""},
            {"conn": conn, "msg": "00"},
            {"conn": conn, "msg": "008"},
            {"conn": conn, "msg": "00zz"},
            {"conn": [conn], "msg": "0085"},
        ]
        for params in bad_send:
            yield self.expect_error(client.call("send", params), -32602)
        yield self.expect_error(client.call("disconnect", {}), -32602)
        yield self.expect_error(client.call("disconnect", {"conn": None}), -32602)
        for seq in ("1", True, 1.0, None, -1):
            yield self.expect_error(client.call("ack", {"seq": seq}), -32602)
        yield self.expect_error(client.call("ack", {}), -32602)
        # The connection was not disturbed by any of it.
        got = peer.wait_message(lambda m: m == bytes.fromhex("0085abcd"))
        yield client.call("send", conn=conn, msg="0085ABCD")
        yield got

    @defer.inlineCallbacks
    def test_ack_beyond_newest(self) -> Any:
        """``ack`` beyond the newest event answers -32602 and acknowledges
        nothing; ack of exactly the newest works."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        yield self.expect_error(client.call("ack", seq=1), -32602)
        yield client.call("ack", seq=0)
        yield client.open_peer(peer, port)
        init = yield client.wait_event(lambda e: e["params"].get("type") == wire.INIT)
        seq = init["params"]["seq"]
        err = yield self.expect_error(client.call("ack", seq=seq + 1), -32602)
        self.assertIn(str(seq), err.message)
        again = yield self.logged_in(client.node_secret)
        self.assertEqual(
            again.login_result["inbox"], {"next_seq": seq + 1, "pending": 1}
        )
        yield client.call("ack", seq=seq)


class LoginTests(ProxyTestCase):
    """Codes 1 and 2, and the single-use challenge."""

    @defer.inlineCallbacks
    def test_not_logged_in(self) -> Any:
        """Every known method except login answers code 1 before login, even
        with bad params; unknown methods stay -32601."""
        self.start_proxy()
        client = yield self.ws()
        yield client.hello
        for method in (
            "connect",
            "finish",
            "send",
            "disconnect",
            "connections",
            "ack",
            "webhook.set",
            "webhook.list",
            "webhook.remove",
        ):
            yield self.expect_error(client.call(method, {}), 1)
        yield self.expect_error(client.call("ack", seq=0), 1)
        yield self.expect_error(client.call("frobnicate"), -32601)

    @defer.inlineCallbacks
    def test_bad_signature_then_close(self) -> Any:
        """A signature by another key answers code 2; the server closes the
        WebSocket shortly after (not at once: the reply arrives first)."""
        self.start_proxy()
        client = yield self.ws()
        hello = yield client.hello
        digest = keys.login_digest(
            bytes.fromhex(hello["server_id"]), bytes.fromhex(hello["challenge"])
        )
        node_id = keys.public_key(os.urandom(32)).hex()
        yield self.expect_error(
            client.call(
                "login",
                node_id=node_id,
                signature=keys.sign_digest(os.urandom(32), digest).hex(),
            ),
            2,
        )
        self.assertFalse(client.closed.called)
        code, _reason = yield client.closed
        self.assertEqual(code, 4002)

    @defer.inlineCallbacks
    def test_challenge_is_single_use(self) -> Any:
        """After one failed attempt, even a correct signature over the same
        challenge answers code 2 on that session."""
        self.start_proxy()
        client = yield self.ws()
        hello = yield client.hello
        secret = os.urandom(32)
        digest = keys.login_digest(
            bytes.fromhex(hello["server_id"]), bytes.fromhex(hello["challenge"])
        )
        node_id = keys.public_key(secret).hex()
        wrong = keys.sign_digest(secret, bytes(32))
        yield self.expect_error(
            client.call("login", node_id=node_id, signature=wrong.hex()), 2
        )
        good = keys.sign_digest(secret, digest)
        err = yield self.expect_error(
            client.call("login", node_id=node_id, signature=good.hex()), 2
        )
        self.assertIn("challenge", err.message)
        yield self.expect_error(client.call("connections"), 1)

    @defer.inlineCallbacks
    def test_signature_over_other_challenge_or_server(self) -> Any:
        """A signature over another session's challenge, or over another
        server_id, answers code 2; so does the high-S twin of a good one."""
        self.start_proxy()
        secret = os.urandom(32)
        node_id = keys.public_key(secret).hex()
        a = yield self.ws()
        b = yield self.ws()
        ha = yield a.hello
        yield b.hello
        server = bytes.fromhex(ha["server_id"])
        sig_for_a = keys.sign_digest(
            secret, keys.login_digest(server, bytes.fromhex(ha["challenge"]))
        )
        yield self.expect_error(
            b.call("login", node_id=node_id, signature=sig_for_a.hex()), 2
        )
        c = yield self.ws()
        hc = yield c.hello
        other_server = keys.public_key(os.urandom(32))
        sig = keys.sign_digest(
            secret, keys.login_digest(other_server, bytes.fromhex(hc["challenge"]))
        )
        yield self.expect_error(
            c.call("login", node_id=node_id, signature=sig.hex()), 2
        )
        # High-S: (r, n - s) verifies mathematically but BIP 62 forbids it.
        d = yield self.ws()
        hd = yield d.hello
        low = keys.sign_digest(
            secret, keys.login_digest(server, bytes.fromhex(hd["challenge"]))
        )
        s = int.from_bytes(low[32:], "big")
        high = low[:32] + (SECP256K1_N - s).to_bytes(32, "big")
        yield self.expect_error(
            d.call("login", node_id=node_id, signature=high.hex()), 2
        )
        # a's own challenge still works for a.
        result = yield a.call("login", node_id=node_id, signature=sig_for_a.hex())
        self.assertEqual(result["node_id"], node_id)

    @defer.inlineCallbacks
    def test_malformed_login_keeps_challenge(self) -> Any:
        """Malformed login params answer -32602 without using up the
        challenge: a correct login afterwards succeeds."""
        self.start_proxy()
        client = yield self.ws()
        yield client.hello
        sig = "00" * 64
        for params in (
            {"signature": sig},
            {"node_id": "02" * 33},
            {"node_id": "02" * 32, "signature": sig},
            {"node_id": NOT_A_POINT, "signature": sig},
            {"node_id": "04" + "11" * 32, "signature": sig},
            {"node_id": "02" * 33, "signature": "00" * 63},
            {"node_id": "02" * 33, "signature": 7},
        ):
            yield self.expect_error(client.call("login", params), -32602)
        result = yield client.login(os.urandom(32))
        self.assertEqual(result["connections"], [])

    @defer.inlineCallbacks
    def test_login_timeout(self) -> Any:
        """A client that does not log in within ``--login-timeout`` is
        closed with 4001; one that logged in in time is not."""
        self.start_proxy("--login-timeout", "0.5")
        idle = yield self.ws()
        active = yield self.logged_in()
        code, reason = yield idle.closed
        self.assertEqual((code, reason), (4001, "login timeout"))
        self.assertEqual((yield active.call("connections")), {"connections": []})

    @defer.inlineCallbacks
    def test_sessions_per_node_cap(self) -> Any:
        """With ``--max-sessions-per-node 2`` a third session of the node
        fails with code 7; another node is unaffected; once one session
        closes, a new one may log in."""
        self.start_proxy("--max-sessions-per-node", "2")
        secret = os.urandom(32)
        a = yield self.logged_in(secret)
        yield self.logged_in(secret)
        c = yield self.ws()
        yield self.expect_error(c.login(secret), 7)
        yield self.logged_in()
        a.sendClose()
        yield a.closed
        yield eventually(
            lambda: len(self.proxy.hub.nodes[keys.public_key(secret).hex()].sessions)
            == 1
        )
        yield self.logged_in(secret)


class ConnectionErrorTests(ProxyTestCase):
    """Codes 3 to 7 on the connection methods."""

    @defer.inlineCallbacks
    def test_unknown_connection(self) -> Any:
        """finish/send/disconnect on an unknown conn answer code 3; another
        node's conn answers code 3 with exactly the same message."""
        self.start_proxy()
        peer, port = self.local_peer()
        a = yield self.logged_in()
        b = yield self.logged_in()
        conn, _ = yield a.open_peer(peer, port)
        k = "00" * 32
        calls = [
            ("finish", {"act3": "00" * 66, "sk": k, "rk": k, "ck": k}),
            ("send", {"msg": "0085"}),
            ("disconnect", {}),
        ]
        for method, params in calls:
            unknown = yield self.expect_error(
                b.call(method, dict(params, conn="nope")), 3
            )
            foreign = yield self.expect_error(
                b.call(method, dict(params, conn=conn)), 3
            )
            self.assertEqual(foreign.message, unknown.message)
            mine_unknown = yield self.expect_error(
                a.call(method, dict(params, conn="x" * 16)), 3
            )
            self.assertEqual(mine_unknown.message, unknown.message)
        listed = yield b.call("connections")
        self.assertEqual(listed, {"connections": []})
        # a's connection is untouched.
        listed = yield a.call("connections")
        self.assertEqual(listed["connections"][0]["state"], "open")

    @defer.inlineCallbacks
    def test_connection_refused(self) -> Any:
        """Connecting to a closed loopback port answers code 4 and leaves no
        connection behind."""
        self.start_proxy()
        client = yield self.logged_in()
        node = keys.public_key(os.urandom(32)).hex()
        init = noise.Initiator(client.node_secret, bytes.fromhex(node))
        yield self.expect_error(
            client.call(
                "connect",
                peer=f"{node}@127.0.0.1:{free_port()}",
                act1=init.act1().hex(),
            ),
            4,
        )
        listed = yield client.call("connections")
        self.assertEqual(listed, {"connections": []})
        self.assertEqual(self.proxy.hub._handshakes, 0)

    @defer.inlineCallbacks
    def test_handshake_failed(self) -> Any:
        """Code 5 when the peer closes without act 2, sends an act 2 with a
        bad version, or never answers (after ``--handshake-timeout 1``)."""
        self.start_proxy("--handshake-timeout", "1")
        client = yield self.logged_in()
        for mode in ("close", "bad_version", "silent"):
            factory, port = self.scripted_peer(act2=mode)
            err = yield self.expect_error(client.start_connect(factory, port), 5)
            self.assertIn("handshake", err.message)
        listed = yield client.call("connections")
        self.assertEqual(listed, {"connections": []})
        self.assertEqual(self.proxy.hub._handshakes, 0)
        self.assertEqual(client.events, [])

    @defer.inlineCallbacks
    def test_not_open(self) -> Any:
        """Code 6: send on a handshake-state conn, finish on an open conn,
        and send/disconnect on a closed conn (also right after disconnect,
        before TCP is gone)."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        r, init = yield client.start_connect(peer, port)
        yield self.expect_error(client.call("send", conn=r["conn"], msg="0085"), 6)
        listed = yield client.call("connections")
        self.assertEqual(listed["connections"][0]["state"], "handshake")
        init.read_act2(bytes.fromhex(r["act2"]))
        act3, tk = init.act3()
        fin = dict(
            conn=r["conn"],
            act3=act3.hex(),
            sk=tk.sk.hex(),
            rk=tk.rk.hex(),
            ck=tk.ck.hex(),
        )
        yield client.call("finish", fin)
        yield self.expect_error(client.call("finish", fin), 6)
        # Pipelined: the send is read before the peer's TCP is gone.
        d1 = client.call("disconnect", conn=r["conn"])
        d2 = client.call("send", conn=r["conn"], msg="0085")
        yield d1
        yield self.expect_error(d2, 6)
        yield client.wait_event(lambda e: e["method"] == "closed")
        yield self.expect_error(client.call("send", conn=r["conn"], msg="0085"), 6)
        yield self.expect_error(client.call("disconnect", conn=r["conn"]), 6)

    @defer.inlineCallbacks
    def test_message_size(self) -> Any:
        """``send`` of 65535 bytes reaches the peer; 65536 bytes is code 7
        and the connection keeps working."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        conn, _ = yield client.open_peer(peer, port)
        big = bytes.fromhex("8001") + os.urandom(65533)
        got = peer.wait_message(lambda m: len(m) == 65535)
        yield client.call("send", conn=conn, msg=big.hex())
        self.assertEqual((yield got), big)
        yield self.expect_error(
            client.call("send", conn=conn, msg=(big + b"\0").hex()), 7
        )
        got = peer.wait_message(lambda m: m == bytes.fromhex("0085"))
        yield client.call("send", conn=conn, msg="0085")
        yield got

    @defer.inlineCallbacks
    def test_connection_caps(self) -> Any:
        """``--max-connections-per-node 2``: a third connect is code 7;
        ``--max-handshakes-per-node 1``: a second unfinished handshake is
        code 7; another node is not limited by the first one's count; a
        closed connection stops counting."""
        self.start_proxy(
            "--max-connections-per-node", "2", "--max-handshakes-per-node", "1"
        )
        peer, port = self.local_peer()
        client = yield self.logged_in()
        r, _ = yield client.start_connect(peer, port)
        err = yield self.expect_error(client.start_connect(peer, port), 7)
        self.assertIn("handshake", err.message)
        yield client.call("disconnect", conn=r["conn"])
        yield client.wait_event(lambda e: e["method"] == "closed")
        yield client.open_peer(peer, port)
        yield client.open_peer(peer, port)
        err = yield self.expect_error(client.start_connect(peer, port), 7)
        self.assertIn("connections", err.message)
        other = yield self.logged_in()
        yield other.open_peer(peer, port)

    @defer.inlineCallbacks
    def test_total_handshakes_cap(self) -> Any:
        """``--max-handshakes 1``: while one node has an unfinished
        handshake, another node's connect is code 7; once it is finished,
        the other node may connect."""
        self.start_proxy("--max-handshakes", "1")
        peer, port = self.local_peer()
        a = yield self.logged_in()
        b = yield self.logged_in()
        r, init = yield a.start_connect(peer, port)
        err = yield self.expect_error(b.start_connect(peer, port), 7)
        self.assertIn("unfinished handshakes", err.message)
        yield a.finish(r, init)
        yield b.open_peer(peer, port)

    @defer.inlineCallbacks
    def test_inbox_cap(self) -> Any:
        """``--max-events-per-node 3``: once the node holds 3 unacknowledged
        events, connect is code 7 (its peers are not being read); after an
        ack it works again, and the paused peer's messages arrive."""
        self.start_proxy("--max-events-per-node", "3")
        peer, port = self.local_peer()
        client = yield self.logged_in()
        opened = peer.wait_open()
        conn, _ = yield client.open_peer(peer, port)
        p = yield opened
        for i in range(4):
            p.send(bytes([0, 0x81, i]))
        yield client.wait_event(lambda e: e["params"]["seq"] == 3)
        err = yield self.expect_error(client.start_connect(peer, port), 7)
        self.assertIn("inbox is full", err.message)
        yield client.call("ack", seq=3)
        yield client.wait_event(lambda e: e["params"]["seq"] == 5)
        self.assertEqual(
            [e["params"]["msg"] for e in client.events[1:]],
            [f"0081{i:02x}" for i in range(4)],
        )
        yield client.open_peer(peer, port)

    @defer.inlineCallbacks
    def test_oversize_frame_closes_only_that_client(self) -> Any:
        """A WebSocket message over the 256 KiB cap closes that client with
        1009; other clients keep working."""
        self.start_proxy()
        peer, port = self.local_peer()
        good = yield self.logged_in()
        conn, _ = yield good.open_peer(peer, port)
        bad = yield self.logged_in()
        bad.send_raw(
            '{"jsonrpc":"2.0","id":1,"method":"send","params":{"msg":"'
            + "00" * 140_000
            + '"}}'
        )
        code, _ = yield bad.closed
        self.assertEqual(code, 1009)
        got = peer.wait_message(lambda m: m == bytes.fromhex("0085"))
        yield good.call("send", conn=conn, msg="0085")
        yield got


class MethodTests(ProxyTestCase):
    """The happy shape of each method's result."""

    @defer.inlineCallbacks
    def test_connect_finish_and_connection_object(self) -> Any:
        """connect answers ``{conn, act2}``, finish ``{conn}``, and the
        connection object has every field with the right value."""
        self.start_proxy()
        peer, port = self.local_peer()
        client = yield self.logged_in()
        r, init = yield client.start_connect(peer, port)
        self.assertEqual(set(r), {"conn", "act2"})
        self.assertIsInstance(r["conn"], str)
        self.assertRegex(r["act2"], r"\A[0-9a-f]{100}\Z")
        init.read_act2(bytes.fromhex(r["act2"]))
        act3, tk = init.act3()
        result = yield client.call(
            "finish",
            conn=r["conn"],
            act3=act3.hex(),
            sk=tk.sk.hex(),
            rk=tk.rk.hex(),
            ck=tk.ck.hex(),
        )
        self.assertEqual(result, {"conn": r["conn"]})
        ev = yield client.wait_event(lambda e: e["params"].get("type") == wire.INIT)
        listed = yield client.call("connections")
        (obj,) = listed["connections"]
        self.assertEqual(
            set(obj),
            {"conn", "peer", "address", "state", "persist", "since", "their_init"},
        )
        self.assertEqual(obj["conn"], r["conn"])
        self.assertEqual(obj["peer"], peer.node_id.hex())
        self.assertEqual(obj["address"], f"127.0.0.1:{port}")
        self.assertEqual(obj["state"], "open")
        self.assertIs(obj["persist"], False)
        self.assertIsInstance(obj["since"], float)
        self.assertEqual(obj["their_init"], ev["params"]["msg"])
        self.assertEqual(ev["params"]["peer"], peer.node_id.hex())
        self.assertEqual(
            set(ev["params"]), {"seq", "at", "conn", "peer", "type", "msg", "summon"}
        )
        send = yield client.call("send", conn=r["conn"], msg="0085")
        self.assertEqual(send, {})
        ack = yield client.call("ack", seq=ev["params"]["seq"])
        self.assertEqual(ack, {})
        disc = yield client.call("disconnect", conn=r["conn"])
        self.assertEqual(disc, {})

    @defer.inlineCallbacks
    def test_ipv6_peer(self) -> Any:
        """A peer on ``[::1]:port`` is reached; its address is listed with
        brackets."""
        from twisted.internet import reactor

        from lnproxy.localpeer import LocalPeerFactory

        self.start_proxy()
        factory = LocalPeerFactory()
        listening = reactor.listenTCP(0, factory, interface="::1")
        port = listening.getHost().port
        self.addCleanup(self._stop_peer, factory, listening)
        client = yield self.logged_in()
        conn, _ = yield client.open_peer(factory, port, host="[::1]")
        listed = yield client.call("connections")
        self.assertEqual(listed["connections"][0]["address"], f"[::1]:{port}")
        self.assertEqual(listed["connections"][0]["conn"], conn)

    def test_parse_peer(self) -> None:
        """``parse_peer`` defaults the port to 9735, lowercases the node id,
        unbrackets IPv6 hosts, and refuses malformed strings with -32602."""
        node = keys.public_key(os.urandom(32)).hex()
        def parse_peer(text: str) -> tuple[str, str, int]:
            p = peer_param(text)
            return p.node_id, p.host, p.port

        self.assertEqual(parse_peer(f"{node}@example.com"), (node, "example.com", 9735))
        self.assertEqual(parse_peer(f"{node.upper()}@[::1]:1"), (node, "::1", 1))
        self.assertEqual(
            parse_peer(f"{node}@10.0.0.1:65535"), (node, "10.0.0.1", 65535)
        )
        for bad in (f"{node}@[::1", f"{node}@a b", f"{node}@host:65536", f"x{node}@h"):
            with self.assertRaises(RpcError) as cm:
                peer_param(bad)
            self.assertEqual(cm.exception.code, -32602)


class RateLimitTests(ProxyTestCase):
    """The per-session request rate limit (code 7)."""

    @defer.inlineCallbacks
    def test_flood_gets_code_7_and_others_are_served(self) -> Any:
        """With --max-requests-per-second 5 (burst 10), a session that sends
        30 requests at once gets code 7 for those beyond its bucket, with a
        message naming the rate; another session of the same node is not
        affected, and the limited session is served again a moment later."""
        self.start_proxy("--max-requests-per-second", "5")
        secret = os.urandom(32)
        flood = yield self.logged_in(secret)
        other = yield self.logged_in(secret)
        results = yield defer.DeferredList(
            [flood.call("connections") for _ in range(30)], consumeErrors=True
        )
        refused = [r for ok, r in results if not ok]
        self.assertGreaterEqual(len(refused), 15)
        self.assertLessEqual(len(refused), 21)
        for f in refused:
            self.assertEqual(f.value.code, 7)
            self.assertIn("rate limit exceeded (5 requests per second", f.value.message)
        r = yield other.call("connections")
        self.assertEqual(r, {"connections": []})
        yield deferLater(reactor, 0.5, lambda: None)
        r = yield flood.call("connections")
        self.assertEqual(r, {"connections": []})
