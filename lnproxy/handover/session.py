"""The two ends of one handover, whatever carries it (Unix socket or systemd).

Old side: the integration gives a :class:`Handover` (each open connection's
transport with its snapshot bytes, the listening ports with a name, and a
process state blob).  :class:`Frozen` freezes them all at once (the peers'
bytes now wait in the kernel), builds the manifest and the descriptor list,
and later either :meth:`Frozen.rollback`\\ s (as if nothing happened) or
:meth:`Frozen.commit`\\ s (releases every socket without shutting it down).

New side: :func:`match` pairs received descriptors with the manifest's
records into a :class:`Received`; the integration builds one protocol per
connection from its blob, then :meth:`Received.adopt` gives the sockets to
its reactor (pending bytes first) or :meth:`Received.close` drops this
process's copies without touching the connections.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorSocket,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from . import detach
from .manifest import (
    FAMILIES,
    ConnectionRecord,
    ListenerRecord,
    Manifest,
    ManifestError,
    decode,
    encode,
    inode_of,
)

__all__ = [
    "Adopted",
    "Frozen",
    "Handover",
    "Received",
    "ReceivedConnection",
    "ReceivedListener",
    "Index",
    "match",
]

_log = Logger()


@dataclass
class Handover:
    """What the old process hands over (given by the integration).

    ``connections``: each open TCP connection's transport (``tcp.Server`` or
    ``tcp.Client``) with the bytes of its snapshot.  ``listeners``: each
    listening port with a name the new process uses to match it to its own
    configuration (e.g. the ``--listen`` string).  ``state``: anything else.
    """

    connections: Sequence[tuple[ITransport, bytes]]
    listeners: Sequence[tuple[IListeningPort, str]] = ()
    state: bytes = b""


class Frozen:
    """A handover in progress on the old side: everything frozen, described.

    Freezing happens in the constructor, in one reactor turn, so no byte is
    read between the caller's snapshots and the freeze as long as the caller
    builds the :class:`Handover` in the same turn.
    """

    def __init__(self, handover: Handover, clock_seconds: float) -> None:
        self.frozen_at = clock_seconds
        # A connection already gone (or still connecting), or not TCP, has
        # nothing to hand over: skipped, and counted.
        live: list[tuple[Any, bytes]] = [
            (t, blob)
            for t, blob in handover.connections
            if getattr(t, "connected", False)
            and getattr(getattr(t, "socket", None), "family", None) in FAMILIES
        ]
        self.skipped = len(handover.connections) - len(live)
        self.transports: list[Any] = [t for t, _ in live]
        self.ports: list[Any] = [p for p, _ in handover.listeners]
        frozen: list[Any] = []
        everything = [*self.transports, *self.ports]
        readers: set[object] = (
            set(everything[0].reactor.getReaders()) if everything else set()
        )
        try:
            for selectable in everything:
                detach.freeze(selectable, readers)
                frozen.append(selectable)
        except BaseException:
            for selectable in frozen:
                detach.thaw(selectable)
            raise
        try:
            connections = []
            fds = []
            for transport, blob in live:
                skt = detach.socket_of(transport)
                fd = skt.fileno()
                fds.append(fd)
                connections.append(
                    ConnectionRecord(
                        inode_of(fd),
                        skt.family,
                        detach.pending_bytes(transport),
                        blob,
                        bool(transport.disconnecting),
                    )
                )
            listeners = []
            for port, name in handover.listeners:
                fd = detach.socket_of(port).fileno()
                fds.append(fd)
                listeners.append(
                    ListenerRecord(inode_of(fd), detach.socket_of(port).family, name)
                )
            #: Descriptors in manifest order: connections, then listeners.
            self.fds: list[int] = fds
            #: Their socket inodes, in the same order.
            self.inodes: list[int] = [c.inode for c in connections] + [
                li.inode for li in listeners
            ]
            self.manifest = encode(
                Manifest(tuple(connections), tuple(listeners), handover.state)
            )
        except BaseException:
            self.rollback()
            raise
        self.pending_total = sum(len(c.pending) for c in connections)

    def written(self) -> int:
        """How many frozen connections were written to (or closed) since the
        freeze: committing now would lose those bytes."""
        return sum(1 for t in self.transports if detach.written_while_frozen(t))

    def rollback(self) -> None:
        """Take everything back: read, accept and write again."""
        for selectable in [*self.transports, *self.ports]:
            detach.thaw(selectable)

    def commit(self, notify: bool = True) -> None:
        """Let go of every socket without shutting any down.

        ``notify``: connections get ``connectionLost(HandedOver)`` (see
        :func:`detach.release`).
        """
        for transport in self.transports:
            try:
                detach.release(transport, notify=notify)
            except Exception:
                _log.failure("releasing a handed-over connection")
        for port in self.ports:
            try:
                detach.release(port)
            except Exception:
                _log.failure("releasing a handed-over listener")


@dataclass
class ReceivedConnection:
    """A connection the new process received.

    ``fd`` is None when the socket did not arrive (the service manager drops
    a stored socket whose peer hung up): treat the connection as closed.
    """

    fd: int | None
    family: int
    pending: bytes
    blob: bytes
    #: The old owner was closing it: :meth:`Received.adopt` writes
    #: ``pending`` and closes it, no protocol needed.
    closing: bool = False


@dataclass
class ReceivedListener:
    """A listening socket the new process received (``fd`` None: missing)."""

    fd: int | None
    family: int
    name: str


@dataclass
class Adopted:
    """What :meth:`Received.adopt` made: aligned with the received lists.

    An entry is None where there was no descriptor, no protocol/factory was
    given, or adoption failed (a connection reset meanwhile).
    """

    transports: list[ITransport | None]
    ports: list[IListeningPort | None]


@dataclass
class Received:
    """The new side of a handover: descriptors matched to their records."""

    connections: list[ReceivedConnection]
    listeners: list[ReceivedListener]
    state: bytes
    #: Descriptors no record describes (closed by :func:`match`).
    unmatched: int = 0
    _closed: bool = field(default=False, repr=False)

    def _fds(self) -> list[int]:
        fds = [c.fd for c in self.connections if c.fd is not None]
        return fds + [li.fd for li in self.listeners if li.fd is not None]

    def close(self) -> None:
        """Close this process's copies; the connections stay open elsewhere.

        A plain ``close()``: never ``shutdown``, never ``SO_LINGER``.
        """
        if self._closed:
            return
        self._closed = True
        for fd in self._fds():
            try:
                os.close(fd)
            except OSError:
                pass

    def adopt(
        self,
        reactor: IReactorSocket,
        protocols: Sequence[IProtocol | None],
        factories: Sequence[IProtocolFactory | None] = (),
    ) -> Adopted:
        """Give every socket to ``reactor``; close this process's copies.

        ``protocols[i]`` takes ``connections[i]`` (its ``pending`` bytes are
        written first; a ``closing`` one is only flushed and closed, its
        entry in the result is None); ``factories[i]`` serves
        ``listeners[i]``.
        """
        if self._closed:
            raise ValueError("already adopted or closed")
        if len(protocols) != len(self.connections):
            raise ValueError("one protocol (or None) per received connection")
        # Twisted adopts a duplicate (socket.fromfd): close each original
        # at once, else N connections need 2N descriptors for a moment.
        transports: list[ITransport | None] = []
        for conn, given in zip(self.connections, protocols, strict=True):
            transport = None
            protocol = Protocol() if conn.closing else given
            if conn.fd is not None and protocol is not None:
                try:
                    transport = detach.adopt_connection(
                        reactor, conn.fd, conn.family, protocol, conn.pending
                    )
                except OSError as e:
                    _log.warn("a handed-over connection is lost: {error}", error=e)
                if conn.closing and transport is not None:
                    transport.loseConnection()  # after ``pending``
                    transport = None
            if conn.fd is not None:
                os.close(conn.fd)
                conn.fd = None
            transports.append(transport)
        ports: list[IListeningPort | None] = []
        for i, listener in enumerate(self.listeners):
            factory = factories[i] if i < len(factories) else None
            port = None
            if listener.fd is not None and factory is not None:
                try:
                    port = detach.adopt_listener(
                        reactor,
                        listener.fd,
                        listener.family,
                        factory,  # type: ignore[arg-type]
                    )
                except OSError as e:
                    _log.warn("a handed-over listener is lost: {error}", error=e)
            if listener.fd is not None:
                os.close(listener.fd)
                listener.fd = None
            ports.append(port)
        self.close()
        return Adopted(transports, ports)


def _is_stream_socket(fd: int) -> bool:
    """Whether ``fd`` is a TCP socket (IPv4 or IPv6); no descriptor is made."""
    try:
        skt = socket.socket(fileno=fd)  # reads family and type from fd
    except OSError:
        return False
    try:
        return skt.type == socket.SOCK_STREAM and skt.family in (
            socket.AF_INET,
            socket.AF_INET6,
        )
    finally:
        skt.detach()  # not close: fd stays open and ours


class Index:
    """Received descriptors by socket inode, built as they arrive (those
    sent before the freeze are indexed while the old process still serves).
    """

    def __init__(self) -> None:
        self.by_inode: dict[int, int] = {}
        self.unmatched = 0

    def add(self, fds: Sequence[int]) -> None:
        """Index ``fds`` (now owned by the index): a descriptor that is not
        a TCP socket, or whose socket is indexed already, is closed."""
        by_inode = self.by_inode
        for fd in fds:
            try:
                inode = inode_of(fd)
            except OSError:
                self.unmatched += 1
                continue
            if inode in by_inode or not _is_stream_socket(fd):
                os.close(fd)
                self.unmatched += 1
                continue
            by_inode[inode] = fd

    def close(self) -> None:
        """Close every indexed descriptor (plain close)."""
        for fd in self.by_inode.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.by_inode = {}


def match(manifest_bytes: bytes, fds: Sequence[int], index: Index | None = None) -> Received:
    """Pair descriptors with the manifest's records by socket inode.

    ``index``: descriptors received earlier (before the freeze), already
    indexed; ``fds`` are added to it.  Raises :class:`ManifestError` for a
    malformed manifest (after closing ``fds`` and the index).  Descriptors
    that match no record, or are not TCP sockets, are closed and counted in
    ``unmatched``.
    """
    if index is None:
        index = Index()
    try:
        manifest = decode(manifest_bytes)
    except ManifestError:
        for fd in fds:
            os.close(fd)
        index.close()
        raise
    index.add(fds)
    by_inode = index.by_inode
    unmatched = index.unmatched
    index.by_inode = {}
    connections = [
        ReceivedConnection(
            by_inode.pop(c.inode, None), c.family, c.pending, c.blob, c.closing
        )
        for c in manifest.connections
    ]
    listeners = [
        ReceivedListener(by_inode.pop(li.inode, None), li.family, li.name)
        for li in manifest.listeners
    ]
    for fd in by_inode.values():
        os.close(fd)
        unmatched += 1
    return Received(connections, listeners, manifest.state, unmatched)
