"""Node key files: 32 secret bytes as 64 hex characters, mode 0600.

The file is the only place the node's private key lives on disk.  It is
created with ``O_EXCL`` (never overwritten) and permission bits 0600 from the
start, so there is no moment at which another user could read it.
"""

from __future__ import annotations

import os
import stat

from lnproxy import keys

__all__ = [
    "KeyFileError",
    "generate_key_file",
    "write_key_file",
    "read_key_file",
    "is_private",
]


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed, or already exists."""


def generate_key_file(path: str) -> bytes:
    """Create a new node key in ``path`` and return its node id.

    :raise KeyFileError: when ``path`` exists or cannot be created.
    """
    secret = os.urandom(32)
    # A secret must be a valid scalar; the chance that 32 random bytes are
    # not is ~2^-128, but checking costs nothing.
    while not _valid_secret(secret):
        secret = os.urandom(32)
    return write_key_file(path, secret)


def write_key_file(path: str, secret: bytes) -> bytes:
    """Write an existing node secret (e.g. restored from an account) to a
    new key file ``path``, mode 0600; return its node id.

    :raise KeyFileError: when ``path`` exists or cannot be created, or the
        secret is not a node key.
    """
    if len(secret) != 32 or not _valid_secret(secret):
        raise KeyFileError("not a node key (32 bytes, a valid secp256k1 secret)")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"key file {path} already exists; not overwriting it"
        ) from None
    except OSError as e:
        raise KeyFileError(f"cannot create key file {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return keys.public_key(secret)


def _valid_secret(secret: bytes) -> bool:
    try:
        keys.public_key(secret)
    except ValueError:
        return False
    return True


def read_key_file(path: str) -> bytes:
    """Read a node secret key from ``path``.

    :return: the 32-byte secret.
    :raise KeyFileError: with a one-line reason.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(1024)
    except FileNotFoundError:
        raise KeyFileError(
            f"key file {path} does not exist (create one with keygen)"
        ) from None
    except IsADirectoryError:
        raise KeyFileError(f"key file {path} is a directory") from None
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    text = raw.strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != 32 or not _valid_secret(secret):
        raise KeyFileError(
            f"key file {path} does not hold a node key (64 hex characters)"
        )
    return secret


def is_private(path: str) -> bool:
    """Whether no one but the owner may read or write ``path``."""
    return not (os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
