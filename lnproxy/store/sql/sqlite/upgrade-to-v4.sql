-- Upgrade the lnproxy store from schema version 3 to 4: add the vault and
-- accounts. lnproxy.store runs this inside one transaction and checks the
-- version afterwards. The CREATE TABLE texts must stay identical to v4.sql.

-- Added in version 4 (upgrade-to-v4.sql creates the same tables, keep the
-- texts identical): the vault, small opaque blobs per node under a name, each
-- with a version that every write must name (compare-and-swap); a removed
-- entry is deleted (its version is 0 again).
CREATE TABLE vault
(
 node_id TEXT NOT NULL,
 name TEXT NOT NULL,
 version INTEGER NOT NULL CHECK (version >= 1),
 blob BLOB NOT NULL,
 updated REAL NOT NULL,
 PRIMARY KEY (node_id, name)
) WITHOUT ROWID;

-- Added in version 4: accounts. One per node, one node per user name.
-- auth_hash is a slow salted hash of the client's auth (never auth itself);
-- blob is the node key encrypted by the client with a key the proxy never
-- sees.
CREATE TABLE accounts
(
 user_name TEXT PRIMARY KEY,
 node_id TEXT NOT NULL UNIQUE,
 auth_hash TEXT NOT NULL,
 blob BLOB NOT NULL,
 updated REAL NOT NULL
);

UPDATE version SET version = 4;
