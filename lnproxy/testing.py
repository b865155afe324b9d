"""Test fakes for lnproxy and for programs that use it.

Like ``treq.testing``: the pieces every test of a proxy needs, shipped with
the library so that the test suite, the benchmarks, the demo and the tests
of other clients (JavaScript, Electrum) use one copy.

* :class:`ResponderFactory` / :class:`ResponderPeer`: a Lightning peer that
  runs the responder side of BOLT 8 over :mod:`lnproxy.noise`, sends its
  ``init``, answers pings, records what it receives, and misbehaves on
  request (see :class:`Mode`).  :func:`listen_peer` starts one on
  127.0.0.1.
* :class:`RpcClient`: a raw JSON-RPC 2.0 client over WebSocket (Autobahn)
  that parses ``hello``, logs in (docs/protocol.md, "Session start and
  login"), keeps replies and notifications in order, and runs the client
  side of the split handshake (docs/protocol.md, "Outbound connection (the
  split handshake)").  :func:`connect_rpc` connects one.
* :class:`WholeSocket`: exact reads and whole writes over a socket, the
  connection object pyln-proto needs (interop tests, benchmarks).
* :func:`static_resolver`: a host name resolver answering from a table,
  for the webhook SSRF guard (:mod:`lnproxy.ssrf`) without DNS.
* :func:`free_port`, :func:`twistd_command`, :class:`TwistdProcess` (a
  ``twistd -n lnproxy`` child on the reactor, for tests) and
  :class:`ProxyProcess` (the same child from blocking code, for benchmarks).

It is not a Lightning node; tests that must not trust lnproxy's own BOLT 8
code use pyln-proto instead.  Nothing here logs or writes key material.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

import lnproxy
from lnproxy import keys, noise, wire
from lnproxy.protocol import SUBPROTOCOL

__all__ = [
    "Mode",
    "ResponderPeer",
    "ResponderFactory",
    "listen_peer",
    "RpcFailed",
    "RpcClient",
    "connect_rpc",
    "free_port",
    "static_resolver",
    "twistd_command",
    "TwistdProcess",
    "spawn_twistd",
    "ProxyProcess",
    "STARTED_LINE",
    "WholeSocket",
    "GARBAGE_BYTES",
]

#: What ``twistd -n lnproxy`` logs once its listening ports are bound.
STARTED_LINE = "lnproxy started"

#: ``python -m twisted.scripts.twistd`` does nothing (that module has no
#: ``__main__`` block): a child runs twistd's entry point as the console
#: script does.
_TWISTD_RUN = (
    "import sys; from twisted.scripts.twistd import run; "
    "sys.argv[0] = 'twistd'; sys.exit(run())"
)


# ---------------------------------------------------------------------------
# A BOLT 8 responder peer
# ---------------------------------------------------------------------------


class Mode(enum.StrEnum):
    """How a :class:`ResponderFactory` behaves (its fault modes)."""

    #: Handshake, send ``init``, answer pings, record messages.
    NORMAL = "ok"
    #: Close the TCP connection once act 1 has arrived (no act 2).
    CLOSE_AFTER_ACT1 = "close"
    #: Read act 1 and never answer it.
    SILENT = "silent"
    #: Answer act 1 with an act 2 whose version byte is 1 (BOLT 8 says 0).
    BAD_VERSION = "bad_version"
    #: Finish the handshake, never send ``init`` (still records messages).
    NO_INIT = "no_init"
    #: Finish the handshake, then send bytes that are no valid frame.
    GARBAGE = "garbage"


#: What :attr:`Mode.GARBAGE` sends after act 3: 18 bytes (a whole length
#: header) that fail the length MAC, and more.
GARBAGE_BYTES = b"\xff" * 64


class ResponderPeer(Protocol):
    """One inbound connection to a :class:`ResponderFactory`.

    :ivar remote_node_id: the initiator's node id, once act 3 is read.
    :ivar received: every decrypted message, in order.
    :ivar their_init: the first ``init`` received.
    :ivar error: the handshake or transport error that closed it, if any.
    """

    _log = Logger()
    factory: ResponderFactory

    def __init__(self) -> None:
        self._responder: noise.Responder | None = None
        self._buf = b""
        self._step = 1
        self.transport_cipher: noise.Transport | None = None
        self.remote_node_id: bytes | None = None
        self.received: list[bytes] = []
        self.their_init: bytes | None = None
        self.error: Exception | None = None

    @property
    def is_open(self) -> bool:
        """True once the handshake is done."""
        return self.transport_cipher is not None

    def connectionMade(self) -> None:
        """Start the responder handshake."""
        transport: Any = self.transport
        try:
            transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        self._responder = noise.Responder(self.factory.secret)
        self.factory.all_connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        """Acts 1 and 3 (as the mode says), then transport frames."""
        if self.transport_cipher is not None:
            try:
                messages = self.transport_cipher.feed(data)
            except noise.TransportError as e:
                self._fail(e)
                return
            for msg in messages:
                self._message(msg)
            return
        self._buf += data
        assert self._responder is not None
        mode = self.factory.mode
        try:
            if self._step == 1 and len(self._buf) >= noise.ACT1_SIZE:
                act1 = self._buf[: noise.ACT1_SIZE]
                self._buf = self._buf[noise.ACT1_SIZE :]
                if mode is Mode.CLOSE_AFTER_ACT1:
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                if mode is Mode.SILENT:
                    self._step = 0
                    return
                self._responder.read_act1(act1)
                act2 = self._responder.act2()
                if mode is Mode.BAD_VERSION:
                    act2 = b"\x01" + act2[1:]
                self.transport.write(act2)  # type: ignore[union-attr]
                self._step = 3
            if self._step == 3 and len(self._buf) >= noise.ACT3_SIZE:
                act3 = self._buf[: noise.ACT3_SIZE]
                rest, self._buf = self._buf[noise.ACT3_SIZE :], b""
                result = self._responder.read_act3(act3)
                self.remote_node_id = result.remote_static
                self.transport_cipher = noise.Transport.from_keys(result)
                self._step = 4
                if mode is Mode.GARBAGE:
                    self.transport.write(GARBAGE_BYTES)  # type: ignore[union-attr]
                elif mode is not Mode.NO_INIT:
                    self.send(wire.Init(features=self.factory.features).encode())
                self.factory.connections.append(self)
                self.factory._opened(self)
                if rest:
                    self.dataReceived(rest)
        except noise.HandshakeError as e:
            self._fail(e)

    def _message(self, msg: bytes) -> None:
        if self.factory.record:
            self.received.append(msg)
        msg_type = wire.message_type(msg)
        if msg_type == wire.INIT and self.their_init is None:
            self.their_init = msg
        elif msg_type == wire.PING and self.factory.answer_pings:
            pong = wire.pong_for(wire.Ping.decode(msg))
            if pong is not None:
                self.send(pong.encode())
        self.factory._received(self, msg)

    def send(self, msg: bytes) -> None:
        """Encrypt and send one message (its 2-byte type first)."""
        assert self.transport_cipher is not None, "handshake not finished"
        self.transport.write(self.transport_cipher.encrypt(msg))  # type: ignore[union-attr]

    def _fail(self, e: Exception) -> None:
        self.error = e
        self._log.info("responder peer closing a connection: {err}", err=str(e))
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:  # noqa: B008
        """Forget the connection."""
        for group in (self.factory.connections, self.factory.all_connections):
            if self in group:
                group.remove(self)
        self.factory._closed(self)


class ResponderFactory(Factory):
    """Accepts connections as a node with the given secret.

    :param secret: 32-byte node secret; random when omitted.
    :param features: the init features to send.
    :param answer_pings: answer pings with pongs (BOLT 1 behaviour).
    :param mode: a :class:`Mode` (or its string value); normal by default.
    :param record: keep every message in ``received`` (turn off for load
        generators; ``their_init`` is kept anyway).

    :ivar node_id: the 33-byte node id (what an initiator dials).
    :ivar connections: connections whose handshake is done and that are up.
    :ivar all_connections: every connection that is up, handshake or not.
    :ivar on_message: callables ``(peer, msg)`` run on every message.
    :ivar on_open: callables ``(peer)`` run when a handshake is done.
    :ivar on_close: callables ``(peer)`` run when a connection is lost
        (``peer.error`` says why, if it was our doing).
    :ivar closed_count: connections lost so far.
    """

    protocol = ResponderPeer  # type: ignore[assignment]

    def __init__(
        self,
        secret: bytes | None = None,
        features: bytes = b"",
        answer_pings: bool = True,
        mode: Mode | str = Mode.NORMAL,
        record: bool = True,
    ) -> None:
        self.secret = secret or os.urandom(32)
        self.node_id = keys.public_key(self.secret)
        self.features = features
        self.answer_pings = answer_pings
        self.mode = Mode(mode)
        self.record = record
        self.connections: list[ResponderPeer] = []
        self.all_connections: list[ResponderPeer] = []
        self.on_message: list[Callable[[ResponderPeer, bytes], None]] = []
        self.on_open: list[Callable[[ResponderPeer], None]] = []
        self.on_close: list[Callable[[ResponderPeer], None]] = []
        self._open_waiters: list[defer.Deferred[ResponderPeer]] = []
        self._message_waiters: list[
            tuple[Callable[[bytes], bool], defer.Deferred[Any]]
        ] = []
        self.closed_count = 0

    def address(self, port: int, host: str = "127.0.0.1") -> str:
        """``node_id@host:port``, as ``connect`` takes it."""
        return f"{self.node_id.hex()}@{host}:{port}"

    def wait_open(self) -> defer.Deferred[ResponderPeer]:
        """Fires with the next connection that finishes its handshake."""
        d: defer.Deferred[ResponderPeer] = defer.Deferred()
        self._open_waiters.append(d)
        return d

    def wait_message(
        self, match: Callable[[bytes], bool] | None = None
    ) -> defer.Deferred[bytes]:
        """Fires with the next received message for which ``match`` is true
        (any message when ``match`` is None)."""
        d: defer.Deferred[bytes] = defer.Deferred()
        self._message_waiters.append((match or (lambda m: True), d))
        return d

    def abort_all(self) -> None:
        """Abort every connection (cleanup)."""
        for p in list(self.all_connections):
            p.transport.abortConnection()  # type: ignore[union-attr]

    def _opened(self, p: ResponderPeer) -> None:
        for fn in self.on_open:
            fn(p)
        waiters, self._open_waiters = self._open_waiters, []
        for d in waiters:
            d.callback(p)

    def _received(self, p: ResponderPeer, msg: bytes) -> None:
        for fn in self.on_message:
            fn(p, msg)
        keep = []
        for match, d in self._message_waiters:
            if not d.called and match(msg):
                d.callback(msg)
            else:
                keep.append((match, d))
        self._message_waiters = keep

    def _closed(self, p: ResponderPeer) -> None:
        self.closed_count += 1
        for fn in self.on_close:
            fn(p)


def listen_peer(reactor: Any, **kw: Any) -> tuple[ResponderFactory, Any]:
    """A :class:`ResponderFactory` listening on a free 127.0.0.1 port.

    :param kw: :class:`ResponderFactory` arguments.
    :return: ``(factory, listening_port)``; the number is
        ``listening_port.getHost().port``.  Stop it with
        ``factory.abort_all()`` and ``listening_port.stopListening()``.
    """
    factory = ResponderFactory(**kw)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return factory, port


# ---------------------------------------------------------------------------
# A raw JSON-RPC client
# ---------------------------------------------------------------------------


class RpcFailed(Exception):
    """An error reply; ``code`` and ``message`` as the server sent them."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = error.get("message")
        self.data = error.get("data")


