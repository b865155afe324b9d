-- lnproxy store on PostgreSQL, schema version 1.
-- The version row itself is inserted by lnproxy.store.postgres, not here.
-- Everything runs in one transaction under an advisory lock, so two
-- processes starting at once on an empty database create it once.

CREATE TABLE version
(
 version INTEGER NOT NULL
);

-- The processes of the deployment. A process renews its lease with one
-- UPDATE of its own row (expires = the database's now() + its lease
-- timeout); a row whose expires is in the past belongs to a dead (or
-- paused, or cut off) process whose nodes may be taken over. Times are the
-- database's clock, so the machines' clocks never have to agree.
CREATE TABLE processes
(
 process_id TEXT PRIMARY KEY,
 public_url TEXT NOT NULL,
 started TIMESTAMPTZ NOT NULL DEFAULT now(),
 expires TIMESTAMPTZ NOT NULL
);

-- One row per node the deployment knows. next_seq is the seq its next
-- event gets, numbered in its owner's memory and checked here; it is kept
-- when acknowledged events are deleted, so a seq is never reused. owner is
-- the process that serves the node (NULL: nobody); epoch is the fencing
-- token, raised by every claim: a write transaction of the owner checks
-- (owner, epoch) with the node row locked, so a process that lost the node
-- can no longer write for it.
CREATE TABLE nodes
(
 node_id TEXT PRIMARY KEY,
 next_seq BIGINT NOT NULL CHECK (next_seq >= 1),
 owner TEXT,
 epoch BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX nodes_owner ON nodes (owner) WHERE owner IS NOT NULL;

-- Durable, not yet acknowledged events. The primary key is the guard that
-- a seq is stored once: seqs are not a sequence (bigserial would let a
-- reader skip an event whose transaction commits after a later one).
CREATE TABLE events
(
 node_id TEXT NOT NULL REFERENCES nodes (node_id),
 seq BIGINT NOT NULL CHECK (seq >= 1),
 kind TEXT NOT NULL,
 summon BOOLEAN NOT NULL,
 at DOUBLE PRECISION NOT NULL,
 params TEXT NOT NULL,
 PRIMARY KEY (node_id, seq)
);

-- Peer connections: open or in handshake, or closed with their closed
-- event (closed_seq) not yet acknowledged.
CREATE TABLE connections
(
 conn_id TEXT PRIMARY KEY,
 node_id TEXT NOT NULL,
 peer TEXT NOT NULL,
 address TEXT NOT NULL,
 persist BOOLEAN NOT NULL,
 since DOUBLE PRECISION NOT NULL,
 state TEXT NOT NULL CHECK (state IN ('handshake', 'open', 'closed')),
 their_init TEXT,
 closed_seq BIGINT
);
CREATE INDEX connections_node_id ON connections (node_id);
CREATE INDEX connections_unclosed ON connections (since, conn_id)
 WHERE state <> 'closed';

-- The webhooks that wake a node's offline client.
CREATE TABLE webhooks
(
 node_id TEXT NOT NULL,
 webhook_id TEXT NOT NULL,
 url TEXT NOT NULL,
 created DOUBLE PRECISION NOT NULL,
 PRIMARY KEY (node_id, webhook_id)
);

-- The newest BOLT 1 peer_storage blob each peer of a node gave (one per
-- node and peer, never a history).
CREATE TABLE peer_storage
(
 node_id TEXT NOT NULL,
 peer TEXT NOT NULL,
 blob BYTEA NOT NULL CHECK (length(blob) <= 65531),
 at DOUBLE PRECISION NOT NULL,
 PRIMARY KEY (node_id, peer)
);

-- The vault: small opaque blobs per node under a name, each with a version
-- that every write must name (compare-and-swap); a removed entry is deleted
-- (its version is 0 again).
CREATE TABLE vault
(
 node_id TEXT NOT NULL,
 name TEXT NOT NULL,
 version BIGINT NOT NULL CHECK (version >= 1),
 blob BYTEA NOT NULL,
 updated DOUBLE PRECISION NOT NULL,
 PRIMARY KEY (node_id, name)
);

-- Accounts: one per node, one node per user name. auth_hash is a slow
-- salted hash of the client's auth (never auth itself); blob is the node
-- key encrypted by the client with a key the proxy never sees.
CREATE TABLE accounts
(
 user_name TEXT PRIMARY KEY,
 node_id TEXT NOT NULL UNIQUE,
 auth_hash TEXT NOT NULL,
 blob BYTEA NOT NULL,
 updated DOUBLE PRECISION NOT NULL
);
