"""Hot restart wired into ``twistd lnproxy`` (docs/protocol.md, "Restarting
without dropping peers (hot restart)"; docs/operations.md, "Upgrading
without dropping peers").

The mechanics (detaching sockets, the takeover channel, the systemd file
descriptor store) are :mod:`lnproxy.handover`; this module decides *what*
crosses and what each process does around it.

Old side (:class:`OldSide`, every running process):

- It serves ``takeover.sock`` in the data dir.  When a new process asks, in
  one reactor turn it commits the journal's batch, stops reading the client
  WebSockets (a request read before that point has its reply queued; one
  not read yet was not executed and gets no reply), stops its own timers
  (keepalive sweep, handshake and init deadlines) and describes every open
  connection (:class:`~lnproxy.snapshot.ConnectionSnapshot`) and every
  connection whose act 2 was relayed and whose ``finish`` is awaited
  (:class:`~lnproxy.snapshot.HandshakeSnapshot`), with the client and
  metrics listeners.  A ``connect`` still waiting for act 2 does not cross:
  its client gets no reply and connects again.
- Committed: the hub forgets the handed-over connections without any event,
  records ``closed`` (``proxy restarted``) for any other announced
  connection, commits, closes the store (releasing the data dir lock for
  the new process), closes each client WebSocket with 1012 (service
  restart) and stops the reactor: exit status 0.
- Rolled back: timers and client reads resume; nothing happened.
- Under systemd with ``--systemd-fd-store``, SIGTERM does the same through
  the file descriptor store (:func:`lnproxy.handover.systemd.store`).

New side (:func:`prepare`, ``--takeover`` or a start from the store):
everything arrives and is decoded before the new process confirms; only
then does it take the data dir lock (waiting for the old process to let go
of it), open the store (so every ``seq`` continues from what the old
process committed) and, in :meth:`Incoming.adopt`, rebuild the connections
in its hub and give their sockets to its reactor.

What does not cross: webhook rate-limiting windows and in-flight webhook
calls, leases (clients take them again when they log in) and client
WebSockets (1012: they log in again and get their unacknowledged events).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost, ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from lnproxy.handover import (
    Frozen,
    Handover,
    NothingToTakeOver,
    Outcome,
    Received,
    Takeover,
    TakeoverFailed,
    TakeoverListener,
    TakeoverRefused,
    request_takeover,
    systemd,
)
from lnproxy.lifecycle import ConnState
from lnproxy.snapshot import (
    HANDSHAKE_MAGIC,
    ConnectionSnapshot,
    HandshakeSnapshot,
    SnapshotError,
)

__all__ = [
    "CHANNEL",
    "Incoming",
    "OldSide",
    "listener_name",
    "hold_signals",
    "prepare",
    "release_signals",
    "wait_for_lock",
]

_log = Logger()

#: The takeover channel's file name in the data dir.
CHANNEL = "takeover.sock"

Snapshot = ConnectionSnapshot | HandshakeSnapshot


def listener_name(kind: str, description: str) -> str:
    """The name a listener crosses under: ``listen:...`` or ``metrics:...``."""
    return f"{kind}:{description}"


def decode_blob(blob: bytes) -> Snapshot:
    """A connection's snapshot, open or in its handshake.

    :raise SnapshotError: for anything else.
    """
    if blob[:4] == HANDSHAKE_MAGIC:
        return HandshakeSnapshot.from_bytes(blob)
    return ConnectionSnapshot.from_bytes(blob)


# -- old side ----------------------------------------------------------------


class OldSide:
    """What a running process does when it hands everything over.

    :param root: the :class:`lnproxy.service.ProxyService`.
    :param reactor: the reactor (threads, time, ``stop``).
    :param timeout: seconds the new process has to confirm.
    """

    def __init__(self, root: Any, reactor: Any, timeout: float = 5.0) -> None:
        self.root = root
        self.reactor = reactor
        self.timeout = timeout
        self.listener: TakeoverListener | None = None
        self.handed_over = False
        self._paused_clients: list[Any] = []
        #: The conn ids of the connections described by the last collect().
        self._collected: list[str] = []
        #: Called with the :class:`Outcome` (metrics).
        self.on_outcome: list[Callable[[Outcome], None]] = []

    def start(self) -> None:
        """Serve the takeover channel (after the store's lock is ours)."""
        path = os.path.join(self.root.store.data_dir, CHANNEL)
        # notify=False: released transports are only closed, their protocols
        # hear nothing (faster with many; release() forgets them in the hub).
        self.listener = TakeoverListener(
            self.reactor,
            path,
            self.collect,
            self.outcome,
            self.timeout,
            notify=False,
            lock_fd=lambda: getattr(self.root.store, "lock_fd", None),
            sockets=self.sockets,
        )
        self.listener.start()

    def stop(self) -> None:
        """Stop serving the channel (and remove the socket file if ours)."""
        if self.listener is not None:
            self.listener.stop()

    def stop_serving(self) -> defer.Deferred[None]:
        """This process stops (SIGTERM): a handover in progress rolls back
        (unless past its point of no return: then it is committed), and the
        channel closes.  Fires once the outcome is known, so that the stop
        goes on either as a normal stop or as after a handover."""
        listener = self.listener
        if listener is None or not listener.busy:
            self.stop()
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()

        def ended(_outcome: Outcome) -> None:
            self.on_outcome.remove(ended)
            self.stop()
            done.callback(None)

        self.on_outcome.append(ended)
        listener.cancel("the old process is stopping (SIGTERM)")
        return done

    def sockets(self) -> list[socket.socket]:
        """Before the freeze: the sockets :meth:`collect` would hand over
        now (sent early, so that few cross while peers wait).  Commits the
        event batch too: the freeze then has only what came since to commit.
        """
        self.root.hub.flush()
        out = []
        for conn in self.root.hub.connections.values():
            protocol = conn.protocol
            transport = getattr(protocol, "transport", None)
            skt = getattr(transport, "socket", None)
            if conn.state in (ConnState.OPEN, ConnState.HANDSHAKE) and isinstance(
                skt, socket.socket
            ):
                out.append(skt)
        for port, _name in self.root.listening_ports():
            skt = getattr(port, "socket", None)
            if isinstance(skt, socket.socket):
                out.append(skt)
        return out

    def collect(self) -> Handover:
        """Pause everything and describe it (one reactor turn; the freeze
        follows at once)."""
        root = self.root
        hub = root.hub
        hub.flush()
        self._paused_clients = []
        for client in list(root.factory.clients):
            transport = client.transport
            if transport is not None:
                transport.pauseProducing()
                self._paused_clients.append(client)
        hub.pause_timers()
        self._collected = []
        try:
            connections = []
            for conn in hub.connections.values():
                protocol = conn.protocol
                if protocol is None or protocol.transport is None:
                    continue
                if conn.state is ConnState.OPEN:
                    blob = conn.snapshot().to_bytes()
                elif conn.state is ConnState.HANDSHAKE:
                    blob = conn.handshake_snapshot().to_bytes()
                else:
                    continue
                connections.append((protocol.transport, blob))
                if getattr(protocol.transport, "connected", False):
                    self._collected.append(conn.conn_id)
            listeners = [
                (port, name) for port, name in root.listening_ports() if port
            ]
            state = json.dumps(
                {"pid": os.getpid(), "at": time.time()}
            ).encode("ascii")
        except BaseException:
            self._resume()
            raise
        return Handover(connections, listeners, state)

    def _resume(self) -> None:
        self.root.hub.resume_timers()
        for client in self._paused_clients:
            if client.transport is not None:
                client.transport.resumeProducing()
        self._paused_clients = []

    def outcome(self, outcome: Outcome) -> None:
        """The end of a handover: exit, or go on as if nothing happened."""
        for fn in list(self.on_outcome):
            fn(outcome)
        if not outcome.committed:
            self._resume()
            return
        self.release(outcome.connections, outcome.seconds)
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping (SIGTERM during the handover)

    def release(self, connections: int, seconds: float) -> None:
        """Committed: forget what crossed, commit, let go of the store, close
        the client WebSockets with 1012."""
        self.handed_over = True
        root = self.root
        hub = root.hub
        hub.handed_over(self._collected)
        # The new process holds the lock too (its descriptor crossed): close
        # this copy without unlocking; it waits for this to open the store.
        root.store.close(unlock=False)
        for client in list(root.factory.clients):
            try:
                client.close_for_restart()
            except Exception:
                _log.failure("closing a client WebSocket for the restart")
        _log.info(
            "hot restart: handed over {connections} peer connections; peers were"
            " not read for {seconds:.3f} s; exiting",
            connections=connections,
            seconds=seconds,
        )

    def store_on_stop(self, notifier: systemd.Notifier) -> bool:
        """SIGTERM under systemd: upload everything to the fd store.

        :return: True when it was handed over (the caller skips its closes).
        """
        started = self.reactor.seconds()
        try:
            frozen = Frozen(self.collect(), started)
        except Exception:
            self._resume()
            _log.failure("hot restart: could not describe the connections")
            return False
        try:
            systemd.store(notifier, frozen)
        except Exception:
            frozen.rollback()
            self._resume()
            _log.failure("hot restart: the service manager did not take the sockets")
            return False
        frozen.commit(notify=False)
        self.release(len(frozen.transports), self.reactor.seconds() - started)
        for fn in list(self.on_outcome):
            fn(
                Outcome(
                    True,
                    len(frozen.transports),
                    len(frozen.ports),
                    self.reactor.seconds() - started,
                )
            )
        return True


# -- new side -------------------------------------------------------------------


@dataclass
class Incoming:
    """What a new process received (through the channel or systemd)."""

    received: Received
    snapshots: list[Snapshot | None]
    started: float
    via: str
    #: The port adopted for each listener name (filled by :meth:`adopt`).
    ports: dict[str, IListeningPort] = field(default_factory=dict)
    adopted: int = 0
    seconds: float = 0.0
    done: bool = False
    #: The data dir lock's descriptor, handed over (None: take the lock).
    lock_fd: int | None = None

    def listener_names(self) -> set[str]:
        """Names of the listeners that arrived with a socket."""
        return {li.name for li in self.received.listeners if li.fd is not None}

    def adopt(self, reactor: Any, hub: Any, factories: Mapping[str, Any]) -> None:
        """Rebuild every connection in ``hub`` and give every socket to
        ``reactor`` (before ``hub.startService``: its recovery must not see
        these connections' rows as left open)."""
        self.done = True
        _log.debug(
            "hot restart: adopting, {seconds:.3f} s since the request",
            seconds=time.monotonic() - self.started,
        )
        protocols: list[Any] = []
        for snap in self.snapshots:
            protocol = None
            if snap is not None:
                try:
                    if isinstance(snap, HandshakeSnapshot):
                        protocol = hub.adopt_handshake(snap)
                    else:
                        protocol = hub.adopt(snap, restart=True)
                except Exception as e:
                    _log.warn(
                        "hot restart: connection {conn} not adopted: {error}",
                        conn=snap.conn_id,
                        error=e,
                    )
            protocols.append(protocol)
        _log.debug(
            "hot restart: connections rebuilt, {seconds:.3f} s since the request",
            seconds=time.monotonic() - self.started,
        )
        names = [li.name for li in self.received.listeners]
        adopted = self.received.adopt(
            reactor, protocols, [factories.get(name) for name in names]
        )
        for protocol, transport in zip(protocols, adopted.transports, strict=True):
            if protocol is not None and transport is None:
                # Died during the handover: its close is recorded as usual.
                protocol.connectionLost(
                    Failure(ConnectionLost("lost during the hot restart"))
                )
            elif transport is not None:
                self.adopted += 1
        for name, port in zip(names, adopted.ports, strict=True):
            if port is not None:
                self.ports[name] = port
        self.seconds = time.monotonic() - self.started
        _log.info(
            "hot restart ({via}): adopted {count} peer connections and"
            " {listeners} listeners; {seconds:.3f} s since the request",
            via=self.via,
            count=self.adopted,
            listeners=len(self.ports),
            seconds=self.seconds,
        )


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """An endpoint whose port was handed over (else it listens as usual)."""

    def __init__(self, fallback: IStreamServerEndpoint, name: str) -> None:
        self.fallback = fallback
        self.name = name
        self.incoming: Incoming | None = None

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        """The adopted port, or a fresh one from the real endpoint."""
        port = self.incoming.ports.get(self.name) if self.incoming else None
        if port is not None:
            return defer.succeed(port)
        return self.fallback.listen(factory)


def schema_matches(data_dir: str) -> str | None:
    """None when the database (read-only, no lock) has the schema this
    lnproxy uses, else why a takeover is refused."""
    from lnproxy.store.schema import SCHEMA_VERSION
    from lnproxy.store.sqlite import DB_FILE

    path = os.path.join(data_dir, DB_FILE)
    if not os.path.exists(path):
        return "the data dir has no database (nothing runs there)"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            (version,) = conn.execute("SELECT max(version) FROM version").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return f"cannot read the database: {e}"
    if version != SCHEMA_VERSION:
        return (
            f"the database has schema version {version}, this lnproxy uses"
            f" {SCHEMA_VERSION}: stop the old process and start this one"
            " (the upgrade needs the data dir to itself)"
        )
    return None


def prepare(
    config: Mapping[str, Any], listen: systemd.ListenFds | None = None
) -> Incoming | None:
    """New side, before the store is opened: take over if asked to.

    From the systemd store when ``listen`` holds a state memfd; else with
    ``--takeover`` through the channel.  Returns None for a normal start.

    :raise SystemExit: with a clear message (non-zero) when a takeover was
        asked for and did not happen; the old process goes on.
    """
    data_dir = os.path.abspath(config["data-dir"])
    started = time.monotonic()
    if listen is not None and listen.named(systemd.STATE):
        received = systemd.restore(listen)
        if received is not None:
            snaps: list[Snapshot | None] = []
            for conn in received.connections:
                try:
                    snaps.append(decode_blob(conn.blob))
                except SnapshotError as e:
                    _log.warn("hot restart: a stored connection is unreadable: {e}", e=e)
                    snaps.append(None)
            return Incoming(received, snaps, started, "systemd")
    if not config.get("takeover"):
        return None
    path = os.path.join(data_dir, CHANNEL)
    try:
        # The schema is checked only once a live process answers: a socket
        # file left by a crash must not refuse a fresh start (an upgrade).
        takeover: Takeover = request_takeover(
            path,
            config.get("takeover-timeout", 10.0),
            check=lambda: schema_matches(data_dir),
        )
    except NothingToTakeOver:
        _log.info("--takeover: no process serves {path}; starting normally", path=path)
        return None
    except TakeoverRefused as e:
        raise SystemExit(f"lnproxy: --takeover refused: {e}") from None
    except TakeoverFailed as e:
        raise SystemExit(f"lnproxy: takeover failed: {e}") from None
    try:
        snaps = [decode_blob(c.blob) for c in takeover.received.connections]
    except SnapshotError as e:
        takeover.abort(f"cannot read a connection: {e}")
        raise SystemExit(
            f"lnproxy: takeover aborted: cannot read a connection: {e}"
        ) from None
    hold_signals()
    try:
        takeover.confirm()
    except TakeoverFailed as e:
        release_signals()
        raise SystemExit(f"lnproxy: takeover failed: {e}") from None
    _log.info(
        "--takeover: {count} connections received and confirmed in {seconds:.3f} s",
        count=len(snaps),
        seconds=time.monotonic() - started,
    )
    return Incoming(
        takeover.received, list(snaps), started, "takeover", lock_fd=takeover.lock_fd
    )


#: Signals held back from the new side's ready until its reactor runs.
HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def hold_signals() -> None:
    """New side, before its ready: from then on the old process may commit,
    and a SIGTERM killing this one before its reactor runs (twistd's handler
    is not in yet) would drop every peer.  Held, it stops this process
    normally once :func:`release_signals` lets it through."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)


def release_signals() -> None:
    """Let held signals through (call once the reactor runs)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)


def wait_for_lock(open_store: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Open the store, waiting while the old process still holds the lock
    (it lets go right after the commit)."""
    from lnproxy.store import DataDirLocked

    deadline = time.monotonic() + timeout
    while True:
        try:
            store = open_store()
            _log.info(
                "hot restart: data dir lock taken after {seconds:.3f} s",
                seconds=time.monotonic() - deadline + timeout,
            )
            return store
        except DataDirLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)
