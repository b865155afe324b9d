"""Electrum's Lightning peer over lnproxy: an asyncio adapter.

Electrum (``electrum.lnpeer.Peer``) talks to a peer through a transport
object with the interface of ``electrum.lntransport.LNTransportBase``:
``handshake()``, ``send_bytes(msg)``, the async generator
``read_messages()``, ``close()``, ``name()``, ``remote_pubkey()`` and the
attributes ``privkey`` and ``peer_addr``.  :class:`ProxyTransport` is such a
transport: instead of a TCP socket it uses a session with an lnproxy server
(:class:`ProxySession`, a WebSocket with JSON-RPC 2.0, see docs/protocol.md),
so that Electrum's own channel code runs unchanged while the proxy keeps the
peer connection when the wallet is away.

This module runs where Electrum runs: on asyncio, under the Python that has
Electrum (Debian's ``/usr/bin/python3`` with ``python3-electrum``).  It
imports no Twisted and nothing of lnproxy that needs other packages; the
BOLT 8 handshake and the login signature use Electrum's own ``lntransport``
and ``ecc`` helpers, the WebSocket is Electrum's own dependency ``aiohttp``.

What it does (docs/protocol.md, "Session start and login", "Outbound
connection (the split handshake)", "Using a connection", "Events"):

* login with the node key: a compact low-S signature over
  ``SHA256(b"lnproxy/1 login" || server_id || challenge)``;
* the split handshake: act 1 -> ``connect``, act 2 checked here, act 3 and
  the transport keys (sk, rk, ck) -> ``finish``;
* ``send_bytes`` -> ``send``, written in call order;
* ``message`` events fed to ``read_messages()``; an event is acknowledged
  only after Electrum has processed it (when its loop asks for the next
  message), and never before every older event of the session is processed;
* a ``closed`` event (or the loss of the WebSocket) raises Electrum's
  ``LightningPeerConnectionClosed`` from ``read_messages()``;
* :meth:`ProxySession.resume`: a transport on a connection the proxy kept
  open while the wallet was away.  The peer's ``init`` comes from the
  connection list, the stored events follow, and the ``init`` Electrum's
  ``Peer`` sends on start is not sent again (the peer already has it).

Use with a real ``LNWallet``::

    session = ProxySession(url, lnworker.node_keypair.privkey)
    await session.start()
    for conn in session.open_connections():          # after a wake-up
        t = session.resume(conn["conn"])
        await lnworker._add_peer_from_transport(node_id=t.peer_addr.pubkey,
                                                transport=t)
    t = session.transport(LNPeerAddr(host, port, node_id), persist=True)
    await lnworker._add_peer_from_transport(node_id=node_id, transport=t)

See docs/client.md, "Electrum".
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import deque
from typing import Any

import aiohttp
from electrum import ecc
from electrum.lntransport import (
    HandshakeState,
    LNTransport,
    act1_initiator_message,
    aead_decrypt,
    aead_encrypt,
    create_ephemeral_key,
    get_bolt8_hkdf,
)
from electrum.lnutil import (
    HandshakeFailed,
    LightningPeerConnectionClosed,
    LNPeerAddr,
    get_ecdh,
    privkey_to_pubkey,
)

from lnproxy.protocol import (
    HANDSHAKE_FAILED,
    LOGIN_TAG,
    PROTOCOL_VERSION,
    SUBPROTOCOL,
)

__all__ = [
    "SUBPROTOCOL",
    "PROTOCOL_VERSION",
    "ProxyError",
    "ProxySession",
    "ProxyTransport",
    "login_signature",
    "split_address",
]

INIT = 16

log = logging.getLogger("lnproxy.electrum")


class ProxyError(Exception):
    """An error reply from the proxy.

    :ivar code: the JSON-RPC error code (docs/protocol.md, "Error codes").
    :ivar data: the error's ``data``, if any.
    """

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


def login_signature(privkey: bytes, server_id: bytes, challenge: bytes) -> bytes:
    """The 64-byte compact, low-S signature ``login`` wants."""
    digest = hashlib.sha256(LOGIN_TAG + server_id + challenge).digest()
    sig: bytes = ecc.ECPrivkey(privkey).sign(digest)  # libsecp256k1, normalized
    return sig


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _msg_type(msg: bytes) -> int:
    return int.from_bytes(msg[:2], "big") if len(msg) >= 2 else -1


class ProxySession:
    """One WebSocket session with an lnproxy server, logged in as one node.

    :param url: ``ws://`` or ``wss://`` URL of the proxy.
    :param privkey: the node's 32-byte secret key (kept in memory only).
    :param server_id: the proxy's expected ``server_id`` (pinned); ``None``
        accepts any.
    :param request_timeout: seconds any request may take.
    :param keep_stale: see :attr:`keep_stale`.
    """

    def __init__(
        self,
        url: str,
        privkey: bytes,
        *,
        server_id: bytes | None = None,
        request_timeout: float = 30.0,
        keep_stale: bool = False,
    ) -> None:
        self.url = url
        #: Keep the stored events of connections that ended before the
        #: login (for :meth:`pending_connections`) instead of acknowledging
        #: them as they arrive.
        self.keep_stale = keep_stale
        self._open_at_login: set[str] = set()
        self._login_id: int | None = None
        self.privkey = privkey
        self.node_id: bytes = privkey_to_pubkey(privkey)
        self.pinned_server_id = server_id
        self.request_timeout = request_timeout
        self.hello: dict[str, Any] | None = None
        self.login_result: dict[str, Any] | None = None
        self.closed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._ws: Any = None
        self._next_id = 0
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._outgoing: asyncio.Queue[str | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []
        self._transports: dict[str, ProxyTransport] = {}
        #: Events of connections no transport has claimed yet, per conn.
        self._backlog: dict[str, deque[dict[str, Any]]] = {}
        #: Seqs delivered to this session and not yet processed.
        self._unprocessed: set[int] = set()
        self._highest_seen = 0
        self._acked = 0
        self._hello_future: asyncio.Future[dict[str, Any]] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Open the WebSocket, check ``hello``, log in.

        :return: the ``login`` result (``node_id``, ``inbox``,
            ``connections``); the stored events follow as they arrive.
        :raise ProxyError: when the login fails (code 2, 7, 9...); the
            session is closed then, as after any other failure of start.
        """
        loop = asyncio.get_running_loop()
        self._hello_future = loop.create_future()
        self._http = aiohttp.ClientSession()
        try:
            self._ws = await asyncio.wait_for(
                self._http.ws_connect(
                    self.url, protocols=(SUBPROTOCOL,), autoping=True, heartbeat=None
                ),
                self.request_timeout,
            )
        except BaseException:
            await self._http.close()
            raise
        self._tasks.append(loop.create_task(self._read_loop()))
        self._tasks.append(loop.create_task(self._write_loop()))
        try:
            return await self._hello_and_login()
        except BaseException:
            # No login: nothing of this session stays open (the WebSocket,
            # its two tasks, the HTTP session).
            await asyncio.shield(self.close())
            raise

    async def _hello_and_login(self) -> dict[str, Any]:
        assert self._hello_future is not None
        hello = await asyncio.wait_for(self._hello_future, self.request_timeout)
        if hello.get("protocol") != PROTOCOL_VERSION:
            raise ProxyError(0, f"unexpected protocol {hello.get('protocol')!r}")
        server_id = bytes.fromhex(hello["server_id"])
        if self.pinned_server_id is not None and server_id != self.pinned_server_id:
            raise ProxyError(0, f"server_id {server_id.hex()} is not the pinned one")
        self.hello = hello
        sig = login_signature(
            self.privkey, server_id, bytes.fromhex(hello["challenge"])
        )
        login = self.call_nowait(
            "login", node_id=self.node_id.hex(), signature=sig.hex()
        )
        self._login_id = self._next_id
        result: dict[str, Any] = await asyncio.wait_for(login, self.request_timeout)
        return result

    async def close(self) -> None:
        """Close the WebSocket.  The proxy keeps the peer connections (and
        stores what arrives); every transport of this session ends with
        ``LightningPeerConnectionClosed`` without asking for a disconnect."""
        for t in list(self._transports.values()):
            t._detach("the session with the proxy was closed")
        self._outgoing.put_nowait(None)
        if len(self._tasks) == 2 and not self.closed.is_set():
            # Let the frames already queued (acks, sends) go out first.
            try:
                await asyncio.wait_for(asyncio.shield(self._tasks[1]), 5)
            except (TimeoutError, Exception):
                pass
        if self._ws is not None and not self._ws.closed:
            try:
                await asyncio.wait_for(self._ws.close(), 5)
            except (TimeoutError, OSError):
                pass
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._http is not None:
            await self._http.close()
        self._lost("the session with the proxy was closed")

    @property
    def server_id(self) -> bytes | None:
        """The proxy's ``server_id`` (after ``hello``)."""
        return bytes.fromhex(self.hello["server_id"]) if self.hello else None

    # -- requests ----------------------------------------------------------------

    def call_nowait(self, method: str, **params: Any) -> asyncio.Future[Any]:
        """Queue a request (frames go out in call order); the future gets
        its result or a :class:`ProxyError`."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed.is_set():
            fut.set_exception(ConnectionError("the session with the proxy is closed"))
            return fut
        self._next_id += 1
        req = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params:
            req["params"] = params
        self._calls[self._next_id] = fut
        self._outgoing.put_nowait(json.dumps(req))
        return fut

    async def call(self, method: str, **params: Any) -> Any:
        """Send a request and wait (at most ``request_timeout``) for its result."""
        return await asyncio.wait_for(
            self.call_nowait(method, **params), self.request_timeout
        )

    async def connections(self) -> list[dict[str, Any]]:
        """The node's connections (``connections``)."""
        result = await self.call("connections")
        conns: list[dict[str, Any]] = result["connections"]
        return conns

    def open_connections(self) -> list[dict[str, Any]]:
        """The connections the login result lists as open (for :meth:`resume`)."""
        assert self.login_result is not None, "not logged in"
        return [c for c in self.login_result["connections"] if c["state"] == "open"]

    # -- transports --------------------------------------------------------------

    def transport(
        self, peer_addr: LNPeerAddr, *, persist: bool = False
    ) -> ProxyTransport:
        """A transport for a new connection to ``peer_addr`` (Electrum's
        ``Peer`` runs the handshake through it)."""
        return ProxyTransport(self, peer_addr, persist=persist)

    def resume(
        self, conn: str, connection: dict[str, Any] | None = None
    ) -> ProxyTransport:
        """A transport on connection ``conn``, which the proxy kept open.

        :param connection: its connection object (default: from the login
            result).
        :raise ValueError: when it is not listed as open or has no peer init.
        """
        if connection is None:
            assert self.login_result is not None, "not logged in"
            found = [c for c in self.login_result["connections"] if c["conn"] == conn]
            if not found:
                raise ValueError(f"connection {conn} is not listed")
            connection = found[0]
        if connection["state"] != "open" or not connection.get("their_init"):
            raise ValueError(f"connection {conn} is not open (or has no init)")
        host, port = split_address(connection["address"])
        peer_addr = LNPeerAddr(host, port, bytes.fromhex(connection["peer"]))
        t = ProxyTransport(self, peer_addr, resumed=True)
        t.conn = conn
        t._finished = True
        t._push(None, "message", bytes.fromhex(connection["their_init"]))
        self._attach(t)
        return t

    def discard(self, conn: str) -> int:
        """Mark every stored event of ``conn`` that no transport claimed as
        processed (e.g. for a connection that closed while the wallet was
        away); returns how many."""
        events = self._backlog.pop(conn, deque())
        for e in events:
            self._processed(e["seq"])
        return len(events)

    def pending_connections(self) -> list[str]:
        """Connections with unclaimed events."""
        return [c for c, q in self._backlog.items() if q]

    def _attach(self, t: ProxyTransport) -> None:
        assert t.conn is not None
        self._transports[t.conn] = t
        for event in self._backlog.pop(t.conn, deque()):
            t._event(event)

    def _forget(self, t: ProxyTransport) -> None:
        if t.conn is not None and self._transports.get(t.conn) is t:
            del self._transports[t.conn]

    # -- acknowledgements ----------------------------------------------------------

    def _processed(self, seq: int) -> None:
        """Event ``seq`` is done; acknowledge every event up to the oldest
        one that is not."""
        self._unprocessed.discard(seq)
        upto = min(self._unprocessed) - 1 if self._unprocessed else self._highest_seen
        if upto > self._acked and not self.closed.is_set():
            self._acked = upto
            fut = self.call_nowait("ack", seq=upto)
            fut.add_done_callback(_log_failure("ack"))

    # -- the WebSocket -------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            frame = await self._outgoing.get()
            if frame is None or self._ws is None or self._ws.closed:
                return
            try:
                await self._ws.send_str(frame)
            except (ConnectionError, RuntimeError) as e:
                self._lost(f"writing to the proxy failed: {e}")
                return

    async def _read_loop(self) -> None:
        reason = "the proxy closed the WebSocket"
        try:
            async for frame in self._ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                obj = json.loads(frame.data)
                if not isinstance(obj, dict):
                    raise ValueError("a frame that is not a JSON object")
                self._dispatch(obj)
        except (TimeoutError, ConnectionError) as e:
            reason = f"the WebSocket failed: {e}"
        except Exception as e:
            # A frame this adapter cannot read (not JSON, wrong types): the
            # session cannot go on.  End it now, so that every pending call
            # fails at once instead of waiting for its timeout.
            log.warning("unreadable frame from the proxy: %r; closing", e)
            reason = f"unreadable frame from the proxy: {e!r}"
            self._lost(reason)
            try:
                await asyncio.wait_for(self._ws.close(), 5)
            except (TimeoutError, OSError):
                pass
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(ConnectionError(reason))
        self._calls.clear()
        if self._hello_future is not None and not self._hello_future.done():
            self._hello_future.set_exception(ConnectionError(reason))
            self._hello_future.exception()  # whoever waits gets it; no warning
        for t in list(self._transports.values()):
            t._detach(reason)
        self._outgoing.put_nowait(None)

    def _logged_in(self, result: dict[str, Any]) -> None:
        self.login_result = result
        self._open_at_login = {
            c["conn"] for c in result["connections"] if c["state"] == "open"
        }

    def _dispatch(self, obj: dict[str, Any]) -> None:
        if "id" in obj and ("result" in obj or "error" in obj):
            fut = self._calls.pop(obj["id"], None)
            if fut is None or fut.done():
                return
            if "error" in obj:
                err = obj["error"]
                fut.set_exception(
                    ProxyError(
                        err.get("code", 0), err.get("message", ""), err.get("data")
                    )
                )
            else:
                if obj["id"] == self._login_id:
                    # Before the stored events that follow in the next
                    # frames are dispatched.
                    self._logged_in(obj["result"])
                fut.set_result(obj["result"])
            return
        method, params = obj.get("method"), obj.get("params") or {}
        if method == "hello":
            if self._hello_future is not None and not self._hello_future.done():
                self._hello_future.set_result(params)
        elif method in ("message", "closed") and "seq" in params:
            seq = params["seq"]
            if seq <= self._acked or seq in self._unprocessed:
                return  # a replay of what this session already has
            self._unprocessed.add(seq)
            self._highest_seen = max(self._highest_seen, seq)
            params = dict(params, kind=method)
            conn = params.get("conn", "")
            t = self._transports.get(conn)
            if t is not None:
                t._event(params)
            elif self.keep_stale or conn in self._open_at_login:
                # A connection the proxy kept: for resume() (or discard()).
                self._backlog.setdefault(conn, deque()).append(params)
            else:
                # Left from a connection that had ended before this login:
                # nothing can answer on it, and Electrum resynchronizes its
                # channels with channel_reestablish on the next connection.
                log.info("event %d of ended connection %s: acknowledged", seq, conn)
                self._processed(seq)
        # Other notifications (lease, ...) are not Electrum's business.


