"""The client protocol's vocabulary, in one place (docs/protocol.md).

Everything a client and the proxy must agree on and that is not Lightning
itself lives here: the WebSocket subprotocol and version strings, every
error code with its meaning, the ``node_id@host:port`` peer syntax, the
features a server announces, and the builders of the ``hello`` object and
of notifications.  The server (:mod:`lnproxy.api`, :mod:`lnproxy.hub`,
:mod:`lnproxy.webhook`, :mod:`lnproxy.metrics`) and the client library
(:mod:`lnproxy.client`) both import it; no other module defines a code, a
version string or a peer regex of its own.

Pure: no Twisted, no I/O, and no third-party import at module level, so
that :mod:`lnproxy.electrum` can use it under a Python that has only
Electrum's packages (``parse_peer`` imports :mod:`lnproxy.keys`, which needs
coincurve, when it is called).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "SUBPROTOCOL",
    "PROTOCOL_VERSION",
    "DEFAULT_PEER_PORT",
    "LOGIN_TAG",
    "ACCOUNT_TAG",
    "PARSE_ERROR",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "INVALID_PARAMS",
    "INTERNAL_ERROR",
    "NOT_LOGGED_IN",
    "LOGIN_FAILED",
    "UNKNOWN_CONNECTION",
    "PEER_UNREACHABLE",
    "HANDSHAKE_FAILED",
    "NOT_OPEN",
    "LIMIT_EXCEEDED",
    "NOT_ALLOWED",
    "SERVED_ELSEWHERE",
    "VERSION_CONFLICT",
    "LEASE_HELD",
    "ERROR_MEANINGS",
    "JSONRPC_CODES",
    "PROXY_CODES",
    "KNOWN_CODES",
    "meaning",
    "BadPeer",
    "PeerAddress",
    "parse_peer",
    "format_address",
    "FEATURE_PEER_STORAGE",
    "FEATURE_LEASE",
    "FEATURE_VAULT",
    "FEATURE_ACCOUNT",
    "FEATURE_REDIRECT",
    "FEATURE_TAKEOVER",
    "hello",
    "notification",
    "notification_text",
]

#: The WebSocket subprotocol (``Sec-WebSocket-Protocol``).
SUBPROTOCOL: Final = "lnproxy.v1"
#: ``hello.protocol``: the protocol and its major version.
PROTOCOL_VERSION: Final = "lnproxy/1"
#: The prefix of the login digest: ``SHA256(LOGIN_TAG || server_id ||
#: challenge)`` is what the node key signs (docs/protocol.md, "Session start
#: and login").
LOGIN_TAG: Final = b"lnproxy/1 login"
#: The label of an account's key derivation salt and of its blob's
#: associated data (docs/protocol.md, "Several devices of one node").
ACCOUNT_TAG: Final = b"lnproxy/1 account"
#: The port of a peer address that names none (BOLT 7's default).
DEFAULT_PEER_PORT: Final = 9735

# -- error codes (docs/protocol.md, "Error codes") ---------------------------------

# JSON-RPC 2.0's own.
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603

# The proxy's.
NOT_LOGGED_IN: Final = 1
LOGIN_FAILED: Final = 2
UNKNOWN_CONNECTION: Final = 3
PEER_UNREACHABLE: Final = 4
HANDSHAKE_FAILED: Final = 5
NOT_OPEN: Final = 6
LIMIT_EXCEEDED: Final = 7
NOT_ALLOWED: Final = 8
SERVED_ELSEWHERE: Final = 9
VERSION_CONFLICT: Final = 10
LEASE_HELD: Final = 11

#: Every code with its meaning, as the contract states it.
ERROR_MEANINGS: Final[Mapping[int, str]] = {
    PARSE_ERROR: "parse error",
    INVALID_REQUEST: "invalid request",
    METHOD_NOT_FOUND: "unknown method",
    INVALID_PARAMS: "invalid params",
    INTERNAL_ERROR: "internal error",
    NOT_LOGGED_IN: "not logged in",
    LOGIN_FAILED: "login failed",
    UNKNOWN_CONNECTION: "unknown connection (or not this node's)",
    PEER_UNREACHABLE: "peer unreachable (refused, timeout, DNS)",
    HANDSHAKE_FAILED: "handshake failed (peer closed or sent a malformed act)",
    NOT_OPEN: "connection not open",
    LIMIT_EXCEEDED: "limit exceeded (connections, inbox, webhooks, message size, rate)",
    NOT_ALLOWED: "not allowed (policy, webhook URL, a user name bound to another node)",
    SERVED_ELSEWHERE: "node served by another process (data.url says where)",
    VERSION_CONFLICT: "version conflict (data.version is the current one)",
    LEASE_HELD: "another session of the node holds the writer lease",
}

JSONRPC_CODES: Final = (
    PARSE_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    INVALID_PARAMS,
    INTERNAL_ERROR,
)
PROXY_CODES: Final = tuple(code for code in ERROR_MEANINGS if code > 0)
KNOWN_CODES: Final = JSONRPC_CODES + PROXY_CODES


def meaning(code: int) -> str:
    """The contract's meaning of ``code`` (``"error N"`` for one it lacks)."""
    return ERROR_MEANINGS.get(code, f"error {code}")


