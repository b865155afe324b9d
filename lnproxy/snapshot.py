"""The complete state of one open peer connection, as a value and as bytes.

A :class:`ConnectionSnapshot` holds everything needed to go on relaying a
connection on another TCP transport (another process, for a hot restart:
docs/protocol.md, "Restarting without dropping peers (hot restart)"): who
it belongs to, its lifecycle state, its cipher state in both directions
(:class:`lnproxy.noise.TransportSnapshot`: keys, chaining keys, nonces, the
bytes read but not yet decrypted and a decrypted length header whose body
is pending), the peer's ``init``, the keepalive and init deadlines, the
pings waiting for their pong, whether the client asked for gossip and
whether it has sent its first message (:class:`lnproxy.answer.PingLedger`,
docs/protocol.md, "What the proxy does by itself").

It holds transport keys: its :func:`repr` hides them, it is never logged,
and it is never written to disk.  :meth:`ConnectionSnapshot.to_bytes` is a
compact fixed-layout encoding (not pickle: decoding runs no code and checks
every length), version 2, all integers big-endian::

    "LNPS"  u8 version=2  u8 flags
            (1 persist, 2 their_init, 4 ping_sent_at, 8 body_since,
             16 init_deadline, 32 gossip_asked, 64 client_spoke)
    u8 n + n bytes      conn id (ASCII)
    33 bytes            node id
    33 bytes            peer node id
    u8 n + n bytes      address (UTF-8, "host:port")
    u8 n + n bytes      state (the ConnState value, ASCII)
    f64 since, f64 last_rx, then f64 each of ping_sent_at, body_since,
        init_deadline when its flag is set
    32 sk, 32 sck, u16 sending nonce,
    32 rk, 32 rck, u16 receiving nonce,
    i32 body size (-1: waiting for a header), u32 n + n buffered bytes
    u16 n + n bytes     their init, when its flag is set
    u8 n + n times (u8 owner: 0 proxy, 1 client; u16 num_pong_bytes)
                        the pings waiting for their pong, oldest first

Version 1 (no gossip or first-message flags, no pings) is still read: its
connection waits for no pong, has no gossip asked, and counts its client
as having spoken (no ``peer_storage_retrieval`` goes out mid-stream).

The hub captures one with :meth:`lnproxy.hub.Hub.snapshot` and rebuilds it
with :meth:`lnproxy.hub.Hub.adopt`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from lnproxy.answer import MAX_WAITING_PINGS, PingOwner
from lnproxy.lifecycle import ConnState
from lnproxy.noise import TransportSnapshot

__all__ = [
    "ConnectionSnapshot",
    "HandshakeSnapshot",
    "SnapshotError",
    "MAGIC",
    "HANDSHAKE_MAGIC",
    "VERSION",
]

MAGIC: Final = b"LNPS"
VERSION: Final = 2

_PERSIST = 1
_THEIR_INIT = 2
_PING = 4
_BODY = 8
_INIT_DEADLINE = 16
_GOSSIP = 32
_SPOKE = 64

_OWNERS: Final = (PingOwner.PROXY, PingOwner.CLIENT)
_PING_ENTRY = struct.Struct(">BH")

_F64 = struct.Struct(">d")
_KEYS = struct.Struct(">32s32sH32s32sHiI")


class SnapshotError(ValueError):
    """Bytes that are not a valid connection snapshot."""


@dataclass(frozen=True, slots=True)
class ConnectionSnapshot:
    """One open connection, captured (see the module docstring).

    :ivar conn_id: the conn id the client knows it by.
    :ivar node_id: the client's node id (hex).
    :ivar peer: the peer's node id (hex).
    :ivar address: ``host:port`` of the peer.
    :ivar persist: the client's ``persist`` flag.
    :ivar state: its lifecycle state (``open``).
    :ivar since: when ``connect`` was asked (clock seconds).
    :ivar transport: the cipher state of both directions (secret).
    :ivar their_init: the peer's ``init`` message, once received.
    :ivar last_rx: when the last whole message arrived.
    :ivar ping_sent_at: when the unanswered keepalive ping was sent.
    :ivar body_since: since when a frame body has been awaited.
    :ivar init_deadline: when the peer's ``init`` must have come (None
        once it came).
    :ivar pings: the pings waiting for their pong, ``(owner,
        num_pong_bytes)``, oldest first.
    :ivar gossip_asked: the client asked for gossip on this connection.
    :ivar client_spoke: the client has sent its first message.
    """

    conn_id: str
    node_id: str
    peer: str
    address: str
    persist: bool
    state: ConnState
    since: float
    transport: TransportSnapshot = field(repr=False)
    their_init: bytes | None
    last_rx: float
    ping_sent_at: float | None = None
    body_since: float | None = None
    init_deadline: float | None = None
    pings: tuple[tuple[PingOwner, int], ...] = ()
    gossip_asked: bool = False
    client_spoke: bool = True

    def to_bytes(self) -> bytes:
        """The compact encoding of the module docstring."""
        flags = (
            (_PERSIST if self.persist else 0)
            | (_THEIR_INIT if self.their_init is not None else 0)
            | (_PING if self.ping_sent_at is not None else 0)
            | (_BODY if self.body_since is not None else 0)
            | (_INIT_DEADLINE if self.init_deadline is not None else 0)
            | (_GOSSIP if self.gossip_asked else 0)
            | (_SPOKE if self.client_spoke else 0)
        )
        t = self.transport
        parts = [
            MAGIC,
            bytes((VERSION, flags)),
            _short(self.conn_id.encode("ascii")),
            bytes.fromhex(self.node_id),
            bytes.fromhex(self.peer),
            _short(self.address.encode("utf-8")),
            _short(self.state.value.encode("ascii")),
            _F64.pack(self.since),
            _F64.pack(self.last_rx),
        ]
        for value in (self.ping_sent_at, self.body_since, self.init_deadline):
            if value is not None:
                parts.append(_F64.pack(value))
        parts.append(
            _KEYS.pack(
                t.sk, t.sck, t.snonce, t.rk, t.rck, t.rnonce, t.body_size,
                len(t.buffered),
            )
        )
        parts.append(t.buffered)
        if self.their_init is not None:
            parts.append(struct.pack(">H", len(self.their_init)) + self.their_init)
        if len(self.pings) > MAX_WAITING_PINGS:
            raise ValueError(f"more than {MAX_WAITING_PINGS} waiting pings")
        parts.append(bytes((len(self.pings),)))
        for owner, num_pong_bytes in self.pings:
            parts.append(_PING_ENTRY.pack(_OWNERS.index(owner), num_pong_bytes))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ConnectionSnapshot:
        """Decode :meth:`to_bytes`.

        :raise SnapshotError: naming what is wrong (never another error).
        """
        r = _Reader(bytes(data))
        try:
            if r.take(4) != MAGIC:
                raise SnapshotError("not a connection snapshot (bad magic)")
            version, flags = r.take(2)
            if version not in (1, VERSION):
                raise SnapshotError(
                    f"snapshot version {version} is not 1 or {VERSION}"
                )
            conn_id = r.short().decode("ascii")
            node_id = r.take(33).hex()
            peer = r.take(33).hex()
            address = r.short().decode("utf-8")
            state = ConnState(r.short().decode("ascii"))
            since = r.f64()
            last_rx = r.f64()
            ping = r.f64() if flags & _PING else None
            body = r.f64() if flags & _BODY else None
            deadline = r.f64() if flags & _INIT_DEADLINE else None
            sk, sck, sn, rk, rck, rn, body_size, nbuf = _KEYS.unpack(
                r.take(_KEYS.size)
            )
            transport = TransportSnapshot(
                sk, sck, sn, rk, rck, rn, r.take(nbuf), body_size
            )
            their_init = None
            if flags & _THEIR_INIT:
                (n,) = struct.unpack(">H", r.take(2))
                their_init = r.take(n)
            pings: list[tuple[PingOwner, int]] = []
            if version == 1:
                flags = (flags & ~_GOSSIP) | _SPOKE
            else:
                count = r.take(1)[0]
                if count > MAX_WAITING_PINGS:
                    raise SnapshotError(f"{count} waiting pings (at most 32)")
                for _ in range(count):
                    owner, num_pong_bytes = _PING_ENTRY.unpack(
                        r.take(_PING_ENTRY.size)
                    )
                    if owner >= len(_OWNERS):
                        raise SnapshotError(f"unknown ping owner {owner}")
                    pings.append((_OWNERS[owner], num_pong_bytes))
            if r.pos != len(r.data):
                raise SnapshotError("trailing bytes after the snapshot")
        except SnapshotError:
            raise
        except (ValueError, struct.error) as e:
            raise SnapshotError(f"malformed snapshot: {e}") from None
        return cls(
            conn_id,
            node_id,
            peer,
            address,
            bool(flags & _PERSIST),
            state,
            since,
            transport,
            their_init,
            last_rx,
            ping,
            body,
            deadline,
            tuple(pings),
            bool(flags & _GOSSIP),
            bool(flags & _SPOKE),
        )


def _short(data: bytes) -> bytes:
    if len(data) > 255:
        raise ValueError("field longer than 255 bytes")
    return bytes((len(data),)) + data


class _Reader:
    """A cursor over snapshot bytes that refuses to read past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise SnapshotError("truncated snapshot")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def short(self) -> bytes:
        return self.take(self.take(1)[0])

    def f64(self) -> float:
        return float(_F64.unpack(self.take(8))[0])


