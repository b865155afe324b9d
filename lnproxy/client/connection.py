"""The client's WebSocket to the proxy: JSON-RPC requests, the login, and
staying connected (docs/protocol.md, "Transport", "Session start and login").

:class:`ProxyConnection` keeps one WebSocket to the proxy up: it connects
(``ws://`` or ``wss://``) through a ``ClientService`` that reconnects with
backoff, answers each ``hello`` with a login signed by the node key (the
signing itself is its owner's), and bounds the time from TCP to a login.
Once logged in it sends requests (:meth:`ProxyConnection.call`, each with
its own timeout) and hands every notification with a seq to its owner.

It follows redirects (docs/protocol.md, "Running several processes
(scale-out)"): a ``login`` answered with code 9 closes that WebSocket and
the next attempt goes at once to ``data.url``, the node's owner, with the
same key and the same ``server_id`` (a pinned one, or else the one of the
process that redirected).  At most :data:`MAX_REDIRECTS` redirects are
followed in a row; a further one, or a ``data.url`` that is not ``ws://`` or
``wss://``, is a :class:`RedirectRefused` and the client starts over at its
configured URL after the usual backoff.  When an attempt at the owner fails
(it stopped or died), the next one goes to the configured URL again, where
a surviving process has taken the node over or redirects once more.

It knows nothing about events, state files or peers: what happens at a
login, a notification, a lost session or a fatal error is its
:class:`ConnectionOwner`'s business (the :class:`~lnproxy.client.Client`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.util import parse_url
from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lnproxy import keys
from lnproxy.client.errors import (
    ClientError,
    ConnectionLost,
    LoginFailed,
    ProxyUnreachable,
    RedirectRefused,
    RequestTimeout,
    ServedElsewhere,
    ServerMismatch,
    error_for_code,
)
from lnproxy.protocol import INTERNAL_ERROR, PROTOCOL_VERSION, SUBPROTOCOL

__all__ = [
    "MAX_REDIRECTS",
    "MAX_WS_MESSAGE",
    "ConnectionOwner",
    "LoginInfo",
    "ProxyConnection",
    "ProxyProtocol",
    "check_proxy_url",
    "timeout_as",
]

#: Largest WebSocket message we accept: a 65,535-byte Lightning message is
#: ~131 KiB of hex, plus the envelope.
MAX_WS_MESSAGE = 1024 * 1024

#: Redirects (code 9) followed in a row, without a login or a failed
#: attempt in between, before the client gives up on the chain.
MAX_REDIRECTS = 3


def check_proxy_url(url: str) -> tuple[bool, str, int]:
    """Check a proxy URL: ``(secure, host, port)``.

    :raise ValueError: for anything but ``ws://host[:port][/path]`` or
        ``wss://...``.
    """
    try:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(url)
        secure, host, port, _, _, _ = parse_url(url)
    except Exception:  # urlsplit: ValueError; autobahn: Exception
        raise ValueError(
            f"proxy URL must be ws://host:port/ or wss://host:port/, not {url!r}"
        ) from None
    return bool(secure), str(host), int(port)


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


class ConnectionOwner(TypingProtocol):
    """What a :class:`ProxyConnection` asks of, and tells, its owner."""

    def sign_login(self, digest: bytes) -> bytes:
        """The login signature of ``digest`` (made with the node key)."""

    def adopt_server(self, server_id: bytes) -> None:
        """The proxy's ``hello`` named ``server_id``; called before each
        login.  Raising refuses the login for good (the error becomes
        fatal)."""

    def session_started(self, info: LoginInfo) -> None:
        """A login succeeded; requests may go out now."""

    def notification_received(self, method: str, params: dict[str, Any]) -> None:
        """A notification other than ``hello`` on the logged-in session."""

    def session_lost(self, reason: str) -> None:
        """The logged-in WebSocket closed (the connection will reconnect)."""

    def fatal(self, err: ClientError) -> None:
        """An error retrying cannot fix (refused login, wrong server)."""


def timeout_as(method: str) -> Callable[[Any, float], Any]:
    """An ``onTimeoutCancel`` for ``Deferred.addTimeout`` that fails with
    :class:`RequestTimeout` naming ``method``."""

    def convert(result: Any, timeout: float) -> Any:
        return Failure(RequestTimeout(method, timeout))

    return convert


class ProxyProtocol(WebSocketClientProtocol):
    """One WebSocket to the proxy: JSON-RPC requests out, replies and
    notifications in.  All decisions are the :class:`ProxyConnection`'s."""

    _log = Logger()
    connection: ProxyConnection

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 0
        self._pending: dict[int, tuple[str, defer.Deferred[Any]]] = {}
        self.logged_in = False
        #: The login answered code 9 and the connection followed (or
        #: refused) the redirect: this WebSocket's end is no new failure.
        self.redirected = False
        self.close_reason = ""
        self.login_deadline: IDelayedCall | None = None

    @property
    def websocket_open(self) -> bool:
        """Whether the WebSocket is open (requests can be sent)."""
        return bool(self.state == self.STATE_OPEN)

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
        self.connection.tcp_connected(self)

    def onOpen(self) -> None:
        """The WebSocket is up; ``hello`` will follow."""
        self.connection.websocket_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Route a reply to its request, a notification to the connection."""
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
            self.connection.notification(
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
                    code if isinstance(code, int) else INTERNAL_ERROR,
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
        if not self.websocket_open:
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

    def close(self) -> None:
        """Close the WebSocket cleanly if it is open."""
        if self.websocket_open:
            self.sendClose(1000)

    def cancel_login_deadline(self) -> None:
        """The login arrived (or the connection is gone): no deadline."""
        if self.login_deadline is not None and self.login_deadline.active():
            self.login_deadline.cancel()
        self.login_deadline = None

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Fail every request still waiting; tell the connection."""
        self.close_reason = (
            self.close_reason
            or reason
            or (f"closed with code {code}" if code else "connection lost")
        )
        self.cancel_login_deadline()
        pending, self._pending = self._pending, {}
        for method, d in pending.values():
            d.errback(ConnectionLost(method, self.close_reason))
        self.connection.websocket_closed(self)


