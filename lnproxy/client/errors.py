"""Typed exceptions of the client library.

Every error reply of the proxy becomes a :class:`ProxyError` subclass chosen
by its code (docs/protocol.md, "Error codes"; the codes themselves come
from :mod:`lnproxy.protocol`), so callers write
``except PeerUnreachable`` instead of comparing numbers.  Failures that are
not replies (a timeout, a dropped WebSocket, a proxy that cannot be reached)
are :class:`ClientError` subclasses without a protocol code.
"""

from __future__ import annotations

from typing import Any

from lnproxy import protocol

__all__ = [
    "ClientError",
    "ProxyError",
    "ParseError",
    "InvalidRequest",
    "MethodNotFound",
    "InvalidParams",
    "InternalError",
    "NotLoggedIn",
    "LoginFailed",
    "UnknownConnection",
    "PeerUnreachable",
    "HandshakeFailed",
    "NotOpen",
    "LimitExceeded",
    "NotAllowed",
    "ServedElsewhere",
    "VersionConflict",
    "LeaseHeld",
    "RequestTimeout",
    "ConnectionLost",
    "ProxyUnreachable",
    "ServerMismatch",
    "RedirectRefused",
    "ClientStopped",
    "error_for_code",
    "ERROR_CLASSES",
]


class ClientError(Exception):
    """Base class of everything the client library raises on purpose."""


