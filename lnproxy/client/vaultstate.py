"""A small shared document in the proxy's vault, encrypted, updated with
compare-and-swap (docs/protocol.md, "Several devices of one node", "The
vault").

:class:`VaultDocument` keeps one JSON object under one vault name.  Its
content is encrypted on the device with a key derived from the node secret
(ChaCha20-Poly1305, the entry's name as associated data), so the proxy
stores bytes it cannot read and cannot swap between names.  A change is a
function from the current object to the new one; :meth:`VaultDocument.update`
reads, applies it and writes naming the version it read, and when another
device wrote first (code 10) it reads again and reapplies, up to
``max_attempts`` times.

The wire calls go through ``call(method, params) -> Deferred`` (a
:class:`~lnproxy.client.Client`'s :meth:`call`), so the class does not care
which session carries them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.internet import defer

from lnproxy.client.errors import ClientError, ProxyError
from lnproxy.protocol import VERSION_CONFLICT

__all__ = ["VAULT_KEY_TAG", "vault_key", "VaultDocument", "VaultError"]

#: Label of the vault key derivation (a client convention, not the protocol's).
VAULT_KEY_TAG = b"lnproxy/1 vault"

Call = Callable[[str, dict[str, Any]], "defer.Deferred[Any]"]


class VaultError(ClientError):
    """A vault entry that does not decrypt or parse, or an update that kept
    losing to other writers."""


def vault_key(node_secret: bytes) -> bytes:
    """The 32-byte key that encrypts a node's vault documents.

    ``SHA256("lnproxy/1 vault" || node secret)``: every device holding the
    node key derives the same one; the proxy, which never has the node
    key, cannot.
    """
    if len(node_secret) != 32:
        raise ValueError("a node secret is 32 bytes")
    return hashlib.sha256(VAULT_KEY_TAG + node_secret).digest()


class VaultDocument:
    """One JSON object kept encrypted under ``name`` in the node's vault.

    :param call: sends one request and fires with its result (a
        :class:`~lnproxy.client.Client`'s ``call``).
    :param name: the vault name (1-64 of ``a-z0-9._-``).
    :param key: from :func:`vault_key`.
    :param max_attempts: writes tried by :meth:`update` before it gives up.

    :ivar version: the version last read or written (0: none).
    """

    def __init__(
        self, call: Call, name: str, key: bytes, max_attempts: int = 8
    ) -> None:
        if len(key) != 32:
            raise ValueError("a vault key is 32 bytes")
        self._call = call
        self.name = name
        self._aead = ChaCha20Poly1305(key)
        self.max_attempts = max_attempts
        self.version = 0
        #: How many writes :meth:`update` lost to another writer, in total.
        self.conflicts = 0

    def _seal(self, obj: dict[str, Any]) -> str:
        plain = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
        nonce = os.urandom(12)
        return (nonce + self._aead.encrypt(nonce, plain, self.name.encode())).hex()

    def _open(self, blob_hex: str | None) -> dict[str, Any]:
        if blob_hex is None:
            return {}
        try:
            blob = bytes.fromhex(blob_hex)
            plain = self._aead.decrypt(blob[:12], blob[12:], self.name.encode())
            obj = json.loads(plain)
        except (ValueError, InvalidTag, TypeError) as e:
            raise VaultError(
                f"vault entry {self.name!r} does not decrypt with this node's key"
            ) from e
        if not isinstance(obj, dict):
            raise VaultError(f"vault entry {self.name!r} is not a JSON object")
        return obj

    @defer.inlineCallbacks
    def read(self) -> Any:
        """Fetch the document: a Deferred firing with the object (``{}``
        when the entry does not exist); remembers its version."""
        result = yield self._call("vault.get", {"name": self.name})
        obj = self._open(result.get("blob"))
        self.version = int(result["version"])
        return obj

    @defer.inlineCallbacks
    def update(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
        """Apply ``change`` to the current object and write it, retrying on
        a version conflict with a fresh read.

        ``change`` gets a copy of the current object and returns the new
        one; it may run several times, so it must not have side effects.
        Fires with the object as written (nothing is written when the
        change leaves an existing entry as it is).

        :raise VaultError: after ``max_attempts`` conflicts in a row.
        """
        current = yield self.read()
        for _attempt in range(self.max_attempts):
            new = change(json.loads(json.dumps(current)))
            if new == current and self.version > 0:
                return new  # nothing to write
            try:
                result = yield self._call(
                    "vault.put",
                    {
                        "name": self.name,
                        "blob": self._seal(new),
                        "version": self.version,
                    },
                )
            except ProxyError as e:
                if e.code != VERSION_CONFLICT:
                    raise
                self.conflicts += 1
                current = yield self.read()
                continue
            self.version = int(result["version"])
            return new
        raise VaultError(
            f"vault entry {self.name!r}: {self.max_attempts} writes in a row lost "
            "to other devices"
        )
