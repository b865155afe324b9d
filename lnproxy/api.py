"""The client side: JSON-RPC 2.0 over WebSocket (Autobahn), docs/protocol.md.

One :class:`ClientProtocol` per WebSocket.  It greets with ``hello``, checks
the login signature, turns requests into calls on the :class:`~lnproxy.hub.Hub`
(and the webhook registry, when there is one) and replies.  It is the hub's
:class:`~lnproxy.hub.EventSink` for the node it logged in as.

Everything a client sends is validated here, at the edge: the hub below only
ever sees well-typed values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any
from typing import Protocol as TypingProtocol

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from lnproxy import keys, protocol
from lnproxy.devices import DeviceError, Devices
from lnproxy.hub import Hub, HubError, Session
from lnproxy.lease import WRITING_METHODS
from lnproxy.protocol import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    LOGIN_FAILED,
    METHOD_NOT_FOUND,
    NOT_LOGGED_IN,
    PARSE_ERROR,
    SUBPROTOCOL,
    UNKNOWN_CONNECTION,
    BadPeer,
    PeerAddress,
)

__all__ = [
    "RpcError",
    "ClientProtocol",
    "ClientFactory",
    "WebhookRegistry",
    "peer_param",
]

#: A 65,535-byte message is ~131 KiB of hex; leave room for the envelope.
MAX_WS_MESSAGE = 256 * 1024
#: Bytes of HTTP request we read before the WebSocket upgrade completes.
MAX_HANDSHAKE_BYTES = 16 * 1024
#: Close codes (private-use range) the proxy uses.
CLOSE_LOGIN_FAILED = 4002
#: RFC 6455 "going away": the proxy is stopping.
CLOSE_GOING_AWAY = 1001
#: RFC 6455 "service restart": the client logs in again at once (hot restart).
CLOSE_SERVICE_RESTART = 1012
CLOSE_LOGIN_TIMEOUT = 4001

#: FIN + text opcode, then the payload length, for payloads under 126 bytes.
_SHORT_TEXT_HEADS = tuple(bytes((0x81, n)) for n in range(126))

_HEX = re.compile(r"[0-9a-fA-F]*")


class RpcError(Exception):
    """An error reply: JSON-RPC ``error`` ``{code, message, data?}``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_json(self) -> dict[str, Any]:
        """The ``error`` member of a response."""
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class WebhookRegistry(TypingProtocol):
    """The webhook methods' back end (the notifier provides it)."""

    def add(self, node_id: str, url: str) -> defer.Deferred[str]:
        """Register a URL; fires with its id or fails with HubError."""

    def list(self, node_id: str) -> list[dict[str, str]]:
        """``[{"id", "url"}]`` of the node."""

    def remove(self, node_id: str, webhook_id: str) -> bool:
        """Remove one; False when it does not exist for this node."""


def peer_param(text: str) -> PeerAddress:
    """Parse a ``peer`` parameter (:func:`lnproxy.protocol.parse_peer`).

    :raise RpcError: -32602 naming what is wrong.
    """
    try:
        return protocol.parse_peer(text)
    except BadPeer as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None


def _param(params: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in params:
        raise RpcError(INVALID_PARAMS, f"missing parameter {name!r}")
    value = params[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = (
            " or ".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__
        )
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} must be {names}")
    return value


def _hex(params: dict[str, Any], name: str, size: int | None = None) -> bytes:
    text = _param(params, name, str)
    if len(text) % 2 or not _HEX.fullmatch(text):
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} must be hex")
    if size is not None and len(text) != 2 * size:
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} must be {size} bytes")
    return bytes.fromhex(text)


def _node_id(params: dict[str, Any], name: str) -> str:
    raw = _hex(params, name, 33)
    if not keys.is_node_id(raw):
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} is not a valid public key")
    return raw.hex()