# -- peers ------------------------------------------------------------------------

_PEER = re.compile(
    r"(?P<node>[0-9a-fA-F]{66})@(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]@\s]+))"
    r"(?::(?P<port>[0-9]{1,5}))?"
)


class BadPeer(ValueError):
    """A peer string that is not ``<node id>@<host>[:<port>]``.

    The message says what is wrong; the server answers it as -32602, the
    client library raises it as a local ``InvalidParams``.
    """


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """A parsed peer: its node id (lowercase hex) and where it listens.

    ``host`` is bare (an IPv6 host without brackets); :attr:`address` is
    the ``host:port`` form the protocol writes.
    """

    node_id: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 in brackets), as connection objects show it."""
        return format_address(self.host, self.port)

    def __str__(self) -> str:
        return f"{self.node_id}@{self.address}"


def parse_peer(text: str) -> PeerAddress:
    """Parse ``node_id@host[:port]`` (IPv6 hosts in brackets, port 9735 if
    omitted).

    :raise BadPeer: naming what is wrong.
    """
    m = _PEER.fullmatch(text)
    if m is None:
        raise BadPeer(
            "peer must be <66 hex node id>@<host>[:<port>] (IPv6 hosts in brackets)"
        )
    from lnproxy import keys

    node = m.group("node").lower()
    if not keys.is_node_id(bytes.fromhex(node)):
        raise BadPeer("peer node id is not a valid public key")
    port = int(m.group("port") or DEFAULT_PEER_PORT)
    if not 1 <= port <= 65535:
        raise BadPeer(f"port {port} is outside 1-65535")
    return PeerAddress(node, m.group("v6") or m.group("host"), port)


# -- features (hello.features) --------------------------------------------------------

FEATURE_PEER_STORAGE: Final = "peer_storage"
FEATURE_LEASE: Final = "lease"
FEATURE_VAULT: Final = "vault"
FEATURE_ACCOUNT: Final = "account"
FEATURE_REDIRECT: Final = "redirect"
FEATURE_TAKEOVER: Final = "takeover"


# -- messages ------------------------------------------------------------------------


def hello(
    server_id: bytes,
    challenge: bytes,
    limits: Mapping[str, Any],
    features: Iterable[str],
) -> dict[str, Any]:
    """The ``params`` of the ``hello`` notification a session opens with."""
    return {
        "protocol": PROTOCOL_VERSION,
        "server_id": server_id.hex(),
        "challenge": challenge.hex(),
        "limits": dict(limits),
        "features": sorted(features),
    }


def notification_text(method: str, params_json: str) -> str:
    """A notification whose ``params`` are already JSON text.

    The hub formats event params once, when the event happens, and sends
    the same text to every session and after every login; this wraps it
    without parsing it again.  ``method`` is one of the protocol's own
    names (no escaping needed).
    """
    return '{"jsonrpc":"2.0","method":"' + method + '","params":' + params_json + "}"


def notification(method: str, params: Mapping[str, Any]) -> str:
    """A notification (``lease``, ``hello``, ...) as compact JSON text."""
    return notification_text(method, json.dumps(params, separators=(",", ":")))
