"""The Electrum adapter (:mod:`lnproxy.electrum`) against a fake proxy that
misbehaves: a frame the adapter cannot read must end the session and fail
every pending call at once, not leave them to their timeout.  And the
scripted Electrum node gets its key through a pipe, not its environment.

The adapter runs under the Python that has Electrum and aiohttp (see
:mod:`lnproxy.electrum_demo`), so each test runs a small script there: an
aiohttp WebSocket server playing the proxy, and a
:class:`~lnproxy.electrum.ProxySession` logged in to it.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from lnproxy import keys
from lnproxy.electrum_demo import ELECTRUM_PYTHON, ElectrumNode, electrum_env

from .test_electrum import SKIP


def run_electrum_script(case: TestCase, script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` under Electrum's Python (its own clean environment);
    it must exit 0; return the JSON object of its last output line."""
    work = os.path.abspath(case.mktemp())
    os.makedirs(work)
    out = subprocess.run(
        [ELECTRUM_PYTHON, "-c", script, *args],
        env=electrum_env(work),
        capture_output=True,
        timeout=60,
        check=False,
    )
    case.assertEqual(out.returncode, 0, out.stderr.decode(errors="replace"))
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result

SCRIPT = r"""
import asyncio, json, sys, time
from aiohttp import web
from lnproxy.electrum import ProxySession

BAD = sys.argv[1]

async def proxy(request):
    ws = web.WebSocketResponse(protocols=("lnproxy.v1",))
    await ws.prepare(request)
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "hello", "params": {
        "protocol": "lnproxy/1", "server_id": "02" + "11" * 32,
        "challenge": "00" * 32, "limits": {}}}))
    async for msg in ws:
        req = json.loads(msg.data)
        if req["method"] == "login":
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": req["id"],
                "result": {"node_id": "", "inbox": 0, "connections": []}}))
        elif req["method"] == "connections":
            await ws.send_str(BAD)
    return ws

async def main():
    app = web.Application()
    app.router.add_get("/", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    s = ProxySession(f"ws://127.0.0.1:{port}/", bytes(range(1, 33)),
                     request_timeout=30)
    await s.start()
    started = time.monotonic()
    fut = s.call_nowait("connections")
    try:
        await asyncio.wait_for(asyncio.shield(fut), 2)
        outcome = "answered"
    except asyncio.TimeoutError:
        outcome = "hang"
    except Exception as e:
        outcome = type(e).__name__
    print(json.dumps({"outcome": outcome, "closed": s.closed.is_set(),
                      "elapsed": time.monotonic() - started}))
    await s.close()
    await runner.cleanup()

asyncio.run(main())
"""


class UnreadableFrameTests(TestCase):
    """A frame the adapter cannot read ends the session."""

    skip = SKIP

    def run_with(self, frame: str) -> dict[str, object]:
        """Run the script with the proxy answering ``connections`` with
        ``frame``; return what it printed."""
        result: dict[str, object] = run_electrum_script(self, SCRIPT, frame)
        return result

    def assert_session_ended(self, frame: str) -> None:
        """The pending call fails with ConnectionError at once and the
        session is closed."""
        result = self.run_with(frame)
        self.assertEqual(result["outcome"], "ConnectionError", result)
        self.assertTrue(result["closed"], result)

    def test_json_that_is_not_an_object(self) -> None:
        """A JSON array instead of an object."""
        self.assert_session_ended("[1, 2]")

    def test_seq_that_is_not_a_number(self) -> None:
        """An event whose seq is a string."""
        self.assert_session_ended(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "message",
                    "params": {"seq": "x", "conn": "c"},
                }
            )
        )

    def test_answer_to_no_call_still_fine(self) -> None:
        """Control: a well-formed frame the session ignores (a notification
        it does not know) leaves the call pending, not failed."""
        result = self.run_with(json.dumps({"jsonrpc": "2.0", "method": "lease"}))
        self.assertEqual(result["outcome"], "hang", result)
        self.assertFalse(result["closed"], result)


