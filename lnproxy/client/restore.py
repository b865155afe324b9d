"""Get a node key from an account: one short WebSocket, no login.

docs/protocol.md, "Several devices of one node", "The account".  A device
that has no node key yet opens a WebSocket, reads ``hello`` (for the
``server_id`` that salts the key derivation), derives ``auth`` and ``enc``
from the password (Argon2id, in a thread), calls ``account.login``, opens
the blob with ``enc`` and checks that the key is the node's.  Then it
closes the WebSocket: the caller builds a :class:`~lnproxy.client.Client`
with the recovered secret, which logs in as usual.

The password, ``enc`` and the node secret are never logged or written by
this module; :class:`RestoredAccount` hides the secret from ``repr``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
)
from twisted.internet import defer, threads
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure

from lnproxy.client import account
from lnproxy.client.errors import (
    ClientError,
    MethodNotFound,
    ProxyUnreachable,
    ServerMismatch,
    error_for_code,
)
from lnproxy.protocol import FEATURE_ACCOUNT, PROTOCOL_VERSION, SUBPROTOCOL

__all__ = ["RestoredAccount", "restore_account", "AccountRestoreError"]

_MAX_MESSAGE = 256 * 1024


class AccountRestoreError(ClientError):
    """The account's blob could not be opened (a wrong password on a proxy
    that accepted the ``auth``, a blob made for another user or node)."""


@dataclass(frozen=True)
class RestoredAccount:
    """What an account gave back.

    :ivar node_secret: the node's 32-byte secret key (not in ``repr``).
    :ivar node_id: the node's 33-byte id.
    :ivar server_id: the proxy's 33-byte id, from its ``hello``.
    """

    node_secret: bytes = field(repr=False)
    node_id: bytes
    server_id: bytes


class _RestoreProtocol(WebSocketClientProtocol):
    """hello -> account.login -> close; every outcome fires ``done``."""

    factory: _RestoreFactory

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """The hello notification, then the one reply."""
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            self._finish(
                Failure(ClientError("the proxy sent a frame that is not JSON"))
            )
            return
        if not isinstance(obj, dict):
            return
        if obj.get("method") == "hello" and isinstance(obj.get("params"), dict):
            self.factory.hello(self, obj["params"])
        elif obj.get("id") == 1:
            if isinstance(obj.get("error"), dict):
                err = obj["error"]
                code = err.get("code")
                self._finish(
                    Failure(
                        error_for_code(
                            code if isinstance(code, int) else -32603,
                            str(err.get("message", "")),
                            err.get("data"),
                        )
                    )
                )
            else:
                self.factory.result(self, obj.get("result"))

    def send_login(self, user: str, auth: bytes) -> None:
        """Send ``account.login`` (id 1)."""
        text = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "account.login",
                "params": {"user": user, "auth": auth.hex()},
            },
            separators=(",", ":"),
        )
        self.sendMessage(text.encode("utf-8"))

    def _finish(self, outcome: Any) -> None:
        self.factory.finish(outcome)
        if self.state == self.STATE_OPEN:
            self.sendClose(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Closed before an outcome: the proxy went away."""
        self.factory.finish(
            Failure(ProxyUnreachable(self.factory.url, reason or "connection closed"))
        )
        if not self.factory.closed.called:
            self.factory.closed.callback(None)


class _RestoreFactory(WebSocketClientFactory):
    protocol = _RestoreProtocol  # type: ignore[assignment]

    def __init__(
        self,
        url: str,
        reactor: Any,
        user: str,
        password: str,
        server_id: bytes | None,
        derive: Callable[[str, bytes, str], defer.Deferred[account.AccountKeys]],
    ) -> None:
        super().__init__(url, protocols=[SUBPROTOCOL], reactor=reactor)
        self.setProtocolOptions(
            maxMessagePayloadSize=_MAX_MESSAGE,
            maxFramePayloadSize=_MAX_MESSAGE,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
        )
        self.done: defer.Deferred[RestoredAccount] = defer.Deferred()
        #: Fires once the WebSocket is closed.
        self.closed: defer.Deferred[None] = defer.Deferred()
        self._user = user
        self._password: str | None = password
        self._expected = server_id
        self._derive = derive
        self._server_id = b""
        self._keys: account.AccountKeys | None = None

    def finish(self, outcome: Any) -> None:
        """Fire ``done`` once; forget the password and keys."""
        self._password = None
        self._keys = None
        if self.done.called:
            return
        if isinstance(outcome, Failure):
            self.done.errback(outcome)
        else:
            self.done.callback(outcome)

    def hello(self, proto: _RestoreProtocol, params: dict[str, Any]) -> None:
        """Check the proxy, derive the keys, ask for the account."""
        if self._password is None or self._server_id:
            return
        try:
            server_id = bytes.fromhex(params["server_id"])
            if len(server_id) != 33:
                raise ValueError("server_id size")
        except (KeyError, TypeError, ValueError):
            proto._finish(Failure(ClientError("malformed hello from the proxy")))
            return
        if params.get("protocol") != PROTOCOL_VERSION:
            proto._finish(
                Failure(ClientError(f"the proxy speaks {params.get('protocol')!r}"))
            )
            return
        if self._expected is not None and server_id != self._expected:
            proto._finish(
                Failure(ServerMismatch(self._expected.hex(), server_id.hex()))
            )
            return
        features = params.get("features")
        if not isinstance(features, list) or FEATURE_ACCOUNT not in features:
            proto._finish(
                Failure(
                    MethodNotFound(
                        -32601, "this proxy does not offer accounts", local=True
                    )
                )
            )
            return
        self._server_id = server_id
        password, self._password = self._password, None
        d = self._derive(password, server_id, self._user)

        def derived(keys: account.AccountKeys) -> None:
            self._keys = keys
            if proto.state == proto.STATE_OPEN:
                proto.send_login(self._user, keys.auth)

        d.addCallbacks(derived, proto._finish)

    def result(self, proto: _RestoreProtocol, result: Any) -> None:
        """Open the blob, check the node id, fire ``done``."""
        keys, self._keys = self._keys, None
        try:
            if keys is None or not isinstance(result, dict):
                raise AccountRestoreError("unexpected account.login reply")
            node_id = bytes.fromhex(result["node_id"])
            blob = bytes.fromhex(result["blob"])
            secret = account.open_node_key(keys.enc, self._user, blob, node_id)
        except (KeyError, TypeError, ValueError) as e:
            proto._finish(Failure(AccountRestoreError(f"malformed account reply: {e}")))
            return
        except account.AccountError as e:
            proto._finish(Failure(AccountRestoreError(str(e))))
            return
        proto._finish(RestoredAccount(secret, node_id, self._server_id))


