"""Account key derivation and the node-key blob (client side, pure).

docs/protocol.md, "Several devices of one node", fixes how every client
turns a user's password into the two values the proxy sees, so that an
account made by one client can be restored by any other::

    salt = SHA256("lnproxy/1 account" || server_id (33 bytes) || user UTF-8)
    k    = Argon2id(password UTF-8, salt, iterations 3, memory 65536 KiB,
                    lanes 1, output 64 bytes)
    auth = k[0:32]      sent to the proxy (it keeps only a slow hash of it)
    enc  = k[32:64]     never leaves the device
    blob = nonce (12) || ChaCha20-Poly1305(enc, nonce, node secret (32),
                                           AD "lnproxy/1 account" || user)

The proxy stores ``blob`` and a hash of ``auth``; without the password it
can only guess, paying one Argon2id (64 MiB, 3 passes) per guess.

One derivation takes a noticeable fraction of a second and 64 MiB: callers
on a reactor run :func:`derive` in a thread (``deferToThread``).
Nothing here logs, and :class:`AccountKeys` never shows its bytes in its
``repr``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from lnproxy import keys
from lnproxy.protocol import ACCOUNT_TAG

__all__ = [
    "ACCOUNT_TAG",
    "ARGON2_ITERATIONS",
    "ARGON2_MEMORY_KIB",
    "ARGON2_LANES",
    "KEY_LENGTH",
    "NONCE_LENGTH",
    "BLOB_LENGTH",
    "USER_MAX",
    "AccountError",
    "AccountKeys",
    "check_user",
    "account_salt",
    "derive",
    "seal_node_key",
    "open_node_key",
]

ARGON2_ITERATIONS: Final = 3
ARGON2_MEMORY_KIB: Final = 65536
ARGON2_LANES: Final = 1
KEY_LENGTH: Final = 64
NONCE_LENGTH: Final = 12
#: nonce (12) + node secret (32) + Poly1305 tag (16).
BLOB_LENGTH: Final = NONCE_LENGTH + 32 + 16
#: A user name is 1-64 characters.
USER_MAX: Final = 64


class AccountError(Exception):
    """A user name, password or blob that cannot be used.

    The message names the problem; it never contains the password, the
    derived keys or the node key.
    """


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """The two halves of the Argon2id output.

    ``auth`` is sent to the proxy; ``enc`` opens the blob and must stay on
    the device.  Their bytes are left out of ``repr`` so that a stray log
    line cannot leak them.
    """

    auth: bytes = field(repr=False)
    enc: bytes = field(repr=False)


def check_user(user: object) -> str:
    """Return ``user`` if it is a valid account user name (1-64 characters
    that encode as UTF-8, U+0000 excepted, as the proxy refuses it).

    :raise AccountError: otherwise.
    """
    if not isinstance(user, str) or not 1 <= len(user) <= USER_MAX:
        raise AccountError(f"a user name is 1-{USER_MAX} characters")
    if "\x00" in user:
        raise AccountError("a user name must not contain U+0000")
    try:
        user.encode("utf-8")
    except UnicodeEncodeError:
        raise AccountError("a user name must be valid Unicode text") from None
    return user


def account_salt(server_id: bytes, user: str) -> bytes:
    """``SHA256("lnproxy/1 account" || server_id || user UTF-8)``."""
    if len(server_id) != 33:
        raise AccountError("server_id must be 33 bytes")
    return hashlib.sha256(
        ACCOUNT_TAG + server_id + check_user(user).encode("utf-8")
    ).digest()


def derive(password: str, server_id: bytes, user: str) -> AccountKeys:
    """Derive ``auth`` and ``enc`` from a password (slow: one Argon2id).

    The password is used exactly as given, encoded as UTF-8 (no Unicode
    normalisation, no trimming), as every client must do the same.

    :raise AccountError: for an empty password, a bad user name or a
        ``server_id`` that is not 33 bytes.
    """
    if not isinstance(password, str) or not password:
        raise AccountError("the password must not be empty")
    try:
        secret = password.encode("utf-8")
    except UnicodeEncodeError:
        raise AccountError("the password must be valid Unicode text") from None
    kdf = Argon2id(
        salt=account_salt(server_id, user),
        length=KEY_LENGTH,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    k = kdf.derive(secret)
    return AccountKeys(auth=k[:32], enc=k[32:])


def _ad(user: str) -> bytes:
    return ACCOUNT_TAG + check_user(user).encode("utf-8")


def seal_node_key(
    enc: bytes, user: str, node_secret: bytes, nonce: bytes | None = None
) -> bytes:
    """Encrypt the 32-byte node secret into an account blob (60 bytes).

    ``nonce`` is 12 fresh random bytes unless given (tests give one to
    reproduce the contract's example).
    """
    if len(enc) != 32:
        raise AccountError("enc must be 32 bytes")
    if len(node_secret) != 32:
        raise AccountError("a node secret is 32 bytes")
    if nonce is None:
        nonce = os.urandom(NONCE_LENGTH)
    if len(nonce) != NONCE_LENGTH:
        raise AccountError(f"the nonce must be {NONCE_LENGTH} bytes")
    return nonce + ChaCha20Poly1305(enc).encrypt(nonce, node_secret, _ad(user))


def open_node_key(
    enc: bytes, user: str, blob: bytes, node_id: bytes | None = None
) -> bytes:
    """Decrypt an account blob; return the 32-byte node secret.

    When ``node_id`` is given, also check that the secret is that node's.

    :raise AccountError: for a blob of the wrong size, one that does not
        open with ``enc`` (a wrong password, another user, a tampered
        blob), or a secret that is not ``node_id``'s.
    """
    if len(enc) != 32:
        raise AccountError("enc must be 32 bytes")
    if len(blob) != BLOB_LENGTH:
        raise AccountError(f"an account blob is {BLOB_LENGTH} bytes, not {len(blob)}")
    nonce, sealed = blob[:NONCE_LENGTH], blob[NONCE_LENGTH:]
    try:
        secret = ChaCha20Poly1305(enc).decrypt(nonce, sealed, _ad(user))
    except InvalidTag:
        raise AccountError(
            "the account blob does not open with this password"
        ) from None
    try:
        public = keys.public_key(secret)
    except ValueError:
        raise AccountError("the account blob does not hold a node key") from None
    if node_id is not None and public != node_id:
        raise AccountError("the account blob holds another node's key")
    return secret
