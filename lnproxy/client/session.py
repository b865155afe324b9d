"""The client library: a node that keeps its key and lets a proxy hold its peers.

:class:`Client` is a Twisted service.  Started, it connects to the proxy over
a WebSocket (Autobahn, ``ws://`` or ``wss://``), answers ``hello`` with a
login signed by the node key, and stays connected: when the WebSocket drops
it reconnects with backoff (``ClientService``) and logs in again.

Three jobs on top of that:

* **Peer connections.**  :meth:`Client.open_peer` runs the BOLT 8 initiator
  itself (:class:`lnproxy.noise.Initiator`): act 1 goes to the proxy in
  ``connect``, act 2 comes back, act 3 and the transport keys go out in
  ``finish``, then the client sends its own ``init``.  The node key never
  leaves this process.
* **Events, exactly once.**  Events are handed to the application's
  ``on_event`` callback one at a time, in ``seq`` order.  After the callback
  succeeds (it may return a Deferred) the client records the seq in its
  :class:`~lnproxy.client.state.StateStore` and only then acknowledges it.
  A replay of an event already recorded (after a crash between the record
  and the ack, after a reconnect, from a proxy restart) is acknowledged
  again but not delivered.  A failing callback is retried with backoff.
* **Persistent peers.**  A ``closed`` event with ``reconnect: true`` is
  recorded together with its seq, then the client runs a new handshake to
  that peer (with backoff) until one is open.  The pending re-handshakes are
  in the state, so a crash does not forget them.

Errors come back as typed exceptions (:mod:`lnproxy.client.errors`).
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lnproxy import keys, noise, wire
from lnproxy.client.devices import DevicesMixin
from lnproxy.client.errors import (
    ClientError,
    ClientStopped,
    ConnectionLost,
    HandshakeFailed,
    InvalidParams,
    LoginFailed,
    ProxyUnreachable,
    RequestTimeout,
    ServerMismatch,
    error_for_code,
)
from lnproxy.client.state import (
    ClientState,
    FileState,
    MemoryState,
    StateError,
    StateStore,
)

__all__ = [
    "SUBPROTOCOL",
    "PROTOCOL_VERSION",
    "Client",
    "Event",
    "LoginInfo",
    "PeerLink",
    "parse_peer",
]

SUBPROTOCOL = "lnproxy.v1"
PROTOCOL_VERSION = "lnproxy/1"

#: Largest WebSocket message we accept: a 65,535-byte Lightning message is
#: ~131 KiB of hex, plus the envelope.
MAX_WS_MESSAGE = 1024 * 1024

_PEER = re.compile(
    r"(?P<node>[0-9a-fA-F]{66})@(?P<host>\[[0-9a-fA-F:.]+\]|[^:\[\]@\s]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


def parse_peer(peer: str) -> tuple[str, str]:
    """Split ``node_id@host[:port]`` (IPv6 hosts in brackets).

    :return: ``(node_id hex lowercase, "host:port")``, the port defaulting
        to 9735 as in the protocol.
    :raise InvalidParams: (raised locally, ``local`` is True) when ``peer``
        is malformed.
    """
    m = _PEER.fullmatch(peer)
    if m is None:
        raise InvalidParams(
            -32602,
            f"peer {peer!r} is not <66 hex node id>@<host>[:<port>]",
            local=True,
        )
    node = m.group("node").lower()
    if not keys.is_node_id(bytes.fromhex(node)):
        raise InvalidParams(
            -32602, "peer node id is not a valid public key", local=True
        )
    port = int(m.group("port") or 9735)
    if not 1 <= port <= 65535:
        raise InvalidParams(-32602, f"port {port} is outside 1-65535", local=True)
    return node, f"{m.group('host')}:{port}"


@dataclass(frozen=True)
class Event:
    """One durable event from the proxy (``message``, ``closed``, ...).

    :ivar kind: the notification's method: ``"message"`` or ``"closed"``
        (later protocol versions may add kinds; they are delivered too).
    :ivar params: the notification's params, as sent.
    """

    kind: str
    params: Mapping[str, Any]

    @property
    def seq(self) -> int:
        """The per-node sequence number."""
        return int(self.params["seq"])

    @property
    def at(self) -> float:
        """When the proxy stored it (unix seconds)."""
        return float(self.params.get("at", 0.0))

    @property
    def conn(self) -> str | None:
        """The connection id, for ``message`` and ``closed``."""
        return self.params.get("conn")

    @property
    def peer(self) -> str | None:
        """The peer node id (hex)."""
        return self.params.get("peer")

    @property
    def msg(self) -> bytes | None:
        """The whole Lightning message (type included) of a ``message``."""
        text = self.params.get("msg")
        return bytes.fromhex(text) if isinstance(text, str) else None

    @property
    def type(self) -> int | None:
        """The Lightning message type of a ``message``."""
        return self.params.get("type")

    @property
    def summon(self) -> bool:
        """Whether the policy says this message needs the client."""
        return bool(self.params.get("summon", False))

    @property
    def reason(self) -> str | None:
        """Why a connection closed (``closed``)."""
        return self.params.get("reason")

    @property
    def reconnect(self) -> bool:
        """Whether a ``closed`` connection asks for a new handshake."""
        return self.params.get("reconnect") is True

    def as_json(self) -> dict[str, Any]:
        """``{"event": kind, **params}``: one JSON line of ``listen``."""
        return {"event": self.kind, **self.params}


@dataclass(frozen=True)
class LoginInfo:
    """What the proxy said at the last login.

    :ivar node_id: our node id (hex).
    :ivar server_id: the proxy's id (hex).
    :ivar next_seq: seq of the next new event.
    :ivar pending: unacknowledged events at login time.
    :ivar connections: the node's connection objects at login time.
    :ivar limits: the ``limits`` of ``hello``.
    """

    node_id: str
    server_id: str
    next_seq: int
    pending: int
    connections: list[dict[str, Any]]
    limits: dict[str, Any]


@dataclass
class PeerLink:
    """A peer connection this client opened through the proxy.

    :ivar conn: the proxy's connection id.
    :ivar peer: the peer's node id (hex).
    :ivar address: ``host:port`` of the peer.
    :ivar persist: whether the proxy summons us to re-handshake on a drop.
    :ivar features: the features of our ``init``.
    """

    client: Client = field(repr=False)
    conn: str
    peer: str
    address: str
    persist: bool
    features: bytes = b""

    def send(self, msg: bytes) -> defer.Deferred[None]:
        """Send one Lightning message (type included) to the peer."""
        return self.client.send(self.conn, msg)

    def disconnect(self) -> defer.Deferred[None]:
        """Ask the proxy to close the connection (no re-handshake follows)."""
        return self.client.disconnect(self.conn)


class _ProxyProtocol(WebSocketClientProtocol):
    """One WebSocket to the proxy: JSON-RPC requests out, replies and
    notifications in.  All decisions are the :class:`Client`'s."""

    _log = Logger()
    client: Client

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 0
        self._pending: dict[int, tuple[str, defer.Deferred[Any]]] = {}
        self.logged_in = False
        self.close_reason = ""
        self.login_deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """TCP is up: the login must follow within the request timeout."""
        super().connectionMade()
        # Autobahn applies its tcpNoDelay option before it copies the
        # factory's options onto the protocol (and hides the error), so
        # Nagle would stay on: a request written right after another would
        # wait for the proxy's delayed ACK (40 ms on Linux).
        transport: Any = self.transport
        try:
            transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # not TCP (a test's memory transport, a UNIX socket)
        self.client._tcp_connected(self)

    def onOpen(self) -> None:
        """The WebSocket is up; ``hello`` will follow."""
        self.client._ws_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Route a reply to its request, a notification to the client."""
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self._log.warn("the proxy sent a frame that is not JSON; closing")
            self.dropConnection(abort=True)
            return
        if not isinstance(obj, dict):
            return
        if "id" in obj and ("result" in obj or "error" in obj):
            self._reply(obj)
        elif isinstance(obj.get("method"), str):
            params = obj.get("params")
            self.client._notification(
                self, obj["method"], params if isinstance(params, dict) else {}
            )

    def _reply(self, obj: dict[str, Any]) -> None:
        entry = (
            self._pending.pop(obj["id"], None) if isinstance(obj["id"], int) else None
        )
        if entry is None:
            return
        _method, d = entry
        if "error" in obj:
            err = obj["error"] if isinstance(obj["error"], dict) else {}
            code = err.get("code")
            d.errback(
                error_for_code(
                    code if isinstance(code, int) else -32603,
                    str(err.get("message", "")),
                    err.get("data"),
                )
            )
        else:
            d.callback(obj["result"])

    def request(self, method: str, params: dict[str, Any]) -> defer.Deferred[Any]:
        """Send one request; fires with its result or a :class:`ProxyError`.

        Cancelling the Deferred forgets the request (a late reply is
        ignored).
        """
        if self.state != self.STATE_OPEN:
            return defer.fail(ConnectionLost(method, "not connected"))
        self._next_id += 1
        req_id = self._next_id

        def cancel(_: defer.Deferred[Any]) -> None:
            self._pending.pop(req_id, None)

        d: defer.Deferred[Any] = defer.Deferred(cancel)
        self._pending[req_id] = (method, d)
        text = json.dumps(
            {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params},
            separators=(",", ":"),
        )
        self.sendMessage(text.encode("utf-8"))
        return d

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Fail every request still waiting; tell the client."""
        self.close_reason = (
            self.close_reason
            or reason
            or (f"closed with code {code}" if code else "connection lost")
        )
        if self.login_deadline is not None and self.login_deadline.active():
            self.login_deadline.cancel()
        self.login_deadline = None
        pending, self._pending = self._pending, {}
        for method, d in pending.values():
            d.errback(ConnectionLost(method, self.close_reason))
        self.client._ws_closed(self)