@implementer(IPushProducer)
class _SessionFlow:
    """Tells the hub session when the client's TCP buffer is full."""

    def __init__(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        if self.protocol.session is not None:
            self.protocol.session.pause()

    def resumeProducing(self) -> None:
        if self.protocol.session is not None:
            self.protocol.session.resume()

    def stopProducing(self) -> None:
        pass


class ClientProtocol(WebSocketServerProtocol):
    """One client WebSocket: hello, login, then the node's requests."""

    _log = Logger()
    factory: ClientFactory

    def __init__(self) -> None:
        super().__init__()
        self.node_id: str | None = None
        self.session: Session | None = None
        self._challenge = b""
        #: Whether _write_text may write frames itself (set in onOpen).
        self._plain_frames = False
        #: The request token bucket (see _over_rate); filled in onOpen.
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._challenge_used = False
        self._login_timer: IDelayedCall | None = None
        self._close_timer: IDelayedCall | None = None
        self._closed_waiters: list[defer.Deferred[None]] = []
        self._methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "login": self.rpc_login,
            "connect": self.rpc_connect,
            "finish": self.rpc_finish,
            "send": self.rpc_send,
            "disconnect": self.rpc_disconnect,
            "connections": self.rpc_connections,
            "ack": self.rpc_ack,
            "webhook.set": self.rpc_webhook_set,
            "webhook.list": self.rpc_webhook_list,
            "webhook.remove": self.rpc_webhook_remove,
        }
        #: Methods of the features lease, vault and account (only when the
        #: factory has a :class:`~lnproxy.devices.Devices`).
        self._device_methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "lease.acquire": self.rpc_lease_acquire,
            "lease.release": self.rpc_lease_release,
            "vault.put": self.rpc_vault_put,
            "vault.get": self.rpc_vault_get,
            "vault.list": self.rpc_vault_list,
            "vault.remove": self.rpc_vault_remove,
            "account.set": self.rpc_account_set,
            "account.login": self.rpc_account_login,
            "account.remove": self.rpc_account_remove,
        }

    # -- Autobahn callbacks ---------------------------------------------------

    def connectionMade(self) -> None:
        """Turn Nagle off on the client's socket.

        Autobahn calls ``setTcpNoDelay(self.tcpNoDelay)`` before it copies
        the factory's options onto the protocol, and a bare ``except`` hides
        the AttributeError, so Nagle stays on: an event written right after
        a reply then waits for the client's delayed ACK (40 ms on Linux).
        """
        super().connectionMade()
        self.factory.clients.add(self)
        transport: Any = self.transport
        try:
            transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            # Not a TCP transport (a test's memory transport, a UNIX socket).
            pass

    def processHandshake(self) -> None:
        """Refuse an HTTP request whose headers never end (Autobahn reads
        them without a bound)."""
        if len(self.data) > MAX_HANDSHAKE_BYTES and b"\r\n\r\n" not in self.data:
            self._log.info("dropping a client whose request headers are too large")
            self.dropConnection(abort=True)
            return
        super().processHandshake()

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """Pick the subprotocol: ours, or none when the client offers none."""
        try:
            if request.path != "/":
                raise ConnectionDeny(404, "not found")
            if not request.protocols:
                return None
            if SUBPROTOCOL in request.protocols:
                return SUBPROTOCOL
            raise ConnectionDeny(400, f"subprotocol {SUBPROTOCOL} required")
        except ConnectionDeny:
            raise
        except Exception:
            # Autobahn turns exceptions here into a bare 500; say why in logs.
            self._log.failure("onConnect failed")
            raise

    def onOpen(self) -> None:
        """Send ``hello`` and start the login timer."""
        try:
            f = self.factory
            # Decided once the opening handshake is done (compression is
            # negotiated by then): may _write_text frame messages itself?
            # Autobahn copies these options onto the protocol at run time.
            options = ("maskServerFrames", "logFrames", "logOctets", "trackedTimings")
            self._plain_frames = self._perMessageCompress is None and not any(
                getattr(self, name, None) for name in options
            )
            self._challenge = os.urandom(32)
            self._tokens = f.request_burst
            self._tokens_at = f.clock.seconds()
            transport: Any = self.transport
            transport.registerProducer(_SessionFlow(self), True)
            self._notify(
                "hello",
                protocol.hello(f.server_id, self._challenge, f.hello_limits(), f.features),
            )
            self._login_timer = f.clock.callLater(f.login_timeout, self._login_timed_out)
        except Exception:
            self._log.failure("onOpen failed")
            self.dropConnection(abort=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Parse one JSON-RPC request and dispatch it."""
        limited = self._over_rate()
        if isBinary:
            self._reply_error(None, RpcError(INVALID_REQUEST, "binary frames are not accepted"))
            return
        try:
            request = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self._reply_error(None, RpcError(PARSE_ERROR, "parse error: not JSON"))
            return
        if not isinstance(request, dict):
            what = "batches are not supported" if isinstance(request, list) else "not an object"
            self._reply_error(None, RpcError(INVALID_REQUEST, f"invalid request: {what}"))
            return
        has_id = "id" in request
        req_id = request.get("id")
        if has_id and (
            isinstance(req_id, bool) or not isinstance(req_id, (int, str))
        ):
            self._reply_error(None, RpcError(INVALID_REQUEST, "id must be an integer or a string"))
            return
        if limited:
            self._answer_error(
                has_id,
                req_id,
                RpcError(
                    LIMIT_EXCEEDED,
                    f"rate limit exceeded ({self.factory.request_rate:g} "
                    "requests per second per session)",
                ),
            )
            return
        method = request.get("method")
        if request.get("jsonrpc") != "2.0" or not isinstance(method, str):
            self._reply_error(
                req_id, RpcError(INVALID_REQUEST, 'invalid request: needs "jsonrpc": "2.0" and a method')
            )
            return
        params = request.get("params", {})
        handler = self._methods.get(method)
        devices = self.factory.devices
        if handler is None and devices is not None:
            handler = self._device_methods.get(method)
        try:
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"unknown method {method!r}")
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            if self.session is None:
                if method != "login" and method != "account.login":
                    raise RpcError(NOT_LOGGED_IN, "not logged in")
            elif devices is not None and method in WRITING_METHODS:
                assert self.node_id is not None
                devices.check_write(self.node_id, self)
            result = handler(params)
        except RpcError as e:
            self._answer_error(has_id, req_id, e)
            return
        except HubError as e:
            self._answer_error(has_id, req_id, RpcError(e.code, e.message, e.data))
            return
        except DeviceError as e:
            self._answer_error(has_id, req_id, RpcError(e.code, e.message, e.data))
            return
        except Exception:
            self._log.failure("error in {method}", method=method)
            self._answer_error(has_id, req_id, RpcError(INTERNAL_ERROR, "internal error"))
            return
        if isinstance(result, defer.Deferred):
            result.addCallbacks(
                lambda r: self._answer(has_id, req_id, r),
                lambda f: self._answer_failure(has_id, req_id, method, f),
            )
        else:
            self._answer(has_id, req_id, result)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Detach from the hub; cancel timers."""
        self.factory.clients.discard(self)
        for timer in (self._login_timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._login_timer = self._close_timer = None
        if self.factory.devices is not None and self.node_id is not None:
            self.factory.devices.session_ended(self.node_id, self)
        if self.session is not None:
            self.factory.hub.logout(self.session)
            self.session = None
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def _over_rate(self) -> bool:
        """Spend a token of this session's request bucket; True when empty.

        A token bucket: ``request_rate`` tokens per second, at most
        ``request_burst`` saved up.  One flooding client must not take the
        reactor (and its peers' bandwidth) from everyone else.
        """
        f = self.factory
        rate = f.request_rate
        if not rate:
            return False
        now = f.clock.seconds()
        tokens = min(f.request_burst, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return True
        self._tokens = tokens - 1.0
        return False

    # -- EventSink -----------------------------------------------------------

    def send_event(self, text: str) -> None:
        """Send one event notification."""
        self._write_text(text.encode("utf-8"))

    def _write_text(self, payload: bytes) -> None:
        """Send one text message (one frame); nothing once closing.

        A server frame is not masked and lnproxy negotiates no compression,
        so a text message is a 2-, 4- or 10-byte header and the payload.
        Writing it ourselves skips Autobahn's per-message bookkeeping (type
        asserts, traffic statistics, debug-log arguments formatted even with
        debug off), about a third of the proxy's cost per event or reply.
        Anything out of the ordinary goes through ``sendMessage``.
        """
        if self.state != self.STATE_OPEN:
            return
        if (
            not self._plain_frames
            or self.send_state != self.SEND_STATE_GROUND
            or self.send_queue
        ):
            self.sendMessage(payload)
            return
        size = len(payload)
        if size < 126:
            head = _SHORT_TEXT_HEADS[size]
        elif size < 65536:
            head = b"\x81\x7e" + size.to_bytes(2, "big")
        else:
            head = b"\x81\x7f" + size.to_bytes(8, "big")
        self.transport.write(head + payload)  # type: ignore[union-attr]

    def close_session(self, reason: str) -> defer.Deferred[None]:
        """Close with 1001 (going away) after what is already queued; fire
        once the WebSocket is closed (Autobahn drops a client that does not
        answer the close within its close handshake timeout)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.state == self.STATE_CLOSED:
            d.callback(None)
            return d
        self._closed_waiters.append(d)
        if self.state == self.STATE_OPEN:
            # sendClose refuses 1001 (it only takes application codes);
            # "going away" is the RFC 6455 code for a server shutting down.
            self.sendCloseFrame(
                code=CLOSE_GOING_AWAY, reasonUtf8=reason.encode("utf-8"), isReply=False
            )
        return d

    def close_for_restart(self) -> None:
        """Hot restart: close with 1012 (service restart) after the replies
        already queued; a client that has not finished its opening handshake
        is dropped (it connects again and reaches the new process)."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(
                code=CLOSE_SERVICE_RESTART,
                reasonUtf8=b"service restart",
                isReply=False,
            )
        elif self.state != self.STATE_CLOSED and self.transport is not None:
            self.transport.loseConnection()

    # -- replies ----------------------------------------------------------------

    def _send_json(self, obj: dict[str, Any]) -> None:
        self._write_text(json.dumps(obj, separators=(",", ":")).encode("utf-8"))

    def _notify(self, method: str, params: dict[str, Any]) -> None:
        self._send_json({"jsonrpc": "2.0", "method": method, "params": params})

    def _answer(self, has_id: bool, req_id: Any, result: Any) -> None:
        if not has_id:
            return
        if type(req_id) is int and result == {}:
            # ``send``, ``ack`` and ``disconnect`` answer ``{}``, once per
            # request: the same bytes as json.dumps, at a tenth of its cost.
            self._write_text(b'{"jsonrpc":"2.0","id":%d,"result":{}}' % req_id)
            return
        self._send_json({"jsonrpc": "2.0", "id": req_id, "result": result})

    def _answer_error(self, has_id: bool, req_id: Any, err: RpcError) -> None:
        self.factory.count_error(err.code)
        if has_id:
            self._send_json({"jsonrpc": "2.0", "id": req_id, "error": err.as_json()})

    def _reply_error(self, req_id: Any, err: RpcError) -> None:
        self._answer_error(True, req_id, err)

    def _answer_failure(self, has_id: bool, req_id: Any, method: str, f: Any) -> None:
        if f.check(RpcError):
            self._answer_error(has_id, req_id, f.value)
        elif f.check(HubError):
            e = f.value
            self._answer_error(has_id, req_id, RpcError(e.code, e.message, e.data))
        elif f.check(DeviceError):
            e = f.value
            self._answer_error(has_id, req_id, RpcError(e.code, e.message, e.data))
        else:
            self._log.failure("error in {method}", failure=f, method=method)
            self._answer_error(has_id, req_id, RpcError(INTERNAL_ERROR, "internal error"))

    # -- login -------------------------------------------------------------------

    def _login_timed_out(self) -> None:
        self._login_timer = None
        if self.session is None:
            self.sendClose(CLOSE_LOGIN_TIMEOUT, "login timeout")

    def rpc_login(
        self, params: dict[str, Any]
    ) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        """``login {node_id, signature}``: prove the node key."""
        if self.session is not None:
            raise RpcError(INVALID_REQUEST, "this session is already logged in")
        node_id = _node_id(params, "node_id")
        signature = _hex(params, "signature", 64)
        f = self.factory
        if self._challenge_used:
            raise RpcError(LOGIN_FAILED, "login failed: challenge already used")
        self._challenge_used = True
        digest = keys.login_digest(f.server_id, self._challenge)
        if not keys.verify_digest(bytes.fromhex(node_id), digest, signature):
            self._log.info("login failed for node {node}", node=node_id)
            self._close_timer = f.clock.callLater(
                f.failed_login_close_delay, self._close_after_failed_login
            )
            raise RpcError(LOGIN_FAILED, "login failed: bad signature")
        attached = f.hub.login(node_id, self)
        if isinstance(attached, defer.Deferred):
            # PostgreSQL: the node is claimed first (code 9 if another
            # process serves it; this session stays open, not logged in).
            return attached.addCallback(lambda r: self._logged_in(node_id, *r))
        return self._logged_in(node_id, *attached)

    def _logged_in(
        self, node_id: str, session: Session, result: dict[str, Any]
    ) -> dict[str, Any]:
        """The hub attached a session: the login succeeded."""
        f = self.factory
        if self.state == self.STATE_CLOSED:
            # The client went away while the claim was on its way.
            f.hub.logout(session)
            return result
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None
        self.node_id = node_id
        self.session = session
        # Replay starts after the response is on the wire.
        f.clock.callLater(0, self._start_replay)
        return result

    def _start_replay(self) -> None:
        if self.session is not None:
            self.session.start()

    def _close_after_failed_login(self) -> None:
        self._close_timer = None
        if self.state == self.STATE_OPEN:
            self.sendClose(CLOSE_LOGIN_FAILED, "login failed")

    # -- connections ----------------------------------------------------------------

    def rpc_connect(self, params: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """``connect {peer, act1, persist?}`` -> ``{conn, act2}``."""
        peer = _param(params, "peer", str)
        where = peer_param(peer)
        act1 = _hex(params, "act1", 50)
        persist = params.get("persist", False)
        if not isinstance(persist, bool):
            raise RpcError(INVALID_PARAMS, "parameter 'persist' must be a boolean")
        assert self.node_id is not None
        d = self.factory.hub.connect(
            self.node_id, where.node_id, where.host, where.port, act1, persist
        )
        return d.addCallback(lambda r: {"conn": r[0], "act2": r[1].hex()})

    def rpc_finish(self, params: dict[str, Any]) -> dict[str, Any]:
        """``finish {conn, act3, sk, rk, ck}`` -> ``{conn}``."""
        conn = _param(params, "conn", str)
        act3 = _hex(params, "act3", 66)
        sk = _hex(params, "sk", 32)
        rk = _hex(params, "rk", 32)
        ck = _hex(params, "ck", 32)
        assert self.node_id is not None
        self.factory.hub.finish(self.node_id, conn, act3, sk, rk, ck)
        return {"conn": conn}

    def rpc_send(self, params: dict[str, Any]) -> dict[str, Any]:
        """``send {conn, msg}`` -> ``{}`` once the frame is handed to TCP."""
        conn = _param(params, "conn", str)
        text = _param(params, "msg", str)
        limit = self.factory.hub.limits.max_message
        if len(text) > 2 * limit:
            raise RpcError(LIMIT_EXCEEDED, f"message is longer than {limit} bytes")
        msg = _hex(params, "msg")
        if len(msg) < 2:
            raise RpcError(INVALID_PARAMS, "message must hold at least its 2-byte type")
        assert self.node_id is not None
        self.factory.hub.send(self.node_id, conn, msg)
        return {}

    def rpc_disconnect(self, params: dict[str, Any]) -> dict[str, Any]:
        """``disconnect {conn}`` -> ``{}``."""
        conn = _param(params, "conn", str)
        assert self.node_id is not None
        self.factory.hub.disconnect(self.node_id, conn)
        return {}

    def rpc_connections(
        self, params: dict[str, Any]
    ) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        """``connections {}`` -> ``{connections: [...]}``."""
        assert self.node_id is not None
        found = self.factory.hub.list_connections(self.node_id)
        if isinstance(found, defer.Deferred):
            return found.addCallback(lambda c: {"connections": c})
        return {"connections": found}

    def rpc_ack(
        self, params: dict[str, Any]
    ) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        """``ack {seq}`` -> ``{}``: every event up to seq is done."""
        seq = _param(params, "seq", int)
        assert self.node_id is not None
        hub = self.factory.hub
        newest = hub.newest_seq(self.node_id)
        if seq > newest:
            raise RpcError(INVALID_PARAMS, f"seq {seq} is beyond the newest event ({newest})")
        if seq < 0:
            raise RpcError(INVALID_PARAMS, "seq must not be negative")
        committed = hub.ack(self.node_id, seq)
        if committed is not None:
            return committed.addCallback(lambda _: {})
        return {}

    # -- webhooks ----------------------------------------------------------------

    def _webhooks(self) -> WebhookRegistry:
        registry = self.factory.webhooks
        if registry is None:
            raise RpcError(METHOD_NOT_FOUND, "webhooks are not enabled on this proxy")
        return registry

    def rpc_webhook_set(self, params: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """``webhook.set {url}`` -> ``{id}``."""
        url = _param(params, "url", str)
        assert self.node_id is not None
        d = self._webhooks().add(self.node_id, url)
        return d.addCallback(lambda webhook_id: {"id": webhook_id})

    def rpc_webhook_list(self, params: dict[str, Any]) -> dict[str, Any]:
        """``webhook.list {}`` -> ``{webhooks: [{id, url}]}``."""
        assert self.node_id is not None
        return {"webhooks": self._webhooks().list(self.node_id)}

    def rpc_webhook_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        """``webhook.remove {id}`` -> ``{}``; code 3 when unknown."""
        webhook_id = _param(params, "id", str)
        assert self.node_id is not None
        if not self._webhooks().remove(self.node_id, webhook_id):
            raise RpcError(UNKNOWN_CONNECTION, "unknown webhook")
        return {}


    # -- several devices: lease, vault, account --------------------------------
    # docs/protocol.md, "Several devices of one node"; the work is done by
    # lnproxy.devices.Devices, which raises DeviceError for error replies.

    def _devices(self) -> Devices[ClientProtocol]:
        devices = self.factory.devices
        assert devices is not None  # only dispatched when there is one
        return devices

    def _node(self) -> str:
        assert self.node_id is not None
        return self.node_id

    def rpc_lease_acquire(self, params: dict[str, Any]) -> dict[str, Any]:
        """``lease.acquire {force?}`` -> ``{writer: true}``; the session that
        lost it to ``force`` gets ``lease {writer: false}``."""
        result, former = self._devices().lease_acquire(self._node(), self, params)
        if former is not None and former is not self:
            former._notify("lease", {"writer": False})
        return result

    def rpc_lease_release(self, params: dict[str, Any]) -> dict[str, Any]:
        """``lease.release {}`` -> ``{}``."""
        return self._devices().lease_release(self._node(), self)

    def rpc_vault_put(self, params: dict[str, Any]) -> dict[str, Any]:
        """``vault.put {name, blob, version}`` -> ``{version}``."""
        return self._devices().vault_put(self._node(), params)

    def rpc_vault_get(self, params: dict[str, Any]) -> dict[str, Any]:
        """``vault.get {name}`` -> ``{version, blob}``."""
        return self._devices().vault_get(self._node(), params)

    def rpc_vault_list(self, params: dict[str, Any]) -> dict[str, Any]:
        """``vault.list {}`` -> ``{entries}``."""
        return self._devices().vault_list(self._node())

    def rpc_vault_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        """``vault.remove {name, version}`` -> ``{}``."""
        return self._devices().vault_remove(self._node(), params)

    def rpc_account_set(self, params: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """``account.set {user, auth, blob}`` -> ``{}``."""
        return self._devices().account_set(self._node(), params, self)

    def rpc_account_login(self, params: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        """``account.login {user, auth}`` -> ``{node_id, blob}``, before login
        only (it does not log the session in)."""
        if self.session is not None:
            raise RpcError(INVALID_REQUEST, "this session is already logged in")
        return self._devices().account_login(params, self)

    def rpc_account_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        """``account.remove {}`` -> ``{}``."""
        return self._devices().account_remove(self._node())


class ClientFactory(WebSocketServerFactory):
    """Builds :class:`ClientProtocol` with Autobahn's limits set for us.

    :param hub: the hub.
    :param server_id: the proxy's 33-byte public key.
    :param clock: the reactor (also Autobahn's).
    :param webhooks: the webhook registry, or None when webhooks are off.
    :param login_timeout: seconds a client has to log in.
    :param request_rate: requests per second one session may make on
        average (0: no limit); beyond it requests answer code 7.
    :param request_burst: requests a session may make at once after a quiet
        spell (the bucket's size).
    :param features: the optional features this server announces in
        ``hello.features`` (names from :mod:`lnproxy.protocol`).
    :param devices: the lease, vault and account back end, or None when
        this server offers none of them (their methods then answer
        -32601); the service announces the features with it.
    """

    protocol = ClientProtocol  # type: ignore[assignment]

    def __init__(
        self,
        hub: Hub,
        server_id: bytes,
        clock: IReactorTime,
        webhooks: WebhookRegistry | None = None,
        login_timeout: float = 30.0,
        failed_login_close_delay: float = 1.0,
        request_rate: float = 5000.0,
        request_burst: float = 10000.0,
        features: Iterable[str] = (),
        devices: Devices[ClientProtocol] | None = None,
    ) -> None:
        super().__init__(reactor=clock, protocols=[SUBPROTOCOL])
        self.features = frozenset(features)
        self.devices = devices
        self.hub = hub
        self.server_id = server_id
        self.clock = clock
        self.webhooks = webhooks
        self.login_timeout = login_timeout
        self.failed_login_close_delay = failed_login_close_delay
        self.request_rate = request_rate
        self.request_burst = max(1.0, request_burst)
        #: Every connected client (hot restart pauses and closes them).
        self.clients: set[ClientProtocol] = set()
        #: Called as ``fn(code)`` for every error reply (metrics).
        self.on_error: list[Callable[[int], None]] = []
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_WS_MESSAGE,
            maxFramePayloadSize=MAX_WS_MESSAGE,
            openHandshakeTimeout=5,
            closeHandshakeTimeout=5,
            autoPingInterval=30,
            autoPingTimeout=30,
            failByDrop=False,
            webStatus=False,
            tcpNoDelay=True,
        )

    def hello_limits(self) -> dict[str, Any]:
        """``hello.limits``: the hub's, and the vault's when there is one."""
        limits = self.hub.limits.as_hello()
        if self.devices is not None:
            limits.update(self.devices.limits.as_hello())
        return limits

    def count_error(self, code: int) -> None:
        """Report an error reply to observers."""
        for fn in self.on_error:
            fn(code)