class ProxyError(ClientError):
    """An error reply from the proxy (or the same condition found locally).

    :ivar code: the JSON-RPC / lnproxy error code.
    :ivar message: the proxy's message.
    :ivar data: the optional ``data`` member of the error.
    :ivar local: True when the library detected the condition itself
        (for instance act 2 failing to authenticate) rather than the proxy.
    """

    #: The code this class stands for; ``None`` on the base class.
    code_of_class: int | None = None

    def __init__(
        self, code: int, message: str, data: Any = None, local: bool = False
    ) -> None:
        super().__init__(f"error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data
        self.local = local


class ParseError(ProxyError):
    """-32700: the proxy could not parse what we sent."""

    code_of_class = protocol.PARSE_ERROR


class InvalidRequest(ProxyError):
    """-32600: not a valid request (e.g. a second ``login``)."""

    code_of_class = protocol.INVALID_REQUEST


class MethodNotFound(ProxyError):
    """-32601: unknown method (or a feature this proxy has not enabled)."""

    code_of_class = protocol.METHOD_NOT_FOUND


class InvalidParams(ProxyError):
    """-32602: a parameter is missing, malformed or out of range."""

    code_of_class = protocol.INVALID_PARAMS


class InternalError(ProxyError):
    """-32603: the proxy failed internally."""

    code_of_class = protocol.INTERNAL_ERROR


class NotLoggedIn(ProxyError):
    """1: a request before a successful login."""

    code_of_class = protocol.NOT_LOGGED_IN


class LoginFailed(ProxyError):
    """2: the login signature was refused."""

    code_of_class = protocol.LOGIN_FAILED


class UnknownConnection(ProxyError):
    """3: no such connection (or a webhook) for this node."""

    code_of_class = protocol.UNKNOWN_CONNECTION


class PeerUnreachable(ProxyError):
    """4: the proxy could not open TCP to the peer."""

    code_of_class = protocol.PEER_UNREACHABLE


class HandshakeFailed(ProxyError):
    """5: the peer closed, or sent a malformed or unauthenticated act 2."""

    code_of_class = protocol.HANDSHAKE_FAILED


class NotOpen(ProxyError):
    """6: the connection is still in its handshake, or closed."""

    code_of_class = protocol.NOT_OPEN


class LimitExceeded(ProxyError):
    """7: a limit (connections, inbox, webhooks, message size, rate)."""

    code_of_class = protocol.LIMIT_EXCEEDED


class NotAllowed(ProxyError):
    """8: refused by policy (e.g. a webhook URL)."""

    code_of_class = protocol.NOT_ALLOWED


class ServedElsewhere(ProxyError):
    """9: another process of the deployment serves this node.

    :ivar url: where (``data.url``), or None if the proxy did not say.
    """

    code_of_class = protocol.SERVED_ELSEWHERE

    @property
    def url(self) -> str | None:
        """The owner's public URL from ``data.url``."""
        url = self.data.get("url") if isinstance(self.data, dict) else None
        return url if isinstance(url, str) else None


class VersionConflict(ProxyError):
    """10: the version a write names is not the current one (vault).

    :ivar version: the current version (``data.version``), or None.
    """

    code_of_class = protocol.VERSION_CONFLICT

    @property
    def version(self) -> int | None:
        """The current version from ``data.version``."""
        v = self.data.get("version") if isinstance(self.data, dict) else None
        return v if isinstance(v, int) and not isinstance(v, bool) else None


class LeaseHeld(ProxyError):
    """11: another session of the node holds the writer lease."""

    code_of_class = protocol.LEASE_HELD


#: Code -> class, for every code of docs/protocol.md, "Error codes".
ERROR_CLASSES: dict[int, type[ProxyError]] = {
    int(cls.code_of_class or 0): cls
    for cls in (
        ParseError,
        InvalidRequest,
        MethodNotFound,
        InvalidParams,
        InternalError,
        NotLoggedIn,
        LoginFailed,
        UnknownConnection,
        PeerUnreachable,
        HandshakeFailed,
        NotOpen,
        LimitExceeded,
        NotAllowed,
        ServedElsewhere,
        VersionConflict,
        LeaseHeld,
    )
}


def error_for_code(code: int, message: str, data: Any = None) -> ProxyError:
    """Build the exception for an error reply.

    :param code: the reply's ``code``; a code this library does not know
        (the protocol may add some) gives a plain :class:`ProxyError`.
    :param message: the reply's ``message``.
    :param data: the reply's ``data``, if any.
    """
    cls = ERROR_CLASSES.get(code, ProxyError)
    return cls(code, message, data)


class RequestTimeout(ClientError):
    """No reply within the request timeout (waiting for a login included).

    :ivar method: the request's method.
    :ivar timeout: the timeout in seconds.
    """

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(f"{method}: no reply from the proxy within {timeout:g} s")
        self.method = method
        self.timeout = timeout


class ConnectionLost(ClientError):
    """The WebSocket closed after the request was sent and before its reply.

    The proxy may or may not have executed the request.

    :ivar method: the request's method.
    """

    def __init__(self, method: str, reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(f"{method}: the connection to the proxy was lost{detail}")
        self.method = method


class ProxyUnreachable(ClientError):
    """The proxy could not be reached, or closed the WebSocket before login.

    :ivar url: the proxy URL.
    :ivar reason: what went wrong, in words.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the proxy at {url}: {reason}")
        self.url = url
        self.reason = reason


class ServerMismatch(ClientError):
    """The proxy's ``server_id`` is not the one the client was told to expect."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f"proxy server_id is {got}, expected {expected}")
        self.expected = expected
        self.got = got


class RedirectRefused(ClientError):
    """A redirect (code 9) the client does not follow: its ``data.url`` is
    missing or not ``ws://``/``wss://``, or it is one too many in a row
    (docs/protocol.md, "Running several processes (scale-out)").

    The client is not stopped: it tries its configured URL again after the
    usual backoff.

    :ivar url: the URL that answered code 9.
    :ivar target: where it pointed (None if it named no URL).
    :ivar reason: why it is not followed, in words.
    :ivar hops: the redirects followed before it, in order.
    """

    def __init__(
        self, url: str, target: str | None, reason: str, hops: list[str]
    ) -> None:
        chain = f" after {' -> '.join(hops)}" if hops else ""
        super().__init__(
            f"not following the redirect from {url} to {target!r}{chain}: {reason}"
        )
        self.url = url
        self.target = target
        self.reason = reason
        self.hops = hops


class ClientStopped(ClientError):
    """The client is not running (never started, stopped, or failed for good)."""
