"""Typed exceptions of the client library.

Every error reply of the proxy becomes a :class:`ProxyError` subclass chosen
by its code (PROTOCOL.md, "Error codes"), so callers write
``except PeerUnreachable`` instead of comparing numbers.  Failures that are
not replies (a timeout, a dropped WebSocket, a proxy that cannot be reached)
are :class:`ClientError` subclasses without a protocol code.
"""

from __future__ import annotations

from typing import Any

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
    "RequestTimeout",
    "ConnectionLost",
    "ProxyUnreachable",
    "ServerMismatch",
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

    code_of_class = -32700


class InvalidRequest(ProxyError):
    """-32600: not a valid request (e.g. a second ``login``)."""

    code_of_class = -32600


class MethodNotFound(ProxyError):
    """-32601: unknown method (or a feature this proxy has not enabled)."""

    code_of_class = -32601


class InvalidParams(ProxyError):
    """-32602: a parameter is missing, malformed or out of range."""

    code_of_class = -32602


class InternalError(ProxyError):
    """-32603: the proxy failed internally."""

    code_of_class = -32603


class NotLoggedIn(ProxyError):
    """1: a request before a successful login."""

    code_of_class = 1


class LoginFailed(ProxyError):
    """2: the login signature was refused."""

    code_of_class = 2


class UnknownConnection(ProxyError):
    """3: no such connection (or a webhook) for this node."""

    code_of_class = 3


class PeerUnreachable(ProxyError):
    """4: the proxy could not open TCP to the peer."""

    code_of_class = 4


class HandshakeFailed(ProxyError):
    """5: the peer closed, or sent a malformed or unauthenticated act 2."""

    code_of_class = 5


class NotOpen(ProxyError):
    """6: the connection is still in its handshake, or closed."""

    code_of_class = 6


class LimitExceeded(ProxyError):
    """7: a limit (connections, inbox, webhooks, message size, rate)."""

    code_of_class = 7


class NotAllowed(ProxyError):
    """8: refused by policy (e.g. a webhook URL)."""

    code_of_class = 8


#: Code -> class, for every code PROTOCOL.md defines.
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


class ClientStopped(ClientError):
    """The client is not running (never started, stopped, or failed for good)."""