class _ProxyFactory(WebSocketClientFactory):
    """Builds :class:`ProxyProtocol` bound to one :class:`ProxyConnection`."""

    protocol = ProxyProtocol

    def __init__(self, connection: ProxyConnection, url: str, reactor: Any) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL], reactor=reactor)
        self.connection = connection
        self.setProtocolOptions(
            maxMessagePayloadSize=MAX_WS_MESSAGE,
            maxFramePayloadSize=MAX_WS_MESSAGE,
            # Autobahn's own timers run on txaio's global loop; the client
            # bounds the time to a login with its own clock instead.
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            tcpNoDelay=True,
        )

    def aim(self, url: str) -> None:
        """The next WebSocket goes to ``url`` (Host header, path, TLS)."""
        self.setSessionParameters(
            url,
            origin=self.origin,
            protocols=[SUBPROTOCOL],
            useragent=self.useragent,
            headers=self.headers,
            proxy=self.proxy,
        )

    def buildProtocol(self, addr: Any) -> ProxyProtocol:
        """A protocol that reports to our connection."""
        p: ProxyProtocol = super().buildProtocol(addr)  # type: ignore[assignment]
        p.connection = self.connection
        return p


@implementer(IStreamClientEndpoint)
class _TargetEndpoint:
    """Connects to the connection's current target (the configured URL, or
    where a redirect pointed) and reports each failed attempt."""

    def __init__(self, connection: ProxyConnection) -> None:
        self._connection = connection

    def __repr__(self) -> str:
        return f"<lnproxy endpoint {self._connection.target}>"

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        """Aim the factory at the target and connect there."""
        return self._connection._connect_target(factory)


_Waiter = tuple[defer.Deferred[LoginInfo], bool]


