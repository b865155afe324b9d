"""The data dir of a proxy: the directory itself, its lock and the server key.

The data dir (mode 0700) holds:

- ``lock``: an exclusive ``flock`` held for the life of the store, so that a
  second lnproxy process refuses to start instead of corrupting the data; it
  holds the pid of the process that owns it;
- ``server.key``: the proxy's own secp256k1 secret key, 64 hex digits and a
  newline, created once (mode 0600). Its path may be given explicitly
  (:func:`load_or_create_server_secret`'s ``key_path``), e.g. to share one
  key between processes; the default is :func:`default_key_path`;
- the database files of the store implementation (e.g. ``lnproxy.sqlite``).

Also the small file helpers (atomic temp files, directory fsync) the SQLite
schema code shares.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import tempfile
from contextlib import suppress

import coincurve
from twisted.logger import Logger

from lnproxy.store.interface import DataDirLocked, StoreError

__all__ = [
    "KEY_FILE",
    "LOCK_FILE",
    "default_key_path",
    "make_data_dir",
    "acquire_lock",
    "write_pid",
    "release_lock",
    "load_or_create_server_secret",
]

_log = Logger()

#: File names inside the data dir.
KEY_FILE = "server.key"
LOCK_FILE = "lock"

_KEY_HEX = re.compile(r"[0-9a-fA-F]{64}")
# A valid key file is 65 bytes; read a little more so that trailing junk is
# detected rather than silently ignored.
_KEY_FILE_MAX = 128


# ---------------------------------------------------------------------------
# File helpers


def fsync_dir(directory: str) -> None:
    """Make a rename or link in ``directory`` durable.

    :param directory: the directory whose entries changed.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(*paths: str) -> None:
    """Remove files that may or may not exist (temp files on failure)."""
    for path in paths:
        with suppress(FileNotFoundError):
            os.unlink(path)


