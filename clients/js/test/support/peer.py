"""A local Lightning peer for the JavaScript client's tests and demo.

Runs the project's BOLT 8 responder (:class:`lnproxy.localpeer.LocalPeerFactory`)
on 127.0.0.1, which sends its ``init`` and answers pings with pongs, and
talks JSON lines:

* stdout: first ``{"node_id": <hex>, "port": <int>}``, then one line per
  happening: ``{"event": "open", "remote": <initiator node id>}``,
  ``{"event": "received", "type": <int>, "msg": <hex>}``,
  ``{"event": "sent", "msg": <hex>}``, ``{"event": "closed"}``, and
  ``{"event": "error", "error": <text>}`` for a control line it cannot obey.
* stdin, one JSON object per line:
  ``{"send": <hex>}`` sends a Lightning message on every open connection;
  ``{"ping": <num_pong_bytes>}`` sends a ``ping`` (type 18);
  ``{"burst": <hex>, "count": <n>}`` sends the message n times at once (for
  benchmarks; one ``sent`` line for all);
  ``{"close": true}`` drops every connection.  EOF stops the peer.

Usage (the project's Python, from the repository root or with the package
installed)::

    python clients/js/test/support/peer.py [--secret HEX] [--features HEX]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from typing import Any

# Importable from a clone without installing the package.
sys.path.insert(
    0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
)

from twisted.internet import reactor, stdio  # noqa: E402
from twisted.internet.endpoints import TCP4ServerEndpoint  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

from lnproxy import wire  # noqa: E402
from lnproxy.localpeer import LocalPeerFactory, LocalPeerProtocol  # noqa: E402


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed at once."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Peer(LocalPeerFactory):
    """The local peer, reporting on stdout."""

    def _opened(self, p: LocalPeerProtocol) -> None:
        remote = p.remote_node_id.hex() if p.remote_node_id else None
        emit({"event": "open", "remote": remote})
        super()._opened(p)

    def _received(self, p: LocalPeerProtocol, msg: bytes) -> None:
        emit({"event": "received", "type": wire.message_type(msg), "msg": msg.hex()})
        super()._received(p, msg)

    def _closed(self, p: LocalPeerProtocol) -> None:
        if p.transport_cipher is not None:
            emit({"event": "closed"})
        super()._closed(p)


class Control(LineReceiver):
    """Control lines from stdin."""

    delimiter = b"\n"

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def lineReceived(self, line: bytes) -> None:
        """Obey one control line."""
        if not line.strip():
            return
        try:
            cmd = json.loads(line)
            if "send" in cmd:
                self._send(bytes.fromhex(cmd["send"]))
            elif "burst" in cmd:
                self._send(bytes.fromhex(cmd["burst"]), int(cmd["count"]))
            elif "ping" in cmd:
                n = int(cmd["ping"])
                self._send(struct.pack(">HHH", wire.PING, n, 0))
            elif cmd.get("close"):
                for p in list(self.peer.connections):
                    p.transport.loseConnection()  # type: ignore[union-attr]
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except (ValueError, TypeError, KeyError) as e:
            emit({"event": "error", "error": str(e)})

    def _send(self, msg: bytes, count: int = 1) -> None:
        if not self.peer.connections:
            emit({"event": "error", "error": "no open connection"})
            return
        for p in list(self.peer.connections):
            for _ in range(count):
                p.send(msg)
        emit({"event": "sent", "msg": msg.hex(), "count": count})

    def connectionLost(self, reason: Any = None) -> None:
        """stdin closed: stop."""
        if reactor.running:
            reactor.stop()


def main() -> None:
    """Parse the options, listen, report, serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", help="node secret key (hex; random if omitted)")
    parser.add_argument("--features", default="", help="init features (hex)")
    args = parser.parse_args()
    peer = Peer(
        secret=bytes.fromhex(args.secret) if args.secret else None,
        features=bytes.fromhex(args.features),
    )
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")

    def listening(port: Any) -> None:
        emit({"node_id": peer.node_id.hex(), "port": port.getHost().port})
        stdio.StandardIO(Control(peer))

    endpoint.listen(peer).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main()
