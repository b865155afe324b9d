"""The client library through the real proxy to pyln-proto, an independent
BOLT 8 implementation (Core Lightning's Python library).

pyln-proto is blocking, so its side runs in reactor threads
(``deferToThread``), with the socket tricks of tests/test_interop.py.  It
checks what our own :class:`~lnproxy.localpeer.LocalPeerFactory` cannot: that
the handshake the client runs through the proxy, and the transport the proxy
then runs with the handed-over keys, are right for someone else's code.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from pyln.proto import wire as pyln_wire
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from lnproxy import keys, wire
from lnproxy.client import Event

from .test_client_support import ClientTestCase
from .test_interop import close_socket, tame_pyln_connection

PYLN_SECRET = bytes.fromhex("43" * 32)
PYLN_NODE_ID = keys.public_key(PYLN_SECRET)
#: BOLT 1 ``init`` with no features.
INIT = struct.pack(">HHH", 16, 0, 0)
STEP = 10.0


class PylnClientTests(ClientTestCase):
    """Handshake, messages both ways, and a persist re-handshake with pyln."""

    timeout = 30

    def setUp(self) -> None:
        self.threads: list[defer.Deferred[Any]] = []
        self.sockets: list[socket.socket] = []
        self.addCleanup(self.join_threads)

    def in_thread(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        """Run blocking pyln code in a thread; cleanup waits for it."""
        d = deferToThread(fn, *args)
        self.threads.append(d)
        return d

    def join_threads(self) -> defer.Deferred[Any]:
        """Close pyln's sockets (waking blocked calls), then join threads."""
        for s in self.sockets:
            close_socket(s)
        return defer.DeferredList(self.threads, consumeErrors=True).addTimeout(
            STEP, reactor
        )

    def accept_and_talk(self, server: Any) -> tuple[bytes, bytes]:
        """pyln's side (thread): accept one connection (running the
        responder handshake), read the client's init, send pyln's init and
        an update_add_htlc, read the answer.

        :return: (our node id as pyln authenticated it, the answer).
        """
        lconn, _ = server.accept()
        sock, _, _ = tame_pyln_connection(lconn)
        self.sockets.append(sock)
        remote = lconn.remote_pubkey.serializeCompressed()
        their_init = lconn.read_message()
        if wire.message_type(their_init) != wire.INIT:
            raise AssertionError(f"expected init, got {their_init.hex()}")
        lconn.send_message(INIT)
        lconn.send_message(b"\x00\x80" + b"pyln htlc")
        answer = lconn.read_message()
        return remote, answer

    def accept_only(self, server: Any) -> tuple[bytes, bytes]:
        """pyln's side (thread): accept one connection and read its init."""
        lconn, _ = server.accept()
        sock, _, _ = tame_pyln_connection(lconn)
        self.sockets.append(sock)
        return lconn.remote_pubkey.serializeCompressed(), lconn.read_message()

    @defer.inlineCallbacks
    def test_pyln_peer_and_persist_rehandshake(self) -> Any:
        """The client's handshake through the proxy is accepted by pyln,
        which authenticates our node id; pyln's messages arrive as events and
        our answer reaches pyln.  When pyln drops the persistent connection,
        the client re-handshakes by itself and pyln accepts it again."""
        self.start_proxy()
        server = pyln_wire.LightningServerSocket(pyln_wire.PrivateKey(PYLN_SECRET))
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(2)
        server.settimeout(STEP)
        port = server.getsockname()[1]
        first = self.in_thread(self.accept_and_talk, server)

        events: list[Event] = []
        answered: defer.Deferred[None] = defer.Deferred()
        client_box: list[Any] = []

        def on_event(event: Event) -> Any:
            events.append(event)
            if event.type == 128 and not answered.called:
                d = client_box[0].send(event.conn, b"\x00\x84" + b"our answer")
                return d.addCallback(lambda _: answered.callback(None))
            return None

        client = self.make_client(on_event=on_event, state=self.mktemp())
        client_box.append(client)
        relinked: list[Any] = []
        client.on_link.append(relinked.append)
        link = yield client.open_peer(
            f"{PYLN_NODE_ID.hex()}@127.0.0.1:{port}", persist=True
        )
        remote, answer = yield first.addTimeout(STEP, reactor)
        self.assertEqual(remote, client.node_id)
        self.assertEqual(answer, b"\x00\x84our answer")
        yield answered
        self.assertEqual([e.type for e in events], [16, 128])
        self.assertEqual(events[0].msg, INIT)
        self.assertEqual(events[1].msg, b"\x00\x80pyln htlc")
        conns = yield client.connections()
        self.assertEqual(conns[0]["their_init"], INIT.hex())

        second = self.in_thread(self.accept_only, server)
        # pyln drops the connection: the proxy summons us to re-handshake.
        close_socket(self.sockets[0])
        remote2, init2 = yield second.addTimeout(STEP, reactor)
        self.assertEqual(remote2, client.node_id)
        self.assertEqual(wire.message_type(init2), wire.INIT)
        yield self.wait_for(lambda: bool(relinked), what="on_link")
        self.assertNotEqual(relinked[0].conn, link.conn)
        closed = [e for e in events if e.kind == "closed"]
        self.assertEqual([(e.conn, e.reconnect) for e in closed], [(link.conn, True)])