class _ProxyFactory(WebSocketClientFactory):
    """Builds :class:`_ProxyProtocol` bound to one :class:`Client`."""

    protocol = _ProxyProtocol

    def __init__(self, client: Client, url: str, reactor: Any) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL], reactor=reactor)
        self.client = client
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_WS_MESSAGE,
            maxFramePayloadSize=MAX_WS_MESSAGE,
            # Autobahn's own timers run on txaio's global loop; the client
            # bounds the time to a login with its own clock instead.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            tcpNoDelay=True,
        )

    def buildProtocol(self, addr: Any) -> _ProxyProtocol:
        """A protocol that reports to our client."""
        p: _ProxyProtocol = super().buildProtocol(addr)  # type: ignore[assignment]
        p.client = self.client
        return p


@implementer(IStreamClientEndpoint)
class _WatchedEndpoint:
    """An endpoint that reports each failed connection attempt."""

    def __init__(
        self, inner: IStreamClientEndpoint, on_failure: Callable[[Failure], None]
    ) -> None:
        self._inner = inner
        self._on_failure = on_failure

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        """Connect through the wrapped endpoint."""
        d = self._inner.connect(factory)

        def failed(f: Failure) -> Failure:
            self._on_failure(f)
            return f

        return d.addErrback(failed)


