"""``twistd lnproxy``: command-line options and the service maker.

:func:`makeService` only imports the reactor and calls
:func:`lnproxy.service.build_service`, so tests can build the whole service
on a fake reactor.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from lnproxy.policy import PolicyError, parse_override

__all__ = ["Options", "makeService"]


def _positive(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise usage.UsageError(
            f"--{name} must be a number of seconds, not {value!r}"
        ) from None
    if not number > 0:
        raise usage.UsageError(f"--{name} must be greater than 0")
    return number


def _count(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise usage.UsageError(
            f"--{name} must be a whole number, not {value!r}"
        ) from None
    if number < 1:
        raise usage.UsageError(f"--{name} must be at least 1")
    return number


class Options(usage.Options):
    """Options of ``twistd lnproxy`` (docs/protocol.md, "Running the server")."""

    synopsis = "[options]"
    longdesc = (
        "Run the lnproxy server: it keeps Lightning peer connections open for "
        "clients that hold their node keys, over a WebSocket API."
    )

    optParameters: list[list[Any]] = [
        ["data-dir", None, "./lnproxy-data", "SQLite database and server key live here"],
        ["handshake-timeout", None, "30", "seconds between connect and finish"],
        ["keepalive", None, "60", "seconds of peer silence before a ping"],
        ["webhook-window", None, "60", "seconds between webhook calls for one node"],
        ["webhook-timeout", None, "5", "seconds one webhook request may take"],
        ["metrics", None, None, "endpoint for /metrics and /healthz (off by default)"],
        ["max-connections-per-node", None, "200", "peer connections one node may hold"],
        ["max-sessions-per-node", None, "8", "WebSocket sessions one node may hold"],
        ["max-events-per-node", None, "10000", "unacknowledged events kept per node"],
        ["max-handshakes-per-node", None, "16", "unfinished handshakes per node"],
        ["max-handshakes", None, "1024", "unfinished handshakes in all"],
        ["login-timeout", None, "30", "seconds a client has to log in"],
        [
            "takeover-timeout",
            None,
            "5",
            "seconds a process asked for a hot restart waits for the new one",
        ],
        ["max-vault-entries-per-node", None, "64", "vault names one node may keep"],
        [
            "database",
            None,
            "sqlite",
            "sqlite (the data dir's file) or a postgresql:// URL shared by "
            "every process of a deployment",
        ],
        [
            "public-url",
            None,
            None,
            "ws:// or wss:// URL at which clients reach this process "
            "(required with PostgreSQL)",
        ],
        [
            "lease-timeout",
            None,
            "15",
            "seconds after which a process that stopped renewing its leases "
            "has lost its nodes (PostgreSQL)",
        ],
        [
            "server-key",
            None,
            None,
            "server key file (hex secret, created if missing; default "
            "DATA_DIR/server.key); the same file for every process of a "
            "deployment",
        ],
        [
            "max-requests-per-second",
            None,
            "5000",
            "requests per second one session may make on average (0: no limit)",
        ],
    ]
    optFlags: list[list[Any]] = [
        ["webhook-allow-private", None, "allow http and private/loopback webhook URLs"],
        [
            "takeover",
            None,
            "take every peer connection and listener over from the process "
            "running on the same data dir (hot restart), then serve",
        ],
        [
            "systemd-fd-store",
            None,
            "on SIGTERM under systemd, keep every connection in the service "
            "manager's file descriptor store (needs FileDescriptorStoreMax=)",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["policy"] = {}

    def opt_listen(self, description: str) -> None:
        """Client WebSocket endpoint (Twisted endpoint description, repeatable;
        default tcp:9736:interface=127.0.0.1)"""
        self["listen"].append(description)

    def opt_policy(self, text: str) -> None:
        """Override the message policy: TYPE=CLASS, CLASS one of handle, drop,
        queue, summon (repeatable)"""
        try:
            msg_type, cls = parse_override(text)
        except PolicyError as e:
            raise usage.UsageError(str(e)) from None
        self["policy"][msg_type] = cls

    def postOptions(self) -> None:
        """Apply defaults and check numbers."""
        if not self["listen"]:
            self["listen"] = ["tcp:9736:interface=127.0.0.1"]
        for name in (
            "handshake-timeout",
            "keepalive",
            "webhook-window",
            "webhook-timeout",
            "login-timeout",
            "takeover-timeout",
        ):
            self[name] = _positive(name, self[name])
        for name in (
            "max-connections-per-node",
            "max-sessions-per-node",
            "max-events-per-node",
            "max-handshakes-per-node",
            "max-handshakes",
            "max-vault-entries-per-node",
        ):
            self[name] = _count(name, self[name])
        self._check_database()
        rate = self["max-requests-per-second"]
        try:
            self["max-requests-per-second"] = float(rate)
        except ValueError:
            raise usage.UsageError(
                f"--max-requests-per-second must be a number, not {rate!r}"
            ) from None
        if not 0 <= self["max-requests-per-second"] < float("inf"):
            raise usage.UsageError(
                "--max-requests-per-second must be 0 (no limit) or a positive number"
            )

    def _check_database(self) -> None:
        """``--database``, ``--public-url`` and ``--lease-timeout``
        (docs/protocol.md, "Running several processes (scale-out)")."""
        database = self["database"]
        if database != "sqlite" and not database.startswith(
            ("postgresql://", "postgres://")
        ):
            raise usage.UsageError(
                "--database must be 'sqlite' or a postgresql:// URL, not "
                f"{database.split('://')[0]!r}"
            )
        self["lease-timeout"] = _positive("lease-timeout", self["lease-timeout"])
        url = self["public-url"]
        if url is not None and not url.startswith(("ws://", "wss://")):
            raise usage.UsageError("--public-url must be a ws:// or wss:// URL")
        if database != "sqlite" and url is None:
            raise usage.UsageError(
                "--public-url is required with a PostgreSQL --database: clients "
                "sent to this process by another one are given that URL"
            )


def makeService(config: Options) -> IService:
    """Build the service tree on the global reactor."""
    from twisted.internet import reactor

    from lnproxy.service import build_service

    # Collect and freeze the imports now, so that the collection below
    # (after a hot restart's takeover, while peers wait) scans little.
    gc.collect()
    gc.freeze()
    root = build_service(reactor, config)
    # Everything imported so far lives as long as the process: move it to
    # the permanent generation so that no full collection scans it again.
    # With 10,000 peers a full collection pauses the reactor for 0.1-0.3 s
    # (docs/performance.md, "Scale"); this takes about a quarter off.  Here
    # and not in build_service: tests build many services in one process.
    gc.collect()
    gc.freeze()
    return root