def temp_path_near(path: str) -> str:
    """Create an empty mode-0600 temp file next to ``path``; return its name.

    :param path: the final file the temp file will be renamed to.
    """
    fd, name = tempfile.mkstemp(
        prefix=os.path.basename(path) + ".",
        suffix=".tmp",
        dir=os.path.dirname(path) or ".",
    )
    os.close(fd)
    return name


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (os.write may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------------------
# The directory and its lock


def make_data_dir(data_dir: str) -> None:
    """Create the data dir with mode 0700 (and its parents) if missing.

    :param data_dir: absolute path of the data dir.
    :raises StoreError: if it cannot be created or is not a directory.
    """
    try:
        os.makedirs(os.path.dirname(data_dir), exist_ok=True)
        os.mkdir(data_dir, 0o700)
        # mkdir's mode goes through the umask; make it exactly 0700.
        os.chmod(data_dir, 0o700)
    except FileExistsError:
        if not os.path.isdir(data_dir):
            raise StoreError(
                f"data dir {data_dir} exists and is not a directory"
            ) from None
    except OSError as e:
        raise StoreError(f"cannot create data dir {data_dir}: {e.strerror}") from e


def acquire_lock(data_dir: str) -> int:
    """Take the data dir lock and write our pid into it.

    ``flock`` belongs to the open file description, so a second open of the
    lock file conflicts even inside the same process, and the kernel drops
    the lock when the process dies: a crash never leaves a stale lock.

    :param data_dir: absolute path of the data dir.
    :return: the lock file descriptor; keep it open to keep the lock.
    :raises DataDirLocked: if another process or store holds it.
    :raises StoreError: if the lock file cannot be opened.
    """
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise StoreError(f"cannot open lock file {path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        who = "another lnproxy process" + (f" (pid {holder})" if holder else "")
        raise DataDirLocked(
            f"{who} is using the data dir {data_dir}; refusing to start"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    write_pid(fd)
    return fd


def adopt_lock(data_dir: str, fd: int) -> int:
    """Take the data dir lock held through ``fd``, a descriptor of the lock
    file's open file description received from the process that holds it
    (a hot restart: the lock is never free in between).

    :return: ``fd``, now this process's lock (it writes its pid).
    :raises DataDirLocked: if ``fd`` is not this data dir's lock file or
        does not hold the lock.
    """
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        mine = os.stat(path, follow_symlinks=False)
        given = os.fstat(fd)
        same = (mine.st_dev, mine.st_ino) == (given.st_dev, given.st_ino)
        if same:
            # Same open file description: succeeds only if it holds the lock
            # (or nobody does); another description holding it fails.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        same = False
    if not same:
        raise DataDirLocked(
            f"the lock handed over is not the lock of {data_dir}; refusing to start"
        )
    write_pid(fd)
    return fd


def write_pid(fd: int) -> None:
    """Replace the content of the lock file with this process's pid.

    :param fd: the descriptor returned by :func:`acquire_lock` (also after
        a fork: the child inherits the lock and writes its own pid).
    """
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)


def _read_pid(fd: int) -> int | None:
    """Return the pid written in a lock file, or None if unreadable.

    :param fd: an open descriptor of the lock file.
    """
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text.isdigit() else None
    except (OSError, UnicodeDecodeError):
        return None


def release_lock(fd: int, unlock: bool = True) -> None:
    """Release the data dir lock taken by :func:`acquire_lock`.

    The file itself stays: deleting it would let two processes lock two
    different files of the same name.

    :param fd: the descriptor returned by :func:`acquire_lock`.
    :param unlock: False after a hot restart handed the descriptor over:
        only this process's copy is closed, the successor keeps the lock.
    """
    try:
        if unlock:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# The server key


def default_key_path(data_dir: str) -> str:
    """Return where the server key lives unless told otherwise.

    :param data_dir: absolute path of the data dir.
    """
    return os.path.join(data_dir, KEY_FILE)


def _new_secret() -> bytes:
    """Return 32 random bytes that are a valid secp256k1 secret key."""
    while True:
        secret = os.urandom(32)
        try:
            coincurve.PrivateKey(secret)
        except ValueError:
            # Zero or >= the group order: about 2**-128 likely. Draw again.
            continue
        return secret


def _create_server_secret(path: str) -> bytes | None:
    """Create the key file ``path`` with a new secret; return the secret.

    The key is written to a temp file of a unique name (mode 0600, fsync'd)
    in the same directory, which is then hard-linked into place. The link
    fails if the file exists, so an existing key is never overwritten, and a
    crash mid-write leaves only a temp file, never a truncated key.

    :param path: absolute path of the key file.
    :return: the new secret, or None if another process created the key
        file first (the caller then reads that one).
    :raises StoreError: if the file cannot be created.
    """
    # Earlier versions used this fixed temp name; only a crashed start can
    # have left it, and nothing creates it any more.
    unlink_quietly(path + ".tmp")
    secret = _new_secret()
    temp = None
    try:
        temp = temp_path_near(path)
        fd = os.open(temp, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            _write_all(fd, secret.hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)
        except FileExistsError:
            return None
        finally:
            unlink_quietly(temp)
        fsync_dir(os.path.dirname(path))
    except OSError as e:
        if temp is not None:
            unlink_quietly(temp)
        raise StoreError(f"cannot create server key {path}: {e.strerror}") from e
    _log.info("created a new server key in {path}", path=path)
    return secret


def load_or_create_server_secret(key_path: str) -> bytes:
    """Return the server's secret key, creating the key file if missing.

    :param key_path: the key file, e.g. :func:`default_key_path` of the data
        dir, or a file given by the operator; its directory must exist. If
        several processes create it at once, all get the same key.
    :raises StoreError: if the file is readable by group or others, is a
        symlink or not a regular file, is malformed, or does not hold a
        valid secp256k1 key. Messages never contain the key's content.
    """
    path = os.path.abspath(key_path)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            created = _create_server_secret(path)
            if created is not None:
                return created
            continue  # lost a creation race: read the winner's key
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"server key {path} is a symlink; refusing it") from e
            raise StoreError(f"cannot open server key {path}: {e.strerror}") from e
        return _read_secret(fd, path)
    raise StoreError(f"cannot open server key {path}: it keeps disappearing")


def _read_secret(fd: int, path: str) -> bytes:
    """Check and read an opened key file; close ``fd``.

    :param fd: the key file, opened for reading.
    :param path: its path, for messages.
    :raises StoreError: as :func:`load_or_create_server_secret`.
    """
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"server key {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise StoreError(
                f"server key {path} has mode {mode:04o}; it must not be "
                f"accessible by group or others (run: chmod 600 {path})"
            )
        data = os.read(fd, _KEY_FILE_MAX + 1)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if len(data) > _KEY_FILE_MAX or not _KEY_HEX.fullmatch(text):
        raise StoreError(
            f"server key {path} is malformed: expected 64 hex digits "
            "(32 bytes) and an optional newline"
        )
    secret = bytes.fromhex(text)
    try:
        coincurve.PrivateKey(secret)
    except ValueError:
        raise StoreError(
            f"server key {path} does not hold a valid secp256k1 secret key"
        ) from None
    return secret