class ProxyConnection:
    """A WebSocket to the proxy that stays up and logged in (see the module
    docstring).

    :param reactor: the reactor (TCP, TLS).
    :param clock: timers.
    :param url: ``ws://host:port/`` or ``wss://host:port/``.
    :param node_id: our 33-byte node id.
    :param owner: the :class:`ConnectionOwner` (signs, and is told).
    :param expected_server_id: refuse a ``hello`` with another server id.
    :param request_timeout: seconds a request, or a login, may take.
    :param retry_policy: ``attempt -> seconds`` between reconnects.
    :param tls_options: client TLS options for ``wss://``: a connection
        creator (such as ``optionsForClientTLS(host)``) used for every
        host, or a callable ``hostname -> creator``, called for each host
        (the configured one and those redirects point at).  ``None``
        verifies each host's name against the system trust roots.
    :param connect_timeout: seconds for a TCP connection to the proxy.
    :raise ValueError: for a URL that is not ``ws://`` or ``wss://``.

    :ivar url: the configured URL.
    :ivar target: where the next (or current) WebSocket goes: ``url``, or
        the owner a redirect named.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        clock: IReactorTime,
        url: str,
        node_id: bytes,
        owner: ConnectionOwner,
        expected_server_id: bytes | None,
        request_timeout: float,
        retry_policy: Callable[[int], float],
        tls_options: Any = None,
        connect_timeout: float = 10.0,
    ) -> None:
        check_proxy_url(url)
        self.url = url
        self.target = url
        self.clock = clock
        self.node_id = node_id
        self.expected_server_id = expected_server_id
        self.request_timeout = request_timeout
        self.retry_policy = retry_policy
        self._reactor = reactor
        self._owner = owner
        self._tls_options = tls_options
        self._connect_timeout = connect_timeout

        self.server_id: bytes | None = None
        self.limits: dict[str, Any] = {}
        #: ``hello.features`` of the proxy.
        self.features: frozenset[str] = frozenset()
        self.login_info: LoginInfo | None = None
        self._service: ClientService | None = None
        self._factory: _ProxyFactory | None = None
        #: Redirects followed since the last login or failed attempt.
        self._hops: list[str] = []
        #: The server_id a redirect's target must present when none is
        #: pinned: the one of the process that redirected.
        self._redirect_pin: bytes | None = None
        #: Reconnect without the backoff delay (a redirect to follow).
        self._follow_now = False
        #: The WebSocket of the current attempt (logged in or not).
        self._protocol: ProxyProtocol | None = None
        #: The logged-in WebSocket, if any.
        self._session: ProxyProtocol | None = None
        self._login_waiters: list[_Waiter] = []
        self._session_waiters: list[defer.Deferred[ProxyProtocol]] = []

    # -- life cycle -----------------------------------------------------------

    @property
    def logged_in(self) -> bool:
        """Whether a WebSocket is open and logged in right now."""
        return self._session is not None

    @property
    def transport(self) -> Any:
        """The transport of the current WebSocket, or None (for tests and
        diagnostics: socket options, addresses)."""
        return None if self._protocol is None else self._protocol.transport

    def start(self) -> None:
        """Connect, and keep reconnecting until :meth:`stop`."""
        self._factory = _ProxyFactory(self, self.url, self._reactor)
        self._service = ClientService(
            _TargetEndpoint(self),
            self._factory,
            retryPolicy=self._retry_delay,
            clock=self.clock,
        )
        self._service.startService()

    def stop(self) -> defer.Deferred[None]:
        """Close the WebSocket cleanly and stop reconnecting."""
        if self._protocol is not None:
            self._protocol.close()
        return self._stop_connecting()

    def abort(self) -> defer.Deferred[None]:
        """Drop the TCP connection at once (as a crash would) and stop."""
        proto = self._protocol
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()  # type: ignore[attr-defined]
        return self._stop_connecting()

    def _stop_connecting(self) -> defer.Deferred[None]:
        svc, self._service = self._service, None
        if svc is None:
            return defer.succeed(None)
        return defer.maybeDeferred(svc.stopService)

    def fail_waiters(self, err: ClientError) -> None:
        """Fail everyone waiting for a login or a session with ``err``."""
        waiters, self._login_waiters = self._login_waiters, []
        for dw, _fast in waiters:
            dw.errback(err)
        sessions, self._session_waiters = self._session_waiters, []
        for ds in sessions:
            ds.errback(err)

    def _retry_delay(self, attempt: int) -> float:
        """ClientService's policy: none to follow a redirect, else ours."""
        return 0.0 if self._follow_now else self.retry_policy(attempt)

    def _endpoint(self, url: str) -> IStreamClientEndpoint:
        secure, host, port = check_proxy_url(url)
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, host, port, timeout=self._connect_timeout
        )
        if secure:
            endpoint = wrapClientTLS(self._tls_for(host), endpoint)
        return endpoint

    def _tls_for(self, host: str) -> Any:
        """The client TLS options for ``host`` (see ``tls_options``)."""
        options = self._tls_options
        if options is None:
            from twisted.internet.ssl import optionsForClientTLS

            return optionsForClientTLS(host)
        if IOpenSSLClientConnectionCreator.providedBy(options) or not callable(options):
            return options
        return options(host)

    def _connect_target(self, factory: Any) -> defer.Deferred[Any]:
        """One attempt (for :class:`_TargetEndpoint`): at the target."""
        self._follow_now = False
        url = self.target
        assert self._factory is not None
        try:
            self._factory.aim(url)
            endpoint = self._endpoint(url)
        except Exception as e:  # a bad TLS callable, say
            f = Failure(e)
            self._connect_failed(url, f)
            return defer.fail(f)

        def failed(f: Failure) -> Failure:
            self._connect_failed(url, f)
            return f

        return endpoint.connect(factory).addErrback(failed)

    # -- waiting for a login ----------------------------------------------------

    def when_logged_in(self, fail_fast: bool = False) -> defer.Deferred[LoginInfo]:
        """Fires with the :class:`LoginInfo` once logged in (now, if already).

        :param fail_fast: fail on the next failed attempt instead of waiting
            for a later one to succeed.
        """
        if self._session is not None and self.login_info is not None:
            return defer.succeed(self.login_info)

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

    def _wait_session(self) -> defer.Deferred[ProxyProtocol]:
        if self._session is not None:
            return defer.succeed(self._session)

        def cancel(d: defer.Deferred[ProxyProtocol]) -> None:
            if d in self._session_waiters:
                self._session_waiters.remove(d)

        d: defer.Deferred[ProxyProtocol] = defer.Deferred(cancel)
        self._session_waiters.append(d)
        return d

    # -- requests -----------------------------------------------------------------

    def call(
        self, method: str, params: dict[str, Any], timeout: float
    ) -> defer.Deferred[Any]:
        """Send one request once logged in; fires with its ``result``.

        :param timeout: seconds, waiting for a login included
            (:class:`RequestTimeout` after it).
        """

        @defer.inlineCallbacks
        def run() -> Any:
            proto = yield self._wait_session()
            result = yield proto.request(method, params)
            return result

        d: defer.Deferred[Any] = run()
        return d.addTimeout(timeout, self.clock, timeout_as(method))

    def send_if_logged_in(
        self, method: str, params: dict[str, Any]
    ) -> defer.Deferred[Any] | None:
        """Send one request on the current session without waiting for one;
        None when not logged in (for ``ack``: a later login replays)."""
        if self._session is None:
            return None
        return self._session.request(method, params)

    # -- what the protocol reports ------------------------------------------------

    def _connect_failed(self, url: str, f: Failure) -> None:
        self._log.info(
            "cannot reach the proxy at {url}: {reason}",
            url=url,
            reason=f.getErrorMessage(),
        )
        self._attempt_failed()
        self._fail_fast_waiters(ProxyUnreachable(url, f.getErrorMessage()))

    def _attempt_failed(self) -> None:
        """An attempt ended without a login or a redirect: the chain of
        redirects is over, and the next attempt goes to the configured URL
        (if the owner died, a survivor takes the node over there)."""
        if self.target != self.url:
            self._log.info(
                "the node's owner at {target} failed; back to {url}",
                target=self.target,
                url=self.url,
            )
        self.target = self.url
        self._hops = []
        self._redirect_pin = None

    def tcp_connected(self, proto: ProxyProtocol) -> None:
        """TCP is up: start the clock on the login."""
        self._protocol = proto

        def too_late() -> None:
            proto.login_deadline = None
            if not proto.logged_in:
                proto.close_reason = "no login within the request timeout"
                proto.dropConnection(abort=True)

        proto.login_deadline = self.clock.callLater(self.request_timeout, too_late)

    def websocket_opened(self, proto: ProxyProtocol) -> None:
        """The WebSocket handshake is done."""
        self._protocol = proto

    def websocket_closed(self, proto: ProxyProtocol) -> None:
        """A WebSocket closed: a lost session, or a failed attempt."""
        if proto is self._protocol:
            self._protocol = None
        if proto is self._session:
            self._session = None
            self._log.info(
                "disconnected from the proxy: {reason}", reason=proto.close_reason
            )
            self._owner.session_lost(proto.close_reason)
        elif not proto.logged_in and not proto.redirected:
            url = self.target
            self._attempt_failed()
            self._fail_fast_waiters(
                ProxyUnreachable(url, f"closed before login ({proto.close_reason})")
            )

    def notification(
        self, proto: ProxyProtocol, method: str, params: dict[str, Any]
    ) -> None:
        """``hello`` starts a login; others go to the owner if they come
        from the logged-in session."""
        if method == "hello":
            self._hello(proto, params)
        elif proto is self._session:
            self._owner.notification_received(method, params)

    # -- login ---------------------------------------------------------------

    def _hello(self, proto: ProxyProtocol, params: dict[str, Any]) -> None:
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
            self._owner.fatal(
                ClientError(
                    f"the proxy speaks {params.get('protocol')!r}, "
                    f"this client speaks {PROTOCOL_VERSION}"
                )
            )
            return
        expected = self.expected_server_id or self._redirect_pin
        if expected is not None and server_id != expected:
            if self._hops:
                self._log.error(
                    "{url} (a redirect from {first}) is another server",
                    url=self.target,
                    first=self.url,
                )
            self._owner.fatal(ServerMismatch(expected.hex(), server_id.hex()))
            return
        self.server_id = server_id
        limits = params.get("limits")
        self.limits = limits if isinstance(limits, dict) else {}
        features = params.get("features")
        self.features = frozenset(
            f
            for f in (features if isinstance(features, list) else [])
            if isinstance(f, str)
        )
        try:
            self._owner.adopt_server(server_id)
        except Exception as e:
            self._owner.fatal(ClientError(f"cannot write the client state: {e}"))
            return
        signature = self._owner.sign_login(keys.login_digest(server_id, challenge))
        d = proto.request(
            "login", {"node_id": self.node_id.hex(), "signature": signature.hex()}
        )
        d.addTimeout(self.request_timeout, self.clock, timeout_as("login"))
        d.addCallbacks(
            lambda result: self._logged_in(proto, result),
            lambda f: self._login_error(proto, f),
        )

    def _logged_in(self, proto: ProxyProtocol, result: Any) -> None:
        if proto is not self._protocol or not proto.websocket_open:
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
        proto.logged_in = True
        proto.cancel_login_deadline()
        self._session = proto
        self.login_info = info
        self._hops = []
        self._log.info(
            "logged in to {url} ({pending} events pending)",
            url=self.target,
            pending=info.pending,
        )
        waiters, self._login_waiters = self._login_waiters, []
        for d, _fast in waiters:
            d.callback(info)
        sessions, self._session_waiters = self._session_waiters, []
        for ds in sessions:
            ds.callback(proto)
        self._owner.session_started(info)

    def _login_error(self, proto: ProxyProtocol, f: Failure) -> None:
        if f.check(LoginFailed):
            self._owner.fatal(f.value)  # type: ignore[arg-type]
            return
        if isinstance(f.value, ServedElsewhere) and proto is self._protocol:
            self._redirect(proto, f.value)
            return
        err = f.value if isinstance(f.value, ClientError) else ClientError(str(f.value))
        self._log.info("login did not succeed: {err}", err=str(err))
        self._fail_fast_waiters(err)
        # Let ClientService try again later (e.g. a session limit).
        proto.close()

    # -- redirects ----------------------------------------------------------------

    def _redirect(self, proto: ProxyProtocol, err: ServedElsewhere) -> None:
        """Code 9: close this WebSocket; log in at ``data.url`` at once."""
        here = self.target
        refusal: str | None = None
        url = err.url
        if url is None:
            refusal = "the proxy named no URL"
        else:
            try:
                check_proxy_url(url)
            except ValueError:
                refusal = "not a ws:// or wss:// URL"
        if refusal is None and len(self._hops) >= MAX_REDIRECTS:
            refusal = f"more than {MAX_REDIRECTS} redirects in a row"
        if refusal is not None or url is None:
            refused = RedirectRefused(here, url, refusal or "", list(self._hops))
            self._log.warn("{err}", err=str(refused))
            self._attempt_failed()
            self._fail_fast_waiters(refused)
            proto.redirected = True
            proto.close()  # ClientService tries the configured URL later
            return
        self._log.info(
            "{here} says the node is served at {url}; following",
            here=here,
            url=url,
        )
        self._hops.append(url)
        if self.expected_server_id is None:
            self._redirect_pin = self.server_id
        self.target = url
        self._follow_now = True
        proto.redirected = True
        # The login deadline stays: it drops a close that never completes.
        proto.close()