def _log_failure(what: str) -> Any:
    def done(fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.info("%s failed: %s", what, fut.exception())

    return done


class ProxyTransport(LNTransport):
    """Electrum's ``LNTransport`` interface over an lnproxy session.

    Made by :meth:`ProxySession.transport` (a new connection; Electrum's
    ``Peer`` calls :meth:`handshake`) or :meth:`ProxySession.resume` (a
    connection the proxy kept open).
    """

    def __init__(
        self,
        session: ProxySession,
        peer_addr: LNPeerAddr,
        *,
        persist: bool = False,
        resumed: bool = False,
    ) -> None:
        super().__init__(session.privkey, peer_addr, proxy=None)
        self.session = session
        self.persist = persist
        self.resumed = resumed
        #: The proxy's connection id, once ``connect`` answered.
        self.conn: str | None = None
        self._finished = False
        self._init_suppressed = not resumed
        self._queue: asyncio.Queue[tuple[int | None, str, Any]] = asyncio.Queue()
        self._ended = False
        self._closing = False

    # -- LNTransportBase ---------------------------------------------------------

    def name(self) -> str:
        """Electrum's log name, marked as proxied."""
        return f"{super().name()}(lnproxy)"

    async def handshake(self) -> None:
        """The initiator side of BOLT 8, with the proxy carrying the acts.

        :raise HandshakeFailed: the peer's act 2 is bad, or the proxy says
            the handshake failed (code 5).
        :raise OSError: the proxy cannot reach the peer (code 4).
        """
        if self._finished:
            return  # resumed: the proxy kept the connection
        s = self.session
        hs = HandshakeState(self.peer_addr.pubkey)
        epriv, epub = create_ephemeral_key()
        act1, _ = act1_initiator_message(hs, epriv, epub)
        address = self.peer_addr.net_addr_str()
        try:
            r = await s.call(
                "connect",
                peer=f"{self.peer_addr.pubkey.hex()}@{address}",
                act1=act1.hex(),
                persist=self.persist,
            )
        except ProxyError as e:
            if e.code == HANDSHAKE_FAILED:
                raise HandshakeFailed(f"through lnproxy: {e.message}") from e
            raise OSError(f"lnproxy could not reach {address}: {e}") from e
        self.conn = r["conn"]
        s._attach(self)
        try:
            act2 = bytes.fromhex(r["act2"])
            if len(act2) != 50 or act2[:1] != hs.handshake_version:
                raise HandshakeFailed("bad act 2 from the peer")
            re, tag = act2[1:34], act2[34:]
            hs.update(re)
            try:
                ck, temp_k2 = get_bolt8_hkdf(hs.ck, get_ecdh(epriv, re))
                hs.ck = ck
                aead_decrypt(temp_k2, 0, hs.h, tag)
            except Exception as e:
                raise HandshakeFailed(f"act 2 does not authenticate: {e!r}") from e
            hs.update(tag)
            c = aead_encrypt(temp_k2, 1, hs.h, privkey_to_pubkey(self.privkey))
            hs.update(c)
            ck, temp_k3 = get_bolt8_hkdf(hs.ck, get_ecdh(self.privkey, re))
            hs.ck = ck
            t = aead_encrypt(temp_k3, 0, hs.h, b"")
            act3 = hs.handshake_version + c + t
            # BOLT 8: the initiator sends with the first key, receives with
            # the second, and both directions start their key rotation from
            # ck.
            sk, rk = get_bolt8_hkdf(ck, b"")
            try:
                await s.call(
                    "finish", conn=self.conn, act3=act3.hex(), sk=sk.hex(),
                    rk=rk.hex(), ck=ck.hex(),
                )  # fmt: skip
            except ProxyError as e:
                raise HandshakeFailed(f"through lnproxy: {e.message}") from e
        except BaseException:
            # Failed (or cancelled) after connect: the connection is of no
            # use; nothing of it may stay behind to hold up the acks.
            self._give_up()
            raise
        self._finished = True

    def send_bytes(self, msg: bytes) -> None:
        """Queue ``send`` (frames go out in call order; errors end the
        transport)."""
        if not self._init_suppressed and _msg_type(msg) == INIT:
            # Resumed: the peer got our init from the session that opened
            # the connection; a second one is a protocol violation.
            self._init_suppressed = True
            return
        if self._ended or self.conn is None:
            return
        fut = self.session.call_nowait("send", conn=self.conn, msg=msg.hex())
        fut.add_done_callback(self._sent)

    def _sent(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        self._push(None, "closed", f"send failed: {fut.exception()}")

    async def read_messages(self) -> Any:
        """Yield the peer's messages; raise ``LightningPeerConnectionClosed``
        when the connection (or the session) ends.  An event is acknowledged
        once Electrum asks for the message after it."""
        while True:
            seq, kind, data = await self._queue.get()
            if kind == "closed":
                self._ended = True
                if seq is not None:
                    self.session._processed(seq)
                self.session._forget(self)
                raise LightningPeerConnectionClosed(data)
            yield data
            if seq is not None:
                self.session._processed(seq)

    def close(self) -> None:
        """Electrum closes the peer: ask the proxy to disconnect (unless the
        session is gone, in which case the proxy keeps the connection)."""
        if self._closing:
            return
        self._closing = True
        if (
            not self._ended
            and self.conn is not None
            and not self.session.closed.is_set()
        ):
            fut = self.session.call_nowait("disconnect", conn=self.conn)
            fut.add_done_callback(_log_failure("disconnect"))
        self._push(None, "closed", "closed by Electrum")

    def remote_pubkey(self) -> bytes:
        """The peer's node id."""
        pubkey: bytes = self.peer_addr.pubkey
        return pubkey

    # -- from the session --------------------------------------------------------------

    def _event(self, event: dict[str, Any]) -> None:
        seq = event["seq"]
        if event["kind"] == "closed":
            self._push(seq, "closed", f"lnproxy: {event.get('reason', 'closed')}")
            return
        msg = bytes.fromhex(event["msg"])
        if self.resumed and event.get("type") == INIT:
            # The peer's init came from the connection list already.
            self.session._processed(seq)
            return
        self._push(seq, "message", msg)

    def _push(self, seq: int | None, kind: str, data: Any) -> None:
        self._queue.put_nowait((seq, kind, data))

    def _detach(self, reason: str) -> None:
        self._closing = True
        self._push(None, "closed", reason)

    def _give_up(self) -> None:
        """The handshake failed after ``connect``: disconnect, take no more
        events, and mark those already queued as processed (no one will
        read them, and an unprocessed seq would stop every later ack)."""
        self._ended = True
        self._abort()
        self.session._forget(self)
        while not self._queue.empty():
            seq, _, _ = self._queue.get_nowait()
            if seq is not None:
                self.session._processed(seq)

    def _abort(self) -> None:
        if self.conn is not None and not self.session.closed.is_set():
            fut = self.session.call_nowait("disconnect", conn=self.conn)
            fut.add_done_callback(_log_failure("disconnect"))
