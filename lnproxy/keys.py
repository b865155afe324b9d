"""secp256k1 signatures used by the client protocol (pure, no I/O).

Two things are signed in lnproxy, both as 64-byte compact ECDSA signatures
(``r || s``, low-S) over a SHA256 digest:

* the login: the node key signs
  ``SHA256(b"lnproxy/1 login" || server_id || challenge)``;
* webhooks: the proxy's ``server_id`` key signs
  ``SHA256(timestamp_ascii || b"." || body)``.

libsecp256k1 always produces low-S signatures and its verifier rejects
high-S ones, so malleated signatures are refused without extra code.
"""

from __future__ import annotations

import hashlib

import coincurve
from coincurve.ecdsa import (
    cdata_to_der,
    der_to_cdata,
    deserialize_compact,
    serialize_compact,
)

from lnproxy.protocol import LOGIN_TAG

__all__ = [
    "LOGIN_TAG",
    "login_digest",
    "webhook_digest",
    "sign_digest",
    "verify_digest",
    "public_key",
    "is_node_id",
]


def login_digest(server_id: bytes, challenge: bytes) -> bytes:
    """The 32-byte digest a client signs to log in."""
    return hashlib.sha256(LOGIN_TAG + server_id + challenge).digest()


def webhook_digest(timestamp: int, body: bytes) -> bytes:
    """The 32-byte digest the proxy signs for a webhook call."""
    return hashlib.sha256(str(timestamp).encode("ascii") + b"." + body).digest()


def sign_digest(secret: bytes, digest: bytes) -> bytes:
    """Sign a 32-byte digest; return the 64-byte compact signature (low-S)."""
    der = coincurve.PrivateKey(secret).sign(digest, hasher=None)
    return serialize_compact(der_to_cdata(der))


def verify_digest(node_id: bytes, digest: bytes, signature: bytes) -> bool:
    """Check a 64-byte compact signature over ``digest`` by ``node_id``.

    Returns False (never raises) for a malformed key or signature, a high-S
    signature, or a signature by another key.
    """
    if len(signature) != 64 or len(digest) != 32 or not is_node_id(node_id):
        return False
    try:
        der = cdata_to_der(deserialize_compact(signature))
        return bool(coincurve.PublicKey(node_id).verify(der, digest, hasher=None))
    except (ValueError, TypeError):
        return False


def public_key(secret: bytes) -> bytes:
    """The 33-byte compressed public key (node id) of a 32-byte secret."""
    return bytes(coincurve.PrivateKey(secret).public_key.format())


def is_node_id(data: bytes) -> bool:
    """True when ``data`` is a 33-byte compressed point on secp256k1."""
    if len(data) != 33 or data[0] not in (2, 3):
        return False
    try:
        coincurve.PublicKey(data)
    except ValueError:
        return False
    return True
