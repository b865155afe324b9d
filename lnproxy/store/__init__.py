"""The durable store of the lnproxy server.

The package is a seam: the rest of lnproxy talks to an
:class:`~lnproxy.store.interface.IStore`, and the implementation behind it is
chosen when the service is built.

- :mod:`lnproxy.store.interface`: ``IStore`` with its guarantees, the row
  dataclasses and the errors;
- :mod:`lnproxy.store.datadir`: the data dir, its lock and the server key;
- :mod:`lnproxy.store.schema`: the versioned SQLite schema (create, upgrade,
  refuse newer);
- :mod:`lnproxy.store.sqlite`: ``SqliteStore``, the SQLite implementation
  (``Store`` is its old name and stays).

Everything importable from ``lnproxy.store`` before the split still is.
"""

from lnproxy.store.datadir import KEY_FILE, LOCK_FILE
from lnproxy.store.interface import (
    CONNECTION_STATES,
    AccountRow,
    ConnectionRow,
    DataDirLocked,
    DBError,
    EventRow,
    IStore,
    NodeLost,
    StoreError,
    UserTaken,
    VaultEntry,
    VaultFull,
    VersionConflict,
    WebhookRow,
)
from lnproxy.store.schema import SCHEMA_VERSION, dump_db, get_db
from lnproxy.store.sqlite import DB_FILE, SqliteStore, Store

__all__ = [
    "SCHEMA_VERSION",
    "CONNECTION_STATES",
    "DB_FILE",
    "KEY_FILE",
    "LOCK_FILE",
    "StoreError",
    "DBError",
    "DataDirLocked",
    "NodeLost",
    "EventRow",
    "ConnectionRow",
    "WebhookRow",
    "VaultEntry",
    "AccountRow",
    "VersionConflict",
    "VaultFull",
    "UserTaken",
    "IStore",
    "SqliteStore",
    "Store",
    "get_db",
    "dump_db",
]