def _first(
    items: list[dict[str, Any]],
    start: int,
    match: Callable[[dict[str, Any]], bool],
) -> dict[str, Any] | None:
    for item in items[start:]:
        if match(item):
            return item
    return None


class RpcClient(WebSocketClientProtocol):
    """A plain JSON-RPC 2.0 client over Autobahn, for tests.

    :ivar hello_params: the ``hello`` params, once received.
    :ivar events: every notification other than ``hello``, in order.
    :ivar replies: every reply (with an ``id``), in order.
    :ivar frames: every frame received, in order.
    :ivar closed: fires with ``(code, reason)`` when the WebSocket closes.
    :ivar node_secret: the secret :meth:`login` used.
    :ivar login_result: what :meth:`login` returned.
    :ivar opened: fires (with None) when the WebSocket handshake is done.
    :ivar on_raw: if set, called first with each frame's payload; a true
        result means it took the frame (nothing else happens to it).
    :ivar on_event: if set, notifications other than ``hello`` go to it
        instead of :attr:`events`, and no frame or reply is kept (for load
        generators).
    """

    def __init__(self) -> None:
        super().__init__()
        self._next_id = 0
        self._calls: dict[Any, defer.Deferred[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.replies: list[dict[str, Any]] = []
        self.frames: list[dict[str, Any]] = []
        self._event_cursor = 0
        self._event_waiters: list[tuple[Any, defer.Deferred[Any]]] = []
        self._reply_waiters: list[tuple[int, defer.Deferred[Any]]] = []
        self.hello_params: dict[str, Any] | None = None
        self._hello_waiters: list[defer.Deferred[dict[str, Any]]] = []
        self.closed: defer.Deferred[tuple[int | None, str | None]] = defer.Deferred()
        self.node_secret: bytes | None = None
        self.login_result: dict[str, Any] | None = None
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.on_raw: Callable[[bytes], bool] | None = None
        self.on_event: Callable[[dict[str, Any]], None] | None = None

    def onOpen(self) -> None:
        """Fire :attr:`opened`."""
        self.opened.callback(None)

    def connectionMade(self) -> None:
        """Turn Nagle off (Autobahn's ``tcpNoDelay`` option never takes
        effect on a client)."""
        super().connectionMade()
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """Route a frame: a reply to its call, ``hello``, or an event."""
        if self.on_raw is not None and self.on_raw(payload):
            return
        obj = json.loads(payload)
        if self.on_event is None:
            self.frames.append(obj)
        if "id" in obj:
            if self.on_event is None:
                self.replies.append(obj)
            d = self._calls.pop(obj["id"], None)
            if d is not None:
                if "error" in obj:
                    d.errback(RpcFailed(obj["error"]))
                else:
                    d.callback(obj["result"])
            keep = []
            for index, w in self._reply_waiters:
                if index < len(self.replies):
                    w.callback(self.replies[index])
                else:
                    keep.append((index, w))
            self._reply_waiters = keep
            return
        if obj.get("method") == "hello":
            self.hello_params = obj["params"]
            waiters, self._hello_waiters = self._hello_waiters, []
            for d in waiters:
                d.callback(obj["params"])
            return
        if self.on_event is not None:
            self.on_event(obj)
            return
        self.events.append(obj)
        keep_events = []
        for match, d in self._event_waiters:
            if not d.called and match(obj):
                d.callback(obj)
            else:
                keep_events.append((match, d))
        self._event_waiters = keep_events

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """Fire :attr:`closed`."""
        if not self.closed.called:
            self.closed.callback((code, reason))

    @property
    def hello(self) -> defer.Deferred[dict[str, Any]]:
        """A new Deferred firing with the ``hello`` params (each access may
        be yielded on its own)."""
        if self.hello_params is not None:
            return defer.succeed(self.hello_params)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._hello_waiters.append(d)
        return d

    def call(self, method: str, params: Any = None, **kw: Any) -> defer.Deferred[Any]:
        """Send a request; fires with its result or fails with RpcFailed."""
        self._next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None or kw:
            req["params"] = dict(params or {}, **kw)
        d: defer.Deferred[Any] = defer.Deferred()
        self._calls[self._next_id] = d
        self.sendMessage(json.dumps(req).encode())
        return d

    def send_raw(self, text: str | bytes, binary: bool = False) -> None:
        """Send one frame as it is (text unless ``binary``)."""
        self.sendMessage(
            text.encode() if isinstance(text, str) else text, isBinary=binary
        )

    def next_reply(self) -> defer.Deferred[dict[str, Any]]:
        """Fires with the first reply received after this call, whatever
        its id (for raw requests)."""
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._reply_waiters.append((len(self.replies), d))
        return d

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool] | None = None
    ) -> defer.Deferred[dict[str, Any]]:
        """Fires with the first notification (already seen or future) for
        which ``match`` is true (any when None)."""
        match = match or (lambda e: True)
        seen = _first(self.events, 0, match)
        if seen is not None:
            return defer.succeed(seen)
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self._event_waiters.append((match, d))
        return d

    def next_event(self) -> defer.Deferred[dict[str, Any]]:
        """The notification queue: fires with the oldest notification not
        yet taken by this method (one at a time, in order)."""
        index = self._event_cursor
        self._event_cursor += 1
        if index < len(self.events):
            return defer.succeed(self.events[index])
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        # Checked right after each append: the new event is events[-1].
        self._event_waiters.append((lambda e: len(self.events) - 1 == index, d))
        return d

    @defer.inlineCallbacks
    def login(self, secret: bytes) -> Any:
        """Answer ``hello`` with a signature by ``secret`` over
        ``SHA256(b"lnproxy/1 login" || server_id || challenge)``.

        :return: the login result (also kept in :attr:`login_result`).
        """
        hello = yield self.hello
        self.node_secret = secret
        digest = keys.login_digest(
            bytes.fromhex(hello["server_id"]), bytes.fromhex(hello["challenge"])
        )
        result = yield self.call(
            "login",
            node_id=keys.public_key(secret).hex(),
            signature=keys.sign_digest(secret, digest).hex(),
        )
        self.login_result = result
        return result

    @defer.inlineCallbacks
    def start_connect(
        self, peer: Any, port: int, persist: bool = False, host: str = "127.0.0.1"
    ) -> Any:
        """Call ``connect`` only (the first half of the split handshake).

        :param peer: the peer's node id, or anything with ``node_id``.
        :return: ``(connect_result, initiator)``; the initiator has written
            act 1 and can read ``connect_result["act2"]``.
        """
        assert self.node_secret is not None, "log in first"
        node_id = peer if isinstance(peer, bytes) else peer.node_id
        init = noise.Initiator(self.node_secret, node_id)
        r = yield self.call(
            "connect",
            peer=f"{node_id.hex()}@{host}:{port}",
            act1=init.act1().hex(),
            persist=persist,
        )
        return r, init

    def finish(
        self, connect_result: Mapping[str, Any], init: noise.Initiator
    ) -> defer.Deferred[noise.TransportKeys]:
        """The second half: read act 2, call ``finish`` with act 3 and the
        transport keys.

        :return: a Deferred firing with the initiator's transport keys.
        """
        init.read_act2(bytes.fromhex(connect_result["act2"]))
        act3, tk = init.act3()
        d = self.call(
            "finish",
            conn=connect_result["conn"],
            act3=act3.hex(),
            sk=tk.sk.hex(),
            rk=tk.rk.hex(),
            ck=tk.ck.hex(),
        )
        return d.addCallback(lambda _: tk)

    @defer.inlineCallbacks
    def open_peer(
        self,
        peer: Any,
        port: int,
        persist: bool = False,
        features: bytes = b"",
        host: str = "127.0.0.1",
        send_init: bool = True,
    ) -> Any:
        """Run the whole split handshake, then send ``init`` (unless told
        not to).

        :return: ``(conn_id, transport_keys)``.
        """
        r, init = yield self.start_connect(peer, port, persist=persist, host=host)
        tk = yield self.finish(r, init)
        if send_init:
            yield self.call(
                "send", conn=r["conn"], msg=wire.Init(features=features).encode().hex()
            )
        return r["conn"], tk


