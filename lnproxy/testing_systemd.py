"""A fake service manager for tests: systemd's notify socket and fd store.

:class:`FakeServiceManager` binds a ``SOCK_DGRAM`` Unix socket (by default
in the abstract namespace, given to children as ``NOTIFY_SOCKET=@name``),
receives notifications with their descriptors (``recvmsg``) and the
sender's credentials (``SO_PASSCRED``) in a thread, and keeps what systemd
keeps: descriptors uploaded with ``FDSTORE=1`` under their ``FDNAME``
(removed again by ``FDSTOREREMOVE=1``), up to ``FileDescriptorStoreMax``.
``BARRIER=1`` is answered by closing the descriptor it carries; any other
descriptor not meant for the store is closed, as systemd does.  Only the
main process may notify (``NotifyAccess=main``).

:meth:`FakeServiceManager.command` gives what starts the next process with
the store passed in: ``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID``.
``LISTEN_PID`` must be the child's own pid, known only after the fork, so a
small Python shim moves the descriptors to 3, 4, ... sets the variables and
``exec``\\ s the real command (the same process, the same pid).

Differences from systemd worth knowing: no POLLHUP pruning of stored
sockets, no dedup of a descriptor stored twice, no ``FDPOLL=``.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FakeServiceManager", "Notification"]

SHIM = """\
import fcntl, os, sys
src = [int(x) for x in os.environ.pop("FAKE_SD_FDS").split(",") if x]
n = len(src)
tmp = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + n) for fd in src]
for fd in src:
    os.close(fd)
for i, fd in enumerate(tmp):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
if n:
    os.environ["LISTEN_FDS"] = str(n)
    os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], sys.argv[1:])
"""


@dataclass(frozen=True)
class Notification:
    """One datagram: the sender's pid, its fields, how many descriptors."""

    pid: int
    fields: dict[str, str]
    fds: int


class FakeServiceManager:
    """Plays systemd's side of sd_notify and the file descriptor store."""

    def __init__(
        self, store_max: int = 4096, abstract: bool = True, path: str = ""
    ) -> None:
        self.store_max = store_max
        self.store: list[tuple[str, int]] = []
        self.notifications: list[Notification] = []
        self.main_pid: int | None = None
        self._lock = threading.Condition()
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if abstract:
            name = f"lnproxy-fake-systemd-{uuid.uuid4().hex}"
            self._socket.bind(b"\0" + name.encode())
            self.notify_socket = "@" + name
        else:
            self._socket.bind(path)
            self.notify_socket = path
        self._socket.settimeout(0.05)
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop receiving and close every stored descriptor."""
        self._running = False
        self._thread.join()
        self._socket.close()
        with self._lock:
            for _, fd in self.store:
                os.close(fd)
            self.store = []

    # -- receiving --------------------------------------------------------

    def _loop(self) -> None:
        anc = socket.CMSG_SPACE(253 * 4) + socket.CMSG_SPACE(struct.calcsize("3i"))
        while self._running:
            try:
                data, ancdata, _, _ = self._socket.recvmsg(
                    4096, anc, socket.MSG_CMSG_CLOEXEC
                )
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            fds: list[int] = []
            pid = 0
            for level, kind, cdata in ancdata:
                if level != socket.SOL_SOCKET:
                    continue
                if kind == socket.SCM_RIGHTS:
                    arr = array.array("i")
                    arr.frombytes(cdata[: len(cdata) - len(cdata) % arr.itemsize])
                    fds.extend(arr)
                elif kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cdata[:12])[0]
            self._handle(pid, data, fds)

    def _handle(self, pid: int, data: bytes, fds: list[int]) -> None:
        fields = dict(
            line.split("=", 1)
            for line in data.decode("utf-8", "replace").split("\n")
            if "=" in line
        )
        with self._lock:
            if self.main_pid is not None and pid != self.main_pid:
                for fd in fds:
                    os.close(fd)  # NotifyAccess=main: ignored
                return
            keep: list[int] = []
            if fields.get("FDSTORE") == "1":
                name = fields.get("FDNAME", "stored")
                for fd in fds:
                    if len(self.store) < self.store_max:
                        self.store.append((name, fd))
                        keep.append(fd)
            if fields.get("FDSTOREREMOVE") == "1":
                name = fields.get("FDNAME", "")
                for stored_name, fd in self.store:
                    if stored_name == name:
                        os.close(fd)
                self.store = [(n, fd) for n, fd in self.store if n != name]
            for fd in fds:
                if fd not in keep:
                    os.close(fd)  # BARRIER=1's pipe end: closing it answers
            self.notifications.append(Notification(pid, fields, len(fds)))
            self._lock.notify_all()

    # -- asking -----------------------------------------------------------

    def seen(self, key: str, value: str = "1", pid: int | None = None) -> bool:
        """Whether a notification carried ``key=value`` (from ``pid``)."""
        with self._lock:
            return any(
                n.fields.get(key) == value and (pid is None or n.pid == pid)
                for n in self.notifications
            )

    def names(self) -> list[str]:
        """The names of the stored descriptors, in store order."""
        with self._lock:
            return [name for name, _ in self.store]

    def environment(self) -> dict[str, str]:
        """``NOTIFY_SOCKET`` for a child."""
        return {"NOTIFY_SOCKET": self.notify_socket}

    def command(
        self, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> tuple[list[str], dict[str, str], list[int]]:
        """How to start the service with the store passed in.

        Returns ``(args, env, fds)``: run ``args`` with ``env``, passing
        ``fds`` under the same numbers (``subprocess.Popen(pass_fds=fds)``,
        or ``childFDs={fd: fd}`` for ``reactor.spawnProcess``).  ``argv[0]``
        must be an absolute path.
        """
        child_env = dict(os.environ if env is None else env)
        for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID"):
            child_env.pop(key, None)
        child_env.update(self.environment())
        with self._lock:
            stored = list(self.store)
        child_env["FAKE_SD_FDS"] = ",".join(str(fd) for _, fd in stored)
        if stored:
            child_env["LISTEN_FDNAMES"] = ":".join(name for name, _ in stored)
        return [sys.executable, "-c", SHIM, *argv], child_env, [fd for _, fd in stored]
