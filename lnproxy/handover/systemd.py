"""The systemd way: sd_notify, the file descriptor store, LISTEN_FDS.

Under ``Type=notify`` with ``FileDescriptorStoreMax=`` set, a stopping
process uploads its sockets to the service manager (``FDSTORE=1``) and its
state in a sealed memfd (``os.memfd_create``: the keys in it never touch a
file), ends with ``BARRIER=1`` (so every upload is processed before it
exits), and the next process gets them back through ``LISTEN_FDS`` /
``LISTEN_FDNAMES`` (systemd's docs/FILE_DESCRIPTOR_STORE.md).  A
``systemctl restart`` keeps the store; a ``stop`` then ``start`` does not
(unless ``FileDescriptorStorePreserve=yes``, systemd 254 and later).

Names: every peer connection is stored under one name, :data:`PEER`, as
``LISTEN_FDNAMES`` is one environment string (at most 128 KiB: with
``peer:`` that is about 26,000 descriptors); listeners under
:data:`LISTENER`; the manifest memfd under :data:`STATE`.  The manifest
names each socket by inode, so the order systemd passes them back in does
not matter.

``twisted.internet.endpoints`` reads and *deletes* ``LISTEN_PID`` and
``LISTEN_FDS`` when it is imported (``ListenFDs.fromEnvironment`` at class
definition): call :func:`capture_listen_fds` before that, e.g. first thing
in the twistd plugin module.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .session import Frozen, Received, match

__all__ = [
    "LISTENER",
    "PEER",
    "STATE",
    "ListenFds",
    "Notifier",
    "capture_listen_fds",
    "captured_listen_fds",
    "restore",
    "store",
]

PEER = "peer"
LISTENER = "listen"
STATE = "state"
#: Descriptors per notify message (the kernel's SCM_MAX_FD).
MAX_FDS_PER_MESSAGE = 253
#: Where socket activation starts numbering (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


@dataclass(frozen=True)
class ListenFds:
    """Descriptors passed by the service manager, with their names."""

    fds: tuple[tuple[int, str], ...] = ()

    def named(self, name: str) -> list[int]:
        """The descriptors stored under ``name``, in the order received."""
        return [fd for fd, n in self.fds if n == name]


_captured: ListenFds | None = None


def capture_listen_fds(environ: Mapping[str, str] | None = None) -> ListenFds:
    """Read ``LISTEN_PID``/``LISTEN_FDS``/``LISTEN_FDNAMES`` once.

    Only the first call reads the environment (later ones return the same
    value), so call it as early as possible: importing
    ``twisted.internet.endpoints`` deletes ``LISTEN_PID`` and
    ``LISTEN_FDS``.  If that happened already, the descriptors are taken
    from the list Twisted's ``systemd:`` endpoint parser kept (a private
    attribute: a fallback, not the plan).  The variables are left in place
    for Twisted's own ``systemd:`` endpoints.  The descriptors get
    ``FD_CLOEXEC``, as ``sd_listen_fds`` does.
    """
    global _captured
    if _captured is not None:
        return _captured
    env = os.environ if environ is None else environ
    fds: list[int] = []
    if env.get("LISTEN_PID") == str(os.getpid()):
        try:
            count = int(env["LISTEN_FDS"])
            fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
        except (KeyError, ValueError):
            fds = []
    elif environ is None and "twisted.internet.endpoints" in sys.modules:
        # Too late: Twisted took LISTEN_PID/LISTEN_FDS (it leaves
        # LISTEN_FDNAMES).  Its systemd endpoint parser kept the list.
        endpoints = sys.modules["twisted.internet.endpoints"]
        parser = getattr(endpoints, "_SystemdParser", None)
        daemon = getattr(parser, "_sddaemon", None)
        if daemon is not None:
            fds = list(daemon.inheritedDescriptors())
    names = env.get("LISTEN_FDNAMES", "")
    name_list = names.split(":") if names else []
    pairs = []
    for i, fd in enumerate(fds):
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
        except OSError:
            continue
        pairs.append((fd, name_list[i] if i < len(name_list) else "unknown"))
    _captured = ListenFds(tuple(pairs))
    return _captured


def captured_listen_fds() -> ListenFds:
    """What :func:`capture_listen_fds` found (empty if it was never called)."""
    return _captured if _captured is not None else ListenFds()


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notifier:
    """``sd_notify``: datagrams to ``$NOTIFY_SOCKET``, descriptors attached.

    The socket is connected first: ``socket.send_fds`` (``sendmsg``) takes
    no address.  Every method returns False when there is no service
    manager to tell (no ``NOTIFY_SOCKET``).
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = (
            os.environ.get("NOTIFY_SOCKET") if address is None else address
        ) or None

    def send(self, message: str, fds: Sequence[int] = ()) -> bool:
        """Send one notification; OSError if the manager cannot be reached."""
        if self.address is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as skt:
            skt.connect(_address(self.address))
            data = message.encode("utf-8")
            if fds:
                socket.send_fds(skt, [data], list(fds))
            else:
                skt.send(data)
        return True

    def ready(self, status: str = "") -> bool:
        """``READY=1`` (and an optional ``STATUS=``)."""
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        """``STOPPING=1``."""
        return self.send("STOPPING=1")

    def store(self, name: str, fds: Sequence[int]) -> bool:
        """Upload ``fds`` to the store under ``name`` (253 a message)."""
        if self.address is None:
            return False
        for i in range(0, len(fds), MAX_FDS_PER_MESSAGE):
            self.send(f"FDSTORE=1\nFDNAME={name}", fds[i : i + MAX_FDS_PER_MESSAGE])
        return True

    def remove(self, name: str) -> bool:
        """``FDSTOREREMOVE=1``: the manager closes every copy named ``name``."""
        return self.send(f"FDSTOREREMOVE=1\nFDNAME={name}")

    def barrier(self, timeout: float = 5.0) -> bool:
        """``BARRIER=1``: wait until the manager processed every message sent
        before (it closes the pipe end we pass; systemd 246 and later).

        TimeoutError if it does not within ``timeout``.
        """
        if self.address is None:
            return False
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            self.send("BARRIER=1", [write_end])
            os.close(write_end)
            write_end = -1
            poller = select.poll()
            poller.register(read_end, 0)  # POLLHUP is always reported
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the service manager did not answer BARRIER=1")
                if poller.poll(left * 1000):
                    return True
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)


