-- lnproxy store, schema version 4: v3 plus the vault and accounts.
-- The version row itself is inserted by lnproxy.store, not by this file.

CREATE TABLE version
(
 version INTEGER NOT NULL
);

-- One row per node that ever had an event. next_seq is the seq its next
-- event gets; it is kept when acknowledged events are deleted, so a seq is
-- never reused for a node.
CREATE TABLE nodes
(
 node_id TEXT PRIMARY KEY,
 next_seq INTEGER NOT NULL CHECK (next_seq >= 1)
);

-- Durable, not yet acknowledged events. params is the JSON text of the
-- notification params (it already contains seq and at).
CREATE TABLE events
(
 node_id TEXT NOT NULL REFERENCES nodes (node_id),
 seq INTEGER NOT NULL CHECK (seq >= 1),
 kind TEXT NOT NULL,
 summon INTEGER NOT NULL CHECK (summon IN (0, 1)),
 at REAL NOT NULL,
 params TEXT NOT NULL,
 PRIMARY KEY (node_id, seq)
) WITHOUT ROWID;

-- Peer connections: open or in handshake, or closed with their closed
-- event (closed_seq) not yet acknowledged.
CREATE TABLE connections
(
 conn_id TEXT PRIMARY KEY,
 node_id TEXT NOT NULL,
 peer TEXT NOT NULL,
 address TEXT NOT NULL,
 persist INTEGER NOT NULL CHECK (persist IN (0, 1)),
 since REAL NOT NULL,
 state TEXT NOT NULL CHECK (state IN ('handshake', 'open', 'closed')),
 their_init TEXT,
 closed_seq INTEGER
);
CREATE INDEX connections_node_id ON connections (node_id);

-- Added in version 2 (upgrade-to-v2.sql creates the same table, keep the two
-- texts identical): the webhooks that wake a node's offline client.
CREATE TABLE webhooks
(
 node_id TEXT NOT NULL,
 webhook_id TEXT NOT NULL,
 url TEXT NOT NULL,
 created REAL NOT NULL,
 PRIMARY KEY (node_id, webhook_id)
);

-- Added in version 3 (upgrade-to-v3.sql creates the same table, keep the two
-- texts identical): the newest BOLT 1 peer_storage blob each peer of a node
-- gave the proxy to keep, handed back in peer_storage_retrieval.
CREATE TABLE peer_storage
(
 node_id TEXT NOT NULL,
 peer TEXT NOT NULL,
 blob BLOB NOT NULL CHECK (length(blob) <= 65531),
 at REAL NOT NULL,
 PRIMARY KEY (node_id, peer)
) WITHOUT ROWID;

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
