"""Compute the account-derivation vectors of test/account.test.mjs.

Independent of the JavaScript code: Argon2id and ChaCha20-Poly1305 come from
Python's ``cryptography`` and the secp256k1 key from ``coincurve``, following
docs/protocol.md, "Several devices of one node".  Run once with the
project's Python and paste the output into the test::

    python clients/js/test/support/account_vectors.py
"""

from __future__ import annotations

import hashlib
import json

import coincurve
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

TAG = b"lnproxy/1 account"


def vector(
    server_secret: bytes,
    user: str,
    password: str,
    node_secret: bytes,
    nonce: bytes,
    iterations: int = 3,
    memory: int = 65536,
) -> dict[str, object]:
    """One vector: inputs and the expected auth, enc and blob (hex)."""
    server_id = coincurve.PrivateKey(server_secret).public_key.format()
    salt = hashlib.sha256(TAG + server_id + user.encode()).digest()
    k = Argon2id(
        salt=salt, length=64, iterations=iterations, lanes=1, memory_cost=memory
    ).derive(password.encode())
    auth, enc = k[:32], k[32:]
    blob = nonce + ChaCha20Poly1305(enc).encrypt(
        nonce, node_secret, TAG + user.encode()
    )
    return {
        "server_id": server_id.hex(),
        "user": user,
        "password": password,
        "t": iterations,
        "m": memory,
        "salt": salt.hex(),
        "auth": auth.hex(),
        "enc": enc.hex(),
        "node_secret": node_secret.hex(),
        "nonce": nonce.hex(),
        "blob": blob.hex(),
    }


def main() -> None:
    """Print the vectors as JSON."""
    print(
        json.dumps(
            [
                vector(b"\x01" * 32, "alice", "correct horse battery staple",
                       b"\x11" * 32, b"\x22" * 12),
                vector(b"\x02" * 32, "bob ünïcødé", "pässwörd",
                       b"\x33" * 32, b"\x44" * 12),
                vector(b"\x03" * 32, "carol", "cheap", b"\x55" * 32,
                       b"\x66" * 12, iterations=1, memory=64),
            ],
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
