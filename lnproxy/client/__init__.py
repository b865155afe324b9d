"""lnproxy's reference client: the side that holds the node key.

The main class is :class:`Client` (:mod:`lnproxy.client.session`), which
composes the WebSocket connection (:mod:`~lnproxy.client.connection`), the
event pipeline (:mod:`~lnproxy.client.events`) and the peer connections
(:mod:`~lnproxy.client.peers`); several devices of one node (lease, vault,
account) are :mod:`~lnproxy.client.devices`, with the account's key
derivation in :mod:`~lnproxy.client.account`, the key restore in
:mod:`~lnproxy.client.restore` and vault documents in
:mod:`~lnproxy.client.vaultstate`.  The ``lnproxy-client`` command line lives
in :mod:`lnproxy.client.cli`.  Import the public names from here.
"""

from lnproxy.client import errors as _errors
from lnproxy.client.account import AccountError
from lnproxy.client.connection import LoginInfo
from lnproxy.client.errors import *  # noqa: F403  (its __all__, re-exported)
from lnproxy.client.events import Event
from lnproxy.client.keyfile import KeyFileError, generate_key_file, read_key_file
from lnproxy.client.peers import PeerLink, parse_peer
from lnproxy.client.restore import AccountRestoreError, RestoredAccount, restore_account
from lnproxy.client.session import Client
from lnproxy.client.state import (
    ClientState,
    FileState,
    MemoryState,
    StateError,
    StateStore,
)
from lnproxy.client.vaultstate import VaultDocument, VaultError

__all__ = [
    "AccountError",
    "AccountRestoreError",
    "RestoredAccount",
    "restore_account",
    "VaultDocument",
    "VaultError",
    "Client",
    "Event",
    "LoginInfo",
    "PeerLink",
    "parse_peer",
    "ClientState",
    "StateStore",
    "FileState",
    "MemoryState",
    "StateError",
    "KeyFileError",
    "generate_key_file",
    "read_key_file",
    *_errors.__all__,
]
