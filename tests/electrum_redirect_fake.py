"""Run under Electrum's Python: ProxySession.start() against fake processes.

Not a test module of its own: tests/test_electrum.py runs it with
``/usr/bin/python3`` (which has Electrum and aiohttp) and checks the JSON
line it prints per scenario.  Each scenario starts small aiohttp WebSocket
servers on 127.0.0.1 that play processes of one deployment (a ``hello``
with the deployment's ``server_id``; a ``login`` that answers code 9 with a
``data`` of the scenario's choice, or succeeds after checking the
signature), then calls :meth:`lnproxy.electrum.ProxySession.start` and
reports what it returned or raised, where it ended up, and which fake saw
which logins.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from typing import Any

from aiohttp import web
from electrum import ecc

from lnproxy.electrum import MAX_REDIRECTS, ProxyError, ProxySession, RedirectError
from lnproxy.protocol import LOGIN_TAG, PROTOCOL_VERSION, SERVED_ELSEWHERE

DEPLOYMENT_KEY = ecc.ECPrivkey(b"\x33" * 32)
STRANGER_KEY = ecc.ECPrivkey(b"\x55" * 32)


def closed_port() -> int:
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class Fake:
    """One fake process: ``answers`` is what each login gets in turn (a
    dict: code 9 with that ``data``; None: a successful login)."""

    def __init__(self, answers: list[Any], key: Any = DEPLOYMENT_KEY) -> None:
        self.answers = answers
        self.server_id: bytes = key.get_public_key_bytes(compressed=True)
        self.logins: list[str] = []
        self.closed_after_redirect = 0
        self.url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_get("/", self.session)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{port}/"

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()

    async def session(self, request: web.Request) -> web.WebSocketResponse:
        """One WebSocket: hello, then login answers."""
        ws = web.WebSocketResponse(protocols=("lnproxy.v1",))
        await ws.prepare(request)
        challenge = os.urandom(32)
        await ws.send_json(
            {
                "jsonrpc": "2.0",
                "method": "hello",
                "params": {
                    "protocol": PROTOCOL_VERSION,
                    "server_id": self.server_id.hex(),
                    "challenge": challenge.hex(),
                    "limits": {},
                    "features": ["redirect"],
                },
            }
        )
        redirected = False
        async for frame in ws:
            req = json.loads(frame.data)
            if req["method"] != "login":
                await ws.send_json({"jsonrpc": "2.0", "id": req["id"], "result": {}})
                continue
            node_id = req["params"]["node_id"]
            self.logins.append(node_id)
            answer = self.answers.pop(0) if self.answers else None
            if answer is not None:
                redirected = True
                error = {
                    "code": SERVED_ELSEWHERE,
                    "message": "node served by another process",
                    "data": answer,
                }
                await ws.send_json({"jsonrpc": "2.0", "id": req["id"], "error": error})
                continue
            digest = hashlib.sha256(LOGIN_TAG + self.server_id + challenge).digest()
            sig = bytes.fromhex(req["params"]["signature"])
            if not ecc.ECPubkey(bytes.fromhex(node_id)).verify_message_hash(
                sig, digest
            ):
                error = {"code": 2, "message": "login failed: bad signature"}
                await ws.send_json({"jsonrpc": "2.0", "id": req["id"], "error": error})
                continue
            result = {
                "node_id": node_id,
                "inbox": {"next_seq": 1, "pending": 0},
                "connections": [],
            }
            await ws.send_json({"jsonrpc": "2.0", "id": req["id"], "result": result})
        if redirected:
            self.closed_after_redirect += 1
        return ws


async def scenario(name: str, fakes: list[Fake], **session: Any) -> dict[str, Any]:
    """Start ``fakes[0]``'s client, report what happened."""
    privkey = os.urandom(32)
    s = ProxySession(fakes[0].url, privkey, request_timeout=5, **session)
    out: dict[str, Any] = {"scenario": name}
    try:
        result = await s.start()
        out["result"] = "logged_in"
        out["node_ok"] = result["node_id"] == s.node_id.hex()
        out["at"] = [f.url for f in fakes].index(s.current_url)
        out["url_kept"] = s.url == fakes[0].url
        await s.close()
    except RedirectError as e:
        out.update(result="RedirectError", code=e.code, error=str(e), hops=len(e.hops))
    except ProxyError as e:
        out.update(result="ProxyError", code=e.code, error=str(e))
    except Exception as e:  # noqa: BLE001  (reported to the test)
        out.update(result=type(e).__name__, error=str(e))
    await asyncio.sleep(0.05)  # the fakes see the closes
    out["logins"] = [len(f.logins) for f in fakes]
    out["closed_after_redirect"] = [f.closed_after_redirect for f in fakes]
    return out


async def main() -> None:
    """Every scenario, one JSON line each."""

    async def started(*fakes: Fake) -> list[Fake]:
        for f in fakes:
            await f.start()
        return list(fakes)

    # 1. A redirects to the owner B.
    a, b = await started(Fake([]), Fake([]))
    a.answers = [{"url": b.url}]
    print(json.dumps(await scenario("follow", [a, b])), flush=True)

    # 2. A chain of MAX_REDIRECTS redirects is followed.
    chain = await started(*(Fake([]) for _ in range(MAX_REDIRECTS + 1)))
    for here, there in zip(chain, chain[1:], strict=False):
        here.answers = [{"url": there.url}]
    print(json.dumps(await scenario("chain", chain)), flush=True)

    # 3. A and B send the client to each other.
    a, b = await started(Fake([]), Fake([]))
    a.answers = [{"url": b.url}] * 5
    b.answers = [{"url": a.url}] * 5
    print(json.dumps(await scenario("loop", [a, b])), flush=True)

    # 4. Not a WebSocket URL; no URL at all.
    (a,) = await started(Fake([{"url": "http://127.0.0.1:1/"}]))
    print(json.dumps(await scenario("http", [a])), flush=True)
    (a,) = await started(Fake([{}]))
    print(json.dumps(await scenario("no_url", [a])), flush=True)

    # 5. A redirect to another server_id, unpinned and pinned.
    a, stranger = await started(Fake([]), Fake([], key=STRANGER_KEY))
    a.answers = [{"url": stranger.url}, {"url": stranger.url}]
    print(json.dumps(await scenario("stranger", [a, stranger])), flush=True)
    print(
        json.dumps(
            await scenario("stranger_pinned", [a, stranger], server_id=a.server_id)
        ),
        flush=True,
    )

    # 6. A names a dead owner once, then serves the node itself.
    dead = f"ws://127.0.0.1:{closed_port()}/"
    (a,) = await started(Fake([{"url": dead}]))
    print(json.dumps(await scenario("dead_owner", [a])), flush=True)

    # 7. A keeps naming a dead owner (its lease has not run out).
    (a,) = await started(Fake([{"url": dead}] * 10))
    print(json.dumps(await scenario("stale", [a])), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