_Waiter = tuple[defer.Deferred[LoginInfo], bool]


class Client(DevicesMixin, service.Service):
    """A node's connection to an lnproxy (see the module docstring).

    :param reactor: the reactor (TCP, TLS, timers).
    :param url: ``ws://host:port/`` or ``wss://host:port/``.
    :param node_secret: the node's 32-byte secret key.
    :param on_event: ``fn(event)`` called for each new event, in seq order;
        may return a Deferred.  ``None`` makes a passive client that never
        acknowledges (for one-shot commands: events wait for a listener).
    :param state: a :class:`StateStore`, or a path for a :class:`FileState`;
        ``None`` keeps the state in memory.
    :param features: the ``init`` features sent to peers by default.
    :param server_id: the proxy's expected 33-byte id; ``hello`` with another
        one is refused (:class:`ServerMismatch`).
    :param request_timeout: seconds a request may wait, for a login included.
    :param retry_policy: ``attempt -> seconds`` for reconnecting to the
        proxy, retrying a failed event callback, and re-handshakes.
    :param tls_options: client TLS options for ``wss://`` (default: verify
        the host name against the system trust roots).
    :param clock: timers (default: ``reactor``).
    :param connect_timeout: seconds for a TCP connection to the proxy.

    :ivar node_id: our 33-byte node id.
    :ivar server_id: the proxy's id from the last ``hello``, or None.
    :ivar login_info: the :class:`LoginInfo` of the last login, or None.
    :ivar failure: the error that stopped the client for good (a refused
        login, a server id mismatch), or None.
    :ivar on_login: ``fn(info)`` after each successful login.
    :ivar on_link: ``fn(link)`` after each successful re-handshake.
    :ivar on_disconnect: ``fn()`` when a logged-in WebSocket closes.
    :ivar on_handshake: ``fn(step, detail)`` as :meth:`open_peer` progresses
        (``act1``, ``act2``, ``act3``, ``init``); for narration and logs,
        never given key material.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        node_secret: bytes,
        on_event: Callable[[Event], Any] | None = None,
        state: StateStore | str | os.PathLike[str] | None = None,
        features: bytes = b"",
        server_id: bytes | None = None,
        request_timeout: float = 30.0,
        retry_policy: Callable[[int], float] | None = None,
        tls_options: Any = None,
        clock: IReactorTime | None = None,
        connect_timeout: float = 10.0,
        lease: bool = False,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(
                f"proxy URL must be ws://host:port/ or wss://host:port/, not {url!r}"
            )
        self.url = url
        self._reactor = reactor
        self.clock: IReactorTime = clock or reactor
        self._secure = parts.scheme == "wss"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._secure else 80)
        self._secret = node_secret
        self.node_id = keys.public_key(node_secret)
        self.on_event = on_event
        if state is None:
            self._store: StateStore = MemoryState()
        elif isinstance(state, (str, os.PathLike)):
            self._store = FileState(os.fspath(state))
        else:
            self._store = state
        loaded = self._store.load()
        if loaded.node_id is not None and loaded.node_id != self.node_id.hex():
            raise StateError(
                f"the state belongs to node {loaded.node_id}, not {self.node_id.hex()}"
            )
        self.state: ClientState = loaded.evolve(node_id=self.node_id.hex())
        self.features = features
        self.expected_server_id = server_id
        self.request_timeout = request_timeout
        self.retry_policy = retry_policy or backoffPolicy(
            initialDelay=0.5, maxDelay=60.0
        )
        self._tls_options = tls_options
        self._connect_timeout = connect_timeout

        self.server_id: bytes | None = None
        self.limits: dict[str, Any] = {}
        #: ``hello.features`` of the proxy.
        self.server_features: frozenset[str] = frozenset()
        self.login_info: LoginInfo | None = None
        self.failure: ClientError | None = None
        self.on_login: list[Callable[[LoginInfo], Any]] = []
        self.on_link: list[Callable[[PeerLink], Any]] = []
        self.on_disconnect: list[Callable[[], Any]] = []
        self.on_handshake: list[Callable[[str, str], Any]] = []

        self._service: ClientService | None = None
        self._protocol: _ProxyProtocol | None = None
        self._session: _ProxyProtocol | None = None
        self._login_waiters: list[_Waiter] = []
        self._session_waiters: list[defer.Deferred[_ProxyProtocol]] = []
        self._aborted = False
        # Event pipeline.
        self._queue: deque[Event] = deque()
        self._busy = False
        self._pumping = False
        self._retry_call: IDelayedCall | None = None
        self._failures = 0
        self._unsaved: ClientState | None = None
        # Peer links.
        self._links: dict[str, PeerLink] = {}
        self._addresses: dict[str, str] = {}
        self._rehandshakes: dict[str, defer.Deferred[None]] = {}
        # Several devices: the writer lease, the vault's peer list.
        self._devices_init(lease)

    def __repr__(self) -> str:
        return f"<Client node={self.node_id.hex()[:16]}... url={self.url}>"

    # -- life cycle ----------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        """Whether a WebSocket is open and logged in right now."""
        return self._session is not None

    def startService(self) -> None:
        """Connect (and keep reconnecting) to the proxy."""
        if self._aborted:
            raise ClientStopped("an aborted client cannot be restarted")
        if self.running:
            return
        super().startService()
        self.failure = None
        self._service = ClientService(
            _WatchedEndpoint(self._endpoint(), self._connect_failed),
            _ProxyFactory(self, self.url, self._reactor),
            retryPolicy=self.retry_policy,
            clock=self.clock,
        )
        self._service.startService()

    def stopService(self) -> defer.Deferred[None]:
        """Close the WebSocket cleanly and stop reconnecting.

        Events not yet handled are dropped from memory (the proxy keeps them
        until they are acknowledged); an event callback already running may
        finish and be recorded.
        """
        if not self.running:
            return defer.succeed(None)
        super().stopService()
        self._halt(ClientStopped("the client was stopped"))
        proto = self._protocol
        if proto is not None and proto.state == proto.STATE_OPEN:
            proto.sendClose(1000)
        return self._stop_connecting()

    def abort(self) -> defer.Deferred[None]:
        """Stop at once, as a crash would: drop the TCP connection, record
        and acknowledge nothing more.  The client cannot be started again."""
        self._aborted = True
        if self.running:
            super().stopService()
        self._halt(ClientStopped("the client was aborted"))
        proto = self._protocol
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()  # type: ignore[attr-defined]
        return self._stop_connecting()

    def _stop_connecting(self) -> defer.Deferred[None]:
        svc, self._service = self._service, None
        if svc is None:
            return defer.succeed(None)
        return defer.maybeDeferred(svc.stopService)

    def _halt(self, err: ClientError) -> None:
        """Fail every waiter, forget queued events, stop background work."""
        self._queue.clear()
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        for d in list(self._rehandshakes.values()):
            d.cancel()
        self._rehandshakes.clear()
        waiters, self._login_waiters = self._login_waiters, []
        for dw, _fast in waiters:
            dw.errback(err)
        sessions, self._session_waiters = self._session_waiters, []
        for ds in sessions:
            ds.errback(err)

    def _fatal(self, err: ClientError) -> None:
        """An error retrying cannot fix (refused login, wrong server)."""
        self._log.error("lnproxy client stopping: {err}", err=str(err))
        self.failure = err
        if self.running:
            service.Service.stopService(self)
        self._halt(err)
        proto = self._protocol
        if proto is not None and proto.state == proto.STATE_OPEN:
            proto.sendClose(1000)
        self._stop_connecting()

    def _endpoint(self) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, self._host, self._port, timeout=self._connect_timeout
        )
        if self._secure:
            from twisted.internet.ssl import optionsForClientTLS

            options = self._tls_options or optionsForClientTLS(self._host)
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def when_logged_in(self, fail_fast: bool = False) -> defer.Deferred[LoginInfo]:
        """Fires with the :class:`LoginInfo` once logged in (now, if already).

        :param fail_fast: fail on the next failed attempt (proxy unreachable,
            WebSocket refused or closed before login, login answered with an
            error) instead of waiting for a later attempt to succeed.
        :raise ClientStopped: (as a failure) when the client stops first.
        :raise LoginFailed: when the proxy refuses the signature.
        """
        if self.failure is not None:
            return defer.fail(self.failure)
        if self._session is not None and self.login_info is not None:
            return defer.succeed(self.login_info)
        if not self.running:
            return defer.fail(ClientStopped("the client is not running"))

        def cancel(d: defer.Deferred[LoginInfo]) -> None:
            self._login_waiters[:] = [w for w in self._login_waiters if w[0] is not d]

        d: defer.Deferred[LoginInfo] = defer.Deferred(cancel)
        self._login_waiters.append((d, fail_fast))
        return d

    def _fail_fast_waiters(self, err: ClientError) -> None:
        # Detach first: an errback may stop the client, which walks the list.
        fire = [d for d, fast in self._login_waiters if fast]
        self._login_waiters = [w for w in self._login_waiters if not w[1]]
        for d in fire:
            d.errback(err)

    # -- WebSocket events -----------------------------------------------------

    def _connect_failed(self, f: Failure) -> None:
        self._log.info(
            "cannot reach the proxy at {url}: {reason}",
            url=self.url,
            reason=f.getErrorMessage(),
        )
        self._fail_fast_waiters(ProxyUnreachable(self.url, f.getErrorMessage()))

    def _tcp_connected(self, proto: _ProxyProtocol) -> None:
        self._protocol = proto

        def too_late() -> None:
            proto.login_deadline = None
            if not proto.logged_in:
                proto.close_reason = "no login within the request timeout"
                proto.dropConnection(abort=True)

        proto.login_deadline = self.clock.callLater(self.request_timeout, too_late)

    def _ws_opened(self, proto: _ProxyProtocol) -> None:
        self._protocol = proto

    def _ws_closed(self, proto: _ProxyProtocol) -> None:
        if proto is self._protocol:
            self._protocol = None
        if proto is self._session:
            self._session = None
            self._devices_closed()
            self._log.info(
                "disconnected from the proxy: {reason}", reason=proto.close_reason
            )
            for fn in list(self.on_disconnect):
                self._guard(fn)
        elif not proto.logged_in:
            self._fail_fast_waiters(
                ProxyUnreachable(
                    self.url, f"closed before login ({proto.close_reason})"
                )
            )

    def _notification(
        self, proto: _ProxyProtocol, method: str, params: dict[str, Any]
    ) -> None:
        if method == "hello":
            self._hello(proto, params)
            return
        if proto is not self._session:
            return
        if self._devices_notification(method, params):
            return
        seq = params.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            self._log.warn(
                "ignoring notification {method} without a seq", method=method
            )
            return
        if self.on_event is None:
            return
        self._queue.append(Event(method, params))
        self._pump()

    # -- login ---------------------------------------------------------------

    def _hello(self, proto: _ProxyProtocol, params: dict[str, Any]) -> None:
        try:
            server_id = bytes.fromhex(params["server_id"])
            challenge = bytes.fromhex(params["challenge"])
            if len(server_id) != 33 or len(challenge) != 32:
                raise ValueError("bad sizes")
        except (KeyError, TypeError, ValueError):
            self._log.warn("malformed hello from the proxy; closing")
            proto.dropConnection(abort=True)
            return
        if params.get("protocol") != PROTOCOL_VERSION:
            self._fatal(
                ClientError(
                    f"the proxy speaks {params.get('protocol')!r}, "
                    f"this client speaks {PROTOCOL_VERSION}"
                )
            )
            return
        if self.expected_server_id is not None and server_id != self.expected_server_id:
            self._fatal(ServerMismatch(self.expected_server_id.hex(), server_id.hex()))
            return
        self.server_id = server_id
        limits = params.get("limits")
        self.limits = limits if isinstance(limits, dict) else {}
        features = params.get("features")
        self.server_features = frozenset(
            f
            for f in (features if isinstance(features, list) else [])
            if isinstance(f, str)
        )
        try:
            self._adopt_server(server_id.hex())
        except Exception as e:
            self._fatal(ClientError(f"cannot write the client state: {e}"))
            return
        signature = self._sign_login(keys.login_digest(server_id, challenge))
        d = proto.request(
            "login", {"node_id": self.node_id.hex(), "signature": signature.hex()}
        )
        d.addTimeout(self.request_timeout, self.clock, self._timeout_as("login"))
        d.addCallbacks(
            lambda result: self._logged_in(proto, result),
            lambda f: self._login_error(proto, f),
        )

    def _sign_login(self, digest: bytes) -> bytes:
        """The login signature (a method so that tests can forge a bad one)."""
        return keys.sign_digest(self._secret, digest)

    def _adopt_server(self, server_id: str) -> None:
        """Tie the state to this proxy; another proxy's seqs start over."""
        st = self.state
        if st.server_id == server_id:
            return
        if st.server_id is not None:
            self._log.warn(
                "proxy server_id changed from {old} to {new}: its event seqs start "
                "over, so the handled-seq record is reset",
                old=st.server_id,
                new=server_id,
            )
            st = st.evolve(last_seq=0)
        self._save(st.evolve(server_id=server_id))

    def _logged_in(self, proto: _ProxyProtocol, result: Any) -> None:
        if proto is not self._protocol or proto.state != proto.STATE_OPEN:
            return
        inbox = result.get("inbox", {}) if isinstance(result, dict) else {}
        conns = result.get("connections", []) if isinstance(result, dict) else []
        assert self.server_id is not None
        info = LoginInfo(
            node_id=self.node_id.hex(),
            server_id=self.server_id.hex(),
            next_seq=int(inbox.get("next_seq", 0)),
            pending=int(inbox.get("pending", 0)),
            connections=list(conns),
            limits=self.limits,
        )
        for c in info.connections:
            self._remember_address(c)
        proto.logged_in = True
        if proto.login_deadline is not None and proto.login_deadline.active():
            proto.login_deadline.cancel()
        proto.login_deadline = None
        self._session = proto
        self.login_info = info
        self._log.info(
            "logged in to {url} ({pending} events pending)",
            url=self.url,
            pending=info.pending,
        )
        waiters, self._login_waiters = self._login_waiters, []
        for d, _fast in waiters:
            d.callback(info)
        sessions, self._session_waiters = self._session_waiters, []
        for ds in sessions:
            ds.callback(proto)
        for fn in list(self.on_login):
            self._guard(fn, info)
        # Takes the lease again if wanted, then re-handshakes what is pending.
        self._devices_logged_in()
        self._pump()

    def _login_error(self, proto: _ProxyProtocol, f: Failure) -> None:
        if f.check(LoginFailed):
            self._fatal(f.value)  # type: ignore[arg-type]
            return
        err = f.value if isinstance(f.value, ClientError) else ClientError(str(f.value))
        self._log.info("login did not succeed: {err}", err=str(err))
        self._fail_fast_waiters(err)
        if proto.state == proto.STATE_OPEN:
            # Let ClientService try again later (e.g. a session limit).
            proto.sendClose(1000)

    # -- requests -----------------------------------------------------------------

    def _timeout_as(self, method: str) -> Callable[[Any, float], Any]:
        def convert(result: Any, timeout: float) -> Any:
            return Failure(RequestTimeout(method, timeout))

        return convert

    def _wait_session(self) -> defer.Deferred[_ProxyProtocol]:
        if self._session is not None:
            return defer.succeed(self._session)

        def cancel(d: defer.Deferred[_ProxyProtocol]) -> None:
            if d in self._session_waiters:
                self._session_waiters.remove(d)

        d: defer.Deferred[_ProxyProtocol] = defer.Deferred(cancel)
        self._session_waiters.append(d)
        return d

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> defer.Deferred[Any]:
        """Send one request once logged in; fires with its ``result``.

        :param method: the JSON-RPC method.
        :param params: its params.
        :param timeout: seconds (default ``request_timeout``), waiting for a
            login included.
        :raise ProxyError: (subclass per code) for an error reply.
        :raise RequestTimeout: no reply in time.
        :raise ConnectionLost: the WebSocket closed before the reply.
        :raise ClientStopped: the client is not running.
        """
        if self.failure is not None:
            return defer.fail(self.failure)
        if not self.running:
            return defer.fail(ClientStopped("the client is not running"))
        limit = self.request_timeout if timeout is None else timeout

        @defer.inlineCallbacks
        def run() -> Any:
            proto = yield self._wait_session()
            result = yield proto.request(method, params or {})
            return result

        d: defer.Deferred[Any] = run()
        return d.addTimeout(limit, self.clock, self._timeout_as(method))

    @defer.inlineCallbacks
    def open_peer(
        self, peer: str, persist: bool = False, features: bytes | None = None
    ) -> Any:
        """Open a peer connection through the proxy (the split handshake).

        Runs act 1, gives it to the proxy (``connect``), checks act 2, runs
        act 3 and hands it with ``sk``/``rk``/``ck`` to the proxy
        (``finish``), then sends our ``init``.

        :param peer: ``node_id@host[:port]``.
        :param persist: ask the proxy to summon us to re-handshake if the
            connection drops (and re-handshake when it does).
        :param features: our init features (default: the client's).
        :return: a Deferred firing with a :class:`PeerLink`.
        :raise PeerUnreachable: TCP to the peer failed (code 4).
        :raise HandshakeFailed: the peer closed, or act 2 was malformed or
            did not authenticate (code 5; ``local`` when we found it).
        """
        node, address = parse_peer(peer)
        features = self.features if features is None else features
        init = noise.Initiator(self._secret, bytes.fromhex(node))
        act1 = init.act1()
        self._step(
            "act1",
            f"act 1 ({len(act1)} bytes) to the proxy, which writes it to {address}",
        )
        r = yield self.call(
            "connect",
            {"peer": f"{node}@{address}", "act1": act1.hex(), "persist": persist},
        )
        conn = r["conn"]
        self._addresses[conn] = address
        try:
            init.read_act2(bytes.fromhex(r["act2"]))
        except (noise.HandshakeError, ValueError) as e:
            self.call("disconnect", {"conn": conn}).addErrback(lambda _: None)
            raise HandshakeFailed(
                5, f"act 2 from the peer was rejected: {e}", local=True
            ) from None
        self._step(
            "act2", f"act 2 from the peer, relayed by the proxy, verified ({conn})"
        )
        act3, transport_keys = init.act3()
        finish = {
            "conn": conn,
            "act3": act3.hex(),
            "sk": transport_keys.sk.hex(),
            "rk": transport_keys.rk.hex(),
            "ck": transport_keys.ck.hex(),
        }
        # The keys belong to the proxy from now on; keep no copy here.
        del transport_keys, init
        yield self.call("finish", finish)
        del finish
        self._step(
            "act3", f"act 3 ({len(act3)} bytes) and sk, rk, ck handed to the proxy"
        )
        init_msg = wire.Init(features=features).encode()
        yield self.send(conn, init_msg)
        self._step("init", f"our init ({len(init_msg)} bytes) sent on {conn}")
        link = PeerLink(self, conn, node, address, persist, features)
        self._links[conn] = link
        if persist:
            self._devices_link_opened(node, address, features)
        return link

    def send(self, conn: str, msg: bytes) -> defer.Deferred[None]:
        """Send one Lightning message (type included) on a connection."""
        return self.call("send", {"conn": conn, "msg": msg.hex()}).addCallback(
            lambda _: None
        )

    def disconnect(self, conn: str) -> defer.Deferred[None]:
        """Close a connection; its ``closed`` event has ``reconnect: false``
        (a persistent peer leaves the vault's peer list)."""

        def done(_: Any) -> None:
            link = self._links.get(conn)
            if link is not None and link.persist:
                self._devices_link_dropped(link.peer)

        return self.call("disconnect", {"conn": conn}).addCallback(done)

    def connections(self) -> defer.Deferred[list[dict[str, Any]]]:
        """The node's connection objects (closed but unacknowledged included)."""

        def got(result: Any) -> list[dict[str, Any]]:
            conns = list(result.get("connections", []))
            for c in conns:
                self._remember_address(c)
            return conns

        return self.call("connections").addCallback(got)

    def webhook_set(self, url: str) -> defer.Deferred[str]:
        """Register a webhook URL; fires with its id."""
        return self.call("webhook.set", {"url": url}).addCallback(lambda r: r["id"])

    def webhook_list(self) -> defer.Deferred[list[dict[str, str]]]:
        """The node's webhooks, ``[{"id", "url"}]``."""
        return self.call("webhook.list").addCallback(lambda r: list(r["webhooks"]))

    def webhook_remove(self, webhook_id: str) -> defer.Deferred[None]:
        """Remove a webhook (:class:`UnknownConnection`, code 3, if unknown)."""
        return self.call("webhook.remove", {"id": webhook_id}).addCallback(
            lambda _: None
        )

    def _step(self, step: str, detail: str) -> None:
        for fn in list(self.on_handshake):
            self._guard(fn, step, detail)

    def _remember_address(self, c: Any) -> None:
        if isinstance(c, dict) and isinstance(c.get("conn"), str):
            if isinstance(c.get("address"), str):
                self._addresses[c["conn"]] = c["address"]

    # -- events: in order, exactly once ---------------------------------------

    def _pump(self) -> None:
        """Hand queued events to the callback, one at a time."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._busy and not self._aborted and self._retry_call is None:
                if self._unsaved is not None:
                    self._busy = True
                    self._record(self._unsaved, None)
                    continue
                if not self._queue:
                    return
                event = self._queue.popleft()
                if event.seq <= self.state.last_seq:
                    # Handled before (replay after a reconnect, a crash, a
                    # restart): acknowledge it again, do not deliver it.
                    self._ack(event.seq)
                    continue
                self._busy = True
                callback = self.on_event
                assert callback is not None  # events are queued only then
                d = defer.maybeDeferred(callback, event)
                d.addBoth(self._callback_done, event)
        finally:
            self._pumping = False

    def _callback_done(self, result: Any, event: Event) -> None:
        if self._aborted:
            return
        if isinstance(result, Failure):
            self._failures += 1
            self._log.failure(
                "event callback failed for seq {seq}; retrying", result, seq=event.seq
            )
            if self.running:
                # Put it back at the head unless a stop emptied the queue
                # (then the proxy will send it again).
                self._queue.appendleft(event)
                self._schedule_retry()
            self._busy = False
            return
        self._failures = 0
        d = self._next_state(event)
        d.addCallback(self._record, event)
        d.addErrback(self._record_failed, event)

    def _record_failed(self, f: Failure, event: Event) -> None:
        # Only a bug gets here; deliver the event again rather than lose it.
        self._log.failure("cannot record seq {seq}", f, seq=event.seq)
        if self.running and not self._aborted:
            self._queue.appendleft(event)
            self._failures += 1
            self._schedule_retry()
        self._busy = False

    @defer.inlineCallbacks
    def _next_state(self, event: Event) -> Any:
        """The state after handling ``event``: its seq, and for a closed
        persistent connection the peer to re-handshake."""
        st = self.state.evolve(last_seq=max(self.state.last_seq, event.seq))
        node, conn = event.peer, event.conn
        if event.kind == "closed" and event.reconnect and node and conn:
            address = self._addresses.get(conn)
            if address is None and self.running:
                try:
                    yield self.connections()
                except ClientError as e:
                    self._log.warn(
                        "cannot look up connection {conn}: {e}", conn=conn, e=str(e)
                    )
                address = self._addresses.get(conn)
            if address is None:
                self._log.error(
                    "cannot re-handshake with {peer}: address of {conn} unknown",
                    peer=node,
                    conn=conn,
                )
            else:
                link = self._links.get(conn)
                features = link.features if link is not None else self.features
                wanted = dict(st.rehandshake)
                wanted[node] = {"address": address, "features": features.hex()}
                st = st.evolve(rehandshake=wanted)
        return st

    def _record(self, st: ClientState, event: Event | None) -> None:
        """Save the state, then acknowledge; retry the save if it fails."""
        if self._aborted:
            return
        try:
            self._save(st)
        except Exception:
            if self._aborted:
                return
            self._log.failure("cannot save the client state; retrying")
            self._unsaved = st
            self._failures += 1
            self._schedule_retry()
            self._busy = False
            return
        self._unsaved = None
        self._failures = 0
        if self._aborted:
            return
        self._ack(st.last_seq)
        if (
            event is not None
            and event.kind == "closed"
            and event.reconnect
            and event.peer
        ):
            self._start_rehandshake(event.peer)
        elif event is None:
            for node in list(st.rehandshake):
                self._start_rehandshake(node)
        self._busy = False
        self._pump()

    def _save(self, st: ClientState) -> None:
        self._store.save(st)
        self.state = st

    def _schedule_retry(self) -> None:
        delay = self.retry_policy(self._failures)

        def retry() -> None:
            self._retry_call = None
            self._pump()

        self._retry_call = self.clock.callLater(delay, retry)

    def _ack(self, seq: int) -> None:
        proto = self._session
        if proto is None or self._aborted or seq <= 0:
            return
        d = proto.request("ack", {"seq": seq})
        d.addErrback(
            lambda f: self._log.info(
                "ack {seq} not sent: {e}", seq=seq, e=f.getErrorMessage()
            )
        )

    # -- persistent peers -----------------------------------------------------

    def _resume_rehandshakes(self) -> None:
        """Start every re-handshake the state lists."""
        for node in list(self.state.rehandshake):
            self._start_rehandshake(node)

    def _record_rehandshakes(self, entries: dict[str, dict[str, str]]) -> None:
        """Add peers to re-handshake to the state's record."""
        self._save(self.state.evolve(rehandshake={**self.state.rehandshake, **entries}))

    def _start_rehandshake(self, node: str) -> None:
        if node in self._rehandshakes or not self.running or self._aborted:
            return
        if not self._devices_may_rehandshake():
            return  # another device holds the writer lease
        d = self._rehandshake(node)
        if d.called:
            return
        self._rehandshakes[node] = d

        def done(result: Any) -> None:
            if self._rehandshakes.get(node) is d:
                del self._rehandshakes[node]
            if isinstance(result, Failure) and not result.check(defer.CancelledError):
                self._log.failure("re-handshake with {peer} stopped", result, peer=node)

        d.addBoth(done)

    @defer.inlineCallbacks
    def _rehandshake(self, node: str) -> Any:
        """Open a new connection to a persistent peer; retry with backoff."""
        attempt = 0
        while self.running and node in self.state.rehandshake:
            entry = self.state.rehandshake[node]
            link: PeerLink | None = None
            try:
                conns = yield self.connections()
                # Another device of this node may have done it already.
                if not any(
                    c.get("peer") == node and c.get("state") == "open" for c in conns
                ):
                    link = yield self.open_peer(
                        f"{node}@{entry['address']}",
                        persist=True,
                        features=bytes.fromhex(entry.get("features", "")),
                    )
            except ClientError as e:
                if self._devices_rehandshake_refused(e, node):
                    return  # kept on record until we hold the lease
                attempt += 1
                delay = self.retry_policy(attempt)
                self._log.info(
                    "re-handshake with {peer} failed ({e}); retrying in {delay:.1f} s",
                    peer=node,
                    e=str(e),
                    delay=delay,
                )
                yield task.deferLater(self.clock, delay, lambda: None)
                continue
            wanted = dict(self.state.rehandshake)
            wanted.pop(node, None)
            try:
                self._save(self.state.evolve(rehandshake=wanted))
            except Exception:
                # Harmless: the next attempt finds the open connection.
                self._log.failure("cannot save the client state")
            if link is not None:
                self._log.info(
                    "re-handshake with {peer} done: {conn}", peer=node, conn=link.conn
                )
                for fn in list(self.on_link):
                    self._guard(fn, link)
            return

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run an application hook; log what it raises."""
        try:
            fn(*args)
        except Exception:
            self._log.failure("application hook {fn} failed", fn=fn)