HANDSHAKE_SCRIPT = r"""
import asyncio, json, sys
from aiohttp import web
from electrum.lnutil import LNPeerAddr
from electrum.lntransport import HandshakeFailed
from lnproxy.electrum import ProxySession, privkey_to_pubkey

acks = []

async def proxy(request):
    ws = web.WebSocketResponse(protocols=("lnproxy.v1",))
    await ws.prepare(request)
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "hello", "params": {
        "protocol": "lnproxy/1", "server_id": "02" + "11" * 32,
        "challenge": "00" * 32, "limits": {}}}))
    async for msg in ws:
        req = json.loads(msg.data)
        result = {}
        if req["method"] == "login":
            result = {"node_id": "", "inbox": 0, "connections": []}
        elif req["method"] == "connect":
            result = {"conn": "c1", "act2": "00" * 50}  # not a valid act 2
        elif req["method"] == "ack":
            acks.append(req["params"]["seq"])
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": req["id"],
                                      "result": result}))
        if req["method"] == "disconnect":
            # The proxy closes the connection: its closed event, then an
            # event of another, long gone connection.
            for seq, conn in ((1, "c1"), (2, "old")):
                await ws.send_str(json.dumps({"jsonrpc": "2.0",
                    "method": "closed", "params": {"seq": seq, "conn": conn,
                    "peer": "", "reason": "client request", "reconnect": False}}))
    return ws

async def main():
    app = web.Application()
    app.router.add_get("/", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    s = ProxySession(f"ws://127.0.0.1:{port}/", bytes(range(1, 33)),
                     request_timeout=10)
    await s.start()
    peer = LNPeerAddr("127.0.0.1", 9735, privkey_to_pubkey(bytes(range(2, 34))))
    t = s.transport(peer)
    try:
        await t.handshake()
        outcome = "handshake succeeded"
    except HandshakeFailed:
        outcome = "HandshakeFailed"
    for _ in range(40):
        if acks and acks[-1] >= 2:
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"outcome": outcome, "acks": acks,
                      "transports": list(s._transports)}))
    await s.close()
    await runner.cleanup()

asyncio.run(main())
"""


class FailedHandshakeTests(TestCase):
    """A handshake that fails after ``connect`` leaves nothing behind."""

    skip = SKIP

    def test_events_of_a_failed_handshake_do_not_block_acks(self) -> None:
        """A bad act 2: the transport is forgotten, so the connection's
        closed event (and every later one) is acknowledged instead of
        waiting forever in a queue no one reads."""
        result = run_electrum_script(self, HANDSHAKE_SCRIPT)
        self.assertEqual(result["outcome"], "HandshakeFailed", result)
        self.assertEqual(result["transports"], [], result)
        self.assertEqual(result["acks"][-1:], [2], result)


LOGIN_SCRIPT = r"""
import asyncio, json, sys
from aiohttp import web
from lnproxy.electrum import ProxyError, ProxySession

server_saw_close = asyncio.Event()

async def proxy(request):
    ws = web.WebSocketResponse(protocols=("lnproxy.v1",))
    await ws.prepare(request)
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "hello", "params": {
        "protocol": "lnproxy/1", "server_id": "02" + "11" * 32,
        "challenge": "00" * 32, "limits": {}}}))
    async for msg in ws:
        req = json.loads(msg.data)
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": req["id"],
            "error": {"code": 2, "message": "login failed"}}))
    server_saw_close.set()
    return ws

async def main():
    app = web.Application()
    app.router.add_get("/", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    s = ProxySession(f"ws://127.0.0.1:{port}/", bytes(range(1, 33)),
                     request_timeout=10)
    try:
        await s.start()
        outcome = "logged in"
    except ProxyError as e:
        outcome = f"ProxyError {e.code}"
    try:
        await asyncio.wait_for(server_saw_close.wait(), 3)
    except asyncio.TimeoutError:
        pass
    print(json.dumps({"outcome": outcome, "closed": s.closed.is_set(),
                      "http_closed": s._http.closed,
                      "tasks_done": all(t.done() for t in s._tasks),
                      "server_saw_close": server_saw_close.is_set()}))
    await s.close()
    await runner.cleanup()

asyncio.run(main())
"""


class FailedStartTests(TestCase):
    """:meth:`ProxySession.start` that fails leaves nothing open."""

    skip = SKIP

    def test_refused_login_closes_everything(self) -> None:
        """A login answered with code 2: start() raises, and the WebSocket,
        its tasks and the HTTP session are closed."""
        result = run_electrum_script(self, LOGIN_SCRIPT)
        self.assertEqual(
            result,
            {
                "outcome": "ProxyError 2",
                "closed": True,
                "http_closed": True,
                "tasks_done": True,
                "server_saw_close": True,
            },
        )


class NodeKeyTests(TestCase):
    """:class:`ElectrumNode` hands the node key over a pipe."""

    skip = SKIP

    @defer.inlineCallbacks
    def test_key_not_in_the_environment(self) -> Any:
        """The child uses the key given (its node id says so), and the key
        is nowhere in its /proc/PID/environ or command line."""
        secret = bytes(range(7, 39))
        user_dir = os.path.abspath(self.mktemp())
        os.makedirs(user_dir)
        node = ElectrumNode.spawn(
            reactor, "keyed", "client", key=secret, user_dir=user_dir
        )
        try:
            ready = yield node.wait("ready", timeout=30)
            self.assertEqual(ready["node_id"], keys.public_key(secret).hex())
            pid = node.transport.pid  # type: ignore[union-attr]
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            for where in (environ, cmdline):
                self.assertNotIn(secret.hex().encode(), where.lower())
        finally:
            node.send("exit")
            yield node.ended
