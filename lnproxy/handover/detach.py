"""Take TCP sockets off a Twisted reactor without closing them, and back.

Twisted has no public API to hand a connected socket to another process.
What it does have would end the connection for the peer:

- ``transport.loseConnection()`` and a reactor that stops with the
  connection still registered both end in ``Connection.connectionLost``,
  which calls ``_SocketCloser._closeSocket(orderly=True)``: that is
  ``socket.shutdown(SHUT_RDWR)`` and then ``close()``.  ``shutdown`` acts on
  the *socket*, not on this process's descriptor, so it sends a FIN even
  when another process holds a duplicate: the peer sees EOF.
- ``abortConnection()`` sets ``SO_LINGER`` to ``(1, 0)``, which is also a
  property of the socket: the last ``close()``, in whichever process, then
  sends a RST.
- ``tcp.Port.stopListening()`` shuts the listening socket down, which takes
  it out of the LISTEN state for every holder.

So the mechanics here are, for a connection (``tcp.Server`` or
``tcp.Client``, both ``tcp.Connection``):

1. :func:`freeze`: ``stopReading()`` and ``stopWriting()`` (the reactor no
   longer polls the descriptor; nothing more is read, so the peer's bytes
   wait in the kernel's receive buffer for whoever reads next), and shadow
   ``startReading``/``startWriting`` on the instance so nothing re-registers
   it meanwhile (``resumeProducing()`` from a producer, ``write()`` from a
   timer).  Writes made while frozen stay in Twisted's buffer.
2. :func:`pending_bytes`: what Twisted has accepted from the protocol but
   not yet given to the kernel (``dataBuffer[offset:]`` plus
   ``_tempDataBuffer``, see ``abstract.FileDescriptor.doWrite``).  These
   bytes go to the new owner, who writes them before anything else.
3. Either :func:`thaw` (the handover failed: re-register, flush the buffer,
   as if nothing happened) or :func:`release` (it succeeded: set
   ``_shouldShutdown = False`` on the instance, the flag Twisted itself sets
   for adopted listening ports, so ``_closeSocket`` only ``close()``\\ s this
   process's descriptor; the socket lives on in the other process).

Even a frozen connection that is never released is safe at exit: it is in
neither the reactor's readers nor its writers, so the reactor's
``disconnectAll`` at shutdown does not see it, and the kernel closes the
descriptor at exit without ``shutdown``.

A listening ``tcp.Port`` is frozen and thawed the same way (it "reads" by
``accept()``); connections that arrive meanwhile wait in the backlog for
whichever process accepts next.

On the new side, :func:`adopt_connection` and :func:`adopt_listener` use the
public ``IReactorSocket.adoptStreamConnection`` / ``adoptStreamPort``.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Container
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IReactorSocket,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

__all__ = [
    "HandedOver",
    "adopt_connection",
    "adopt_listener",
    "freeze",
    "is_frozen",
    "pending_bytes",
    "release",
    "socket_of",
    "thaw",
    "written_while_frozen",
]

_FROZEN = "_lnproxy_frozen"
_WAS_READING = "_lnproxy_was_reading"
#: Written to (or closed) since the freeze: what the snapshot said is stale.
_DIRTY = "_lnproxy_dirty"
_ABORT_ASKED = "_lnproxy_abort_asked"


class HandedOver(Exception):
    """The connection now belongs to another process (a ``connectionLost``
    reason: the peer saw nothing, the socket is open elsewhere)."""


def socket_of(selectable: Any) -> socket.socket:
    """The ``socket.socket`` of a Twisted TCP transport or listening port."""
    skt = getattr(selectable, "socket", None)
    if not isinstance(skt, socket.socket):
        raise TypeError(f"{selectable!r} has no socket (not a TCP transport?)")
    return skt


def _noop() -> None:
    """Stands in for ``startReading`` while frozen."""


def _abort_later(fd: Any) -> None:
    """Stands in for ``abortConnection`` while frozen: its ``SO_LINGER``
    would act on the socket every holder shares; done at :func:`thaw`."""
    setattr(fd, _DIRTY, True)
    setattr(fd, _ABORT_ASKED, True)


def freeze(
    selectable: ITransport | IListeningPort, readers: Container[object] | None = None
) -> None:
    """Stop reading (or accepting) and writing, and keep it that way.

    The peer-visible part of a handover starts here: from now on this
    process reads nothing more from the socket.  Whether it was reading
    (not paused by a producer) is remembered for :func:`thaw`; pass
    ``readers`` (``set(reactor.getReaders())``, computed once) when freezing
    many.  Idempotent.
    """
    fd: Any = selectable
    socket_of(fd)  # fail early on a transport that is not a socket
    if getattr(fd, _FROZEN, False):
        return
    if readers is None:
        readers = set(fd.reactor.getReaders())
    setattr(fd, _WAS_READING, fd in readers)
    fd.stopReading()
    fd.stopWriting()
    fd.startReading = _noop
    # Every write() and loseConnection() calls startWriting: remember that
    # the connection changed after its snapshot (see written_while_frozen).
    setattr(fd, _DIRTY, False)
    fd.startWriting = functools.partial(setattr, fd, _DIRTY, True)
    if not isinstance(fd, tcp.Port):
        fd.abortConnection = functools.partial(_abort_later, fd)
    setattr(fd, _FROZEN, True)


def written_while_frozen(selectable: object) -> bool:
    """Whether something was written to (or closing asked of) a frozen
    transport since :func:`freeze`: those bytes are not in its
    :func:`pending_bytes` taken at the freeze, so handing it over now would
    lose them (roll back instead)."""
    return bool(getattr(selectable, _DIRTY, False))


def _unshadow(fd: Any) -> None:
    for name in ("startReading", "startWriting", "abortConnection"):
        if name in vars(fd):
            delattr(fd, name)


def is_frozen(selectable: object) -> bool:
    """Whether :func:`freeze` was called and neither thaw nor release since."""
    return bool(getattr(selectable, _FROZEN, False))


def pending_bytes(transport: ITransport) -> bytes:
    """The bytes written to the transport that the kernel has not taken yet.

    Only meaningful on a frozen transport (else the reactor may send some of
    them at any moment).
    """
    fd: Any = transport
    if not is_frozen(fd):
        raise ValueError("pending_bytes needs a frozen transport")
    head = bytes(fd.dataBuffer[fd.offset :])
    return head + b"".join(fd._tempDataBuffer)


def thaw(selectable: ITransport | IListeningPort) -> None:
    """Undo :func:`freeze`: read (accept) again and flush what is buffered."""
    fd: Any = selectable
    if not getattr(fd, _FROZEN, False):
        return
    _unshadow(fd)
    setattr(fd, _FROZEN, False)
    setattr(fd, _DIRTY, False)
    if getattr(fd, _ABORT_ASKED, False):
        setattr(fd, _ABORT_ASKED, False)
        if getattr(fd, "connected", False):
            fd.abortConnection()
            return
    if not getattr(fd, "connected", False):
        return
    if isinstance(fd, tcp.Port):
        if not fd.disconnecting and getattr(fd, _WAS_READING, True):
            fd.startReading()  # unless asked to stop listening meanwhile
        return
    if getattr(fd, _WAS_READING, True) and not fd.disconnecting:
        # Not if it was paused (pauseProducing, backpressure) when frozen,
        # nor after loseConnection(), which stops reading for good.
        fd.startReading()
    if len(fd.dataBuffer) > fd.offset or fd._tempDataLen or fd.disconnecting:
        # Something was written (or loseConnection asked for) while frozen.
        fd.startWriting()


def release(selectable: ITransport | IListeningPort, notify: bool = True) -> None:
    """Let go of a frozen socket without shutting it down.

    Only this process's descriptor is closed; another holder (the new
    process, the service manager's store) keeps the connection open.  With
    ``notify`` the protocol gets ``connectionLost(Failure(HandedOver()))``
    (a ``tcp.Client`` also tells its connector, so a reconnecting factory
    must check the reason); without it the transport is only marked
    disconnected, later writes and ``loseConnection`` are no-ops, and the
    protocol hears nothing.
    """
    fd: Any = selectable
    if not is_frozen(fd):
        raise ValueError("release needs a frozen transport or port")
    socket_of(fd)
    # The flag Twisted sets itself for adopted ports: close, never shutdown.
    fd._shouldShutdown = False
    fd.stopReading()
    fd.stopWriting()
    if not isinstance(fd, tcp.Port):
        # Those bytes went to the new owner with the socket; this process
        # must never send them (nor anything written after the freeze).
        fd.dataBuffer = b""
        fd.offset = 0
        fd._tempDataBuffer = []
        fd._tempDataLen = 0
        if notify:
            fd.connectionLost(Failure(HandedOver()))
        else:
            fd.socket.close()
            fd.connected = 0
            fd.disconnected = 1
    else:
        # A listening port: connectionLost closes (no shutdown: flag above),
        # logs "Port Closed" and calls factory.doStop().
        fd.connectionLost(Failure(HandedOver()))
        fd.disconnected = True


class _OneProtocol(Factory):
    """A factory that hands ``adoptStreamConnection`` one given protocol."""

    def __init__(self, protocol: IProtocol) -> None:
        self._protocol: IProtocol | None = protocol

    def buildProtocol(self, addr: Any) -> Any:
        """Return the protocol once (Twisted asks exactly once)."""
        protocol, self._protocol = self._protocol, None
        return protocol


def adopt_connection(
    reactor: IReactorSocket,
    fd: int,
    family: int,
    protocol: IProtocol,
    pending: bytes = b"",
) -> ITransport:
    """Give a connected TCP socket to the reactor, under ``protocol``.

    ``pending`` (bytes the previous owner had accepted but not sent) is
    queued before anything the protocol writes, even in ``connectionMade``.
    The reactor works on its own duplicate (``socket.fromfd``): ``fd``
    stays the caller's to close.  Raises ``OSError`` if the connection died
    meanwhile (``getpeername`` fails on a reset socket).
    """
    os.set_blocking(fd, False)
    transport: Any = None
    if pending:
        # Twisted calls protocol.makeConnection(transport) inside
        # adoptStreamConnection; queue the old bytes first by wrapping it.
        original = protocol.makeConnection

        def make_connection(new_transport: Any) -> None:
            new_transport.write(pending)
            del protocol.makeConnection
            original(new_transport)

        wrapped: Any = protocol
        wrapped.makeConnection = make_connection
    adopting: Any = reactor
    try:
        transport = adopting.adoptStreamConnection(fd, family, _OneProtocol(protocol))
    finally:
        if pending and "makeConnection" in vars(protocol):
            del protocol.makeConnection
    if transport is None:
        transport = getattr(protocol, "transport", None)
    if transport is None:
        raise OSError(f"descriptor {fd} was not adopted")
    result: ITransport = transport
    return result


def adopt_listener(
    reactor: IReactorSocket, fd: int, family: int, factory: Factory
) -> IListeningPort:
    """Give a listening TCP socket to the reactor (``adoptStreamPort``).

    Twisted duplicates ``fd`` and never shuts the adopted socket down; the
    caller closes ``fd``.
    """
    os.set_blocking(fd, False)
    adopting: Any = reactor
    port: IListeningPort = adopting.adoptStreamPort(fd, family, factory)
    return port
