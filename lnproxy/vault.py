"""Parameter checks for the vault and account methods (pure).

docs/protocol.md, "Several devices of one node".  The vault keeps small
opaque blobs per node under names of 1-64 characters of ``a-z``, ``0-9``,
``.``, ``_``, ``-``; every write names the version it replaces.  Accounts
bind a user name (1-64 characters) to a node with a 32-byte ``auth`` and
a blob of at most 4096 bytes.

Each checker takes the request's ``params`` and returns the parsed value
or raises :class:`ParamError` carrying the code to answer: -32602 for a
missing, mistyped or malformed value, 7 for a blob above its limit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from lnproxy.protocol import INVALID_PARAMS, LIMIT_EXCEEDED

__all__ = [
    "VAULT_BLOB_MAX",
    "VAULT_ENTRIES_PER_NODE",
    "ACCOUNT_BLOB_MAX",
    "USER_MAX",
    "VERSION_MAX",
    "ParamError",
    "vault_name",
    "vault_blob",
    "vault_version",
    "account_user",
    "account_auth",
    "account_blob",
]

#: Largest vault blob in bytes (``hello.limits.vault_blob_max``).
VAULT_BLOB_MAX: Final = 65535
#: Default of ``hello.limits.vault_entries_per_node``.
VAULT_ENTRIES_PER_NODE: Final = 64
#: Largest account blob in bytes.
ACCOUNT_BLOB_MAX: Final = 4096
#: Longest user name, in characters.
USER_MAX: Final = 64
#: Versions stay within SQLite's (and PostgreSQL's) signed 64-bit integers.
VERSION_MAX: Final = 2**62

_NAME = re.compile(r"[a-z0-9._-]{1,64}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


class ParamError(ValueError):
    """A parameter the method cannot take; ``code`` is the answer's code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _get(params: Mapping[str, Any], name: str) -> Any:
    if name not in params:
        raise ParamError(INVALID_PARAMS, f"missing parameter {name!r}")
    return params[name]


def _hex(params: Mapping[str, Any], name: str, limit: int) -> bytes:
    value = _get(params, name)
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise ParamError(INVALID_PARAMS, f"parameter {name!r} must be hex")
    if len(value) > 2 * limit:
        raise ParamError(LIMIT_EXCEEDED, f"parameter {name!r} is above {limit} bytes")
    return bytes.fromhex(value)


def vault_name(params: Mapping[str, Any]) -> str:
    """``name``: 1-64 characters of ``a-z0-9._-``."""
    value = _get(params, "name")
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ParamError(
            INVALID_PARAMS,
            "parameter 'name' must be 1-64 characters of a-z, 0-9, '.', '_', '-'",
        )
    return value


def vault_blob(params: Mapping[str, Any], limit: int = VAULT_BLOB_MAX) -> bytes:
    """``blob``: hex of at most ``limit`` bytes (code 7 above it)."""
    return _hex(params, "blob", limit)


def vault_version(params: Mapping[str, Any]) -> int:
    """``version``: an integer from 0 (a new name) up."""
    value = _get(params, "version")
    if not isinstance(value, int) or isinstance(value, bool):
        raise ParamError(INVALID_PARAMS, "parameter 'version' must be an integer")
    if not 0 <= value < VERSION_MAX:
        raise ParamError(
            INVALID_PARAMS, "parameter 'version' must be 0 or a version the vault gave"
        )
    return value


def account_user(params: Mapping[str, Any]) -> str:
    """``user``: 1-64 characters of valid Unicode text, U+0000 excepted
    (PostgreSQL cannot store it in text).  The name is kept exactly as
    sent: no Unicode normalisation (the contract's salt hashes the UTF-8
    bytes as given, so two spellings are two users)."""
    value = _get(params, "user")
    if not isinstance(value, str) or not 1 <= len(value) <= USER_MAX:
        raise ParamError(
            INVALID_PARAMS, f"parameter 'user' must be 1-{USER_MAX} characters"
        )
    if "\x00" in value:
        raise ParamError(INVALID_PARAMS, "parameter 'user' must not contain U+0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ParamError(
            INVALID_PARAMS, "parameter 'user' must be valid Unicode text"
        ) from None
    return value


def account_auth(params: Mapping[str, Any]) -> bytes:
    """``auth``: 32 bytes of hex."""
    value = _get(params, "auth")
    if not isinstance(value, str) or len(value) != 64 or not _HEX.fullmatch(value):
        raise ParamError(INVALID_PARAMS, "parameter 'auth' must be 32 bytes of hex")
    return bytes.fromhex(value)


def account_blob(params: Mapping[str, Any]) -> bytes:
    """``blob``: hex of 1 to 4096 bytes (code 7 above)."""
    blob = _hex(params, "blob", ACCOUNT_BLOB_MAX)
    if not blob:
        raise ParamError(INVALID_PARAMS, "parameter 'blob' must not be empty")
    return blob
