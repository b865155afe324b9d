-- Upgrade the lnproxy store from schema version 2 to 3: add peer storage.
-- lnproxy.store runs this inside one transaction and checks the version
-- afterwards. The CREATE TABLE text must stay identical to v3.sql.

CREATE TABLE peer_storage
(
 node_id TEXT NOT NULL,
 peer TEXT NOT NULL,
 blob BLOB NOT NULL CHECK (length(blob) <= 65531),
 at REAL NOT NULL,
 PRIMARY KEY (node_id, peer)
) WITHOUT ROWID;

UPDATE version SET version = 3;