def _derive_in_thread(
    reactor: Any,
) -> Callable[[str, bytes, str], defer.Deferred[account.AccountKeys]]:
    def derive(password: str, server_id: bytes, user: str) -> Any:
        return threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), account.derive, password, server_id, user
        )

    return derive


def endpoint_for(
    reactor: Any, url: str, tls_options: Any = None, timeout: float = 10.0
) -> IStreamClientEndpoint:
    """The client endpoint for a ``ws://`` or ``wss://`` proxy URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(
            f"proxy URL must be ws://host:port/ or wss://host:port/, not {url!r}"
        )
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        reactor, parts.hostname, port, timeout=timeout
    )
    if secure:
        from twisted.internet.ssl import optionsForClientTLS

        endpoint = wrapClientTLS(
            tls_options or optionsForClientTLS(parts.hostname), endpoint
        )
    return endpoint


def restore_account(
    reactor: Any,
    url: str,
    user: str,
    password: str,
    *,
    server_id: bytes | None = None,
    tls_options: Any = None,
    timeout: float = 60.0,
    derive: Callable[[str, bytes, str], defer.Deferred[account.AccountKeys]]
    | None = None,
) -> defer.Deferred[RestoredAccount]:
    """Fetch and open the node key of an account.

    :param url: the proxy, ``ws://`` or ``wss://``.
    :param user: the account's user name.
    :param password: its password (used only to derive ``auth`` and
        ``enc``; never sent).
    :param server_id: the proxy's expected id (refuse another one).
    :param timeout: seconds for the whole exchange, the Argon2id included.
    :param derive: ``(password, server_id, user) -> Deferred[AccountKeys]``;
        by default :func:`lnproxy.client.account.derive` in a thread.
    :return: a Deferred firing with :class:`RestoredAccount`, or failing
        with :class:`~lnproxy.client.errors.LoginFailed` (code 2: wrong user
        or password), :class:`~lnproxy.client.errors.LimitExceeded` (code
        7: too many failures, retry later), :class:`AccountRestoreError`,
        :class:`ServerMismatch`, :class:`ProxyUnreachable`.
    """
    try:
        account.check_user(user)
        if not password:
            raise account.AccountError("the password must not be empty")
        endpoint = endpoint_for(reactor, url, tls_options)
    except (account.AccountError, ValueError) as e:
        return defer.fail(ClientError(str(e)))
    factory = _RestoreFactory(
        url, reactor, user, password, server_id, derive or _derive_in_thread(reactor)
    )
    del password

    def connected(proto: Any) -> defer.Deferred[RestoredAccount]:
        def close(result: Any) -> Any:
            # The outcome is known: close the TCP connection and answer once
            # it is gone (nothing of this exchange outlives the call).
            if not factory.closed.called and proto.transport is not None:
                proto.transport.loseConnection()
                abort = reactor.callLater(5, proto.transport.abortConnection)
                factory.closed.addBoth(
                    lambda _: abort.cancel() if abort.active() else None
                )
            return factory.closed.addBoth(lambda _: result)

        return factory.done.addBoth(close)

    def unreachable(f: Failure) -> Failure:
        if f.check(ClientError):
            return f
        return Failure(ProxyUnreachable(url, f.getErrorMessage()))

    d = endpoint.connect(factory).addCallback(connected).addErrback(unreachable)
    d.addTimeout(timeout, reactor, lambda r, t: _timed_out(url, t))
    return d


def _timed_out(url: str, timeout: float) -> None:
    raise ProxyUnreachable(url, f"no account answer within {timeout:g} s")
