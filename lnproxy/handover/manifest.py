"""What crosses with the sockets: one binary manifest, the same both ways.

The manifest names every socket by its inode (``fstat(fd).st_ino``: one
socket keeps its inode in every process and through every ``dup``), so the
receiver can match descriptors to records whatever order they arrive in;
systemd does not promise to keep the order of its file descriptor store.

Layout (big-endian)::

    b"LNPHOVR1"
    u32 connections, u32 listeners, u32 state length, state
    per connection: u64 inode, u8 family, u8 flags, u32 n, n pending bytes,
                    u32 m, m bytes of the caller's blob
    per listener:   u64 inode, u8 family, u16 n, n bytes of UTF-8 name

Flag 1 (``closing``): the old owner had asked to close the connection
once its buffer was written (``loseConnection``); the new one writes the
pending bytes and closes it.  ``pending`` is what the old owner's Twisted
had accepted for writing and the kernel had not taken; the blob and ``state`` are opaque here (the
caller's connection snapshots and process state).  Keys may be inside:
this value only ever lives in memory, a Unix socket or a memfd.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "ConnectionRecord",
    "ListenerRecord",
    "Manifest",
    "ManifestError",
    "decode",
    "encode",
    "inode_of",
]

MAGIC = b"LNPHOVR1"
#: Families a handed-over socket may have.
FAMILIES = (socket.AF_INET, socket.AF_INET6)


class ManifestError(ValueError):
    """The manifest is malformed (truncated, bad magic, bad family)."""


def inode_of(fd: int) -> int:
    """The socket's inode: its identity across processes."""
    return os.fstat(fd).st_ino


@dataclass(frozen=True)
class ConnectionRecord:
    """One connected socket: its identity, unsent bytes and the caller's blob."""

    inode: int
    family: int
    pending: bytes
    blob: bytes
    closing: bool = False


@dataclass(frozen=True)
class ListenerRecord:
    """One listening socket and the caller's name for it."""

    inode: int
    family: int
    name: str


@dataclass(frozen=True)
class Manifest:
    """Everything described, in the order the descriptors are sent."""

    connections: tuple[ConnectionRecord, ...] = ()
    listeners: tuple[ListenerRecord, ...] = ()
    state: bytes = b""


def encode(manifest: Manifest) -> bytes:
    """The manifest as bytes (see the module docstring)."""
    parts = [
        MAGIC,
        struct.pack(
            ">III",
            len(manifest.connections),
            len(manifest.listeners),
            len(manifest.state),
        ),
        manifest.state,
    ]
    for c in manifest.connections:
        parts.append(
            struct.pack(">QBBI", c.inode, c.family, int(c.closing), len(c.pending))
        )
        parts.append(c.pending)
        parts.append(struct.pack(">I", len(c.blob)))
        parts.append(c.blob)
    for li in manifest.listeners:
        name = li.name.encode("utf-8")
        parts.append(struct.pack(">QBH", li.inode, li.family, len(name)))
        parts.append(name)
    return b"".join(parts)


class _Reader:
    """Bounds-checked reads from a bytes value."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._at = 0

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes, or ManifestError if there are fewer."""
        if self._at + n > len(self._data):
            raise ManifestError("manifest truncated")
        chunk = bytes(self._data[self._at : self._at + n])
        self._at += n
        return chunk

    def unpack(self, fmt: str) -> tuple[int, ...]:
        """Unpack a fixed-size struct."""
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def done(self) -> bool:
        """Whether every byte was read."""
        return self._at == len(self._data)


def _family(value: int) -> int:
    if value not in FAMILIES:
        raise ManifestError(f"unsupported address family {value}")
    return value


def decode(data: bytes) -> Manifest:
    """Parse :func:`encode`'s output; ManifestError on anything malformed."""
    reader = _Reader(data)
    if reader.take(len(MAGIC)) != MAGIC:
        raise ManifestError("not a handover manifest (bad magic)")
    n_conn, n_listen, state_len = reader.unpack(">III")
    state = reader.take(state_len)
    connections = []
    for _ in range(n_conn):
        inode, family, flags, n = reader.unpack(">QBBI")
        if flags & ~1:
            raise ManifestError(f"unknown connection flags {flags}")
        pending = reader.take(n)
        (m,) = reader.unpack(">I")
        connections.append(
            ConnectionRecord(
                inode, _family(family), pending, reader.take(m), bool(flags & 1)
            )
        )
    listeners = []
    for _ in range(n_listen):
        inode, family, n = reader.unpack(">QBH")
        try:
            name = reader.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError("listener name is not UTF-8") from None
        listeners.append(ListenerRecord(inode, _family(family), name))
    if not reader.done():
        raise ManifestError("trailing bytes after the manifest")
    return Manifest(tuple(connections), tuple(listeners), state)