def connect_rpc(
    reactor: Any,
    port: int,
    protocols: Sequence[str] | None = None,
    host: str = "127.0.0.1",
) -> defer.Deferred[RpcClient]:
    """Connect an :class:`RpcClient` to a proxy (not logged in yet).

    :param protocols: subprotocols to offer (default: lnproxy's).
    """
    factory = WebSocketClientFactory(
        f"ws://{host}:{port}/",
        protocols=[SUBPROTOCOL] if protocols is None else list(protocols),
    )
    factory.protocol = RpcClient
    d: Any = TCP4ClientEndpoint(reactor, host, port).connect(factory)
    return d


# ---------------------------------------------------------------------------
# pyln-proto's connection object
# ---------------------------------------------------------------------------


class WholeSocket:
    """The connection object to hand pyln-proto after its handshake.

    pyln reads an 18-byte header with one ``recv(18)``: ``recv(n)`` here
    returns exactly ``n`` bytes unless the peer closed.  ``MSG_WAITALL``
    asks the kernel for that, but a socket with a timeout is non-blocking
    underneath, where ``MSG_WAITALL`` may still return less, hence the
    loop.  ``send`` is ``sendall``.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, size: int) -> bytes:
        """Read exactly ``size`` bytes, or fewer only at end of stream."""
        chunks = []
        missing = size
        while missing:
            chunk = self.sock.recv(missing, socket.MSG_WAITALL)
            if not chunk:
                break
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> int:
        """Write all of ``data``."""
        self.sock.sendall(data)
        return len(data)


# ---------------------------------------------------------------------------
# Ports and processes
# ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for child
    processes, and for "connection refused")."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def static_resolver(
    table: Mapping[str, Sequence[str]],
) -> Callable[[str, int], defer.Deferred[list[str]]]:
    """A resolver (:class:`lnproxy.ssrf.Resolver`) answering from ``table``,
    host name -> IP addresses; an unknown name fails with ``OSError`` as
    ``getaddrinfo`` would."""

    def resolve(host: str, port: int) -> defer.Deferred[list[str]]:
        if host not in table:
            return defer.fail(OSError(f"no such host {host}"))
        return defer.succeed(list(table[host]))

    return resolve


def _package_root() -> str:
    """The directory the running ``lnproxy`` package was imported from."""
    return os.path.dirname(os.path.dirname(os.path.abspath(lnproxy.__file__)))


def twistd_command(
    port: int,
    data_dir: str,
    *extra: str,
    listen: str | None = None,
    env: Mapping[str, str] | None = None,
    foreground: bool = True,
    pidfile: str = "",
    twistd_args: Sequence[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of ``twistd -n --pidfile= lnproxy ...``.

    The child runs this process's interpreter (``sys.executable``) and
    imports the same ``lnproxy`` (its directory goes first on
    ``PYTHONPATH``), so it finds the twistd plugin as the parent would.

    :param port: the port to listen on (127.0.0.1).
    :param data_dir: the ``--data-dir``.
    :param extra: more ``twistd lnproxy`` options.
    :param listen: a whole ``--listen`` endpoint instead of
        ``tcp:PORT:interface=127.0.0.1``.
    :param env: the base environment (default ``os.environ``).
    :param foreground: pass ``-n`` (do not daemonize).
    :param pidfile: twistd's ``--pidfile`` (none by default).
    :param twistd_args: more twistd options (before ``lnproxy``), e.g.
        ``--logfile=...``.
    :return: ``(argv, env)``; ``argv[0]`` is the executable.
    """
    argv = [
        sys.executable,
        "-c",
        _TWISTD_RUN,
        *(["-n"] if foreground else []),
        f"--pidfile={pidfile}",
        *twistd_args,
        "lnproxy",
        "--listen",
        listen or f"tcp:{port}:interface=127.0.0.1",
        "--data-dir",
        data_dir,
        *extra,
    ]
    child_env = dict(os.environ if env is None else env)
    path = [_package_root()]
    if child_env.get("PYTHONPATH"):
        path.append(child_env["PYTHONPATH"])
    child_env["PYTHONPATH"] = os.pathsep.join(path)
    return argv, child_env