HANDSHAKE_MAGIC: Final = b"LNPH"
_HS = struct.Struct(">ddI")


@dataclass(frozen=True, slots=True)
class HandshakeSnapshot:
    """A connection whose act 2 was relayed and whose ``finish`` is awaited.

    It holds no key (the client holds the handshake's secrets until
    ``finish``), so it is not secret.  Encoding, integers big-endian::

        "LNPH"  u8 version=1  u8 flags (1 persist)
                u8 n + n bytes conn id (ASCII), 33 node id, 33 peer node id,
                u8 n + n bytes address (UTF-8)
                f64 since, f64 deadline (of act 3), u32 n + n early bytes

    ``early``: bytes the peer sent after act 2 (they are decrypted with the
    keys ``finish`` brings).
    """

    conn_id: str
    node_id: str
    peer: str
    address: str
    persist: bool
    since: float
    deadline: float
    early: bytes = b""

    def to_bytes(self) -> bytes:
        """The encoding of the class docstring."""
        return b"".join(
            (
                HANDSHAKE_MAGIC,
                bytes((1, _PERSIST if self.persist else 0)),
                _short(self.conn_id.encode("ascii")),
                bytes.fromhex(self.node_id),
                bytes.fromhex(self.peer),
                _short(self.address.encode("utf-8")),
                _HS.pack(self.since, self.deadline, len(self.early)),
                self.early,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> HandshakeSnapshot:
        """Decode :meth:`to_bytes`.

        :raise SnapshotError: naming what is wrong.
        """
        r = _Reader(bytes(data))
        try:
            if r.take(4) != HANDSHAKE_MAGIC:
                raise SnapshotError("not a handshake snapshot (bad magic)")
            version, flags = r.take(2)
            if version != 1:
                raise SnapshotError(f"handshake snapshot version {version} is not 1")
            conn_id = r.short().decode("ascii")
            node_id = r.take(33).hex()
            peer = r.take(33).hex()
            address = r.short().decode("utf-8")
            since, deadline, n = _HS.unpack(r.take(_HS.size))
            early = r.take(n)
            if r.pos != len(r.data):
                raise SnapshotError("trailing bytes after the snapshot")
        except SnapshotError:
            raise
        except (ValueError, struct.error) as e:
            raise SnapshotError(f"malformed snapshot: {e}") from None
        return cls(
            conn_id, node_id, peer, address, bool(flags & _PERSIST), since,
            deadline, early,
        )