def state_memfd(data: bytes) -> int:
    """A sealed memfd holding ``data`` (never a file: keys may be inside)."""
    fd = os.memfd_create("lnproxy-handover", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        seals = (
            fcntl.F_SEAL_SEAL
            | fcntl.F_SEAL_SHRINK
            | fcntl.F_SEAL_GROW
            | fcntl.F_SEAL_WRITE
        )
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_memfd(fd: int, limit: int = 1 << 30) -> bytes:
    """The whole content of a memfd (from offset 0), at most ``limit``."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise ValueError(f"state memfd of {size} bytes is over the limit")
    return os.pread(fd, size, 0)


def store(notifier: Notifier, frozen: Frozen, barrier_timeout: float = 5.0) -> None:
    """Old side, on SIGTERM: upload every frozen socket and the manifest.

    Sockets first (peers under :data:`PEER`, listeners under
    :data:`LISTENER`), then the manifest memfd under :data:`STATE`, then a
    barrier.  The caller then calls ``frozen.commit()`` and exits 0.
    Raises if there is no service manager (``frozen.rollback()`` then).
    """
    if notifier.address is None:
        raise RuntimeError("no NOTIFY_SOCKET: not running under a service manager")
    n_conn = len(frozen.transports)
    notifier.send("STOPPING=1")
    notifier.store(PEER, frozen.fds[:n_conn])
    if frozen.fds[n_conn:]:
        notifier.store(LISTENER, frozen.fds[n_conn:])
    memfd = state_memfd(frozen.manifest)
    try:
        notifier.store(STATE, [memfd])
    finally:
        os.close(memfd)
    notifier.barrier(barrier_timeout)


def restore(listen: ListenFds) -> Received | None:
    """New side: the sockets and state the previous process stored.

    Returns None when there is no stored state (a fresh start).  Stored
    peer and listener sockets without a state memfd cannot be resumed and
    are closed.  Descriptors with other names (socket units) are left
    alone.  After adopting, tell the manager to drop its copies with
    ``Notifier.remove`` for :data:`PEER`, :data:`LISTENER` and
    :data:`STATE` (else a peer would not see the connection close when
    this process closes it), then ``READY=1``.
    """
    states = listen.named(STATE)
    sockets = listen.named(PEER) + listen.named(LISTENER)
    if not states:
        for fd in sockets:
            with contextlib.suppress(OSError):
                os.close(fd)
        return None
    # More than one memfd only if a previous restore failed to remove it:
    # take the newest (shmem hands out inode numbers in increasing order).
    data = read_memfd(max(states, key=lambda fd: os.fstat(fd).st_ino))
    for fd in states:
        with contextlib.suppress(OSError):
            os.close(fd)
    return match(data, sockets)
