"""The client library: a node that keeps its key and lets a proxy hold its peers.

:class:`Client` is a Twisted service.  Started, it connects to the proxy over
a WebSocket (Autobahn, ``ws://`` or ``wss://``), answers ``hello`` with a
login signed by the node key, and stays connected: when the WebSocket drops
it reconnects with backoff (``ClientService``) and logs in again.

It composes three parts, each in its own module:

* **The connection** (:mod:`lnproxy.client.connection`): the WebSocket,
  JSON-RPC requests with their timeouts, the login, reconnecting.
* **Events, exactly once** (:mod:`lnproxy.client.events`): events are
  handed to the application's ``on_event`` callback one at a time, in
  ``seq`` order; the seq is recorded in the
  :class:`~lnproxy.client.state.StateStore` after the callback succeeds and
  only then acknowledged, so a replay is acknowledged again but not
  delivered.
* **Peer connections** (:mod:`lnproxy.client.peers`): :meth:`Client.open_peer`
  runs the BOLT 8 initiator itself (the node key never leaves this
  process), and a ``closed`` event with ``reconnect: true`` is recorded
  with its seq and followed by a new handshake to that peer, with backoff,
  until one is open.

Errors come back as typed exceptions (:mod:`lnproxy.client.errors`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from lnproxy import keys
from lnproxy.client.connection import LoginInfo, ProxyConnection
from lnproxy.client.devices import DevicesMixin
from lnproxy.client.errors import ClientError, ClientStopped
from lnproxy.client.events import Event, EventPipeline
from lnproxy.client.peers import PeerLink, Peers, parse_peer
from lnproxy.client.state import (
    ClientState,
    FileState,
    MemoryState,
    SavedState,
    StateStore,
)

__all__ = [
    "Client",
    "Event",
    "LoginInfo",
    "PeerLink",
    "parse_peer",
]


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
    :param tls_options: client TLS options for ``wss://``: a connection
        creator used for every host, or a callable ``hostname -> creator``
        (what a deployment of several processes with their own names needs:
        redirects lead to other hosts); default: verify each host's name
        against the system trust roots.
    :param clock: timers (default: ``reactor``).
    :param connect_timeout: seconds for a TCP connection to the proxy.

    A ``login`` answered with code 9 (another process of the deployment
    serves the node) is followed to the owner's URL, with the same key,
    ``server_id`` and state; see :mod:`lnproxy.client.connection`.

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
        self.url = url
        self._reactor = reactor
        self.clock: IReactorTime = clock or reactor
        self._secret = node_secret
        self.node_id = keys.public_key(node_secret)
        self.on_event = on_event
        self.request_timeout = request_timeout
        self.retry_policy = retry_policy or backoffPolicy(
            initialDelay=0.5, maxDelay=60.0
        )
        self._connection = ProxyConnection(
            reactor,
            self.clock,
            url,
            self.node_id,
            owner=self,
            expected_server_id=server_id,
            request_timeout=request_timeout,
            retry_policy=self.retry_policy,
            tls_options=tls_options,
            connect_timeout=connect_timeout,
        )
        if state is None:
            store: StateStore = MemoryState()
        elif isinstance(state, (str, os.PathLike)):
            store = FileState(os.fspath(state))
        else:
            store = state
        self._saved = SavedState(store, self.node_id.hex())
        self._peers = Peers(
            self,
            self.clock,
            node_secret,
            self._saved,
            features,
            self.retry_policy,
            narrate=self._narrate,
            linked=self._linked,
            may_rehandshake=self._devices_may_rehandshake,
            refused=self._devices_rehandshake_refused,
        )
        self._events = EventPipeline(
            self.clock,
            self._saved,
            deliver=self._deliver,
            ack=self._ack,
            retry_policy=self.retry_policy,
            follow_up=self._peers,
        )

        self.failure: ClientError | None = None
        self.on_login: list[Callable[[LoginInfo], Any]] = []
        self.on_link: list[Callable[[PeerLink], Any]] = []
        self.on_disconnect: list[Callable[[], Any]] = []
        self.on_handshake: list[Callable[[str, str], Any]] = []
        self._aborted = False
        # Several devices: the writer lease, the vault's peer list.
        self._devices_init(lease)

    def __repr__(self) -> str:
        return f"<Client node={self.node_id.hex()[:16]}... url={self.url}>"

    # -- what it knows ---------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """The client's state as last saved."""
        return self._saved.current

    @property
    def features(self) -> bytes:
        """The ``init`` features sent to peers by default."""
        return self._peers.features

    @features.setter
    def features(self, value: bytes) -> None:
        self._peers.features = value

    @property
    def expected_server_id(self) -> bytes | None:
        """The proxy's expected id (``server_id`` of the constructor)."""
        return self._connection.expected_server_id

    @property
    def server_id(self) -> bytes | None:
        """The proxy's id from the last ``hello``, or None."""
        return self._connection.server_id

    @property
    def limits(self) -> dict[str, Any]:
        """The ``limits`` of the last ``hello``."""
        return self._connection.limits

    @property
    def server_features(self) -> frozenset[str]:
        """The ``features`` of the last ``hello``."""
        return self._connection.features

    @property
    def target(self) -> str:
        """Where the client logs in now: ``url``, or the URL of the node's
        owner that a redirect (code 9) named."""
        return self._connection.target

    @property
    def login_info(self) -> LoginInfo | None:
        """The :class:`LoginInfo` of the last login, or None."""
        return self._connection.login_info

    @property
    def logged_in(self) -> bool:
        """Whether a WebSocket is open and logged in right now."""
        return self._connection.logged_in

    @property
    def transport(self) -> Any:
        """The transport of the current WebSocket to the proxy, or None."""
        return self._connection.transport

    # -- life cycle ----------------------------------------------------------

    def startService(self) -> None:
        """Connect (and keep reconnecting) to the proxy."""
        if self._aborted:
            raise ClientStopped("an aborted client cannot be restarted")
        if self.running:
            return
        super().startService()
        self.failure = None
        self._events.start()
        self._peers.start()
        self._connection.start()

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
        return self._connection.stop()

    def abort(self) -> defer.Deferred[None]:
        """Stop at once, as a crash would: drop the TCP connection, record
        and acknowledge nothing more.  The client cannot be started again."""
        self._aborted = True
        self._events.abort()
        if self.running:
            super().stopService()
        self._halt(ClientStopped("the client was aborted"))
        return self._connection.abort()

    def _halt(self, err: ClientError) -> None:
        """Fail every waiter, forget queued events, stop background work."""
        self._events.halt()
        self._peers.halt()
        self._connection.fail_waiters(err)

    def when_logged_in(self, fail_fast: bool = False) -> defer.Deferred[LoginInfo]:
        """Fires with the :class:`LoginInfo` once logged in (now, if already).

        :param fail_fast: fail on the next failed attempt (proxy unreachable,
            WebSocket refused or closed before login, login answered with an
            error, a redirect not followed:
            :class:`~lnproxy.client.errors.RedirectRefused`)
            instead of waiting for a later attempt to succeed.  A redirect
            that is followed is no failure.
        :raise ClientStopped: (as a failure) when the client stops first.
        :raise LoginFailed: when the proxy refuses the signature.
        """
        if self.failure is not None:
            return defer.fail(self.failure)
        if self.logged_in and self.login_info is not None:
            return defer.succeed(self.login_info)
        if not self.running:
            return defer.fail(ClientStopped("the client is not running"))
        return self._connection.when_logged_in(fail_fast)

    # -- ConnectionOwner: what the connection asks and tells -------------------

    def sign_login(self, digest: bytes) -> bytes:
        """The login signature (through :meth:`_sign_login`, which tests
        override to forge a bad one)."""
        return self._sign_login(digest)

    def _sign_login(self, digest: bytes) -> bytes:
        return keys.sign_digest(self._secret, digest)

    def adopt_server(self, server_id: bytes) -> None:
        """Tie the state to this proxy; another proxy's seqs start over."""
        self._events.adopt_server(server_id.hex())

    def session_started(self, info: LoginInfo) -> None:
        """Logged in: run the hooks, resume re-handshakes and events."""
        for c in info.connections:
            self._peers.remember(c)
        for fn in list(self.on_login):
            self._guard(fn, info)
        # Takes the lease again if wanted, then resumes the re-handshakes.
        self._devices_logged_in()
        self._events.pump()

    def notification_received(self, method: str, params: dict[str, Any]) -> None:
        """A session notification (``lease``) is handled here; an event
        (anything with a seq) goes to the pipeline."""
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
        self._events.push(Event(method, params))

    def session_lost(self, reason: str) -> None:
        """The logged-in WebSocket closed; the connection reconnects."""
        self._devices_closed()
        for fn in list(self.on_disconnect):
            self._guard(fn)

    def fatal(self, err: ClientError) -> None:
        """An error retrying cannot fix (refused login, wrong server)."""
        self._log.error("lnproxy client stopping: {err}", err=str(err))
        self.failure = err
        if self.running:
            service.Service.stopService(self)
        self._halt(err)
        self._connection.stop()

    # -- requests -----------------------------------------------------------------

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
        return self._connection.call(method, params or {}, limit)

    def open_peer(
        self, peer: str, persist: bool = False, features: bytes | None = None
    ) -> defer.Deferred[PeerLink]:
        """Open a peer connection through the proxy (the split handshake).

        Runs act 1, gives it to the proxy (``connect``), checks act 2, runs
        act 3 and hands it with ``sk``/``rk``/``ck`` to the proxy
        (``finish``), then sends our ``init``.

        :param peer: ``node_id@host[:port]``.
        :param persist: ask the proxy to summon us to re-handshake if the
            connection drops (and re-handshake when it does).
        :param features: our init features (default: the client's).
        :return: a Deferred firing with a :class:`PeerLink`.
        :raise InvalidParams: (locally) a malformed ``peer``.
        :raise PeerUnreachable: TCP to the peer failed (code 4).
        :raise HandshakeFailed: the peer closed, or act 2 was malformed or
            did not authenticate (code 5; ``local`` when we found it).
        """
        d: defer.Deferred[PeerLink] = self._peers.open(peer, persist, features)

        def opened(link: PeerLink) -> PeerLink:
            if link.persist:
                self._devices_link_opened(link.peer, link.address, link.features)
            return link

        return d.addCallback(opened)

    def send(self, conn: str, msg: bytes) -> defer.Deferred[None]:
        """Send one Lightning message (type included) on a connection."""
        return self.call("send", {"conn": conn, "msg": msg.hex()}).addCallback(
            lambda _: None
        )

    def disconnect(self, conn: str) -> defer.Deferred[None]:
        """Close a connection; its ``closed`` event has ``reconnect: false``
        (a persistent peer leaves the vault's peer list)."""
        link = self._peers.link(conn)

        def done(_: Any) -> None:
            if link is not None and link.persist:
                self._devices_link_dropped(link.peer)

        return self.call("disconnect", {"conn": conn}).addCallback(done)

    def connections(self) -> defer.Deferred[list[dict[str, Any]]]:
        """The node's connection objects (closed but unacknowledged included)."""

        def got(result: Any) -> list[dict[str, Any]]:
            conns = list(result.get("connections", []))
            for c in conns:
                self._peers.remember(c)
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

    # -- what the parts ask of the client --------------------------------------

    def _deliver(self, event: Event) -> Any:
        """Hand one event to the application (the pipeline's callback)."""
        callback = self.on_event
        assert callback is not None  # events are queued only then
        return callback(event)

    def _ack(self, seq: int) -> None:
        """Acknowledge ``seq`` on the current session (a later login
        replays what a lost session did not acknowledge)."""
        d = self._connection.send_if_logged_in("ack", {"seq": seq})
        if d is not None:
            d.addErrback(
                lambda f: self._log.info(
                    "ack {seq} not sent: {e}", seq=seq, e=f.getErrorMessage()
                )
            )

    def _resume_rehandshakes(self) -> None:
        """Start every re-handshake the state lists."""
        self._peers.resume()

    def _record_rehandshakes(self, entries: dict[str, dict[str, str]]) -> None:
        """Add peers to re-handshake to the state's record."""

        def add(st: ClientState) -> ClientState:
            return st.evolve(rehandshake={**st.rehandshake, **entries})

        self._saved.update(add)

    def _narrate(self, step: str, detail: str) -> None:
        for fn in list(self.on_handshake):
            self._guard(fn, step, detail)

    def _linked(self, link: PeerLink) -> None:
        for fn in list(self.on_link):
            self._guard(fn, link)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run an application hook; log what it raises."""
        try:
            fn(*args)
        except Exception:
            self._log.failure("application hook {fn} failed", fn=fn)