class TwistdProcess(ProcessProtocol):
    """A ``twistd -n lnproxy`` child on the reactor (see :func:`spawn_twistd`).

    :ivar output: everything it wrote (stdout and stderr), as bytes.
    :ivar ended: fires (with None) when it is gone; see :attr:`reason`.
    :ivar reason: the Failure of ``processEnded``.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.reason: Failure | None = None
        self._start_waiters: list[defer.Deferred[None]] = []

    @property
    def has_started(self) -> bool:
        """True once it logged :data:`STARTED_LINE`."""
        return STARTED_LINE.encode() in self.output

    def wait_started(self) -> defer.Deferred[None]:
        """Fires (with None) once it logged :data:`STARTED_LINE` (its port
        is bound); fails with ``RuntimeError`` if it ends first."""
        if self.has_started:
            return defer.succeed(None)
        if self.ended.called:
            return defer.fail(RuntimeError(f"twistd ended:\n{self.text}"))
        d: defer.Deferred[None] = defer.Deferred()
        self._start_waiters.append(d)
        return d

    def outReceived(self, data: bytes) -> None:
        """Collect output; fire the start waiters at the started line."""
        self.output += data
        if self._start_waiters and self.has_started:
            waiters, self._start_waiters = self._start_waiters, []
            for d in waiters:
                d.callback(None)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        """Record how it ended; fire :attr:`ended`."""
        self.reason = reason
        waiters, self._start_waiters = self._start_waiters, []
        for d in waiters:
            d.errback(RuntimeError(f"twistd ended before it started:\n{self.text}"))
        # Not callback(reason): a Failure passed to callback is an errback.
        self.ended.callback(None)

    @property
    def text(self) -> str:
        """Everything the child wrote so far."""
        return self.output.decode("utf-8", "replace")

    @property
    def pid(self) -> int | None:
        """The process id (None once it is reaped)."""
        transport: Any = self.transport
        return transport.pid if transport else None

    def stop(self, sig: str = "TERM") -> defer.Deferred[None]:
        """Send ``sig`` (``"TERM"``, ``"KILL"``...) unless it ended; fires
        when it is gone."""
        if not self.ended.called:
            try:
                self.transport.signalProcess(sig)  # type: ignore[union-attr]
            except ProcessExitedAlready:
                pass  # gone; processEnded is on its way
        return self.ended


def spawn_twistd(
    reactor: Any,
    port: int,
    data_dir: str,
    *extra: str,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> TwistdProcess:
    """Start ``twistd -n lnproxy`` (see :func:`twistd_command`).

    Yield ``child.wait_started()`` (with a timeout) before using it, and
    ``child.stop()`` at cleanup.
    """
    argv, child_env = twistd_command(port, data_dir, *extra, env=env)
    proto = TwistdProcess()
    reactor.spawnProcess(proto, argv[0], argv, env=child_env, path=cwd)
    return proto


class ProxyProcess:
    """A child process (usually ``twistd -n lnproxy``) driven from blocking
    code: benchmarks, or tests that need ``preexec_fn``.

    :param argv: the command (e.g. from :func:`twistd_command`, perhaps
        prefixed by ``taskset -c N``).
    :param env: its environment.
    :param log_path: where its stderr goes (and its stdout, without
        ``pipes``).
    :param port: the port it will listen on (for :meth:`wait_listening`).
    :param preexec_fn: run in the child before exec.
    :param cwd: its working directory.
    :param pipes: give it a stdin and a stdout pipe (``proc.stdin``,
        ``proc.stdout``), for a control channel.
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: str,
        port: int | None = None,
        preexec_fn: Callable[[], Any] | None = None,
        cwd: str | None = None,
        pipes: bool = False,
    ) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipes else self._log,
            stderr=self._log if pipes else subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            preexec_fn=preexec_fn,
        )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def listening(self) -> bool:
        """True if 127.0.0.1:port accepts a TCP connection now."""
        assert self.port is not None, "no port given"
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
        except OSError:
            return False
        return True

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Block until the port accepts connections.

        :raise RuntimeError: if the child exits first or ``timeout`` passes.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"proxy exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.listening():
                return
            time.sleep(0.05)
        raise RuntimeError(f"proxy not listening after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, size: int = 3000) -> str:
        """The end of the child's output."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int | None = signal.SIGTERM, wait: float = 30.0) -> int | None:
        """Send ``sig`` (None: none, it was told to stop another way), wait
        up to ``wait`` seconds, then SIGKILL.

        :return: the exit status (negative: the signal that ended it).
        """
        if self.proc.poll() is None:
            try:
                if sig is not None:
                    self.proc.send_signal(sig)
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode
