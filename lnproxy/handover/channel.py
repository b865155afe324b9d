"""The takeover channel: a Unix socket in the data dir between two processes.

A ``SOCK_SEQPACKET`` Unix socket (message boundaries kept, descriptors
travel with the message they belong to), mode 0600, and both ends check
with ``SO_PEERCRED`` that the other runs as the same user.  Each message is
one type byte and a payload::

    new -> old   H  hello (payload: protocol version, 1 byte)
    old -> new   P  version 2, before the freeze: up to 253 descriptors
                    of sockets that will probably cross (duplicates; the
                    old process still serves them), payload: their count
    old -> new   Q  version 2: the end of the ``P`` messages
    new -> old   A  version 2: every ``P`` indexed (the old side freezes
                    only then, so none of that work waits on the freeze)
    old -> new   F  up to 253 descriptors (SCM_RIGHTS; the kernel's
                    SCM_MAX_FD), payload: their count (u16); with version 2
                    only those not sent in a ``P``
    old -> new   M  a chunk of the manifest (at most 64 KiB)
    old -> new   L  the data dir lock (version 2: one descriptor of the
                    lock file's open file description, see below)
    old -> new   E  end: u32 descriptors, u32 manifest length
    new -> old   R  ready: everything received and prepared
    old -> new   C  commit: the sockets are yours; the old side lets go
    either       X  abort (payload: UTF-8 reason)

The old side freezes everything (stops reading peers and accepting) before
it sends the first descriptor, and waits ``timeout`` seconds for ``R``.
Without it (timeout, EOF because the new process died, ``X`` because it
could not prepare), it sends ``X`` and thaws: nothing happened.  With it, it
stops listening on the channel (unlinks the path, so the new process can
bind its own), sends ``C`` and releases its sockets (no ``shutdown``).  The
new side adopts only after ``C``; if the channel ends after its ``R``
without ``C`` or ``X`` it adopts only if the old process is gone (it died
between deciding and telling), else it gives up.

Before the freeze (version 2), the old process sends a duplicate of every
socket it would hand over now (``P``), and the new side indexes them by
inode while the old one still serves: only the sockets opened since cross
during the freeze.  A socket sent early that does not cross after all is
only closed (its duplicate) by the new side.

The data dir lock (version 2).  An ``flock`` belongs to the open file
description, and a descriptor sent with ``SCM_RIGHTS`` shares it: the old
process sends its lock descriptor (``L``), so from then on the lock is held
by both and never free.  After ``C`` the old process closes its store
without unlocking (closing its copy only) and then closes the channel; the
new side waits for that end of file (the old process no longer writes the
database) and opens the store on the descriptor it received.  Releasing
and retaking the lock instead left a moment in which a third process could
take the data dir.

The new side is blocking code, run before its reactor starts; the old side
runs the exchange in a reactor thread and touches Twisted objects only on
the reactor thread (``blockingCallFromThread``).
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger

from .manifest import ManifestError, inode_of
from .session import Frozen, Handover, Index, Received, match

__all__ = [
    "NothingToTakeOver",
    "Outcome",
    "TakeoverFailed",
    "TakeoverListener",
    "Takeover",
    "TakeoverRefused",
    "request_takeover",
]

_log = Logger()

VERSION = 2
#: Hello versions the old side serves (1: no lock descriptor crosses).
VERSIONS = (1, 2)
#: The kernel's limit of descriptors per SCM_RIGHTS message (SCM_MAX_FD).
MAX_FDS_PER_MESSAGE = 253
CHUNK = 64 * 1024
_RECV_SIZE = CHUNK + 64
_ANC_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * 4)

HELLO, FDS, MANIFEST, END, READY, COMMIT, ABORT, LOCK, EARLY = (
    b"H",
    b"F",
    b"M",
    b"E",
    b"R",
    b"C",
    b"X",
    b"L",
    b"P",
)
EARLY_END, EARLY_INDEXED = b"Q", b"A"


class TakeoverFailed(Exception):
    """The handover did not happen (the message says why)."""


class NothingToTakeOver(TakeoverFailed):
    """No process listens on the takeover socket: start normally."""


class TakeoverRefused(TakeoverFailed):
    """A process serves the channel, but this one will not take over from
    it (the ``check`` of :func:`request_takeover` said why); nothing was
    asked of it."""


def peer_credentials(skt: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end (SO_PEERCRED)."""
    raw = skt.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _check_same_user(skt: socket.socket) -> int:
    pid, uid, _ = peer_credentials(skt)
    if uid != os.geteuid():
        raise TakeoverFailed(
            f"the takeover peer (pid {pid}) runs as uid {uid}, not {os.geteuid()}"
        )
    return pid


@contextlib.contextmanager
def _short_path(path: str) -> Iterator[str]:
    """A path short enough for ``sockaddr_un`` (108 bytes) naming ``path``.

    Long data dir paths go through ``/proc/self/fd/N/`` of an open
    descriptor of the directory.
    """
    if len(os.fsencode(path)) < 100:
        yield path
        return
    directory, name = os.path.split(os.path.abspath(path))
    dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dirfd}/{name}"
    finally:
        os.close(dirfd)


def _send(skt: socket.socket, kind: bytes, payload: bytes = b"") -> None:
    skt.sendall(kind + payload)


def _recv(skt: socket.socket) -> tuple[bytes, bytes, list[int]]:
    """One message: (type, payload, descriptors).  EOF raises TakeoverFailed."""
    data, ancdata, flags, _ = skt.recvmsg(
        _RECV_SIZE, _ANC_SIZE, getattr(socket, "MSG_CMSG_CLOEXEC", 0)
    )
    fds: list[int] = []
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(cdata[: len(cdata) - (len(cdata) % arr.itemsize)])
            fds.extend(arr)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise TakeoverFailed("a takeover message was truncated")
    if not data:
        for fd in fds:
            os.close(fd)
        raise TakeoverFailed("the other process closed the takeover channel")
    return data[:1], data[1:], fds


def _send_early(skt: socket.socket, fds: list[int]) -> set[int]:
    """Before the freeze: send ``fds`` (253 a message) and close them;
    return their inodes."""
    inodes = set()
    try:
        for fd in fds:
            inodes.add(inode_of(fd))
        for i in range(0, len(fds), MAX_FDS_PER_MESSAGE):
            batch = fds[i : i + MAX_FDS_PER_MESSAGE]
            socket.send_fds(skt, [EARLY + struct.pack(">H", len(batch))], batch)
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return inodes


def _send_frozen(
    skt: socket.socket,
    frozen: Frozen,
    lock_fd: int | None = None,
    sent: set[int] | frozenset[int] = frozenset(),
) -> None:
    """Send the descriptors not ``sent`` early (by inode; 253 a message),
    the manifest, the lock (if any), the end mark."""
    fds = [
        fd for fd, inode in zip(frozen.fds, frozen.inodes, strict=True)
        if inode not in sent
    ]
    for i in range(0, len(fds), MAX_FDS_PER_MESSAGE):
        batch = fds[i : i + MAX_FDS_PER_MESSAGE]
        socket.send_fds(skt, [FDS + struct.pack(">H", len(batch))], batch)
    manifest = frozen.manifest
    for i in range(0, len(manifest), CHUNK):
        _send(skt, MANIFEST, manifest[i : i + CHUNK])
    if lock_fd is not None:
        socket.send_fds(skt, [LOCK], [lock_fd])
    _send(skt, END, struct.pack(">II", len(fds), len(manifest)))


@dataclass(frozen=True)
class Outcome:
    """How a takeover request ended, on the old side.

    ``committed``: the new process has everything and this one must exit
    (status 0).  Otherwise ``reason`` says why it was rolled back and this
    process goes on.  ``seconds``: from the freeze to the commit or the
    thaw, i.e. how long peers were not read by this process.  ``pending``:
    bytes queued for peers that crossed unsent (written by the new side).
    """

    committed: bool
    connections: int
    listeners: int
    seconds: float
    reason: str = ""
    pending: int = 0


class TakeoverListener:
    """Old side: listen on ``path``, hand everything over when asked.

    ``collect()`` is called on the reactor thread when a new process asks;
    it returns the :class:`Handover` (snapshots taken in the same turn: the
    freeze follows at once).  ``on_outcome(outcome)`` is called on the
    reactor thread at the end: on a commit the caller stops its reactor (and
    exits 0); on a rollback it resumes whatever it paused itself (timers),
    sockets are already thawed.  ``notify`` is passed to
    :meth:`Frozen.commit`.

    ``sockets`` (called on the reactor thread before the freeze) gives the
    sockets ``collect`` would hand over now: they are duplicated (a batch
    at a time) and sent early (version 2).  ``lock_fd`` (called on the
    reactor thread at the freeze) gives the data
    dir lock's descriptor to send to a version 2 new process; on a commit,
    ``on_outcome`` must close it without unlocking, and the channel ends
    (the new side's signal that the database is free) once ``on_outcome``
    returned.
    """

    def __init__(
        self,
        reactor: IReactorThreads,
        path: str,
        collect: Callable[[], Handover],
        on_outcome: Callable[[Outcome], None],
        timeout: float = 5.0,
        notify: bool = True,
        lock_fd: Callable[[], int | None] | None = None,
        sockets: Callable[[], list[socket.socket]] | None = None,
    ) -> None:
        self._reactor = reactor
        self.path = path
        self._collect = collect
        self._on_outcome = on_outcome
        self.timeout = timeout
        self._notify = notify
        self._lock_fd = lock_fd
        self._sockets = sockets
        self._socket: socket.socket | None = None
        self._busy = False
        self._reopen = False
        #: Why the handover in progress must not commit (see cancel()).
        self._cancelled = ""
        self._conn: socket.socket | None = None
        self._inode = 0

    # -- reactor side -----------------------------------------------------

    def start(self) -> None:
        """Bind the channel (mode 0600; a stale socket file is replaced).

        Only the data dir's owner may call this: a process started with
        ``--takeover`` once :meth:`Takeover.confirm` returned (the old one
        removed its socket file before committing).
        """
        skt = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        with _short_path(self.path) as short:
            skt.bind(short)
        os.chmod(self.path, 0o600)
        self._inode = os.stat(self.path).st_ino
        skt.listen(4)
        skt.setblocking(False)
        self._socket = skt
        self._reactor.addReader(self)  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop listening and remove the socket file."""
        skt, self._socket = self._socket, None
        if skt is None:
            return
        self._reactor.removeReader(self)  # type: ignore[attr-defined]
        with contextlib.suppress(FileNotFoundError):
            # Only ours: a successor may have bound the same path since.
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        skt.close()

    def fileno(self) -> int:
        """IReadDescriptor: the listening socket."""
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        """ILoggingContext."""
        return "TakeoverListener"

    def connectionLost(self, reason: object) -> None:
        """IReadDescriptor: the reactor drops us at shutdown."""
        self._socket = None

    def doRead(self) -> None:
        """A new process connects: serve it in a thread, one at a time."""
        if self._socket is None:
            return
        try:
            conn, _ = self._socket.accept()
        except BlockingIOError:
            return
        except OSError as e:
            _log.warn("takeover channel accept failed: {error}", error=e)
            return
        if self._busy:
            with contextlib.suppress(OSError):
                conn.send(ABORT + b"a takeover is already in progress")
            conn.close()
            return
        self._busy = True
        self._cancelled = ""
        self._conn = conn
        self._reactor.callInThread(self._serve, conn)

    @property
    def busy(self) -> bool:
        """Whether a handover is in progress (until its outcome)."""
        return self._busy

    def cancel(self, reason: str) -> None:
        """Reactor thread: make the handover in progress roll back (this
        process is stopping), unless it passed the point of no return.

        The outcome follows as usual; wait for it before going on.
        """
        if not self._busy:
            return
        self._cancelled = reason
        conn = self._conn
        if conn is not None:
            # Wakes the thread from waiting for the new side: it rolls back.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RD)

    @staticmethod
    def _duplicates(sockets: list[socket.socket]) -> list[int]:
        """Reactor thread (no socket closes meanwhile): duplicates of the
        sockets still open; fewer if descriptors run out (the others cross
        during the freeze, as with version 1)."""
        out: list[int] = []
        for skt in sockets:
            fd = skt.fileno()
            if fd < 0:
                continue  # closed since
            try:
                out.append(os.dup(fd))
            except OSError:
                break
        return out

    def _freeze(self) -> tuple[Frozen, int | None]:
        clock: IReactorTime = self._reactor  # type: ignore[assignment]
        frozen = Frozen(self._collect(), clock.seconds())
        return frozen, self._lock_fd() if self._lock_fd is not None else None

    def _finish(
        self,
        frozen: Frozen | None,
        committed: bool,
        reason: str,
        conn: socket.socket | None = None,
    ) -> None:
        clock: IReactorTime = self._reactor  # type: ignore[assignment]
        self._busy = False
        self._conn = None
        # Measured before the commit's releases: from here the new process
        # reads (or, rolled back, this one does again).
        elapsed = clock.seconds() - frozen.frozen_at if frozen is not None else 0.0
        if frozen is not None and committed:
            outcome = Outcome(
                True,
                len(frozen.transports),
                len(frozen.ports),
                elapsed,
                reason,
                frozen.pending_total,
            )
            try:
                # The caller lets go of the database (and the lock) first:
                # the new process waits for the channel's end to open it.
                self._on_outcome(outcome)
            finally:
                if conn is not None:
                    conn.close()
                frozen.commit(notify=self._notify)
            _log.info(
                "handed over {connections} connections and {listeners} listeners"
                " in {seconds:.3f} s",
                connections=outcome.connections,
                listeners=outcome.listeners,
                seconds=outcome.seconds,
            )
            return
        if frozen is None:
            outcome = Outcome(False, 0, 0, 0.0, reason)
        else:
            if committed:
                frozen.commit(notify=self._notify)
            else:
                frozen.rollback()
            outcome = Outcome(
                committed,
                len(frozen.transports),
                len(frozen.ports),
                elapsed,
                reason,
                frozen.pending_total,
            )
        if self._cancelled:
            self._reopen = False  # stopping: nothing to serve
        if not committed and self._socket is None and self._reopen:
            # We stopped listening at the point of no return and then the
            # commit could not be sent: serve the channel again.
            try:
                self.start()
            except OSError as e:
                _log.warn("cannot reopen the takeover channel: {error}", error=e)
        self._reopen = False
        if committed:
            _log.info(
                "handed over {connections} connections and {listeners} listeners"
                " in {seconds:.3f} s",
                connections=outcome.connections,
                listeners=outcome.listeners,
                seconds=outcome.seconds,
            )
        else:
            _log.warn(
                "takeover rolled back, serving on: {reason}", reason=outcome.reason
            )
        self._on_outcome(outcome)

    def _no_return(self, frozen: Frozen) -> None:
        """On the reactor thread, just before the commit: refuse it if a
        frozen connection changed since its snapshot, else stop serving."""
        if self._cancelled:
            raise TakeoverFailed(self._cancelled)
        written = frozen.written()
        if written:
            raise TakeoverFailed(
                f"{written} connection(s) were written to during the handover"
            )
        self.stop()
        self._reopen = True  # should the commit not reach the new side

    # -- thread side ------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        reactor = self._reactor
        frozen: Frozen | None = None
        try:
            conn.settimeout(self.timeout)
            _check_same_user(conn)
            kind, payload, fds = _recv(conn)
            for fd in fds:
                os.close(fd)
            if kind != HELLO or len(payload) < 1 or payload[0] not in VERSIONS:
                raise TakeoverFailed("the new process spoke another protocol")
            version = payload[0]
            sent: set[int] = set()
            if version >= 2 and self._sockets is not None:
                # A batch at a time: N connections never need 2N descriptors.
                early = blockingCallFromThread(reactor, self._sockets)
                for i in range(0, len(early), MAX_FDS_PER_MESSAGE):
                    batch = early[i : i + MAX_FDS_PER_MESSAGE]
                    dups = blockingCallFromThread(reactor, self._duplicates, batch)
                    if not dups:
                        break
                    sent |= _send_early(conn, dups)
                _send(conn, EARLY_END)
                kind, payload, fds = _recv(conn)
                for fd in fds:
                    os.close(fd)
                if kind == ABORT:
                    raise TakeoverFailed(
                        "the new process gave up: "
                        + payload.decode("utf-8", "replace")[:500]
                    )
                if kind != EARLY_INDEXED:
                    raise TakeoverFailed(
                        f"unexpected message {kind!r} from new process"
                    )
            if self._cancelled:
                raise TakeoverFailed(self._cancelled)
            frozen, lock_fd = blockingCallFromThread(reactor, self._freeze)
            assert frozen is not None
            _send_frozen(conn, frozen, lock_fd if version >= 2 else None, sent)
            kind, payload, fds = _recv(conn)
            for fd in fds:
                os.close(fd)
            if kind == ABORT:
                raise TakeoverFailed(
                    "the new process gave up: "
                    + payload.decode("utf-8", "replace")[:500]
                )
            if kind != READY:
                raise TakeoverFailed(f"unexpected message {kind!r} from new process")
            # Point of no return: free the path for the successor's channel.
            blockingCallFromThread(reactor, self._no_return, frozen)
            _send(conn, COMMIT)
        except Exception as e:
            reason = self._cancelled or _describe(e)
            with contextlib.suppress(OSError):
                _send(conn, ABORT, reason.encode("utf-8"))
            conn.close()
            reactor.callFromThread(self._finish, frozen, False, reason)
            return
        # The channel ends once the caller let go of the database (see
        # _finish): the new process's signal to open it.
        reactor.callFromThread(self._finish, frozen, True, "", conn)


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "the new process did not confirm in time"
    if isinstance(e, TakeoverFailed):
        return str(e)
    if isinstance(e, OSError):
        return f"takeover channel: {os.strerror(e.errno) if e.errno else e}"
    return f"{type(e).__name__}: {e}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our child in tests) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class Takeover:
    """New side: what arrived, and the two ways to end the exchange.

    ``received`` holds the descriptors matched to their records.  Call
    :meth:`confirm` once everything is prepared (protocols built from the
    blobs): when it returns, the sockets are this process's to adopt
    (``received.adopt``).  Call :meth:`abort` instead to let the old
    process go on; it closes this process's copies.
    """

    def __init__(
        self,
        skt: socket.socket,
        received: Received,
        old_pid: int,
        lock_fd: int | None = None,
    ) -> None:
        self._socket = skt
        self.received = received
        self.old_pid = old_pid
        #: The data dir lock's descriptor (an old process of version 2):
        #: after :meth:`confirm`, open the store on it
        #: (:meth:`lnproxy.store.sqlite.SqliteStore.open`, ``lock_fd``).
        self.lock_fd = lock_fd

    def _close_lock(self) -> None:
        fd, self.lock_fd = self.lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # never LOCK_UN: the old process holds it too

    def confirm(self, timeout: float = 10.0) -> None:
        """Send ready, wait for the commit.  TakeoverFailed if rolled back.

        With a lock descriptor, it also waits (``timeout``) for the channel
        to end after the commit: the old process has closed its database.
        """
        skt = self._socket
        try:
            skt.settimeout(timeout)
            _send(skt, READY)
        except OSError as e:
            # The old process never got our ready: it cannot have committed.
            reason = f"the old process did not take our ready: {e}"
            with contextlib.suppress(OSError, TakeoverFailed):
                kind, payload, fds = _recv(skt)  # its abort, if it said why
                for fd in fds:
                    os.close(fd)
                if kind == ABORT:
                    reason = "the old process rolled back: " + payload.decode(
                        "utf-8", "replace"
                    )
            skt.close()
            self.received.close()
            self._close_lock()
            raise TakeoverFailed(reason) from e
        try:
            kind, payload, fds = _recv(skt)
            for fd in fds:
                os.close(fd)
        except (OSError, TakeoverFailed) as e:
            deadline = time.monotonic() + timeout
            while _alive(self.old_pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if not _alive(self.old_pid):
                # It died after our ready, before telling: nobody else
                # serves these sockets now; take them.
                _log.warn("the old process died before committing; adopting")
                skt.close()
                return
            self.received.close()
            self._close_lock()
            skt.close()
            raise TakeoverFailed(f"no commit from the old process: {e}") from e
        if kind == ABORT:
            skt.close()
            self.received.close()
            self._close_lock()
            raise TakeoverFailed(
                "the old process rolled back: " + payload.decode("utf-8", "replace")
            )
        if kind != COMMIT:
            skt.close()
            self.received.close()
            self._close_lock()
            raise TakeoverFailed(f"unexpected message {kind!r} from old process")
        if self.lock_fd is not None:
            # Committed: the end of the channel says the old process closed
            # its database (it may still be recording closes until then).
            try:
                while skt.recv(64):
                    pass
            except OSError as e:
                _log.warn(
                    "the old process did not close the channel after its commit:"
                    " {error}",
                    error=e,
                )
        skt.close()

    def abort(self, reason: str) -> None:
        """Tell the old process to go on; close this process's copies."""
        with contextlib.suppress(OSError):
            _send(self._socket, ABORT, reason.encode("utf-8")[:4000])
        self._socket.close()
        self.received.close()
        self._close_lock()


def request_takeover(
    path: str,
    timeout: float = 10.0,
    check: Callable[[], str | None] | None = None,
) -> Takeover:
    """Ask the process serving ``path`` to hand everything over (blocking).

    Raises :class:`NothingToTakeOver` if nobody listens there (start
    normally: a socket file left by a crashed process is only a file) and
    :class:`TakeoverFailed` for anything else (the old process rolls back
    by itself).  ``check`` is called once a live process answered and
    before anything is asked of it: a reason raises
    :class:`TakeoverRefused`.
    """
    skt = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    skt.settimeout(timeout)
    try:
        with _short_path(path) as short:
            skt.connect(short)
    except OSError as e:
        skt.close()
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise NothingToTakeOver(f"no process serves {path}") from e
        raise TakeoverFailed(f"cannot reach {path}: {e}") from e
    fds: list[int] = []
    lock: list[int] = []
    index = Index()
    try:
        old_pid = _check_same_user(skt)
        refusal = check() if check is not None else None
        if refusal is not None:
            raise TakeoverRefused(refusal)
        _send(skt, HELLO, bytes([VERSION]))
        chunks: list[bytes] = []
        while True:
            kind, payload, got = _recv(skt)
            if kind == LOCK:
                lock.extend(got)
                if len(lock) != 1:
                    raise TakeoverFailed("the old process sent no single lock")
                continue
            if kind == EARLY:
                index.add(got)  # while the old process still serves
                continue
            if kind == EARLY_END:
                _send(skt, EARLY_INDEXED)  # now it may freeze
                continue
            fds.extend(got)
            if kind == FDS:
                continue
            if kind == MANIFEST:
                chunks.append(payload)
                continue
            if kind == ABORT:
                raise TakeoverFailed(
                    "the old process refused: " + payload.decode("utf-8", "replace")
                )
            if kind != END or len(payload) != 8:
                raise TakeoverFailed(f"unexpected message {kind!r} from old process")
            n_fds, n_bytes = struct.unpack(">II", payload)
            manifest = b"".join(chunks)
            if n_fds != len(fds) or n_bytes != len(manifest):
                raise TakeoverFailed(
                    f"incomplete handover: {len(fds)}/{n_fds} descriptors,"
                    f" {len(manifest)}/{n_bytes} bytes"
                )
            break
        try:
            received = match(manifest, fds, index)
        except ManifestError as e:
            fds = []  # match closed them (and the index)
            raise TakeoverFailed(f"bad manifest: {e}") from e
    except BaseException as e:
        index.close()
        for fd in fds + lock:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            _send(skt, ABORT, str(e).encode("utf-8")[:4000])
        skt.close()
        if isinstance(e, TakeoverFailed):
            raise
        if isinstance(e, OSError):
            raise TakeoverFailed(f"takeover channel: {e}") from e
        raise
    return Takeover(skt, received, old_pid, lock[0] if lock else None)
